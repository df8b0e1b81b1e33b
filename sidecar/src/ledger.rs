//! The node's ledger, wired: the chain in `data_dir/ledger`, the anchorer that turns the vault's
//! outbox into finalized blocks, and the reads that `$verify`, `/ledger/` and the
//! `fhirseal ledger` commands make.
//!
//! Each node's chain is its own for now ([`SoloLedger`]: the node is its only delegate, with its
//! keystore's delegate key); who signs batches comes from the governance state, which the
//! consortium node publishes as a [`LedgerView`]: the institution's key is its member's current
//! signing key, and the chain verifies against every key each member has held. Each round the
//! anchorer signs one batch of waiting anchors and one of waiting access events with the
//! member's signing key, submits them, finalizes a block alone, and only then clears those
//! outbox entries. An entry whose version the chain already holds (a crash between a block and
//! the clearing of its entries) is cleared without being submitted again, so every
//! acknowledged write is anchored exactly once. While the node does not take part in its
//! consortium (joining, suspended, revoked) the anchorer anchors nothing and the outbox keeps
//! what waits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fhirseal_consensus::{
    anchor_key, AccessBatch, AccessEvent, AnchorBatch, AnchorEntry, AnchorProof, BatchId,
    BlockHeader, BlockProducer, Chain, ChainCheck, ChainReader, ChainStore, FinalizedBlock, Ledger,
    PublicKey, Roster, SigningKey, SoloLedger, Timestamp, Transaction,
};
use fhirseal_storage::{NodeKeys, Outbox, PendingAccess, PendingAnchor};
use tokio::sync::watch;

use crate::config::Config;

/// Why the ledger cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: {0}")]
    Chain(#[from] fhirseal_consensus::Error),
    #[error("outbox: {0}")]
    Storage(#[from] fhirseal_storage::StorageError),
    #[error("a lock on {0} is poisoned")]
    Poisoned(&'static str),
    /// The node does not take part in its consortium now: nothing is anchored, the outbox
    /// keeps what waits.
    #[error("not anchoring: {0}")]
    NotTakingPart(&'static str),
}

impl From<fhirseal_storage::chain_store::ChainStoreError> for LedgerError {
    fn from(e: fhirseal_storage::chain_store::ChainStoreError) -> Self {
        LedgerError::Chain(e.into())
    }
}

impl LedgerError {
    /// Whether a later attempt may succeed (I/O), as opposed to a refusal or corruption.
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::Chain(e) => e.is_retryable(),
            LedgerError::Storage(e) => e.is_retryable(),
            LedgerError::Poisoned(_) | LedgerError::NotTakingPart(_) => false,
        }
    }
}

/// How the anchorer batches.
#[derive(Debug, Clone, Copy)]
pub struct AnchorPolicy {
    /// Time between rounds when the outbox holds less than a full batch.
    pub interval: Duration,
    /// Most anchors (and, separately, access events) in one batch.
    pub max_batch: usize,
}

/// What the governance state says about the node's ledger, as the consortium node publishes it
/// (again whenever the state, the node's standing or its keys change).
#[derive(Clone)]
pub struct LedgerView {
    /// Why the node may not anchor now; `None` when it takes part in its consortium.
    pub not_taking_part: Option<&'static str>,
    /// What batches and blocks are checked against as they are made: the active members'
    /// current signing keys, and the node's delegate key.
    pub current: Arc<Roster>,
    /// What the chain and its proofs are verified against: every signing key each member has
    /// held (what a member signed before it rotated its keys, or before it was revoked, stays
    /// valid), and the node's delegate key.
    pub verifying: Arc<Roster>,
    /// The key the institution signs its batches with: its member's current signing key, if
    /// the keystore holds it.
    pub signer: Option<SigningKey>,
}

impl std::fmt::Debug for LedgerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerView")
            .field("not_taking_part", &self.not_taking_part)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl LedgerView {
    /// A consortium of one that takes part: `institution` signs with `signing`, and `delegate`
    /// is the only delegate (tests, and tools that have no governance state to read).
    pub fn single_node(institution: &str, signing: SigningKey, delegate: PublicKey) -> Self {
        let roster = Arc::new(Roster::single_node(
            institution,
            PublicKey::of(&signing),
            delegate,
        ));
        LedgerView {
            not_taking_part: None,
            current: roster.clone(),
            verifying: roster,
            signer: Some(signing),
        }
    }
}

/// The ledger as the rest of the sidecar sees it. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct NodeLedger {
    institution: String,
    view: watch::Receiver<LedgerView>,
    reader: ChainReader,
    outbox: Outbox,
    /// Blocks stored so far; the anchorer bumps it after each block.
    blocks: watch::Receiver<u64>,
    /// The last failure of a round, cleared by the next round that finalizes.
    last_error: Arc<Mutex<Option<String>>>,
    /// The last block `verify_chain` verified: later calls verify only what came after it.
    verified: Mutex<Option<BlockHeader>>,
}

/// Everything `open` makes: the shared reads, and the task that anchors.
#[derive(Debug)]
pub struct Opened {
    pub ledger: Arc<NodeLedger>,
    pub anchorer: Anchorer,
}

/// The node's delegate key, from its keystore.
pub fn delegate_key(keys: &NodeKeys) -> SigningKey {
    SigningKey::from_bytes(keys.delegate_signing.expose())
}

/// The ledger directory of a configuration.
pub fn ledger_dir(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("ledger")
}

impl NodeLedger {
    /// Opens the chain beside the vault whose outbox it drains, producing blocks with the node's
    /// `delegate` key, with the rosters and signing key `view` publishes. Blocking (sled recovery): call from a blocking context or at start-up.
    /// Spawn [`Anchorer::run`] to anchor.
    pub fn open(
        config: &Config,
        delegate: SigningKey,
        outbox: Outbox,
        view: watch::Receiver<LedgerView>,
    ) -> Result<Opened, LedgerError> {
        let institution = config.seal.institution.clone();
        let store = ChainStore::open_dir(&ledger_dir(config), &institution)?;
        let chain = Chain::open(store)?;
        let reader = chain.reader();
        let blocks = chain.next_height();
        let current = view.borrow().current.clone();
        let ledger = SoloLedger::new(chain, BlockProducer::new(delegate), Roster::clone(&current))?;
        let (blocks_tx, blocks_rx) = watch::channel(blocks);
        let last_error = Arc::new(Mutex::new(None));
        let policy = AnchorPolicy {
            interval: Duration::from_millis(config.ledger.batch_interval_ms),
            max_batch: config.ledger.max_batch,
        };
        Ok(Opened {
            ledger: Arc::new(NodeLedger {
                institution: institution.clone(),
                view: view.clone(),
                reader,
                outbox: outbox.clone(),
                blocks: blocks_rx,
                last_error: last_error.clone(),
                verified: Mutex::new(None),
            }),
            anchorer: Anchorer {
                ledger,
                outbox,
                institution,
                view,
                roster: current,
                policy,
                blocks: blocks_tx,
                last_error,
            },
        })
    }

    /// This node's institution.
    pub fn institution(&self) -> &str {
        &self.institution
    }

    /// What the chain and its proofs verify against: every key each member has held, from
    /// the governance state as it stands now.
    pub fn roster(&self) -> Arc<Roster> {
        self.view.borrow().verifying.clone()
    }

    /// Reads of the chain.
    pub fn reader(&self) -> &ChainReader {
        &self.reader
    }

    /// The outbox this ledger drains.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The proof that this institution's resource version was anchored, if it was.
    pub fn proof(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Option<AnchorProof>, LedgerError> {
        Ok(self
            .reader
            .proof(&self.institution, resource_type, id, version)?)
    }

    /// Whether a version waits in the outbox (written, not yet in a final block).
    pub fn is_pending(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<bool, LedgerError> {
        // The outbox is drained every round, so it is short: a scan is cheap.
        Ok(self
            .outbox
            .anchors(usize::MAX)?
            .iter()
            .any(|(_, a)| a.resource_type == resource_type && a.id == id && a.version == version))
    }

    /// The block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<FinalizedBlock>, LedgerError> {
        Ok(self.reader.block(height)?)
    }

    /// Verifies the chain: from genesis on the first call, then only the blocks stored since
    /// the last call that found it valid. (`fhirseal ledger verify` re-verifies everything.)
    pub fn verify_chain(&self) -> Result<ChainCheck, LedgerError> {
        // Held across the check, so that concurrent callers do not verify the same blocks twice.
        let mut verified = self
            .verified
            .lock()
            .map_err(|_| LedgerError::Poisoned("the verified checkpoint"))?;
        let roster = self.roster();
        let (check, last) = self.reader.verify_since(&*roster, verified.clone())?;
        if matches!(check, ChainCheck::Valid { .. }) {
            *verified = last;
        }
        Ok(check)
    }

    /// What the status endpoint and `fhirseal ledger status` show.
    pub fn status(&self) -> Result<LedgerStatus, LedgerError> {
        let tip = self.reader.tip()?;
        let (anchors, access) = self.outbox.pending();
        Ok(LedgerStatus {
            institution: self.institution.clone(),
            blocks: tip.as_ref().map_or(0, |b| b.header().height + 1),
            tip_hash: tip.as_ref().map(|b| b.header().hash().to_hex()),
            tip_time_ms: tip.as_ref().map(|b| b.header().time.0),
            pending_anchors: anchors,
            pending_access_events: access,
            delegates: self
                .roster()
                .delegates()
                .keys()
                .iter()
                .map(ToString::to_string)
                .collect(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        })
    }

    /// Waits until every one of `versions` (type, id, version) is anchored, or `timeout`
    /// passes; returns whether they all are.
    pub async fn wait_anchored(
        &self,
        versions: &[(String, String, String)],
        timeout: Duration,
    ) -> Result<bool, LedgerError> {
        let mut blocks = self.blocks.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut remaining: Vec<&(String, String, String)> = versions.iter().collect();
        loop {
            let mut still = Vec::with_capacity(remaining.len());
            for v in remaining {
                if self
                    .reader
                    .locate_anchor(&self.institution, &v.0, &v.1, &v.2)?
                    .is_none()
                {
                    still.push(v);
                }
            }
            if still.is_empty() {
                return Ok(true);
            }
            remaining = still;
            match tokio::time::timeout_at(deadline, blocks.changed()).await {
                Ok(Ok(())) => {}
                // The anchorer stopped, or time is up.
                Ok(Err(_)) | Err(_) => return Ok(false),
            }
        }
    }
}

/// A summary of the chain and the outbox.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerStatus {
    pub institution: String,
    pub blocks: u64,
    pub tip_hash: Option<String>,
    pub tip_time_ms: Option<u64>,
    pub pending_anchors: usize,
    pub pending_access_events: usize,
    pub delegates: Vec<String>,
    pub last_error: Option<String>,
}

/// The task that drains the outbox into final blocks.
pub struct Anchorer {
    ledger: SoloLedger,
    outbox: Outbox,
    institution: String,
    view: watch::Receiver<LedgerView>,
    /// The roster the ledger checks against now (replaced when the view's changes).
    roster: Arc<Roster>,
    policy: AnchorPolicy,
    blocks: watch::Sender<u64>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Anchorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchorer")
            .field("institution", &self.institution)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Anchors put in a final block.
    pub anchored: usize,
    /// Access events put in a final block.
    pub audited: usize,
    /// Outbox anchors found already anchored (cleared without a new submission).
    pub already: usize,
    /// Whether a batch was full, so another round should follow at once.
    pub full: bool,
}

/// A round's transactions, kept until their block is final so that a retry submits the very
/// same transactions (same batch ids) again.
struct InFlight {
    transactions: Vec<Transaction>,
    anchors: Vec<u64>,
    access: Vec<u64>,
    round: Round,
}

/// Longest pause between attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Anchorer {
    /// Runs rounds until `stop` says so, then runs one last round, so that a clean shutdown
    /// leaves nothing it could anchor in the outbox. Failures are logged, shown in the status,
    /// and retried with backoff; nothing leaves the outbox before its block is final.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut in_flight: Option<InFlight> = None;
        let mut backoff = self.policy.interval;
        let mut paused: Option<&'static str> = None;
        loop {
            if *stop.borrow() {
                match self.round(&mut in_flight).await {
                    Ok(_) | Err(LedgerError::NotTakingPart(_)) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the last anchoring round failed; the outbox keeps what it holds");
                    }
                }
                return;
            }
            let pause = match self.round(&mut in_flight).await {
                Err(LedgerError::NotTakingPart(why)) => {
                    if paused != Some(why) {
                        tracing::warn!(
                            reason = why,
                            "anchoring paused; the outbox keeps what waits"
                        );
                        paused = Some(why);
                    }
                    if let Ok(mut e) = self.last_error.lock() {
                        *e = Some(LedgerError::NotTakingPart(why).to_string());
                    }
                    self.policy.interval
                }
                Ok(round) => {
                    if paused.take().is_some() {
                        tracing::info!("anchoring resumed");
                    }
                    if let Ok(mut e) = self.last_error.lock() {
                        *e = None;
                    }
                    backoff = self.policy.interval;
                    if round.anchored + round.audited > 0 {
                        tracing::debug!(
                            anchored = round.anchored,
                            audited = round.audited,
                            already = round.already,
                            "block finalized"
                        );
                    }
                    if round.full {
                        continue;
                    }
                    self.policy.interval
                }
                Err(error) => {
                    tracing::error!(%error, "anchoring round failed; retrying");
                    if let Ok(mut e) = self.last_error.lock() {
                        *e = Some(error.to_string());
                    }
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // A stop (or a dropped sender) ends the pause; the loop's head sees it.
                _ = stop.changed() => {}
            }
        }
    }

    /// One round: (re)builds the in-flight batches from the outbox, submits them, finalizes the
    /// block(s) holding them, clears their outbox entries.
    async fn round(&mut self, in_flight: &mut Option<InFlight>) -> Result<Round, LedgerError> {
        let view = self.view.borrow().clone();
        if let Some(why) = view.not_taking_part {
            return Err(LedgerError::NotTakingPart(why));
        }
        let Some(signing) = view.signer else {
            return Err(LedgerError::NotTakingPart(
                "the keystore does not hold the signing key the consortium names for this member",
            ));
        };
        if !Arc::ptr_eq(&view.current, &self.roster) {
            // A member admitted, revoked or rotated: batches signed under the old roster that
            // the new one refuses are rebuilt (the refusal below drops the round).
            self.ledger.set_roster(Roster::clone(&view.current))?;
            self.roster = view.current;
        }
        if in_flight.is_none() {
            *in_flight = self.prepare(&signing)?;
        }
        let Some(flight) = in_flight.as_ref() else {
            return Ok(Round::default());
        };
        for tx in &flight.transactions {
            match self.ledger.submit(tx.clone()) {
                Ok(_) => {}
                Err(e) => {
                    // A refusal will repeat: rebuild the round from the outbox next time.
                    if !e.is_retryable() {
                        *in_flight = None;
                    }
                    return Err(e.into());
                }
            }
        }
        while self.ledger.pending() > 0 {
            let time = now();
            match self.ledger.produce(time).await {
                Ok(Some(receipt)) => {
                    self.blocks.send_replace(receipt.height + 1);
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_retryable() {
                        *in_flight = None;
                    }
                    return Err(e.into());
                }
            }
        }
        let Some(flight) = in_flight.take() else {
            return Ok(Round::default());
        };
        self.outbox.clear_anchors(&flight.anchors)?;
        self.outbox.clear_access(&flight.access)?;
        Ok(flight.round)
    }

    /// The next round's transactions from the outbox; `None` when nothing waits. Anchors the
    /// chain already holds, and repeats of a version within the round, are cleared here.
    fn prepare(&self, signing: &SigningKey) -> Result<Option<InFlight>, LedgerError> {
        let max = self.policy.max_batch.max(1);
        let waiting = self.outbox.anchors(max)?;
        let events = self.outbox.access_events(max)?;
        if waiting.is_empty() && events.is_empty() {
            return Ok(None);
        }
        let reader = self.ledger.chain().reader();
        let mut round = Round {
            full: waiting.len() == max || events.len() == max,
            ..Round::default()
        };
        let mut anchors = Vec::with_capacity(waiting.len());
        let mut entries = Vec::with_capacity(waiting.len());
        let mut seen = HashSet::with_capacity(waiting.len());
        let mut already = Vec::new();
        for (seq, pending) in waiting {
            let key = anchor_key(
                &self.institution,
                &pending.resource_type,
                &pending.id,
                &pending.version,
            );
            let anchored = reader
                .locate_anchor(
                    &self.institution,
                    &pending.resource_type,
                    &pending.id,
                    &pending.version,
                )?
                .is_some();
            if anchored || !seen.insert(key) {
                already.push(seq);
                continue;
            }
            anchors.push(seq);
            entries.push(self.entry(pending));
        }
        if !already.is_empty() {
            round.already = already.len();
            self.outbox.clear_anchors(&already)?;
        }
        let mut transactions = Vec::with_capacity(2);
        if !entries.is_empty() {
            round.anchored = entries.len();
            transactions.push(Transaction::Anchor(AnchorBatch::sign(
                batch_id()?,
                self.institution.clone(),
                entries,
                signing,
            )?));
        }
        let access: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
        if !events.is_empty() {
            round.audited = events.len();
            let events = events.into_iter().map(|(_, e)| self.event(e)).collect();
            transactions.push(Transaction::Access(AccessBatch::sign(
                batch_id()?,
                self.institution.clone(),
                events,
                signing,
            )?));
        }
        if transactions.is_empty() {
            return Ok(None);
        }
        Ok(Some(InFlight {
            transactions,
            anchors,
            access,
            round,
        }))
    }

    fn entry(&self, pending: PendingAnchor) -> AnchorEntry {
        AnchorEntry {
            institution: self.institution.clone(),
            resource_type: pending.resource_type,
            logical_id: pending.id,
            version_id: pending.version,
            fingerprint: pending.fingerprint,
            sealed_address: pending.sealed_address,
            clinical_hash: pending.clinical_hash,
        }
    }

    fn event(&self, pending: PendingAccess) -> AccessEvent {
        AccessEvent {
            principal: pending.principal,
            institution: self.institution.clone(),
            resource_type: pending.resource_type,
            logical_id: pending.id,
            version_id: pending.version,
            purpose_of_use: pending.purpose_of_use,
            time: Timestamp(pending.time_ms),
            reidentified: pending.reidentified,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now() -> Timestamp {
    Timestamp(now_ms())
}

/// A random batch id: batches are told apart by id, and a retry reuses its batch's.
fn batch_id() -> Result<BatchId, LedgerError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| LedgerError::Storage(fhirseal_storage::StorageError::Random(e.to_string())))?;
    Ok(BatchId(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirseal_storage::Vault;
    use std::path::Path;

    fn anchor(id: &str, version: &str) -> PendingAnchor {
        PendingAnchor {
            resource_type: "Observation".into(),
            id: id.into(),
            version: version.into(),
            fingerprint: [1; 32],
            sealed_address: [0; 32],
            clinical_hash: [9; 32],
        }
    }

    fn setup(dir: &Path) -> (Config, NodeKeys, Vault) {
        let config = Config {
            data_dir: dir.to_owned(),
            ..Config::default()
        };
        let (keys, _) = NodeKeys::load_or_create(&dir.join("keys"), 2048).unwrap();
        let vault = Vault::open(&dir.join("vault")).unwrap();
        (config, keys, vault)
    }

    /// The ledger of `config`, as the consortium of one sees it ([`view`]).
    fn open(config: &Config, keys: &NodeKeys, vault: &Vault) -> Result<Opened, LedgerError> {
        NodeLedger::open(
            config,
            delegate_key(keys),
            vault.outbox().clone(),
            view(config, keys),
        )
    }

    /// The consortium of one's view: the node takes part, signs with a fixed key.
    fn view(config: &Config, keys: &NodeKeys) -> watch::Receiver<LedgerView> {
        let signing = SigningKey::from_bytes(&[5; 32]);
        let delegate = PublicKey::of(&delegate_key(keys));
        watch::channel(LedgerView::single_node(
            &config.seal.institution,
            signing,
            delegate,
        ))
        .1
    }

    #[tokio::test]
    async fn rounds_anchor_each_version_once_and_clear_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let (config, keys, vault) = setup(dir.path());
        let opened = open(&config, &keys, &vault).unwrap();
        let (ledger, mut anchorer) = (opened.ledger, opened.anchorer);
        let outbox = vault.outbox();
        outbox.push_anchor(&anchor("a", "1")).unwrap();
        outbox.push_anchor(&anchor("b", "1")).unwrap();
        // The same version queued twice (an update the upstream kept as it was).
        outbox.push_anchor(&anchor("a", "1")).unwrap();
        outbox
            .push_access(&PendingAccess {
                principal: "dr-grey".into(),
                resource_type: "Observation".into(),
                id: "a".into(),
                version: String::new(),
                purpose_of_use: "TREAT".into(),
                time_ms: 1,
                reidentified: false,
            })
            .unwrap();
        let mut flight = None;
        let round = anchorer.round(&mut flight).await.unwrap();
        assert_eq!((round.anchored, round.audited, round.already), (2, 1, 1));
        assert!(outbox.is_empty());
        assert!(ledger.proof("Observation", "a", "1").unwrap().is_some());
        assert!(ledger.proof("Observation", "b", "1").unwrap().is_some());
        let block = ledger.block(0).unwrap().unwrap();
        assert_eq!(block.block.transactions.len(), 2);
        // Nothing waits: no block.
        assert_eq!(anchorer.round(&mut flight).await.unwrap(), Round::default());
        assert!(ledger.block(1).unwrap().is_none());
        assert!(ledger
            .wait_anchored(
                &[("Observation".into(), "b".into(), "1".into())],
                Duration::from_millis(1)
            )
            .await
            .unwrap());
        assert!(matches!(
            ledger.verify_chain().unwrap(),
            ChainCheck::Valid { blocks: 1 }
        ));
    }

    #[tokio::test]
    async fn an_entry_anchored_before_a_crash_is_not_anchored_again() {
        let dir = tempfile::tempdir().unwrap();
        let (config, keys, vault) = setup(dir.path());
        {
            let opened = open(&config, &keys, &vault).unwrap();
            let mut anchorer = opened.anchorer;
            vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
            let mut flight = None;
            anchorer.round(&mut flight).await.unwrap();
        }
        // As if the process died after the block and before the outbox was cleared.
        vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
        vault.outbox().push_anchor(&anchor("a", "2")).unwrap();
        let opened = open(&config, &keys, &vault).unwrap();
        let (ledger, mut anchorer) = (opened.ledger, opened.anchorer);
        let mut flight = None;
        let round = anchorer.round(&mut flight).await.unwrap();
        assert_eq!((round.anchored, round.already), (1, 1));
        assert!(vault.outbox().is_empty());
        assert_eq!(ledger.status().unwrap().blocks, 2);
        assert!(matches!(
            ledger.verify_chain().unwrap(),
            ChainCheck::Valid { blocks: 2 }
        ));
    }

    #[tokio::test]
    async fn the_ledger_follows_its_view_standing_rotation_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let (config, keys, vault) = setup(dir.path());
        let institution = config.seal.institution.clone();
        let delegate = delegate_key(&keys);
        let first = SigningKey::from_bytes(&[5; 32]);
        let mut view =
            LedgerView::single_node(&institution, first.clone(), PublicKey::of(&delegate));
        view.not_taking_part = Some("revoked");
        let (publish, follow) = watch::channel(view.clone());
        let opened =
            NodeLedger::open(&config, delegate.clone(), vault.outbox().clone(), follow).unwrap();
        let (ledger, mut anchorer) = (opened.ledger, opened.anchorer);
        let mut flight = None;

        // Not taking part: nothing is anchored, the outbox keeps it.
        vault.outbox().push_anchor(&anchor("a", "1")).unwrap();
        let err = anchorer.round(&mut flight).await.unwrap_err();
        assert!(
            matches!(err, LedgerError::NotTakingPart("revoked")),
            "{err}"
        );
        assert!(!vault.outbox().is_empty());
        assert!(ledger.block(0).unwrap().is_none());

        // Taking part again: anchored with the member's key.
        view.not_taking_part = None;
        publish.send_replace(view);
        assert_eq!(anchorer.round(&mut flight).await.unwrap().anchored, 1);

        // The member rotates its signing key: new batches are signed with the new key, and the
        // chain verifies against both.
        let second = SigningKey::from_bytes(&[6; 32]);
        let delegates =
            fhirseal_consensus::DelegateSet::new(vec![PublicKey::of(&delegate)]).unwrap();
        let current = Roster::new(
            delegates.clone(),
            [(institution.clone(), PublicKey::of(&second))],
        );
        let verifying = Roster::new(
            delegates,
            [
                (institution.clone(), PublicKey::of(&first)),
                (institution.clone(), PublicKey::of(&second)),
            ],
        );
        publish.send_replace(LedgerView {
            not_taking_part: None,
            current: Arc::new(current.clone()),
            verifying: Arc::new(verifying),
            signer: Some(second.clone()),
        });
        vault.outbox().push_anchor(&anchor("a", "2")).unwrap();
        assert_eq!(anchorer.round(&mut flight).await.unwrap().anchored, 1);
        let proof = ledger.proof("Observation", "a", "2").unwrap().unwrap();
        assert_eq!(proof.batch.signer, PublicKey::of(&second));
        assert!(matches!(
            ledger.verify_chain().unwrap(),
            ChainCheck::Valid { blocks: 2 }
        ));
        // Without the key it rotated away from, the first block would not verify.
        let old = ledger.proof("Observation", "a", "1").unwrap().unwrap();
        assert!(old.verify(&ledger.roster()).is_ok());
        assert!(old.verify(&current).is_err());
    }

    #[test]
    fn a_ledger_of_another_institution_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, keys, vault) = setup(dir.path());
        drop(open(&config, &keys, &vault).unwrap());
        config.seal.institution = "elsewhere".into();
        let err = open(&config, &keys, &vault).unwrap_err();
        assert!(err.to_string().contains("elsewhere"), "{err}");
    }
}
