//! What the governance state tells the ledger, as the consortium node publishes it on a watch
//! channel ([`crate::consortium::participation`]): whether the node takes part, the institutions'
//! keys, the delegates of every epoch, where the other members' nodes listen, and the member's
//! signing key (its batches, and its votes when it is a delegate).

use std::collections::BTreeMap;
use std::sync::Arc;

use fhirseal_consensus::election::beacon::BeaconKey;
use fhirseal_consensus::election::lsag::VoteSecret;
use fhirseal_consensus::election::schedule::{Config as ElectionConfig, Seat};
use fhirseal_consensus::{DelegateSet, EpochRosters, PublicKey, Roster, SigningKey};

/// The chain's election, as fixed when the consortium was founded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionSetup {
    /// Its parameters (chain id, blocks per ledger epoch, K, M, the standing's rules).
    pub config: ElectionConfig,
    /// Who serves ledger epochs 0 and 1: the delegates of governance epoch 0.
    pub founders: Vec<String>,
}

/// The member's keys for the election: its anonymous ballots and its beacon contributions.
pub struct VoterKeys {
    pub vote: VoteSecret,
    pub beacon: BeaconKey,
}

impl std::fmt::Debug for VoterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoterKeys")
            .field("beacon", &self.beacon)
            .finish_non_exhaustive()
    }
}

/// An active member's node, for the ledger's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNode {
    /// Its Raft node id (what the transport pins the peer's certificate by).
    pub node_id: u64,
    /// Where its governance listener is.
    pub address: String,
    /// Its RSA key (SubjectPublicKeyInfo DER): what records shared with it are wrapped for.
    pub wrapping_key: Vec<u8>,
}

/// The ledger's view of the governance state (published again whenever the state, the node's
/// standing or its keys change).
#[derive(Clone)]
pub struct LedgerView {
    /// Why the node may not anchor now; `None` when it takes part in its consortium.
    pub not_taking_part: Option<&'static str>,
    /// What batches and blocks are checked against as they are made: the active members'
    /// current signing keys (delegates: the newest epoch's).
    pub current: Arc<Roster>,
    /// What the chain and its proofs are verified against: every signing key each member has
    /// held (what a member signed before it rotated its keys, or before it was revoked, stays
    /// valid).
    pub verifying: Arc<Roster>,
    /// Each epoch's delegates in schedule order, with the keys they vote with.
    pub epochs: Arc<BTreeMap<u64, Vec<(String, PublicKey)>>>,
    /// The active members' nodes, this one's included.
    pub members: Arc<BTreeMap<String, MemberNode>>,
    /// The member's current signing key, if the keystore holds it.
    pub signer: Option<SigningKey>,
    /// The chain's election, when the consortium has one.
    pub election: Option<Arc<ElectionSetup>>,
    /// Each governance epoch's seats (every active member, with the signing key it votes with).
    pub seats: Arc<BTreeMap<u64, Vec<(Seat, PublicKey)>>>,
    /// The member's election keys, if the keystore holds them.
    pub voter: Option<Arc<VoterKeys>>,
}

impl std::fmt::Debug for LedgerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerView")
            .field("not_taking_part", &self.not_taking_part)
            .field("current", &self.current)
            .field("epochs", &self.epochs)
            .finish_non_exhaustive()
    }
}

impl LedgerView {
    /// A consortium of one that takes part: `institution` signs its batches and its votes with
    /// `signing`, the only delegate of epoch 0 (tests, and tools that have no governance state
    /// to read).
    pub fn single_node(institution: &str, signing: SigningKey) -> Self {
        let key = PublicKey::of(&signing);
        let roster = Arc::new(Roster::single_node(institution, key, key));
        LedgerView {
            not_taking_part: None,
            current: roster.clone(),
            verifying: roster,
            epochs: Arc::new([(0, vec![(institution.to_owned(), key)])].into()),
            members: Arc::new(BTreeMap::new()),
            signer: Some(signing),
            election: None,
            seats: Arc::new(BTreeMap::new()),
            voter: None,
        }
    }

    /// The delegates of `epoch`, if known.
    pub fn delegates(&self, epoch: u64) -> Option<&[(String, PublicKey)]> {
        self.epochs.get(&epoch).map(Vec::as_slice)
    }

    /// The newest epoch, if any.
    pub fn latest_epoch(&self) -> Option<u64> {
        self.epochs.keys().next_back().copied()
    }

    /// One roster per epoch over `institutions`' keys: what checks blocks of any epoch.
    pub fn rosters(&self, institutions: &Roster) -> EpochRosters {
        EpochRosters::new(
            institutions,
            self.epochs.iter().filter_map(|(epoch, delegates)| {
                let set = DelegateSet::new(delegates.iter().map(|(_, k)| *k).collect()).ok()?;
                Some((*epoch, set))
            }),
        )
    }
}
