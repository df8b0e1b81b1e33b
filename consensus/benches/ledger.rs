//! The shared ledger with K delegates on this machine: anchored entries per second and the
//! latency from a submitted batch (and from an acknowledged write) to its final block, for
//! K = 1, 4 and 7, next to the single-node anchoring loop of `anchoring.rs` measured in the same
//! run; and the terms of the paper's formula 1, `L_total = T_prop + f/(N−f)·T_vote + T_verify`,
//! measured for N = 4, 7, 10 with f = 0 … ⌊(N−1)/3⌋ silent delegates, beside the model. Prints
//! the figures and ratios and writes them to `target/bench/ledger.json`.
//!
//! Each delegate is what the sidecar's ledger task is (`sidecar/src/ledger/runtime.rs`): the real
//! `Driver` with `MalachiteEngine` and its own signing key, a sled `Chain` on disk (a temporary
//! directory), a write-ahead log in a real file made durable with `fdatasync` (off the async
//! workers) at every `Flush` and `NewLog`, timers, a 50 ms tick, and every effect performed in
//! order as the runtime performs it. The network is in-process: no TCP, no TLS, no HTTP. What
//! crosses between delegates is encoded by the sender (per recipient, as `net.rs` does) and
//! decoded by a route task at the receiver (as `routes.rs` does) before it reaches the ledger
//! task's queue (8192 inputs, dropped when full); a submission is forwarded, encoded, to every
//! other delegate; a sync request is answered from the peer's chain. The delegates run as tokio
//! tasks on a multi-threaded runtime of 2 workers, next to the institutions that load them.
//! Being one process, their appends run one at a time and sled's periodic flush thread is off
//! (see `Consortium::sled_writes`).
//!
//! Load: 4 institutions, each an anchorer as the sidecar runs it (one batch in flight: sign up
//! to 4096 waiting entries, submit them to its own node, which sends them on to the other
//! delegates, wait until its own chain holds them, then the next round at once if the batch was
//! full, else after 100 ms), spread over the delegates' nodes. Saturated (every round full), for
//! entries per second; paced (writes acknowledged at a steady rate, the aim's 50,000/s or 80 % of
//! the saturated figure if that is lower), for the latency from an acknowledged write to its
//! final block. Entries per second count the entries of blocks stored at every delegate within
//! the measured window, after a warm-up.
//!
//! Formula 1: one institution sends one batch of 64 entries at a time to delegate 0 and waits
//! until every honest delegate stores it. `f` delegates never start (silent), spread over the
//! schedule (`N−1`, `N−1−⌊N/f⌋`, …) so that no two follow each other as proposers. Per height:
//! `T_prop`, from the submission until the last honest delegate holds the decided round's body
//! (its proposer: sent it); `T_vote`, at each honest delegate from holding the body judged to
//! starting to store the block (prevotes, precommits, the decision's log sync), averaged;
//! `T_verify`, the judging of the body
//! (`Input::Body`: the chain's rules, the engine's prevote) plus storing the block
//! (`Chain::append`: validation, certificate, sled, flush), averaged; `L_total`, from the
//! submission until the last honest delegate has stored the block. The terms are the medians
//! over the heights decided in round 0; `L_total` is over all heights.
//!
//! Run: `cargo bench -p fhirseal-consensus --bench ledger`. `FHIRSEAL_BENCH_LEDGER_SECS` sets the
//! seconds of each formula run (default 8; each load run lasts 1.5 times that): about 3 minutes in
//! all by default.

#[path = "support/figures.rs"]
mod figures;
#[path = "support/single_node.rs"]
mod single_node;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fhirseal_consensus::bft::{
    ConsensusMessage, EngineConfig, MalachiteEngine, Millis, Round, TimeoutConfig, Timer,
};
use fhirseal_consensus::ledger::wal::{frame, header, LogRecord};
use fhirseal_consensus::ledger::{Answers, Effect, FixedContext, Input, Outbound, Recipients};
use fhirseal_consensus::{
    chain_id, AnchorBatch, Block, Chain, ChainReader, ChainStore, DelegateSet, Driver,
    DriverConfig, FinalizedBlock, Hash256, PublicKey, Roster, SigningKey, Timestamp, Transaction,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use single_node::{batch_id, entry, Fixture, OneDriver};

/// The runtime's tick.
const TICK: Duration = Duration::from_millis(50);
/// The ledger task's input queue (the sidecar's `INPUT_QUEUE`).
const INPUT_QUEUE: usize = 8192;
/// Its command queue.
const COMMAND_QUEUE: usize = 64;
/// Most blocks one sync answer carries (the sidecar's `SYNC_BLOCKS`).
const SYNC_BLOCKS: usize = 64;
/// The anchorer's defaults: `ledger.max_batch`, `ledger.batch_interval_ms`, its finality wait.
const MAX_BATCH: usize = 4096;
const ANCHOR_INTERVAL: Duration = Duration::from_millis(100);
const FINALITY_WAIT: Duration = Duration::from_secs(5);
/// Institutions loading the delegates.
const INSTITUTIONS: usize = 4;
/// Delegate counts of the load runs.
const DELEGATES: [usize; 3] = [1, 4, 7];
/// Entries per batch of the formula's probe, and how many heights it measures.
const PROBE_BATCH: u64 = 64;
const MIN_PROBES: usize = 24;
const MAX_PROBES: usize = 400;
/// Probe heights left out at the start (the engine's and sled's first use).
const PROBE_WARM_UP: u64 = 2;
/// The aim for 4 delegates on one 2-core box.
const AIM_RATE: f64 = 50_000.0;
const AIM_P50_MS: f64 = 250.0;
const AIM_P99_MS: f64 = 600.0;

// ---- the consortium in one process ----

/// What crosses between nodes, encoded.
#[derive(Debug)]
enum Wire {
    Message(Vec<u8>),
    /// Round ‖ block, as `POST /bft/block`.
    Body(Vec<u8>),
    Block(Vec<u8>),
    Submit(Vec<Vec<u8>>),
    /// `GET /ledger/sync`: the answer goes to `reply`.
    Sync {
        height: u64,
        reply: Inbox,
    },
}

#[derive(Debug)]
struct Packet {
    from: usize,
    wire: Wire,
}

/// A ledger task's input queue; each input with the instant it was queued.
type Inbox = mpsc::Sender<(Instant, Input)>;

/// Transactions for the ledger task, as the runtime's `Command::Submit`.
#[derive(Debug)]
struct Command {
    transactions: Vec<Transaction>,
    forward: bool,
    reply: Option<oneshot::Sender<Answers>>,
}

/// What a node saw, for the figures.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// Our proposal's body for (`height`, `round`) went out.
    BodySent {
        height: u64,
        round: u32,
        at: Instant,
    },
    /// Another delegate's body reached the queue at `delivered` and was judged valid in the
    /// driver call from `start` to `end`.
    Judged {
        height: u64,
        round: u32,
        delivered: Instant,
        start: Instant,
        end: Instant,
    },
    /// The block of `height` (decided in `round`) was stored from `start` to `end`.
    Appended {
        height: u64,
        round: u32,
        entries: usize,
        start: Instant,
        end: Instant,
    },
}

impl Mark {
    fn height(&self) -> u64 {
        match *self {
            Self::BodySent { height, .. }
            | Self::Judged { height, .. }
            | Self::Appended { height, .. } => height,
        }
    }
}

/// Where a node's ledger task spent its time.
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    /// Inside the driver's calls.
    driver: Duration,
    /// Waiting for the write-ahead log (writes and `fdatasync`).
    wal: Duration,
    syncs: u64,
    /// Storing blocks.
    append: Duration,
    /// Waiting for another delegate's append to end (see `Consortium::sled_writes`).
    append_wait: Duration,
    /// Encoding and queueing what it sends.
    send: Duration,
    /// The task's life.
    life: Duration,
}

/// One driver call's span.
#[derive(Debug, Clone, Copy)]
struct Call {
    start: Instant,
    end: Instant,
}

/// The write-ahead log in a file, as `sidecar/src/ledger/wal.rs` keeps it: records buffered,
/// written and `fdatasync`ed at each flush on a blocking thread, the file cut at a new height.
#[derive(Debug)]
struct Wal {
    file: Arc<File>,
    /// Bytes written to the file.
    len: u64,
    buffer: Vec<u8>,
}

impl Wal {
    fn create(path: &Path) -> Self {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("the write-ahead log opens");
        Self {
            file: Arc::new(file),
            len: 0,
            buffer: Vec::new(),
        }
    }

    /// A log for `height`: its header alone, durably.
    async fn reset(&mut self, height: u64) {
        self.buffer.clear();
        let header = header(height);
        self.len = header.len() as u64;
        self.on_file(move |file| {
            file.set_len(0)?;
            file.write_all_at(&header, 0)
        })
        .await;
    }

    fn append(&mut self, record: &LogRecord) {
        self.buffer.extend(frame(record));
    }

    /// Makes what was appended durable; whether there was any.
    async fn flush(&mut self) -> bool {
        if self.buffer.is_empty() {
            return false;
        }
        let bytes = std::mem::take(&mut self.buffer);
        let at = self.len;
        self.len += bytes.len() as u64;
        self.on_file(move |file| file.write_all_at(&bytes, at))
            .await;
        true
    }

    /// Runs `write` then `fdatasync` off the async workers.
    async fn on_file(&self, write: impl FnOnce(&File) -> std::io::Result<()> + Send + 'static) {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write(&file).and_then(|()| file.sync_data()))
            .await
            .expect("the log's thread")
            .expect("the write-ahead log is written");
    }
}

/// A node's outbound traffic: every other node's route, by index.
#[derive(Debug)]
struct Net {
    index: usize,
    members: Arc<Vec<String>>,
    wires: Arc<Vec<mpsc::UnboundedSender<Packet>>>,
    next_sync: usize,
}

impl Net {
    fn deliver(&self, to: usize, wire: Wire) {
        if to != self.index {
            // A silent delegate's route is gone: what is sent to it is lost.
            let _lost = self.wires[to].send(Packet {
                from: self.index,
                wire,
            });
        }
    }

    fn send(&self, to: &Recipients, message: &Outbound) {
        let targets: Vec<usize> = match to {
            Recipients::Members(members) => members
                .iter()
                .filter_map(|m| self.members.iter().position(|n| n == m))
                .collect(),
            Recipients::AllExcept(except) => (0..self.members.len())
                .filter(|i| !except.contains(&self.members[*i]))
                .collect(),
        };
        for to in targets {
            if to == self.index {
                continue;
            }
            let wire = match message {
                Outbound::Message(m) => Wire::Message(m.to_bytes()),
                Outbound::Body(block, round) => Wire::Body(encode_body(block, *round)),
                Outbound::Block(block) => Wire::Block(block.to_bytes()),
            };
            self.deliver(to, wire);
        }
    }

    fn submit(&self, transactions: &[Vec<u8>]) {
        for to in 0..self.members.len() {
            self.deliver(to, Wire::Submit(transactions.to_vec()));
        }
    }

    fn sync(&mut self, from: Option<&str>, height: u64, reply: &Inbox) {
        let to = match from {
            Some(m) => self.members.iter().position(|n| n == m),
            None => {
                let others: Vec<usize> = (0..self.members.len())
                    .filter(|i| *i != self.index)
                    .collect();
                self.next_sync = self.next_sync.wrapping_add(1);
                (!others.is_empty()).then(|| others[self.next_sync % others.len()])
            }
        };
        if let Some(to) = to {
            let reply = reply.clone();
            self.deliver(to, Wire::Sync { height, reply });
        }
    }
}

fn encode_body(block: &Block, round: Round) -> Vec<u8> {
    let mut out = round.0.to_be_bytes().to_vec();
    out.extend(block.to_bytes());
    out
}

fn decode_body(bytes: &[u8]) -> (Block, Round) {
    let (round, block) = bytes.split_at(4);
    let round = u32::from_be_bytes(round.try_into().expect("four bytes"));
    (
        Block::from_bytes(block).expect("a block body"),
        Round(round),
    )
}

/// A node's listener: decodes what arrives and hands it to the ledger task.
async fn route(
    mut wire: mpsc::UnboundedReceiver<Packet>,
    members: Arc<Vec<String>>,
    inbox: Inbox,
    commands: mpsc::Sender<Command>,
    reader: ChainReader,
) {
    while let Some(Packet { from, wire }) = wire.recv().await {
        let from = members[from].clone();
        let input = match wire {
            Wire::Message(bytes) => Input::Message {
                from,
                message: ConsensusMessage::from_bytes(&bytes).expect("a consensus message"),
            },
            Wire::Body(bytes) => {
                let (block, round) = decode_body(&bytes);
                Input::Body { from, block, round }
            }
            Wire::Block(bytes) => Input::Blocks {
                from: Some(from),
                blocks: vec![FinalizedBlock::from_bytes(&bytes).expect("a block")],
            },
            Wire::Submit(items) => {
                let transactions = items
                    .iter()
                    .map(|t| Transaction::from_bytes(t).expect("a transaction"))
                    .collect();
                let command = Command {
                    transactions,
                    forward: false,
                    reply: None,
                };
                if commands.send(command).await.is_err() {
                    return;
                }
                continue;
            }
            Wire::Sync { height, reply } => {
                let reader = reader.clone();
                tokio::spawn(async move {
                    let blocks = tokio::task::spawn_blocking(move || {
                        reader.blocks_from(height, SYNC_BLOCKS)
                    })
                    .await
                    .expect("the sync's thread")
                    .expect("the chain reads");
                    if !blocks.is_empty() {
                        let input = Input::Blocks {
                            from: Some(from),
                            blocks,
                        };
                        let _gone = reply.send((Instant::now(), input)).await;
                    }
                });
                continue;
            }
        };
        // Dropped when the queue is full, as the routes drop it.
        let _dropped = inbox.try_send((Instant::now(), input));
    }
}

/// One delegate's ledger task.
struct Node {
    key: PublicKey,
    driver: OneDriver,
    chain: Chain,
    context: FixedContext,
    wal: Wal,
    timers: BTreeMap<Timer, Millis>,
    net: Net,
    inbox: Inbox,
    tip: watch::Sender<u64>,
    sled_writes: Arc<tokio::sync::Mutex<()>>,
    origin: Instant,
    /// When each proposed body reached the queue, by hash, with its height.
    arrivals: HashMap<Hash256, (u64, Instant)>,
    marks: Vec<Mark>,
    spent: Spent,
}

impl Node {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inputs: mpsc::Receiver<(Instant, Input)>,
        mut stop: watch::Receiver<bool>,
    ) -> (Vec<Mark>, Spent) {
        let start = Instant::now();
        let effects = self
            .driver
            .restore(None, self.now(), wall(), &self.context)
            .expect("the driver starts");
        self.perform(effects, start, start).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                break;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = stop.changed() => {}
                command = commands.recv() => match command {
                    Some(command) => self.submit(command).await,
                    None => break,
                },
                Some((arrived, input)) = inputs.recv() => self.step(input, arrived).await,
                () = sleep_until(deadline) => self.fire().await,
                _ = tick.tick() => self.step(Input::Tick, Instant::now()).await,
            }
        }
        self.wal.flush().await;
        self.spent.life = start.elapsed();
        (self.marks, self.spent)
    }

    fn now(&self) -> Millis {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn step(&mut self, input: Input, arrived: Instant) {
        if let Input::Body { block, .. } = &input {
            self.arrivals
                .insert(block.header.hash(), (block.header.height, arrived));
        }
        let start = Instant::now();
        let effects = self
            .driver
            .handle(input, self.now(), wall(), &self.context)
            .expect("the driver goes on");
        self.perform(effects, start, Instant::now()).await;
    }

    async fn submit(&mut self, command: Command) {
        let encoded: Vec<Vec<u8>> = if command.forward {
            command
                .transactions
                .iter()
                .map(Transaction::to_bytes)
                .collect()
        } else {
            Vec::new()
        };
        let start = Instant::now();
        let (answers, effects) = self
            .driver
            .submit(command.transactions, self.now(), wall(), &self.context)
            .expect("the driver takes transactions");
        self.perform(effects, start, Instant::now()).await;
        if command.forward {
            self.net.submit(&encoded);
        }
        if let Some(reply) = command.reply {
            let _gone = reply.send(answers);
        }
    }

    /// Performs a driver call's effects in order, as the runtime does.
    async fn perform(&mut self, effects: Vec<Effect>, start: Instant, end: Instant) {
        let call = Call { start, end };
        self.spent.driver += end - start;
        for effect in effects {
            match effect {
                Effect::NewLog { height } => {
                    let t = Instant::now();
                    self.wal.reset(height).await;
                    self.spent.wal += t.elapsed();
                    self.spent.syncs += 1;
                }
                Effect::Log(record) => {
                    if let LogRecord::Body(block, round) = &record {
                        self.judged(block, *round, call);
                    }
                    self.wal.append(&record);
                }
                Effect::Flush => {
                    let t = Instant::now();
                    if self.wal.flush().await {
                        self.spent.syncs += 1;
                    }
                    self.spent.wal += t.elapsed();
                }
                Effect::Send { to, message } => {
                    let t = Instant::now();
                    if let Outbound::Body(block, round) = &message {
                        self.marks.push(Mark::BodySent {
                            height: block.header.height,
                            round: round.0,
                            at: t,
                        });
                    }
                    self.net.send(&to, &message);
                    self.spent.send += t.elapsed();
                }
                Effect::Schedule { timer, at } => {
                    self.timers.insert(timer, at);
                }
                Effect::Cancel(timer) => {
                    self.timers.remove(&timer);
                }
                Effect::CancelAll => self.timers.clear(),
                Effect::Append(block) => self.append(&block).await,
                Effect::Sync { from, height } => {
                    self.net.sync(from.as_deref(), height, &self.inbox);
                }
                // Nobody equivocates here.
                Effect::Evidence(_) => {}
            }
        }
    }

    /// A body the driver logged: another delegate's, judged valid in `call`.
    fn judged(&mut self, block: &Block, round: Round, call: Call) {
        if block.header.producer == self.key {
            return;
        }
        let delivered = self
            .arrivals
            .get(&block.header.hash())
            .map_or(call.start, |(_, at)| *at);
        self.marks.push(Mark::Judged {
            height: block.header.height,
            round: round.0,
            delivered,
            start: call.start,
            end: call.end,
        });
    }

    async fn append(&mut self, block: &FinalizedBlock) {
        let waiting = Instant::now();
        let _alone = self.sled_writes.clone().lock_owned().await;
        let start = Instant::now();
        self.spent.append_wait += start - waiting;
        let receipt = self
            .chain
            .append(block, &*self.context.roster)
            .await
            .expect("the block is stored");
        let end = Instant::now();
        self.spent.append += end - start;
        let entries = block
            .block
            .transactions
            .iter()
            .map(|tx| match tx {
                Transaction::Anchor(batch) => batch.entries.len(),
                _ => 0,
            })
            .sum();
        self.marks.push(Mark::Appended {
            height: receipt.height,
            round: block.certificate.round.0,
            entries,
            start,
            end,
        });
        self.tip.send_replace(receipt.height + 1);
        self.arrivals.retain(|_, (h, _)| *h > receipt.height);
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let at = self.timers.values().min()?;
        let wait = at.saturating_sub(self.now());
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Fires every timer that is due, earliest first.
    async fn fire(&mut self) {
        let now = self.now();
        while let Some((&timer, _)) = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(_, at)| **at)
        {
            self.timers.remove(&timer);
            self.step(Input::Timer(timer), Instant::now()).await;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn wall() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn seeded_key(tag: u8, i: usize) -> SigningKey {
    let mut seed = [tag; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SigningKey::from_bytes(&seed)
}

fn institution_name(j: usize) -> String {
    format!("hospital-{j}")
}

/// `n` delegates of which those in `silent` never start, and the institutions' keys.
struct Consortium {
    dir: tempfile::TempDir,
    /// One delegate's `Chain::append` at a time. sled 0.34 guards every tree of every database
    /// in the process with one reader-writer lock, taken for writing by each transaction and for
    /// reading by each flush, which holds it while it waits for sled's I/O threads, which need
    /// it for reading too: with K chains appending and flushing at once in one process, that
    /// deadlocked (a transaction waiting for the flushes, the flushes for the I/O threads, the
    /// I/O threads behind the waiting transaction). Each delegate being its own process in the
    /// sidecar, their appends would overlap instead; on one disk they compete all the same.
    sled_writes: Arc<tokio::sync::Mutex<()>>,
    commands: Vec<mpsc::Sender<Command>>,
    readers: Vec<ChainReader>,
    tips: Vec<watch::Receiver<u64>>,
    institutions: Vec<SigningKey>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Mark>, Spent)>>,
}

impl Consortium {
    /// Starts the honest delegates' tasks (indexed from here on by their rank among the honest).
    fn start(n: usize, silent: &[usize], institutions: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys: Vec<SigningKey> = (0..n).map(|i| seeded_key(0xde, i)).collect();
        let members: Vec<String> = (0..n).map(|i| format!("delegate-{i}")).collect();
        let institution_keys: Vec<SigningKey> =
            (0..institutions).map(|j| seeded_key(0x1a, j)).collect();
        let delegates =
            DelegateSet::new(keys.iter().map(PublicKey::of).collect()).expect("distinct keys");
        let roster = Arc::new(Roster::new(
            delegates,
            institution_keys
                .iter()
                .enumerate()
                .map(|(j, k)| (institution_name(j), PublicKey::of(k))),
        ));
        let chain_key = chain_id("bench-ledger");
        let (wires, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let wires = Arc::new(wires);
        let names = Arc::new(members.clone());
        let (stop, stopped) = watch::channel(false);
        let mut consortium = Self {
            dir,
            sled_writes: Arc::new(tokio::sync::Mutex::new(())),
            commands: Vec::new(),
            readers: Vec::new(),
            tips: Vec::new(),
            institutions: institution_keys,
            stop,
            tasks: Vec::new(),
        };
        for (i, receiver) in receivers.into_iter().enumerate() {
            if silent.contains(&i) {
                continue;
            }
            // No periodic flush thread (it too reads the lock while waiting for I/O): the chain
            // flushes at each append, which is what makes a block durable.
            let db = sled::Config::new()
                .path(consortium.dir.path().join(format!("node-{i}")))
                .flush_every_ms(None)
                .open()
                .expect("sled");
            let chain =
                Chain::open(ChainStore::open(&db).expect("store"), chain_key).expect("chain");
            let context = FixedContext {
                reader: chain.reader(),
                roster: roster.clone(),
                members: members.clone(),
                keys: vec![keys[i].clone()],
                holding: true,
            };
            let driver: OneDriver = Driver::new(
                DriverConfig::new(EngineConfig::new(chain_key)),
                members[i].clone(),
                MalachiteEngine::new,
                chain.tip().cloned(),
            );
            let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
            let (inbox, inputs) = mpsc::channel(INPUT_QUEUE);
            let (tip, tip_watch) = watch::channel(chain.next_height());
            tokio::spawn(route(
                receiver,
                names.clone(),
                inbox.clone(),
                commands.clone(),
                chain.reader(),
            ));
            consortium.readers.push(chain.reader());
            consortium.tips.push(tip_watch);
            consortium.commands.push(commands);
            let node = Node {
                key: PublicKey::of(&keys[i]),
                driver,
                chain,
                context,
                wal: Wal::create(&consortium.dir.path().join(format!("node-{i}.wal"))),
                timers: BTreeMap::new(),
                net: Net {
                    index: i,
                    members: names.clone(),
                    wires: wires.clone(),
                    next_sync: 0,
                },
                inbox,
                tip,
                sled_writes: consortium.sled_writes.clone(),
                origin: Instant::now(),
                arrivals: HashMap::new(),
                marks: Vec::new(),
                spent: Spent::default(),
            };
            consortium.tasks.push(tokio::spawn(node.run(
                command_queue,
                inputs,
                stopped.clone(),
            )));
        }
        consortium
    }

    /// Institution `j`, submitting to honest node `node`.
    fn submitter(&self, j: usize, node: usize) -> Submitter {
        Submitter {
            name: institution_name(j),
            key: self.institutions[j].clone(),
            commands: self.commands[node].clone(),
            reader: self.readers[node].clone(),
            tip: self.tips[node].clone(),
        }
    }

    /// Stops the nodes; what each saw.
    async fn stop(self) -> Vec<(Vec<Mark>, Spent)> {
        self.stop.send_replace(true);
        let mut seen = Vec::new();
        for task in self.tasks {
            seen.push(task.await.expect("a delegate's task"));
        }
        // The routes end with the nodes; let them let go of the databases.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(self.dir);
        seen
    }
}

// ---- load ----

/// An institution's anchorer.
struct Submitter {
    name: String,
    key: SigningKey,
    commands: mpsc::Sender<Command>,
    reader: ChainReader,
    tip: watch::Receiver<u64>,
}

impl Submitter {
    /// Submits `tx` to its node (which sends it on to the other delegates) until the node's
    /// chain holds it; its height, and how many submissions it took.
    async fn anchor(&mut self, tx: &Transaction) -> (u64, usize) {
        let key = tx.key();
        for attempt in 1.. {
            let (reply, answer) = oneshot::channel();
            let command = Command {
                transactions: vec![tx.clone()],
                forward: true,
                reply: Some(reply),
            };
            self.commands.send(command).await.expect("the node runs");
            for answer in answer.await.expect("the node answers") {
                if let Err(error) = answer {
                    panic!("a batch was refused: {error}");
                }
            }
            if let Some(height) = wait_final(&self.reader, &mut self.tip, &key).await {
                return (height, attempt);
            }
        }
        unreachable!("the attempts are endless")
    }
}

/// Waits until the chain `reader` reads holds the transaction `key`, at most the anchorer's
/// finality wait; its height.
async fn wait_final(
    reader: &ChainReader,
    tip: &mut watch::Receiver<u64>,
    key: &[u8],
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + FINALITY_WAIT;
    loop {
        if let Some(at) = reader.locate_transaction(key).expect("the chain reads") {
            return Some(at.height);
        }
        match tokio::time::timeout_at(deadline, tip.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// One anchoring round of an institution.
#[derive(Debug)]
struct BatchRecord {
    submitted: Instant,
    /// When its node's chain held it (the outbox is cleared then).
    final_here: Instant,
    height: u64,
    entries: u64,
    /// Paced: when its first entry was acknowledged, and the time between acknowledgements.
    acks: Option<(Instant, Duration)>,
    attempts: usize,
}

/// Runs `submitter`'s anchorer until `until`: writes acknowledged at `rate` a second (`None`:
/// always a full batch waiting).
async fn anchorer(mut submitter: Submitter, rate: Option<f64>, until: Instant) -> Vec<BatchRecord> {
    let start = Instant::now();
    let mut taken = 0_u64;
    let mut rounds = 0_u64;
    let mut records = Vec::new();
    while Instant::now() < until {
        let waiting = match rate {
            Some(rate) => ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(taken),
            None => MAX_BATCH as u64,
        };
        let take = waiting.min(MAX_BATCH as u64);
        if take > 0 {
            let entries = (taken..taken + take)
                .map(|n| entry(&submitter.name, n))
                .collect();
            let acks = rate.map(|rate| {
                let step = Duration::from_secs_f64(1.0 / rate);
                (start + Duration::from_secs_f64(taken as f64 / rate), step)
            });
            taken += take;
            rounds += 1;
            let batch =
                AnchorBatch::sign(batch_id(rounds), &*submitter.name, entries, &submitter.key)
                    .expect("sign");
            let tx = Transaction::Anchor(batch);
            let submitted = Instant::now();
            let (height, attempts) = submitter.anchor(&tx).await;
            records.push(BatchRecord {
                submitted,
                final_here: Instant::now(),
                height,
                entries: take,
                acks,
                attempts,
            });
        }
        if take < MAX_BATCH as u64 {
            tokio::time::sleep(ANCHOR_INTERVAL).await;
        }
    }
    records
}

/// What each honest node saw of one height.
#[derive(Debug, Default)]
struct AtNode {
    sent: BTreeMap<u32, Instant>,
    judged: BTreeMap<u32, (Instant, Instant, Instant)>,
    appended: Option<(Instant, Instant)>,
}

#[derive(Debug, Default)]
struct Height {
    entries: usize,
    round: u32,
    nodes: Vec<AtNode>,
}

impl Height {
    /// When the last honest delegate had stored it, if all did.
    fn final_everywhere(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .map(|n| n.appended.map(|(_, end)| end))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }
}

fn by_height(seen: &[(Vec<Mark>, Spent)]) -> BTreeMap<u64, Height> {
    let mut heights: BTreeMap<u64, Height> = BTreeMap::new();
    for (i, (marks, _)) in seen.iter().enumerate() {
        for mark in marks {
            let height = heights.entry(mark.height()).or_insert_with(|| Height {
                nodes: (0..seen.len()).map(|_| AtNode::default()).collect(),
                ..Height::default()
            });
            if let Mark::Appended { round, entries, .. } = *mark {
                height.round = round;
                height.entries = entries;
            }
            let node = &mut height.nodes[i];
            match *mark {
                Mark::BodySent { round, at, .. } => {
                    node.sent.entry(round).or_insert(at);
                }
                Mark::Judged {
                    round,
                    delivered,
                    start,
                    end,
                    ..
                } => {
                    node.judged.entry(round).or_insert((delivered, start, end));
                }
                Mark::Appended { start, end, .. } => node.appended = Some((start, end)),
            }
        }
    }
    heights
}

/// A load run's figures.
#[derive(Debug)]
struct LoadRun {
    k: usize,
    /// Entries a second acknowledged (`None`: saturated).
    offered: Option<f64>,
    entries_per_s: f64,
    blocks: usize,
    /// Of those, decided after round 0.
    later_round: usize,
    /// Submission → final at the submitting institution's node, and at every delegate (ms).
    batch_here: Percentiles,
    batch_everywhere: Percentiles,
    /// Acknowledged write → final at its institution's node (ms; paced runs).
    ack: Option<Percentiles>,
    resubmitted: usize,
    /// Of the whole process over the window, in cores busy.
    cpu: Option<f64>,
    /// A delegate's ledger task on average.
    spent: Spent,
}

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    n: usize,
}

fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        n: values.len(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> f64 {
    percentiles(values.to_vec()).p50
}

/// The process's CPU time so far (user and system), from `/proc/self/stat` at 100 ticks a second.
fn cpu_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// K delegates loaded by the institutions for `secs`.
async fn load_run(k: usize, offered: Option<f64>, secs: f64) -> LoadRun {
    let consortium = Consortium::start(k, &[], INSTITUTIONS);
    let begin = Instant::now();
    let warm = begin + Duration::from_secs_f64((secs / 5.0).min(1.5));
    let until = begin + Duration::from_secs_f64(secs);
    let per_institution = offered.map(|r| r / INSTITUTIONS as f64);
    let anchorers: Vec<_> = (0..INSTITUTIONS)
        .map(|j| {
            let submitter = consortium.submitter(j, j % k);
            tokio::spawn(anchorer(submitter, per_institution, until))
        })
        .collect();
    tokio::time::sleep_until(warm.into()).await;
    let cpu_start = cpu_time();
    tokio::time::sleep_until(until.into()).await;
    let cpu = cpu_time()
        .zip(cpu_start)
        .map(|(b, a)| (b - a) / (until - warm).as_secs_f64());
    let mut records = Vec::new();
    for task in anchorers {
        records.extend(task.await.expect("an institution"));
    }
    let seen = consortium.stop().await;
    let heights = by_height(&seen);
    let window = until - warm;
    let finals: BTreeMap<u64, Instant> = heights
        .iter()
        .filter_map(|(h, v)| v.final_everywhere().map(|t| (*h, t)))
        .collect();
    let in_window: Vec<&Height> = heights
        .iter()
        .filter(|(h, _)| finals.get(h).is_some_and(|t| *t >= warm && *t <= until))
        .map(|(_, v)| v)
        .collect();
    let anchored: usize = in_window.iter().map(|h| h.entries).sum();
    let measured: Vec<&BatchRecord> = records.iter().filter(|r| r.submitted >= warm).collect();
    let batch_here = percentiles(
        measured
            .iter()
            .map(|r| ms(r.final_here - r.submitted))
            .collect(),
    );
    let batch_everywhere = percentiles(
        measured
            .iter()
            .filter_map(|r| finals.get(&r.height).map(|t| ms(*t - r.submitted)))
            .collect(),
    );
    let ack = offered.map(|_| {
        let mut latencies = Vec::new();
        for r in &records {
            let Some((first, step)) = r.acks else {
                continue;
            };
            if first < warm {
                continue;
            }
            for j in 0..r.entries {
                let acked = first + step.mul_f64(j as f64);
                latencies.push(ms(r.final_here.saturating_duration_since(acked)));
            }
        }
        percentiles(latencies)
    });
    let mut spent = Spent::default();
    for (_, s) in &seen {
        spent.driver += s.driver / k as u32;
        spent.wal += s.wal / k as u32;
        spent.append += s.append / k as u32;
        spent.append_wait += s.append_wait / k as u32;
        spent.send += s.send / k as u32;
        spent.life += s.life / k as u32;
        spent.syncs += s.syncs / k as u64;
    }
    LoadRun {
        k,
        offered,
        entries_per_s: anchored as f64 / window.as_secs_f64(),
        blocks: in_window.len(),
        later_round: in_window.iter().filter(|h| h.round > 0).count(),
        batch_here,
        batch_everywhere,
        ack,
        resubmitted: records.iter().map(|r| r.attempts - 1).sum(),
        cpu,
        spent,
    }
}

// ---- formula 1 ----

/// The terms of one probe height (ms).
#[derive(Debug, Clone, Copy)]
struct Terms {
    round: u32,
    prop: f64,
    vote: f64,
    judge: f64,
    append: f64,
    total: f64,
}

fn terms(height: &Height, submitted: Instant) -> Option<Terms> {
    let round = height.round;
    let (mut holding, mut votes, mut judging, mut appends, mut finals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for node in &height.nodes {
        let (storing, stored) = node.appended?;
        appends.push(ms(stored - storing));
        finals.push(stored);
        let (had, ready) = if let Some(&sent) = node.sent.get(&round) {
            (sent, sent)
        } else if let Some(&(delivered, start, end)) = node.judged.get(&round) {
            judging.push(ms(end - start));
            (delivered, end)
        } else {
            // Stored from a peer's blocks before it judged the body.
            continue;
        };
        holding.push(had);
        // Prevotes, precommits, the decision made durable.
        votes.push(ms(storing.saturating_duration_since(ready)));
    }
    Some(Terms {
        round,
        prop: ms(holding
            .into_iter()
            .max()?
            .saturating_duration_since(submitted)),
        vote: mean(&votes),
        judge: mean(&judging),
        append: mean(&appends),
        total: ms(finals
            .into_iter()
            .max()?
            .saturating_duration_since(submitted)),
    })
}

/// One (N, f) row of formula 1.
#[derive(Debug)]
struct FormulaRow {
    n: usize,
    f: usize,
    heights: usize,
    /// Heights decided after round 0.
    late: usize,
    t_prop: f64,
    t_vote: f64,
    t_judge: f64,
    t_append: f64,
    model: f64,
    total: Percentiles,
    total_mean: f64,
    /// Mean `L_total` of the round-0 heights and of the others.
    round0_mean: f64,
    late_mean: f64,
}

impl FormulaRow {
    fn t_verify(&self) -> f64 {
        self.t_judge + self.t_append
    }

    /// Where the model misses the measurement, in a sentence.
    fn failure(&self) -> String {
        if self.f == 0 {
            return format!(
                "the model has no vote term without silent delegates, yet every height pays a \
                 vote round ({:.1} ms): it is {:.0} % under the median",
                self.t_vote,
                100.0 * (1.0 - self.model / self.total.p50)
            );
        }
        let weight = self.f as f64 / (self.n - self.f) as f64;
        format!(
            "{} of {} heights had a silent proposer and were decided in a later round, {:.0} ms \
             after the others (the {} ms propose timeout and a nil round): the model's \
             f/(N−f)·T_vote adds {:.1} ms to every height and none of that step; mean {:.0} ms \
             against the model's {:.0} ms, p99 {:.0} ms",
            self.late,
            self.heights,
            self.late_mean - self.round0_mean,
            TimeoutConfig::default().propose,
            weight * self.t_vote,
            self.total_mean,
            self.model,
            self.total.p99
        )
    }
}

/// Silent delegates spread over the schedule: `N−1`, `N−1−⌊N/f⌋`, …
fn silent_set(n: usize, f: usize) -> Vec<usize> {
    (0..f).map(|i| n - 1 - i * (n / f.max(1))).collect()
}

async fn formula_run(n: usize, f: usize, secs: f64) -> FormulaRow {
    let consortium = Consortium::start(n, &silent_set(n, f), 1);
    let mut submitter = consortium.submitter(0, 0);
    let mut tips = consortium.tips.clone();
    let begin = Instant::now();
    let mut probes: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut sent = 0_u64;
    while (begin.elapsed().as_secs_f64() < secs || probes.len() < MIN_PROBES)
        && probes.len() < MAX_PROBES
    {
        let entries = (sent..sent + PROBE_BATCH)
            .map(|e| entry(&submitter.name, e))
            .collect();
        sent += PROBE_BATCH;
        let batch = AnchorBatch::sign(
            batch_id(sent / PROBE_BATCH),
            &*submitter.name,
            entries,
            &submitter.key,
        )
        .expect("sign");
        let tx = Transaction::Anchor(batch);
        let submitted = Instant::now();
        let (height, _) = submitter.anchor(&tx).await;
        for (reader, tip) in consortium.readers.iter().zip(&mut tips) {
            wait_final(reader, tip, &tx.key())
                .await
                .expect("final at every honest delegate");
        }
        probes.insert(height, submitted);
    }
    let seen = consortium.stop().await;
    let heights = by_height(&seen);
    let measured: Vec<Terms> = probes
        .iter()
        .filter(|(h, _)| **h >= PROBE_WARM_UP)
        .filter_map(|(h, submitted)| terms(heights.get(h)?, *submitted))
        .collect();
    let round0: Vec<&Terms> = measured.iter().filter(|t| t.round == 0).collect();
    let late: Vec<f64> = measured
        .iter()
        .filter(|t| t.round > 0)
        .map(|t| t.total)
        .collect();
    let of = |f: fn(&Terms) -> f64| median(&round0.iter().map(|t| f(t)).collect::<Vec<_>>());
    let (t_prop, t_vote, t_judge, t_append) = (
        of(|t| t.prop),
        of(|t| t.vote),
        of(|t| t.judge),
        of(|t| t.append),
    );
    let totals: Vec<f64> = measured.iter().map(|t| t.total).collect();
    let weight = f as f64 / (n - f) as f64;
    FormulaRow {
        n,
        f,
        heights: measured.len(),
        late: late.len(),
        t_prop,
        t_vote,
        t_judge,
        t_append,
        model: t_prop + weight * t_vote + t_judge + t_append,
        total: percentiles(totals.clone()),
        total_mean: mean(&totals),
        round0_mean: mean(&round0.iter().map(|t| t.total).collect::<Vec<_>>()),
        late_mean: mean(&late),
    }
}

// ---- the run ----

/// The single-node anchoring loop of `anchoring.rs` (one block per batch of 4096, no runtime,
/// no write-ahead log) for `secs`: entries a second.
fn single_node_loop(secs: f64) -> f64 {
    let mut fixture = Fixture::new();
    fixture.anchor_round(MAX_BATCH, 1);
    let (mut time, mut entries) = (Duration::ZERO, 0_usize);
    let begin = Instant::now();
    while begin.elapsed().as_secs_f64() < secs {
        time += fixture.anchor_round(MAX_BATCH, 1).0;
        entries += MAX_BATCH;
    }
    entries as f64 / time.as_secs_f64()
}

/// The machine's load average over the last minute (other builds share it).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
fn main() {
    let secs: f64 = std::env::var("FHIRSEAL_BENCH_LEDGER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0_f64)
        .max(1.0);
    let load_secs = 1.5 * secs;
    println!(
        "ledger bench: load runs of {load_secs} s, formula runs of {secs} s; 2 tokio workers, \
         in-process network, sled and write-ahead log on disk; load average {:.1}",
        load_average().unwrap_or(f64::NAN)
    );
    let single = single_node_loop(secs.min(4.0));
    println!("single-node anchoring loop (anchoring.rs, 4096 a block): {single:.0} entries/s");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut loads: Vec<(LoadRun, LoadRun)> = Vec::new();
    for k in DELEGATES {
        let saturated = runtime.block_on(load_run(k, None, load_secs));
        print_load(&saturated);
        let rate = AIM_RATE.min(0.8 * saturated.entries_per_s).max(100.0);
        let paced = runtime.block_on(load_run(k, Some(rate), load_secs));
        print_load(&paced);
        loads.push((saturated, paced));
    }
    let mut rows = Vec::new();
    for n in [4_usize, 7, 10] {
        for f in 0..=(n - 1) / 3 {
            let row = runtime.block_on(formula_run(n, f, secs));
            println!(
                "formula N={n} f={f}: {} heights, {} after round 0, L p50 {:.1} ms",
                row.heights, row.late, row.total.p50
            );
            rows.push(row);
        }
    }
    drop(runtime);
    let mut figures = vec![
        json!({"name": "single-node-loop-entries-per-s", "value": single,
        "unit": "entries/s", "what": "anchoring.rs's loop: one delegate, no runtime, no write-ahead log"}),
    ];
    figures.extend(report_loads(single, &loads));
    figures.extend(report_formula(&rows));
    figures.push(
        json!({"name": "load-average", "value": load_average(), "unit": "runnable tasks (1 min)",
        "cores": std::thread::available_parallelism().map(usize::from).ok()}),
    );
    figures::write("ledger", Value::Array(figures));
}

#[allow(clippy::print_stdout)]
fn print_load(run: &LoadRun) {
    let offered = run
        .offered
        .map_or("saturated".to_owned(), |r| format!("paced at {r:.0}/s"));
    let share = |d: Duration| 100.0 * d.as_secs_f64() / run.spent.life.as_secs_f64();
    println!(
        "K={} {offered}: {:.0} entries/s in {} blocks ({} after round 0); batch → final p50 {:.0} \
         ms p99 {:.0} ms; CPU {:.2} cores; a delegate's task: driver {:.0} %, WAL {:.0} % ({} \
         syncs), append {:.0} % (and {:.0} % waiting for another's), send {:.0} %; {} batches \
         resubmitted",
        run.k,
        run.entries_per_s,
        run.blocks,
        run.later_round,
        run.batch_here.p50,
        run.batch_here.p99,
        run.cpu.unwrap_or(f64::NAN),
        share(run.spent.driver),
        share(run.spent.wal),
        run.spent.syncs,
        share(run.spent.append),
        share(run.spent.append_wait),
        share(run.spent.send),
        run.resubmitted,
    );
}

/// Prints the load table and the aim; the figures for the JSON file.
#[allow(clippy::print_stdout)]
fn report_loads(single: f64, loads: &[(LoadRun, LoadRun)]) -> Vec<Value> {
    let mut measures = Vec::new();
    let k1 = loads.first().map_or(f64::NAN, |(s, _)| s.entries_per_s);
    println!();
    println!(
        "| K | entries/s | × K=1 | × loop | blocks (later round) | batch → final p50 / p99 | \
         paced at | batch → final p50 / p99 | ack → final p50 / p99 | CPU (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (saturated, paced) in loads {
        let ack = paced.ack.unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} ({}) | {:.0} / {:.0} ms | {:.0}/s | {:.0} / {:.0} ms \
             | {:.0} / {:.0} ms | {:.2} |",
            saturated.k,
            saturated.entries_per_s,
            saturated.entries_per_s / k1,
            saturated.entries_per_s / single,
            saturated.blocks,
            saturated.later_round,
            saturated.batch_here.p50,
            saturated.batch_here.p99,
            paced.offered.unwrap_or(0.0),
            paced.batch_here.p50,
            paced.batch_here.p99,
            ack.p50,
            ack.p99,
            saturated.cpu.unwrap_or(f64::NAN),
        );
        let k = saturated.k;
        measures.push(json!({"name": format!("k{k}-entries-per-s"), "value": saturated.entries_per_s,
            "unit": "entries/s", "baseline": k1, "baseline_name": "k1-entries-per-s",
            "ratio": saturated.entries_per_s / k1, "single_node_loop_ratio": saturated.entries_per_s / single,
            "blocks": saturated.blocks, "blocks_after_round_0": saturated.later_round,
            "aim": (k == 4).then_some(AIM_RATE), "cpu_cores": saturated.cpu}));
        for (run, name) in [(saturated, "saturated"), (paced, "paced")] {
            measures.push(
                json!({"name": format!("k{k}-{name}-batch-final-ms"), "unit": "ms",
                "offered_entries_per_s": run.offered, "entries_per_s": run.entries_per_s,
                "p50": run.batch_here.p50, "p99": run.batch_here.p99, "batches": run.batch_here.n,
                "every_delegate_p50": run.batch_everywhere.p50,
                "every_delegate_p99": run.batch_everywhere.p99, "resubmitted": run.resubmitted,
                "blocks": run.blocks, "blocks_after_round_0": run.later_round}),
            );
        }
        measures.push(json!({"name": format!("k{k}-ack-final-ms"), "unit": "ms",
            "offered_entries_per_s": paced.offered, "p50": ack.p50, "p99": ack.p99, "entries": ack.n,
            "aim_p50": (k == 4).then_some(AIM_P50_MS), "aim_p99": (k == 4).then_some(AIM_P99_MS)}));
    }
    if let Some((saturated, paced)) = loads.iter().find(|(s, _)| s.k == 4) {
        let ack = paced.ack.unwrap_or_default();
        let verdict = |met: bool| if met { "met" } else { "missed" };
        println!(
            "aim for K=4: ≥ {AIM_RATE:.0} entries/s {} ({:.0}); ack → final p50 ≤ {AIM_P50_MS:.0} \
             ms {} ({:.0}), p99 ≤ {AIM_P99_MS:.0} ms {} ({:.0}) at {:.0}/s",
            verdict(saturated.entries_per_s >= AIM_RATE),
            saturated.entries_per_s,
            verdict(ack.p50 <= AIM_P50_MS),
            ack.p50,
            verdict(ack.p99 <= AIM_P99_MS),
            ack.p99,
            paced.offered.unwrap_or(0.0),
        );
    }
    measures
}

/// Prints formula 1's table and where the model fails; the figures for the JSON file.
#[allow(clippy::print_stdout)]
fn report_formula(rows: &[FormulaRow]) -> Vec<Value> {
    let mut measures = Vec::new();
    println!();
    println!(
        "| N | f | heights | later round | T_prop | T_vote | T_verify | model L | L p50 | L mean \
         | L p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row.n,
            row.f,
            row.heights,
            row.late,
            row.t_prop,
            row.t_vote,
            row.t_verify(),
            row.model,
            row.total.p50,
            row.total_mean,
            row.total.p99
        );
        measures.push(
            json!({"name": format!("formula-n{}-f{}", row.n, row.f), "unit": "ms",
            "heights": row.heights, "later_round": row.late, "t_prop": row.t_prop,
            "t_vote": row.t_vote, "t_verify": row.t_verify(), "t_verify_judge": row.t_judge,
            "t_verify_append": row.t_append, "model": row.model, "measured_p50": row.total.p50,
            "measured_mean": row.total_mean, "measured_p99": row.total.p99,
            "round0_mean": row.round0_mean, "later_round_mean": row.late_mean,
            "model_fails": row.failure()}),
        );
    }
    println!();
    for row in rows {
        println!("N={} f={}: {}.", row.n, row.f, row.failure());
    }
    measures
}
