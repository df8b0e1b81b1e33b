//! The ledger's task: one per node. It owns the driver ([`fhirseal_consensus::Driver`], with
//! the BFT engine inside while the node is a delegate), the chain's appending handle, the
//! write-ahead log and the timers, and performs the driver's effects in order: the log made
//! durable (`fdatasync`) at every flush point the driver names — before anything signed leaves
//! the node, before a decision is stored —, blocks appended to the chain (flushed), messages
//! handed to the peers' queues ([`crate::ledger::net`]), timers kept. Inputs come from the
//! anchorer (submissions), from other members' nodes (through the routes of
//! [`crate::ledger::routes`], and sync answers), from its timers and from a tick.
//!
//! A driver failure (the engine stopped, a block that cannot be stored, the log unwritable) ends
//! that driver: a new one starts from the chain on disk and the log, as after a crash.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirseal_consensus::bft::{EngineConfig, Evidence, MalachiteEngine, Millis, Timer};
use fhirseal_consensus::ledger::{
    DriverStatus, Effect, ElectionKeys, ElectionTracker, Input, LedgerContext as _, Outbound,
};
use fhirseal_consensus::{
    BatchId, Chain, Driver, DriverConfig, EvidenceBatch, SigningKey, Submitted, Transaction,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::crash::{self, CrashPoint};
use crate::ledger::context::NodeContext;
use crate::ledger::error::LedgerError;
use crate::ledger::misbehave;
use crate::ledger::net::Net;
use crate::ledger::view::{ElectionSetup, LedgerView};
use crate::ledger::wal::WalFile;

/// How often the driver's clock ticks (starting heights that are due, asking for blocks).
const TICK: Duration = Duration::from_millis(50);
/// The pause before a new driver after a failure.
const RECOVERY_PAUSE: Duration = Duration::from_millis(200);

type NodeDriver = Driver<MalachiteEngine, fn(EngineConfig, SigningKey) -> MalachiteEngine>;

/// Why a transaction was not taken.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    /// In words.
    pub(crate) message: String,
    /// Whether submitting it again may succeed (the node failed, not the transaction).
    pub(crate) retryable: bool,
}

impl From<fhirseal_consensus::Error> for Refusal {
    fn from(e: fhirseal_consensus::Error) -> Self {
        Self {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// Each transaction's answer.
pub(crate) type Answers = Vec<Result<Submitted, Refusal>>;

/// A request to the ledger's task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Transactions for coming blocks; with `forward`, sent on to the other delegates too.
    /// Answered per transaction once the effects of taking them are performed.
    Submit {
        transactions: Vec<Transaction>,
        forward: bool,
        reply: oneshot::Sender<Answers>,
    },
}

/// Submits `transactions` to the ledger's task (`commands`), which takes them and sends them
/// on to the delegates. A transaction refused for good (the roster does not take it) is
/// [`LedgerError::Refused`]; one refused for a reason that may pass is taken as submitted (the
/// caller waits for its block and submits again).
pub(crate) async fn submit(
    commands: &mpsc::Sender<Command>,
    transactions: Vec<Transaction>,
) -> Result<(), LedgerError> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Submit {
            transactions,
            forward: true,
            reply,
        })
        .await
        .map_err(|_| LedgerError::Stopped)?;
    let answers = answer.await.map_err(|_| LedgerError::Stopped)?;
    match answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .find(|r| !r.retryable)
    {
        Some(refusal) => Err(LedgerError::Refused(refusal.message.clone())),
        None => Ok(()),
    }
}

/// Where the ledger's task stands, for the status page.
#[derive(Debug, Clone)]
pub struct RuntimeStatus {
    /// The driver's.
    pub driver: Option<DriverStatus>,
    /// The last failure, until the driver makes progress again.
    pub last_error: Option<String>,
    /// With an election: the tracker as of the tip (taken again when the tip moves).
    pub election: Option<Arc<ElectionTracker>>,
}

/// The ledger's task (see the module's documentation).
pub struct Runtime {
    config: DriverConfig,
    member: String,
    driver: NodeDriver,
    chain: Chain,
    context: NodeContext,
    view: watch::Receiver<LedgerView>,
    wal_path: PathBuf,
    wal: Option<WalFile>,
    timers: std::collections::BTreeMap<Timer, Millis>,
    net: Net,
    commands: mpsc::Receiver<Command>,
    inputs: mpsc::Receiver<Input>,
    blocks: watch::Sender<u64>,
    status: watch::Sender<RuntimeStatus>,
    started: Instant,
    clock: Arc<dyn Clock>,
    last_error: Option<String>,
    /// Evidence transactions made while performing effects, submitted once they are done.
    reports: Vec<Transaction>,
    /// The height the member's election duties were last submitted for.
    duties_at: Option<u64>,
    /// The candidate the member's ballots vote for (itself when not configured).
    vote_for: Option<String>,
    /// The election the driver was made for.
    built_with: Option<Arc<ElectionSetup>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("member", &self.member)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

/// What [`Runtime::new`] takes.
pub(crate) struct Parts {
    pub(crate) config: DriverConfig,
    pub(crate) member: String,
    pub(crate) chain: Chain,
    pub(crate) view: watch::Receiver<LedgerView>,
    pub(crate) wal_path: PathBuf,
    pub(crate) net: Net,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) inputs: mpsc::Receiver<Input>,
    pub(crate) blocks: watch::Sender<u64>,
    pub(crate) status: watch::Sender<RuntimeStatus>,
    /// The time of day blocks are stamped with.
    pub(crate) clock: Arc<dyn Clock>,
    /// The candidate the member's ballots vote for; itself when `None`.
    pub(crate) vote_for: Option<String>,
}

impl Runtime {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            config,
            member,
            chain,
            view,
            wal_path,
            net,
            commands,
            inputs,
            blocks,
            status,
            clock,
            vote_for,
        } = parts;
        let context = NodeContext::new(view.borrow().clone(), chain.reader());
        let driver = plain_driver(&config, &member, &chain);
        Self {
            config,
            member,
            driver,
            chain,
            context,
            view,
            wal_path,
            wal: None,
            timers: std::collections::BTreeMap::new(),
            net,
            commands,
            inputs,
            blocks,
            status,
            started: Instant::now(),
            clock,
            last_error: None,
            reports: Vec::new(),
            duties_at: None,
            vote_for,
            built_with: None,
        }
    }

    /// Runs until `stop` says so (or every sender is gone): restores from the log, then takes
    /// inputs one at a time.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Err(error) = self.restore().await {
            self.failed(error).await;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                break;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = stop.changed() => {}
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                Some(input) = self.inputs.recv() => self.step(input).await,
                () = sleep_until(deadline) => self.fire().await,
                _ = tick.tick() => self.step(Input::Tick).await,
            }
        }
        if let Some(wal) = self.wal.as_mut() {
            if let Err(error) = wal.flush().await {
                tracing::warn!(%error, "the write-ahead log was not flushed at shutdown");
            }
        }
    }

    fn now(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Opens the log and starts the driver from the chain's tip and the log.
    async fn restore(&mut self) -> Result<(), LedgerError> {
        self.wal = None;
        let path = self.wal_path.clone();
        let (wal, log) = tokio::task::spawn_blocking(move || WalFile::open(&path))
            .await
            .map_err(|e| LedgerError::Wal {
                path: self.wal_path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })??;
        self.wal = Some(wal);
        self.timers.clear();
        self.refresh();
        self.driver = self.new_driver()?;
        if let Some((height, records)) = &log {
            if *height == self.driver.height() && !records.is_empty() {
                tracing::info!(
                    height,
                    records = records.len(),
                    "replaying the write-ahead log"
                );
            }
        }
        let (now, wall) = (self.now(), self.clock.timestamp());
        let effects = self.driver.restore(log, now, wall, &self.context)?;
        self.perform(effects).await?;
        self.publish();
        Ok(())
    }

    fn refresh(&mut self) {
        if self.view.has_changed().unwrap_or(false) {
            let view = self.view.borrow_and_update().clone();
            self.context.refresh(view);
        }
    }

    /// A driver on the chain's tip; with an election, its tracker folded over the stored chain
    /// first.
    fn new_driver(&mut self) -> Result<NodeDriver, LedgerError> {
        // The tip's commit: late precommits are held against it, and, with an election, the
        // next block this node proposes carries it.
        let tip = self.chain.reader().tip()?;
        let driver = plain_driver(&self.config, &self.member, &self.chain)
            .with_last_commit(tip.map(|b| b.certificate));
        self.built_with = self.context.view().election.clone();
        let Some(setup) = self.built_with.clone() else {
            self.context.set_history(Arc::default());
            return Ok(driver);
        };
        let mut tracker = ElectionTracker::new(setup.config.clone(), setup.founders.clone())
            .map_err(|e| LedgerError::Election(e.to_string()))?;
        let folded = tracker
            .replay(&self.chain.reader(), &self.context)
            .map_err(|e| LedgerError::Election(e.to_string()))?;
        tracing::info!(blocks = folded, "the election folded over the stored chain");
        self.context.set_history(tracker.history().clone());
        self.duties_at = None;
        Ok(driver.with_election(tracker))
    }

    /// Whether the governance state brought or took away the chain's election since the driver
    /// started (a node that joined learns it with the state): a new driver is due.
    fn election_changed(&self) -> bool {
        self.context.view().election.as_deref() != self.built_with.as_deref()
    }

    /// After a step: a new driver if the election changed, else the member's election duties
    /// for the coming height, once per height.
    async fn after_step(&mut self) {
        if self.election_changed() {
            tracing::info!("the consortium's election changed; starting the ledger's driver again");
            if let Err(error) = self.restore().await {
                self.failed(error).await;
            }
            return;
        }
        // The context took the tracker's record before each append (`perform`).
        let Some(tracker) = self.driver.election() else {
            return;
        };
        let height = self.driver.height();
        if self.duties_at == Some(height) || self.context.view().not_taking_part.is_some() {
            return;
        }
        let view = self.context.view().clone();
        let (Some(voter), Some(signing)) = (view.voter.as_ref(), view.signer.as_ref()) else {
            return;
        };
        self.duties_at = Some(height);
        let keys = ElectionKeys {
            member: &self.member,
            signing,
            vote: &voter.vote,
            beacon: &voter.beacon,
        };
        let vote_for = self.vote_for.clone().unwrap_or_else(|| self.member.clone());
        let duties = tracker.duties(&keys, Some(&vote_for));
        if duties.is_empty() {
            return;
        }
        for answer in Box::pin(self.submit(duties, true)).await {
            if let Err(refusal) = answer {
                tracing::debug!(error = %refusal.message, "an election transaction was not taken");
            }
        }
    }

    async fn step(&mut self, input: Input) {
        self.refresh();
        let (now, wall) = (self.now(), self.clock.timestamp());
        let result = match self.driver.handle(input, now, wall, &self.context) {
            Ok(effects) => self.perform(effects).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => self.publish(),
            Err(error) => self.failed(error).await,
        }
        self.submit_reports().await;
        Box::pin(self.after_step()).await;
    }

    /// Submits the evidence transactions the last effects made.
    async fn submit_reports(&mut self) {
        let reports = std::mem::take(&mut self.reports);
        if !reports.is_empty() {
            for answer in Box::pin(self.submit(reports, true)).await {
                if let Err(refusal) = answer {
                    tracing::warn!(error = %refusal.message, "evidence not taken");
                }
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Submit {
                transactions,
                forward,
                reply,
            } => {
                let answers = self.submit(transactions, forward).await;
                // The submitter may have given up waiting.
                let _gone = reply.send(answers);
            }
        }
        self.submit_reports().await;
    }

    /// Takes `transactions` here and, with `forward`, sends them to the other delegates of the
    /// current and the newest epoch.
    async fn submit(&mut self, transactions: Vec<Transaction>, forward: bool) -> Answers {
        self.refresh();
        let encoded: Vec<Vec<u8>> = if forward {
            transactions.iter().map(Transaction::to_bytes).collect()
        } else {
            Vec::new()
        };
        let (now, wall) = (self.now(), self.clock.timestamp());
        let count = transactions.len();
        let answers = match self.driver.submit(transactions, now, wall, &self.context) {
            Ok((answers, effects)) => match self.perform(effects).await {
                Ok(()) => {
                    self.publish();
                    answers
                        .into_iter()
                        .map(|a| a.map_err(Refusal::from))
                        .collect()
                }
                Err(error) => {
                    let message = error.to_string();
                    self.failed(error).await;
                    refused(count, &message)
                }
            },
            Err(error) => {
                let message = error.to_string();
                self.failed(error.into()).await;
                refused(count, &message)
            }
        };
        if forward {
            let view = self.context.view().clone();
            let mut candidates: Vec<String> = Vec::new();
            for epoch in [Some(self.driver.epoch()), view.latest_epoch()]
                .into_iter()
                .flatten()
            {
                candidates.extend(
                    view.delegates(epoch)
                        .unwrap_or_default()
                        .iter()
                        .map(|(m, _)| m.clone()),
                );
            }
            // With an election: the height's delegates, and those elected for the next ledger
            // epoch (a transaction may wait into it).
            candidates.extend(
                self.driver
                    .delegates(&self.context)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(m, _)| m),
            );
            if let Some(tracker) = self.driver.election() {
                let next = tracker.ledger_epoch(self.driver.height()) + 1;
                candidates.extend(
                    tracker
                        .state()
                        .delegates(next)
                        .unwrap_or_default()
                        .iter()
                        .cloned(),
                );
            }
            let mut delegates: Vec<String> = Vec::new();
            for member in candidates {
                if member != self.member && !delegates.contains(&member) {
                    delegates.push(member);
                }
            }
            self.net.submit(&delegates, &encoded, &view);
        }
        answers
    }

    /// Performs the driver's effects in order.
    async fn perform(&mut self, effects: Vec<Effect>) -> Result<(), LedgerError> {
        for effect in effects {
            match effect {
                Effect::NewLog { height } => self.wal()?.reset(height).await?,
                Effect::Log(record) => self.wal()?.append(&record),
                Effect::Flush => {
                    self.wal()?.flush().await?;
                    crash::reached(CrashPoint::WalFlushed);
                }
                Effect::Send { to, message } => {
                    let view = self.context.view().clone();
                    let conflicting = match &message {
                        Outbound::Message(m) => {
                            misbehave::conflicting(m, self.driver.chain_id(), |k| {
                                self.context.signing_key(k)
                            })
                        }
                        _ => None,
                    };
                    self.net.send(&to, &message, &view);
                    if let Some(m) = conflicting {
                        self.net.send(&to, &Outbound::Message(m), &view);
                    }
                }
                Effect::Schedule { timer, at } => {
                    self.timers.insert(timer, at);
                }
                Effect::Cancel(timer) => {
                    self.timers.remove(&timer);
                }
                Effect::CancelAll => self.timers.clear(),
                Effect::Append(block) => {
                    // The tracker folded the block already: the context needs its record of
                    // who certified it to check the block.
                    if let Some(tracker) = self.driver.election() {
                        self.context.set_history(tracker.history().clone());
                    }
                    // The driver validated it whole before asking for it.
                    let receipt = self
                        .chain
                        .append_validated(&block, &self.context.verifying())
                        .await?;
                    crash::reached(CrashPoint::BlockAppended);
                    self.blocks.send_replace(receipt.height + 1);
                    self.last_error = None;
                    tracing::debug!(
                        height = receipt.height,
                        transactions = receipt.transactions.len(),
                        round = block.certificate.round.0,
                        "block final"
                    );
                }
                Effect::Sync { from, height } => {
                    let view = self.context.view().clone();
                    self.net.sync(from, height, &view);
                }
                Effect::Evidence(evidence) => self.report(evidence).await,
            }
        }
        Ok(())
    }

    fn wal(&mut self) -> Result<&mut WalFile, LedgerError> {
        self.wal.as_mut().ok_or(LedgerError::Wal {
            path: self.wal_path.display().to_string(),
            source: std::io::Error::other("the log is not open"),
        })
    }

    /// Double signing the engine saw becomes an evidence transaction signed by this member,
    /// submitted here and to the delegates like any other. Its batch id is a digest of the
    /// evidence, so a report made twice is one transaction.
    async fn report(&mut self, evidence: Vec<Evidence>) {
        let offenders: Vec<String> = evidence.iter().map(|e| e.offender().to_string()).collect();
        tracing::warn!(?offenders, "double signing seen; reporting it on the chain");
        let Some(signer) = self.context.view().signer.clone() else {
            tracing::warn!("no signing key to report double signing with");
            return;
        };
        let mut digest = Sha256::new();
        for e in &evidence {
            digest.update(e.to_bytes());
        }
        let mut id = [0; 16];
        id.copy_from_slice(&digest.finalize()[..16]);
        let tx = match EvidenceBatch::sign(BatchId(id), self.member.clone(), evidence, &signer) {
            Ok(batch) => Transaction::Evidence(batch),
            Err(error) => {
                tracing::warn!(%error, "the evidence cannot be reported");
                return;
            }
        };
        // Made while effects are performed: submitted once they are all done.
        self.reports.push(tx);
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let at = self.timers.values().min()?;
        let wait = at.saturating_sub(self.now());
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Fires every timer that is due, earliest first.
    async fn fire(&mut self) {
        let now = self.now();
        let mut due: Vec<(Millis, Timer)> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, at)| (*at, *t))
            .collect();
        due.sort();
        for (_, timer) in due {
            if self.timers.remove(&timer).is_some() {
                self.step(Input::Timer(timer)).await;
            }
        }
    }

    fn publish(&mut self) {
        let driver = Some(self.driver.status(&self.context));
        let last_error = self.last_error.clone();
        let tracker = self.driver.election();
        self.status.send_modify(|s| {
            s.driver = driver;
            s.last_error = last_error;
            let stale = match (&s.election, tracker) {
                (Some(held), Some(now)) => held.state().height() != now.state().height(),
                (None, None) => false,
                _ => true,
            };
            if stale {
                s.election = tracker.cloned().map(Arc::new);
            }
        });
    }

    /// The driver failed: a new one starts from the disk after a pause.
    async fn failed(&mut self, error: LedgerError) {
        tracing::error!(%error, "the ledger's driver failed; starting again from the chain and the log");
        self.last_error = Some(error.to_string());
        self.publish();
        tokio::time::sleep(RECOVERY_PAUSE).await;
        if let Err(error) = Box::pin(self.restore()).await {
            tracing::error!(%error, "the ledger could not start again; retrying");
            self.last_error = Some(error.to_string());
            self.publish();
        }
    }
}

fn plain_driver(config: &DriverConfig, member: &str, chain: &Chain) -> NodeDriver {
    Driver::new(
        config.clone(),
        member.to_owned(),
        MalachiteEngine::new,
        chain.tip().cloned(),
    )
}

/// The answers when the node failed while taking `count` transactions: try again.
fn refused(count: usize, message: &str) -> Answers {
    (0..count)
        .map(|_| {
            Err(Refusal {
                message: message.to_owned(),
                retryable: true,
            })
        })
        .collect()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
