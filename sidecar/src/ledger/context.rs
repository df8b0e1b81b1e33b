//! What the ledger's driver asks of this node ([`LedgerContext`]), answered from the governance
//! state the consortium node publishes ([`LedgerView`]), the chain on disk, and the member's
//! signing keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use fhirseal_consensus::election::schedule::Seat;
use fhirseal_consensus::ledger::{ElectedRosters, History, LedgerContext, RosterUse};
use fhirseal_consensus::{
    ChainReader, EntryLocation, EpochRosters, PublicKey, Roster, Rosters, SigningKey, Transaction,
    TxLocation,
};

use crate::ledger::view::LedgerView;

/// The driver's context at one node. Refreshed from the view before each step; what it derives
/// (one roster per epoch) is rebuilt only when the view changed.
pub(crate) struct NodeContext {
    view: LedgerView,
    reader: ChainReader,
    /// The rosters of every epoch, over the current keys and over every key held.
    proposing: EpochRosters,
    verifying: EpochRosters,
    /// Every signing key the member held while this process ran: a delegate that rotated its
    /// key still votes with the one its epoch recorded, until an epoch names the new one.
    keys: BTreeMap<PublicKey, SigningKey>,
    /// With an election, the delegates that certified each (ledger epoch, governance epoch),
    /// as the driver's tracker recorded them.
    history: Arc<History>,
}

impl NodeContext {
    pub(crate) fn new(view: LedgerView, reader: ChainReader) -> Self {
        let mut context = Self {
            proposing: EpochRosters::default(),
            verifying: EpochRosters::default(),
            keys: BTreeMap::new(),
            history: Arc::new(History::new()),
            view: view.clone(),
            reader,
        };
        context.refresh(view);
        context
    }

    /// Takes a new view, if it is one.
    pub(crate) fn refresh(&mut self, view: LedgerView) {
        if let Some(key) = &view.signer {
            self.keys.insert(PublicKey::of(key), key.clone());
        }
        let same = Arc::ptr_eq(&view.current, &self.view.current)
            && Arc::ptr_eq(&view.verifying, &self.view.verifying)
            && Arc::ptr_eq(&view.epochs, &self.view.epochs)
            && !self.proposing_is_empty();
        self.view = view;
        if !same {
            self.proposing = self.view.rosters(&self.view.current);
            self.verifying = self.view.rosters(&self.view.verifying);
        }
    }

    fn proposing_is_empty(&self) -> bool {
        self.proposing.latest().is_none()
    }

    /// The view it answers from.
    pub(crate) fn view(&self) -> &LedgerView {
        &self.view
    }

    /// Takes the election's record of who certified what (cheap: shared until it changes).
    pub(crate) fn set_history(&mut self, history: Arc<History>) {
        self.history = history;
    }

    /// The rosters the chain's blocks are verified against: each governance epoch's, with the
    /// delegates an election chose where it did.
    pub(crate) fn verifying(&self) -> ElectedRosters<&EpochRosters> {
        ElectedRosters {
            base: &self.verifying,
            history: self.history.clone(),
            epoch_blocks: self
                .view
                .election
                .as_ref()
                .map_or(u64::MAX, |e| e.config.epoch_blocks),
        }
    }
}

impl LedgerContext for NodeContext {
    fn roster(&self, epoch: u64, purpose: RosterUse) -> Option<Arc<Roster>> {
        let rosters = match purpose {
            RosterUse::Propose => &self.proposing,
            RosterUse::Verify => &self.verifying,
        };
        rosters.roster(epoch).cloned().map(Arc::new)
    }

    fn delegates(&self, epoch: u64) -> Option<Vec<(String, PublicKey)>> {
        self.view.delegates(epoch).map(<[_]>::to_vec)
    }

    fn latest_epoch(&self) -> Option<u64> {
        self.view.latest_epoch()
    }

    fn transaction(&self, key: &[u8]) -> fhirseal_consensus::Result<Option<TxLocation>> {
        self.reader.locate_transaction(key)
    }

    fn anchor(&self, key: &[u8]) -> fhirseal_consensus::Result<Option<EntryLocation>> {
        self.reader.anchor(key)
    }

    fn check_evidence(
        &self,
        height: u64,
        transactions: &[Transaction],
    ) -> fhirseal_consensus::Result<()> {
        self.reader
            .check_evidence(height, transactions, &self.verifying())
    }

    fn seats(&self, epoch: u64) -> Option<Vec<(Seat, PublicKey)>> {
        self.view.seats.get(&epoch).cloned()
    }

    fn signing_key(&self, public: &PublicKey) -> Option<SigningKey> {
        self.keys.get(public).cloned()
    }
}
