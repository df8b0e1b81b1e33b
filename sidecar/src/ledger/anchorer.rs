//! The anchorer: the task that drains the vault's outbox into the shared chain. Each round it
//! signs one batch of waiting anchors and one of waiting access events with the member's signing
//! key, submits them to the delegates (its own ledger first, which sends them on), waits until
//! its own copy of the chain holds them, and only then clears those outbox entries. A round's
//! transactions are kept in the outbox, durably, before they are submitted: a round whose block
//! is not final in time ends, and the next submits the very same transactions again, and so
//! does the first round after a crash (same batch ids: the chain takes a batch once), so that
//! every acknowledged write is anchored, and every access event recorded, exactly once. An
//! anchor whose version the chain already holds is cleared without being submitted again. While the node does
//! not take part in its consortium the anchorer anchors nothing and the outbox keeps what waits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fhirseal_consensus::{
    anchor_key, AccessBatch, AccessEvent, AnchorBatch, AnchorEntry, BatchId, ChainReader,
    SigningKey, Timestamp, Transaction,
};
use fhirseal_storage::{KeptRound, Outbox, PendingAccess, PendingAnchor, StorageError};
use tokio::sync::{mpsc, watch};

use crate::crash::{self, CrashPoint};
use crate::ledger::error::LedgerError;
use crate::ledger::node::{wait_for_blocks, Backlog, Waited};
use crate::ledger::runtime::{submit, Command};
use crate::ledger::view::LedgerView;
use crate::metrics::Metrics;

/// How the anchorer batches.
#[derive(Debug, Clone, Copy)]
pub struct AnchorPolicy {
    /// Time between rounds when the outbox holds less than a full batch.
    pub interval: Duration,
    /// Most anchors (and, separately, access events) in one batch.
    pub max_batch: usize,
    /// How long a round waits for the block holding its batches before the next round submits
    /// them again.
    pub finality_wait: Duration,
}

/// The task that drains the outbox into final blocks.
pub struct Anchorer {
    pub(crate) outbox: Outbox,
    pub(crate) institution: String,
    pub(crate) view: watch::Receiver<LedgerView>,
    /// The node's copy of the chain.
    pub(crate) reader: ChainReader,
    /// Its height, bumped at each block stored.
    pub(crate) blocks: watch::Receiver<u64>,
    /// The ledger's task.
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) policy: AnchorPolicy,
    pub(crate) last_error: Arc<Mutex<Option<String>>>,
    /// Rounds' finality is counted here.
    pub(crate) metrics: Arc<Metrics>,
    /// Since when what waits in the outbox has waited, at most.
    pub(crate) backlog: Backlog,
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

/// A round's transactions, kept (in memory, and in the outbox) until their block is final so
/// that a retry submits the very same transactions (same batch ids) again.
pub(crate) struct InFlight {
    transactions: Vec<Transaction>,
    anchors: Vec<u64>,
    access: Vec<u64>,
    round: Round,
}

impl InFlight {
    /// What the outbox keeps of it.
    fn kept(&self) -> KeptRound {
        KeptRound {
            transactions: self
                .transactions
                .iter()
                .map(Transaction::to_bytes)
                .collect(),
            anchors: self.anchors.clone(),
            access: self.access.clone(),
        }
    }
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
            let round_start = Instant::now();
            if *stop.borrow() {
                match self.round(&mut in_flight).await {
                    Ok(_) | Err(LedgerError::NotTakingPart(_)) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the last anchoring round failed; the outbox keeps what it holds");
                    }
                }
                return;
            }
            let result = self.round(&mut in_flight).await;
            self.note_backlog(round_start, matches!(&result, Ok(round) if !round.full));
            let pause = match result {
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

    /// One round: (re)builds the in-flight batches from the outbox, submits them, waits for the
    /// block(s) holding them, clears their outbox entries.
    pub(crate) async fn round(
        &mut self,
        in_flight: &mut Option<InFlight>,
    ) -> Result<Round, LedgerError> {
        let Some(flight) = self.until_final(in_flight).await? else {
            return Ok(Round::default());
        };
        crash::reached(CrashPoint::BeforeClear);
        self.outbox.finish_round(&flight.anchors, &flight.access)?;
        Ok(flight.round)
    }

    /// Notes, after a round that began at `round_start`, since when what waits in the outbox
    /// has waited: nothing waits, or, when the round took everything that waited when it
    /// began (`took_all`), what waits now came after `round_start`; else the backlog is as old
    /// as it was (or, first seen now, as old as this round).
    fn note_backlog(&self, round_start: Instant, took_all: bool) {
        let waiting = !self.outbox.is_empty();
        if let Ok(mut since) = self.backlog.lock() {
            *since = match *since {
                _ if !waiting => None,
                _ if took_all => Some(round_start),
                Some(earlier) => Some(earlier),
                None => Some(round_start),
            };
        }
    }

    /// A round up to the block(s) holding its batches, its outbox entries not cleared: the
    /// round, or `None` when nothing waits.
    pub(crate) async fn until_final(
        &mut self,
        in_flight: &mut Option<InFlight>,
    ) -> Result<Option<InFlight>, LedgerError> {
        let view = self.view.borrow().clone();
        if let Some(why) = view.not_taking_part {
            return Err(LedgerError::NotTakingPart(why));
        }
        let Some(signing) = view.signer else {
            return Err(LedgerError::NotTakingPart(
                "the keystore does not hold the signing key the consortium names for this member",
            ));
        };
        if in_flight.is_none() {
            *in_flight = match self.kept()? {
                Some(kept) => Some(kept),
                None => {
                    let prepared = self.prepare(&signing)?;
                    if let Some(flight) = &prepared {
                        // Durable before anything is submitted: from here on, a crash leads to
                        // these very transactions again.
                        self.outbox.keep_round(&flight.kept())?;
                        self.outbox.flush_async().await?;
                    }
                    prepared
                }
            };
        }
        let Some(flight) = in_flight.as_ref() else {
            return Ok(None);
        };
        let keys: Vec<Vec<u8>> = flight.transactions.iter().map(Transaction::key).collect();
        if !self.all_final(&keys)? {
            let submitted = Instant::now();
            match submit(&self.commands, flight.transactions.clone()).await {
                Ok(()) => {}
                // Refused here for good (a batch the roster no longer takes, a version
                // anchored by another batch): the round is made again from the outbox.
                Err(LedgerError::Refused(why)) => {
                    *in_flight = None;
                    self.outbox.drop_round()?;
                    return Err(LedgerError::NotFinal(format!("a batch was refused: {why}")));
                }
                Err(other) => return Err(other),
            }
            self.wait_final(&keys).await?;
            self.metrics.anchored(submitted.elapsed());
        }
        Ok(in_flight.take())
    }

    /// The round the outbox keeps in flight (one a crash or a stop cut short), if any.
    fn kept(&self) -> Result<Option<InFlight>, LedgerError> {
        let Some(kept) = self.outbox.kept_round()? else {
            return Ok(None);
        };
        let transactions = kept
            .transactions
            .iter()
            .map(|bytes| Transaction::from_bytes(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                LedgerError::Storage(StorageError::Corrupt(format!(
                    "the anchoring round kept in the outbox: {e}"
                )))
            })?;
        Ok(Some(InFlight {
            transactions,
            round: Round {
                anchored: kept.anchors.len(),
                audited: kept.access.len(),
                ..Round::default()
            },
            anchors: kept.anchors,
            access: kept.access,
        }))
    }

    /// Whether the node's chain holds every transaction with these keys.
    fn all_final(&self, keys: &[Vec<u8>]) -> Result<bool, LedgerError> {
        all_located(&self.reader, keys)
    }

    /// Waits until the node's chain holds every transaction with these keys, or the policy's
    /// wait passes.
    async fn wait_final(&mut self, keys: &[Vec<u8>]) -> Result<(), LedgerError> {
        let reader = &self.reader;
        let found = || Ok(all_located(reader, keys)?.then_some(()));
        match wait_for_blocks(&mut self.blocks, self.policy.finality_wait, found).await? {
            Waited::Found(()) => Ok(()),
            Waited::Stopped => Err(LedgerError::Stopped),
            Waited::TimedOut => Err(LedgerError::NotFinal(
                "no block holding the round's batches is final yet".into(),
            )),
        }
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
        let reader = &self.reader;
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
            exchange: pending.exchange,
        }
    }
}

/// Whether the chain `reader` reads holds every transaction with these keys.
fn all_located(reader: &ChainReader, keys: &[Vec<u8>]) -> Result<bool, LedgerError> {
    for key in keys {
        if reader.locate_transaction(key)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A random batch id: batches are told apart by id, and a retry reuses its batch's.
fn batch_id() -> Result<BatchId, LedgerError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| LedgerError::Storage(fhirseal_storage::StorageError::Random(e.to_string())))?;
    Ok(BatchId(id))
}
