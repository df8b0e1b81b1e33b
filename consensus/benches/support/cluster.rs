//! A consortium of ledger nodes in one process, shared by `ledger.rs` (K delegates under load,
//! formula 1) and `election.rs` (finality across the election's epoch changes), each including it
//! with `#[path = "support/cluster.rs"]` beside `support/single_node.rs`.
//!
//! Each node is what the sidecar's ledger task is (`sidecar/src/ledger/runtime.rs`): the real
//! `Driver` with `MalachiteEngine` and its own signing key, a sled `Chain` on disk (a temporary
//! directory), a write-ahead log in a real file made durable with `fdatasync` (off the async
//! workers) at every `Flush` and `NewLog`, timers, a 50 ms tick, and every effect performed in
//! order as the runtime performs it; with an election, the election folded beside the driver and
//! each member's duties (commit, reveal, ballot) submitted once per height. The network is
//! in-process: no TCP, no TLS, no HTTP. What crosses between nodes is encoded by the sender (per
//! recipient, as `net.rs` does) and decoded by a route task at the receiver (as `routes.rs` does)
//! before it reaches the ledger task's queue (8192 inputs, dropped when full); a submission is
//! forwarded, encoded, to every other node; a sync request is answered from the peer's chain.
//! The nodes run as tokio tasks on the caller's runtime. Being one process, their appends run one
//! at a time and sled's periodic flush thread is off (see `Consortium::sled_writes`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fhirseal_consensus::bft::{
    ConsensusMessage, EngineConfig, MalachiteEngine, Millis, Round, Timer,
};
use fhirseal_consensus::election::beacon::BeaconKey;
use fhirseal_consensus::election::lsag::VoteSecret;
use fhirseal_consensus::election::schedule::{self, Seat};
use fhirseal_consensus::election::{elect, standing};
use fhirseal_consensus::ledger::wal::{frame, header, LogRecord};
use fhirseal_consensus::ledger::{
    Answers, Effect, ElectionKeys, ElectionTracker, FixedContext, FixedElection, History, Input,
    Outbound, Recipients,
};
use fhirseal_consensus::{
    chain_id, AnchorBatch, Block, Chain, ChainReader, ChainStore, DelegateSet, Driver,
    DriverConfig, FinalizedBlock, Hash256, PublicKey, Roster, SigningKey, Timestamp, Transaction,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::single_node::{batch_id, entry, OneDriver};

/// The runtime's tick.
const TICK: Duration = Duration::from_millis(50);
/// The ledger task's input queue (the sidecar's `INPUT_QUEUE`).
const INPUT_QUEUE: usize = 8192;
/// Its command queue.
const COMMAND_QUEUE: usize = 64;
/// Most blocks one sync answer carries (the sidecar's `SYNC_BLOCKS`).
const SYNC_BLOCKS: usize = 64;
/// The anchorer's finality wait: it submits its batch again after this long.
const FINALITY_WAIT: Duration = Duration::from_secs(5);

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
pub(crate) enum Mark {
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
    pub(crate) fn height(&self) -> u64 {
        match *self {
            Self::BodySent { height, .. }
            | Self::Judged { height, .. }
            | Self::Appended { height, .. } => height,
        }
    }
}

/// Where a node's ledger task spent its time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Spent {
    /// Inside the driver's calls.
    pub(crate) driver: Duration,
    /// Waiting for the write-ahead log (writes and `fdatasync`).
    pub(crate) wal: Duration,
    pub(crate) syncs: u64,
    /// Storing blocks.
    pub(crate) append: Duration,
    /// Waiting for another delegate's append to end (see `Consortium::sled_writes`).
    pub(crate) append_wait: Duration,
    /// Encoding and queueing what it sends.
    pub(crate) send: Duration,
    /// The task's life.
    pub(crate) life: Duration,
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

/// What a node saw, for the figures.
pub(crate) struct Seen {
    pub(crate) marks: Vec<Mark>,
    pub(crate) spent: Spent,
    /// With an election: the delegates it chose, by (ledger epoch, governance epoch).
    pub(crate) history: Option<Arc<History>>,
}

/// A member's election keys, and the height it last submitted its duties for.
struct Voter {
    member: String,
    signing: SigningKey,
    vote: VoteSecret,
    beacon: BeaconKey,
    /// Every member's name: it votes for `members[(its index + epoch) % n]`.
    members: Arc<Vec<String>>,
    index: usize,
    done: Option<u64>,
}

/// One member's ledger task (a delegate's when there is no election).
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
    voter: Option<Voter>,
}

impl Node {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inputs: mpsc::Receiver<(Instant, Input)>,
        mut stop: watch::Receiver<bool>,
    ) -> Seen {
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
            self.duties().await;
        }
        self.wal.flush().await;
        self.spent.life = start.elapsed();
        Seen {
            history: self.driver.election().map(|e| e.history().clone()),
            marks: self.marks,
            spent: self.spent,
        }
    }

    /// With an election: the member's commit, reveal and ballot for the coming height, submitted
    /// here and sent on to every member, once per height (as the sidecar's runtime does).
    async fn duties(&mut self) {
        let height = self.driver.height();
        let (Some(voter), Some(tracker)) = (&mut self.voter, self.driver.election()) else {
            return;
        };
        if voter.done == Some(height) {
            return;
        }
        voter.done = Some(height);
        let epoch = height / tracker.epoch_blocks();
        let n = voter.members.len();
        let candidate = &voter.members[(voter.index + epoch as usize) % n];
        let keys = ElectionKeys {
            member: &voter.member,
            signing: &voter.signing,
            vote: &voter.vote,
            beacon: &voter.beacon,
        };
        let duties = tracker.duties(&keys, Some(candidate));
        if !duties.is_empty() {
            self.submit(Command {
                transactions: duties,
                forward: true,
                reply: None,
            })
            .await;
        }
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
        if let (Some(election), Some(tracker)) =
            (&mut self.context.election, self.driver.election())
        {
            election.history = tracker.history().clone();
        }
        let receipt = self
            .chain
            .append_validated(block, &self.context.rosters())
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

/// Member `i`'s vote and beacon keys.
fn election_keys(i: usize) -> (VoteSecret, BeaconKey) {
    // A small scalar, canonical as a vote key must be.
    let mut scalar = [0; 32];
    scalar[..8].copy_from_slice(&(0xe1_00 + i as u64).to_le_bytes());
    (
        VoteSecret::from_bytes(scalar).expect("a vote key"),
        BeaconKey::from_seed(&seeded_key(0xbe, i).to_bytes()).expect("a beacon key"),
    )
}

fn institution_name(j: usize) -> String {
    format!("hospital-{j}")
}

/// `n` delegates of which those in `silent` never start, and the institutions' keys; or, with an
/// election, `n` members electing their delegates.
pub(crate) struct Consortium {
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
    pub(crate) readers: Vec<ChainReader>,
    pub(crate) tips: Vec<watch::Receiver<u64>>,
    institutions: Vec<SigningKey>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

/// An election among a consortium's members.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elected {
    /// K.
    pub(crate) delegates: usize,
    /// Blocks per ledger epoch.
    pub(crate) epoch_blocks: u64,
    /// M.
    pub(crate) max_consecutive: u32,
}

impl Consortium {
    /// Starts the honest delegates' tasks (indexed from here on by their rank among the honest).
    pub(crate) fn start(n: usize, silent: &[usize], institutions: usize) -> Self {
        Self::launch(n, silent, institutions, None)
    }

    /// Starts `n` members, every one seated with equal stake and voting, that elect `elected`'s
    /// delegates every ledger epoch (the first `elected.delegates` members found the chain and
    /// serve its first two epochs), with the runtime's block intervals (`DriverConfig::new`).
    pub(crate) fn elected(n: usize, institutions: usize, elected: Elected) -> Self {
        Self::launch(n, &[], institutions, Some(elected))
    }

    fn launch(n: usize, silent: &[usize], institutions: usize, elected: Option<Elected>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys: Vec<SigningKey> = (0..n).map(|i| seeded_key(0xde, i)).collect();
        let role = if elected.is_some() {
            "member"
        } else {
            "delegate"
        };
        let members: Vec<String> = (0..n).map(|i| format!("{role}-{i}")).collect();
        let founders = elected.map_or(n, |e| e.delegates);
        let institution_keys: Vec<SigningKey> =
            (0..institutions).map(|j| seeded_key(0x1a, j)).collect();
        let delegates = DelegateSet::new(keys[..founders].iter().map(PublicKey::of).collect())
            .expect("distinct keys");
        // With an election the members sign their commits and reveals as institutions do.
        let signers = institution_keys
            .iter()
            .enumerate()
            .map(|(j, k)| (institution_name(j), PublicKey::of(k)))
            .chain(
                elected
                    .iter()
                    .flat_map(|_| members.iter().cloned().zip(keys.iter().map(PublicKey::of))),
            );
        let roster = Arc::new(Roster::new(delegates, signers));
        let chain_key = chain_id("bench-ledger");
        let seats: Vec<(Seat, PublicKey)> = (0..n)
            .map(|i| {
                let (vote, beacon) = election_keys(i);
                let seat = Seat {
                    member: members[i].clone(),
                    stake: 100,
                    vote_key: vote.public(),
                    beacon_key: beacon.public(),
                };
                (seat, PublicKey::of(&keys[i]))
            })
            .collect();
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
                members: members[..founders].to_vec(),
                keys: vec![keys[i].clone()],
                holding: true,
                election: elected.map(|e| FixedElection {
                    seats: seats.clone(),
                    history: Arc::default(),
                    epoch_blocks: e.epoch_blocks,
                }),
            };
            let mut driver: OneDriver = Driver::new(
                DriverConfig::new(EngineConfig::new(chain_key)),
                members[i].clone(),
                MalachiteEngine::new,
                chain.tip().cloned(),
            );
            if let Some(e) = elected {
                let config = schedule::Config {
                    chain: chain_key.0.to_vec(),
                    epoch_blocks: e.epoch_blocks,
                    election: elect::Params {
                        delegates: e.delegates,
                        max_consecutive: e.max_consecutive,
                    },
                    standing: standing::Params::default(),
                };
                let tracker = ElectionTracker::new(config, members[..founders].to_vec())
                    .expect("an election");
                driver = driver.with_election(tracker);
            }
            let voter = elected.map(|_| {
                let (vote, beacon) = election_keys(i);
                Voter {
                    member: members[i].clone(),
                    signing: keys[i].clone(),
                    vote,
                    beacon,
                    members: names.clone(),
                    index: i,
                    done: None,
                }
            });
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
                voter,
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
    pub(crate) fn submitter(&self, j: usize, node: usize) -> Submitter {
        Submitter {
            name: institution_name(j),
            key: self.institutions[j].clone(),
            commands: self.commands[node].clone(),
            reader: self.readers[node].clone(),
            tip: self.tips[node].clone(),
        }
    }

    /// Stops the nodes; what each saw.
    pub(crate) async fn stop(self) -> Vec<Seen> {
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

/// An institution's anchorer.
pub(crate) struct Submitter {
    pub(crate) name: String,
    pub(crate) key: SigningKey,
    commands: mpsc::Sender<Command>,
    reader: ChainReader,
    tip: watch::Receiver<u64>,
}

impl Submitter {
    /// Submits `tx` to its node (which sends it on to the other delegates) until the node's
    /// chain holds it; its height, and how many submissions it took.
    pub(crate) async fn anchor(&mut self, tx: &Transaction) -> (u64, usize) {
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

/// One probe batch: the height that holds it, the height its submitter's node was deciding
/// when it was sent, when it was sent, when the submitter's node held it.
pub(crate) struct Probe {
    pub(crate) height: u64,
    pub(crate) first: u64,
    pub(crate) submitted: Instant,
    pub(crate) here: Instant,
}

impl Consortium {
    /// Sends probe batch `n` (of `entries` entries never anchored before) through `submitter`
    /// and waits until every running node's chain holds it (`tips`: a copy of `self.tips`).
    pub(crate) async fn probe(
        &self,
        submitter: &mut Submitter,
        tips: &mut [watch::Receiver<u64>],
        n: u64,
        entries: u64,
    ) -> Probe {
        let entries = (n * entries..(n + 1) * entries)
            .map(|e| entry(&submitter.name, e))
            .collect();
        let batch = AnchorBatch::sign(batch_id(n + 1), &*submitter.name, entries, &submitter.key)
            .expect("sign");
        let tx = Transaction::Anchor(batch);
        let first = *submitter.tip.borrow();
        let submitted = Instant::now();
        let (height, _) = submitter.anchor(&tx).await;
        let here = Instant::now();
        for (reader, tip) in self.readers.iter().zip(tips) {
            wait_final(reader, tip, &tx.key())
                .await
                .expect("final at every running node");
        }
        Probe {
            height,
            first,
            submitted,
            here,
        }
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

/// What each honest node saw of one height.
#[derive(Debug, Default)]
pub(crate) struct AtNode {
    pub(crate) sent: BTreeMap<u32, Instant>,
    pub(crate) judged: BTreeMap<u32, (Instant, Instant, Instant)>,
    pub(crate) appended: Option<(Instant, Instant)>,
}

#[derive(Debug, Default)]
pub(crate) struct Height {
    pub(crate) entries: usize,
    pub(crate) round: u32,
    pub(crate) nodes: Vec<AtNode>,
}

impl Height {
    /// When the last honest delegate had stored it, if all did.
    pub(crate) fn final_everywhere(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .map(|n| n.appended.map(|(_, end)| end))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }
}

pub(crate) fn by_height(seen: &[Seen]) -> BTreeMap<u64, Height> {
    let mut heights: BTreeMap<u64, Height> = BTreeMap::new();
    for (i, node_seen) in seen.iter().enumerate() {
        for mark in &node_seen.marks {
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
