//! The node's ledger as the rest of the sidecar sees it ([`NodeLedger`]: proofs, blocks, status,
//! waiting for a version's block), and what opening it makes: the ledger's task, the anchorer,
//! and the port its routes feed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirseal_consensus::bft::EngineConfig;
use fhirseal_consensus::ledger::{ElectedRosters, ElectionTracker, History};
use fhirseal_consensus::{
    chain_id, AnchorProof, BlockHeader, Chain, ChainCheck, ChainReader, ChainStore, DriverConfig,
    FinalizedBlock, Hash256, Rosters, SigningKey, Transaction, TxLocation, CHAIN_FORMAT,
};
use fhirseal_storage::Outbox;
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::config::Config;
use crate::consortium::transport::HttpNetwork;
use crate::ledger::anchorer::{AnchorPolicy, Anchorer};
use crate::ledger::context::NodeContext;
use crate::ledger::error::LedgerError;
use crate::ledger::net::Net;
use crate::ledger::routes::LedgerPort;
use crate::ledger::runtime::{submit, Command, Parts, Runtime, RuntimeStatus};
use crate::ledger::view::{ElectionSetup, LedgerView};
use crate::metrics::Metrics;

/// How many inputs from other nodes wait for the ledger's task.
const INPUT_QUEUE: usize = 8192;

/// The ledger as the rest of the sidecar sees it. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct NodeLedger {
    institution: String,
    chain_id: Hash256,
    view: watch::Receiver<LedgerView>,
    reader: ChainReader,
    outbox: Outbox,
    /// Blocks stored so far; the ledger's task bumps it after each block.
    blocks: watch::Receiver<u64>,
    /// Where the ledger's task stands.
    runtime: watch::Receiver<RuntimeStatus>,
    /// The anchorer's last failure, cleared by its next round that anchors.
    last_error: Arc<Mutex<Option<String>>>,
    /// The last block `verify_chain` verified: later calls verify only what came after it.
    verified: Mutex<Option<BlockHeader>>,
    /// The time of day, for whatever this node stamps.
    clock: Arc<dyn Clock>,
    /// Since when what waits in the outbox has waited, at most (the anchorer notes it).
    backlog: Backlog,
    /// The ledger's task, for transactions submitted outside the anchorer (consent).
    commands: mpsc::Sender<Command>,
}

/// Since when what waits in the outbox has waited, at most, if anything waits.
pub(crate) type Backlog = Arc<Mutex<Option<std::time::Instant>>>;

/// Everything `open` makes: the shared reads, the ledger's task, the anchorer, and the port of
/// the ledger's routes.
#[derive(Debug)]
pub struct Opened {
    pub ledger: Arc<NodeLedger>,
    pub runtime: Runtime,
    pub anchorer: Anchorer,
    pub port: LedgerPort,
}

/// The ledger directory of a configuration (a sled database of its own).
pub fn ledger_dir(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("ledger")
}

/// The ledger's write-ahead log of a configuration.
pub fn wal_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("ledger.wal")
}

impl NodeLedger {
    /// Opens the node's copy of consortium `consortium`'s chain beside the vault whose outbox
    /// it drains, with the rosters, delegates and signing key `view` publishes, talking to
    /// other members' nodes over `network` (none: a node that sends nothing). Blocking (sled
    /// recovery): call from a blocking context or at start-up. Spawn [`Runtime::run`] and
    /// [`Anchorer::run`] to take part.
    pub fn open(
        config: &Config,
        consortium: &str,
        outbox: Outbox,
        view: watch::Receiver<LedgerView>,
        network: Option<HttpNetwork>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Opened, LedgerError> {
        let institution = config.seal.institution.clone();
        let chain_id = chain_id(consortium);
        let store = ChainStore::open_dir(&ledger_dir(config), &institution, CHAIN_FORMAT)?;
        let chain = Chain::open(store, chain_id)?;
        if let Some(height) = chain.unfiled() {
            tracing::error!(
                height,
                "the stored block at this height cannot be indexed (a gap before it, a block that \
                 does not decode, or a resource version anchored twice): this node takes no \
                 further block; `fhirseal ledger verify` says what is wrong"
            );
        }
        let reader = chain.reader();
        let (blocks_tx, blocks_rx) = watch::channel(chain.next_height());
        let (status_tx, status_rx) = watch::channel(RuntimeStatus {
            driver: None,
            last_error: None,
            election: None,
        });
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE);
        let last_error = Arc::new(Mutex::new(None));
        let backlog = Backlog::default();
        let policy = AnchorPolicy {
            interval: Duration::from_millis(config.ledger.batch_interval_ms),
            max_batch: config.ledger.max_batch,
            finality_wait: Duration::from_secs(5),
        };
        let mut driver_config = DriverConfig::new(EngineConfig::new(chain_id));
        driver_config.idle_block_interval = config.ledger.idle_block_ms.max(50);
        driver_config.min_block_interval = config.ledger.min_block_ms;
        let runtime = Runtime::new(Parts {
            config: driver_config,
            member: institution.clone(),
            chain,
            view: view.clone(),
            wal_path: wal_path(config),
            net: Net::new(network, institution.clone(), inputs_tx.clone()),
            commands: commands_rx,
            inputs: inputs_rx,
            blocks: blocks_tx,
            status: status_tx,
            clock: Arc::clone(&clock),
            vote_for: config.ledger.vote_for.clone(),
        });
        Ok(Opened {
            ledger: Arc::new(NodeLedger {
                institution: institution.clone(),
                chain_id,
                view: view.clone(),
                reader: reader.clone(),
                outbox: outbox.clone(),
                blocks: blocks_rx.clone(),
                runtime: status_rx.clone(),
                last_error: last_error.clone(),
                verified: Mutex::new(None),
                clock,
                backlog: backlog.clone(),
                commands: commands_tx.clone(),
            }),
            runtime,
            anchorer: Anchorer {
                outbox,
                institution,
                view,
                reader: reader.clone(),
                blocks: blocks_rx,
                commands: commands_tx.clone(),
                policy,
                last_error,
                metrics,
                backlog,
            },
            port: LedgerPort {
                commands: commands_tx,
                inputs: inputs_tx,
                reader,
                runtime: status_rx.clone(),
            },
        })
    }

    /// How long what waits in the outbox has waited, at most (zero when nothing waits).
    pub fn anchor_lag(&self) -> Duration {
        self.backlog
            .lock()
            .ok()
            .and_then(|since| since.map(|t| t.elapsed()))
            .unwrap_or_default()
    }

    /// The clock the node reads the time of day from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// This node's institution.
    pub fn institution(&self) -> &str {
        &self.institution
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &Hash256 {
        &self.chain_id
    }

    /// What the chain and its proofs verify against: each epoch's delegates, and every key each
    /// member has held, from the governance state as it stands now.
    ///
    /// With an election, each height's delegates are those the election chose: as the running
    /// ledger's tracker recorded them, or (the ledger not running: the offline tools) the stored
    /// chain folded again here.
    pub fn rosters(&self) -> ElectedRosters<fhirseal_consensus::EpochRosters> {
        let view = self.view.borrow().clone();
        let base = view.rosters(&view.verifying);
        let Some(setup) = view.election.clone() else {
            return ElectedRosters {
                base,
                history: Arc::default(),
                epoch_blocks: u64::MAX,
            };
        };
        let running = self.runtime.borrow().election.clone();
        let history = match running {
            Some(tracker) => tracker.history().clone(),
            None => self.fold_election(&view, &setup),
        };
        ElectedRosters {
            base,
            history,
            epoch_blocks: setup.config.epoch_blocks,
        }
    }

    /// The election folded over the stored chain, for verification when no driver runs; what
    /// it could fold when it stops early (the blocks after it then do not verify).
    fn fold_election(&self, view: &LedgerView, setup: &ElectionSetup) -> Arc<History> {
        let Ok(mut tracker) = ElectionTracker::new(setup.config.clone(), setup.founders.clone())
        else {
            return Arc::default();
        };
        let context = NodeContext::new(view.clone(), self.reader.clone());
        if let Err(error) = tracker.replay(&self.reader, &context) {
            tracing::warn!(%error, "the election could not be folded over the whole chain");
        }
        tracker.history().clone()
    }

    /// The election as of the running ledger's tip, when the chain has one.
    pub fn election(&self) -> Option<Arc<ElectionTracker>> {
        self.runtime.borrow().election.clone()
    }

    /// Checks `proof` against the chain's id and the roster of its block's height; returns the
    /// block hash.
    pub fn check_proof(&self, proof: &AnchorProof) -> Result<Hash256, fhirseal_consensus::Error> {
        let rosters = self.rosters();
        let roster = rosters
            .roster_at(proof.header.height, proof.header.epoch)
            .ok_or(fhirseal_consensus::Error::UnknownEpoch(proof.header.epoch))?;
        proof.verify(&self.chain_id, &roster)
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
        self.proof_of(&self.institution, resource_type, id, version)
    }

    /// The proof that `institution`'s resource version was anchored, if it was: every member
    /// holds the whole chain, so this node proves any member's writes.
    pub fn proof_of(
        &self,
        institution: &str,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Option<AnchorProof>, LedgerError> {
        Ok(self.reader.proof(institution, resource_type, id, version)?)
    }

    /// The latest version of `institution`'s resource anchored on this node's copy of the
    /// chain, if any: the highest version id (FHIR servers number versions 1, 2, …), and among
    /// ids that are not numbers the one anchored last.
    pub fn latest_anchored(
        &self,
        institution: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<String>, LedgerError> {
        let versions = self
            .reader
            .anchored_versions(institution, resource_type, id)?;
        Ok(versions
            .into_iter()
            .max_by_key(|(version, at)| {
                (
                    version.parse::<u64>().ok(),
                    (at.height, at.transaction, at.entry),
                )
            })
            .map(|(version, _)| version))
    }

    /// Whether `institution` is, or was, a member of the consortium: one whose keys the chain
    /// and its proofs verify against (a revoked member's writes still prove).
    pub fn knows_member(&self, institution: &str) -> bool {
        self.view
            .borrow()
            .verifying
            .institution_keys(institution)
            .is_some()
    }

    /// An active member's node (where it listens, its RSA key), as the governance state names
    /// it.
    pub fn member_node(&self, institution: &str) -> Option<crate::ledger::view::MemberNode> {
        self.view.borrow().members.get(institution).cloned()
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
        let rosters = self.rosters();
        let (check, last) = self.reader.verify_since(&rosters, verified.clone())?;
        if matches!(check, ChainCheck::Valid { .. }) {
            *verified = last;
        }
        Ok(check)
    }

    /// What the status endpoint and `fhirseal ledger status` show.
    pub fn status(&self) -> Result<LedgerStatus, LedgerError> {
        let tip = self.reader.tip()?;
        let (anchors, access) = self.outbox.pending();
        let runtime = self.runtime.borrow().clone();
        let driver = runtime.driver;
        let anchorer_error = self.last_error.lock().ok().and_then(|e| e.clone());
        Ok(LedgerStatus {
            institution: self.institution.clone(),
            chain: self.chain_id.to_hex(),
            blocks: tip.as_ref().map_or(0, |b| b.header().height + 1),
            tip_hash: tip.as_ref().map(|b| b.header().hash().to_hex()),
            tip_time_ms: tip.as_ref().map(|b| b.header().time.0),
            epoch: driver.as_ref().map(|d| d.epoch),
            round: driver.as_ref().and_then(|d| d.round),
            role: driver.as_ref().map(|d| d.role.name().to_owned()),
            delegates: driver
                .as_ref()
                .map(|d| d.delegates.clone())
                .unwrap_or_default(),
            waiting_transactions: driver.as_ref().map_or(0, |d| d.pending),
            pending_anchors: anchors,
            pending_access_events: access,
            anchor_lag_ms: u64::try_from(self.anchor_lag().as_millis()).unwrap_or(u64::MAX),
            last_error: anchorer_error.or(runtime.last_error),
            election: runtime.election.as_deref().map(election_json),
        })
    }

    /// The key this member signs its transactions with, while it takes part in its consortium.
    pub fn signer(&self) -> Result<SigningKey, LedgerError> {
        let view = self.view.borrow();
        if let Some(why) = view.not_taking_part {
            return Err(LedgerError::NotTakingPart(why));
        }
        view.signer.clone().ok_or(LedgerError::NotTakingPart(
            "the keystore does not hold the signing key the consortium names for this member",
        ))
    }

    /// Submits `tx` to the delegates (this node's ledger takes it and sends it on) and waits
    /// until this node's chain holds it, or `timeout` passes; where it is. A transaction the
    /// chain holds already is not submitted again, and one submitted again is taken once.
    pub async fn submit_final(
        &self,
        tx: Transaction,
        timeout: Duration,
    ) -> Result<TxLocation, LedgerError> {
        let key = tx.key();
        if let Some(at) = self.reader.locate_transaction(&key)? {
            return Ok(at);
        }
        submit(&self.commands, vec![tx]).await?;
        let found = || Ok(self.reader.locate_transaction(&key)?);
        match wait_for_blocks(&mut self.blocks.clone(), timeout, found).await? {
            Waited::Found(at) => Ok(at),
            Waited::Stopped => Err(LedgerError::Stopped),
            Waited::TimedOut => Err(LedgerError::NotFinal(format!(
                "no block holding it was final within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Waits until every one of `versions` (type, id, version) is anchored, or `timeout`
    /// passes; returns whether they all are.
    pub async fn wait_anchored(
        &self,
        versions: &[(String, String, String)],
        timeout: Duration,
    ) -> Result<bool, LedgerError> {
        let mut remaining: Vec<&(String, String, String)> = versions.iter().collect();
        let found = || {
            let mut still = Vec::with_capacity(remaining.len());
            for v in &remaining {
                if self
                    .reader
                    .locate_anchor(&self.institution, &v.0, &v.1, &v.2)?
                    .is_none()
                {
                    still.push(*v);
                }
            }
            remaining = still;
            Ok(remaining.is_empty().then_some(()))
        };
        // The ledger stopped, or time is up: not all anchored.
        let waited = wait_for_blocks(&mut self.blocks.clone(), timeout, found).await?;
        Ok(matches!(waited, Waited::Found(())))
    }
}

/// How [`wait_for_blocks`] ended.
pub(crate) enum Waited<T> {
    /// The check found what it looked for.
    Found(T),
    /// The ledger's task stopped.
    Stopped,
    /// Time was up.
    TimedOut,
}

/// Runs `found` now and again after each block the node stores (`blocks` moves), until it
/// finds something, `timeout` passes or the ledger's task stops.
pub(crate) async fn wait_for_blocks<T>(
    blocks: &mut watch::Receiver<u64>,
    timeout: Duration,
    mut found: impl FnMut() -> Result<Option<T>, LedgerError>,
) -> Result<Waited<T>, LedgerError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = found()? {
            return Ok(Waited::Found(value));
        }
        match tokio::time::timeout_at(deadline, blocks.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(Waited::Stopped),
            Err(_) => return Ok(Waited::TimedOut),
        }
    }
}

/// A summary of the chain, the node's part in it, and the outbox.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerStatus {
    pub institution: String,
    /// The chain's id (hex): the same at every member of the consortium.
    pub chain: String,
    pub blocks: u64,
    pub tip_hash: Option<String>,
    pub tip_time_ms: Option<u64>,
    /// The epoch of the height being decided.
    pub epoch: Option<u64>,
    /// Its round, while this node runs it.
    pub round: Option<u32>,
    /// This node's part: `delegate`, `delegate (idle)`, `follower`, `waiting`.
    pub role: Option<String>,
    /// The delegates of the height being decided, by member.
    pub delegates: Vec<String>,
    /// Transactions waiting at this node for a block.
    pub waiting_transactions: usize,
    pub pending_anchors: usize,
    pub pending_access_events: usize,
    /// How long what waits in the outbox has waited, at most (0 when nothing waits).
    pub anchor_lag_ms: u64,
    pub last_error: Option<String>,
    /// With an election: its epoch and phase, the seats, the standings, the last decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election: Option<serde_json::Value>,
}

/// What the status shows of the election: the ledger epoch and phase of the height being
/// decided, the epoch's seats, every member's standing, and what the last epochs decided.
fn election_json(tracker: &ElectionTracker) -> serde_json::Value {
    use fhirseal_consensus::election::schedule::{self, Phase};
    use fhirseal_consensus::election::standing::Change;
    let state = tracker.state();
    let next = state.height() + 1;
    let e = tracker.epoch_blocks();
    let standings: serde_json::Map<String, serde_json::Value> = state
        .standings()
        .iter()
        .map(|(member, s)| {
            let value = serde_json::json!({
                "stake": s.stake,
                "reputation": s.reputation,
                "jailedUntil": s.jailed_until,
                "tombstoned": s.tombstoned,
            });
            (member.clone(), value)
        })
        .collect();
    let closed: Vec<serde_json::Value> = state
        .closed()
        .iter()
        .rev()
        .take(5)
        .map(|c| {
            let changes: Vec<serde_json::Value> = c
                .changes
                .iter()
                .map(|change| match change {
                    Change::Slash { member, amount } => {
                        serde_json::json!({"slashed": member, "amount": amount})
                    }
                    Change::Tombstone { member } => serde_json::json!({"tombstoned": member}),
                    Change::Jail { member, until } => {
                        serde_json::json!({"jailed": member, "untilEpoch": until})
                    }
                    Change::Reputation { member, delta } => {
                        serde_json::json!({"reputation": member, "delta": delta})
                    }
                })
                .collect();
            serde_json::json!({
                "epoch": c.epoch,
                "seed": fhirseal_consensus::Hash256(c.seed).to_hex(),
                "votes": c.votes,
                "elected": c.elected,
                "electedFor": c.epoch + 2,
                "changes": changes,
            })
        })
        .collect();
    serde_json::json!({
        "epochBlocks": e,
        "ledgerEpoch": schedule::epoch_of(next, e),
        "phase": match schedule::phase(next, e) {
            Phase::Commit => "commit",
            Phase::Reveal => "reveal",
            Phase::Closed => "ballots only",
        },
        "seats": state.seats().iter().map(|s| s.member.clone()).collect::<Vec<_>>(),
        "standings": standings,
        "closed": closed,
    })
}
