//! The deterministic simulation: K delegates in one thread, each a real `MalachiteEngine` with a
//! tiny runtime that performs its effects against an in-memory "disk" (write-ahead log, chain,
//! block bodies by hash), over a seeded network on a virtual clock.
//!
//! Everything that varies comes from the seed (xorshift64*): message delays, drops, duplicates,
//! partitions, crash times. Events are ordered by (virtual time, sequence number) in a `BTreeMap`,
//! so a seed replays exactly: [`Outcome::fingerprint`] of two runs is equal.
//!
//! The checks are made outside the nodes, on what they did: the certificate of every finalized
//! block verifies with `CommitCertificate::verify`; no two members hold different blocks at one
//! height; no honest delegate ever broadcasts two different votes (or proposals) for one height,
//! round and kind (a log of what each sent survives its crashes); every evidence verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fhirseal_consensus::bft::{
    BftEngine, CommitCertificate, ConsensusMessage, EngineConfig, EngineEffect, EngineError,
    EngineInput, Evidence, MalachiteEngine, Millis, Proposal, Round, Timer, Vote, VoteKind,
    WalEntry,
};
use fhirseal_consensus::{
    validate_block, Block, BlockProducer, DelegateSet, Hash256, PublicKey, Roster, SigningKey,
    Timestamp,
};

/// The chain id every simulated delegate signs under.
pub(crate) const CHAIN: Hash256 = Hash256([0x5c; 32]);

/// How the network misbehaves.
#[derive(Debug, Clone)]
pub(crate) struct NetConfig {
    /// One-way delay, drawn uniformly in `[min_delay, max_delay]` for each message.
    pub(crate) min_delay: Millis,
    pub(crate) max_delay: Millis,
    /// Per mille of messages lost.
    pub(crate) drop_per_mille: u64,
    /// Per mille of messages delivered twice (with two independent delays).
    pub(crate) dup_per_mille: u64,
    /// Every `period` ms, with one chance in two, a random split of the delegates into two sides
    /// that cannot talk for `length` ms.
    pub(crate) partitions: Option<(Millis, Millis)>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            min_delay: 5,
            max_delay: 25,
            drop_per_mille: 0,
            dup_per_mille: 0,
            partitions: None,
        }
    }
}

/// When a delegate is killed: at a point of its own protocol, or at random.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CrashAt {
    /// Right after it broadcast its first prevote at this height: what it signed is in its log,
    /// and the rest of that call's effects never happen.
    AfterPrevote { node: usize, height: u64 },
    /// Every `period` ms, one random delegate (never more than one down at a time).
    Random { period: Millis },
}

/// One simulated run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) k: usize,
    /// Stop once every live honest delegate has finalized this many blocks (heights 0..).
    pub(crate) heights: u64,
    pub(crate) seed: u64,
    pub(crate) net: NetConfig,
    /// Never started: send and receive nothing.
    pub(crate) silent: Vec<usize>,
    /// Sends a nil twin of each of its votes for a block, and a twin proposal with its body.
    pub(crate) equivocator: Option<usize>,
    /// Proposes blocks that do not follow the chain (validation refuses them).
    pub(crate) bad_proposer: Option<usize>,
    /// Runs the protocol but withholds every vote it signs (prevotes and precommits are never
    /// sent; its proposals and bodies are).
    pub(crate) withholder: Option<usize>,
    pub(crate) crash: Option<CrashAt>,
    /// How long a killed delegate stays down.
    pub(crate) down_for: Millis,
    /// Give up (and let the assertions fail) after this much virtual time.
    pub(crate) time_limit: Millis,
}

impl Config {
    pub(crate) fn new(k: usize, heights: u64, seed: u64) -> Self {
        Self {
            k,
            heights,
            seed,
            net: NetConfig::default(),
            silent: Vec::new(),
            equivocator: None,
            bad_proposer: None,
            withholder: None,
            crash: None,
            down_for: 3_000,
            time_limit: 600_000,
        }
    }

    fn honest(&self, i: usize) -> bool {
        self.equivocator != Some(i) && self.withholder != Some(i) && !self.silent.contains(&i)
    }
}

/// What a run did, for the assertions.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Each delegate's chain: (block hash, certificate), from height 0.
    pub(crate) chains: Vec<Vec<(Hash256, CommitCertificate)>>,
    /// Delegates that were running at the end.
    pub(crate) live: Vec<usize>,
    /// Honest delegates that broadcast two different messages for one (height, round, kind).
    pub(crate) double_signs: Vec<String>,
    /// Engine errors, failed certificate checks, undecodable logs or messages.
    pub(crate) errors: Vec<String>,
    /// (reporting delegate, height, evidence) for every evidence in a `Finalized`.
    pub(crate) evidence: Vec<(usize, u64, Evidence)>,
    /// Heights whose body the bad proposer built and someone finalized.
    pub(crate) bad_blocks_finalized: Vec<u64>,
    /// Heights where an honest delegate found two finalized blocks among the members (the
    /// agreement check, made whenever a block is stored).
    pub(crate) conflicts: Vec<String>,
    /// Heights a lone delegate finalized within the call that answered its own proposal.
    pub(crate) final_in_propose_call: u64,
    /// Log entries replayed after restarts.
    pub(crate) replayed_entries: usize,
    pub(crate) restarts: usize,
    /// (delegate, down at, back at) for every kill.
    pub(crate) downtime: Vec<(usize, Millis, Millis)>,
    /// When each height was first finalized anywhere.
    pub(crate) finalized_at: BTreeMap<u64, Millis>,
    /// Engines replaced after catching up on blocks from a peer.
    pub(crate) syncs: usize,
    /// Inputs fed, messages sent.
    pub(crate) inputs: u64,
    pub(crate) messages: u64,
    /// Virtual time at the end.
    pub(crate) end: Millis,
    /// Wall time spent inside the engines (all delegates together).
    pub(crate) engine_time: Duration,
    /// Wall time of the whole run.
    pub(crate) wall: Duration,
}

impl Outcome {
    /// The number of heights every live delegate has finalized.
    pub(crate) fn common_height(&self) -> usize {
        self.live
            .iter()
            .map(|&i| self.chains[i].len())
            .min()
            .unwrap_or(0)
    }

    /// The highest round any live delegate's chain decided in, per height.
    pub(crate) fn rounds(&self) -> Vec<u32> {
        let n = self.common_height();
        (0..n)
            .map(|h| {
                self.live
                    .iter()
                    .map(|&i| self.chains[i][h].1.round.0)
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// No two delegates hold different blocks at one height (crashed ones included).
    pub(crate) fn agree(&self) -> bool {
        let longest = self.chains.iter().map(Vec::len).max().unwrap_or(0);
        (0..longest).all(|h| {
            let blocks: BTreeSet<Hash256> = self
                .chains
                .iter()
                .filter_map(|c| c.get(h).map(|(b, _)| *b))
                .collect();
            blocks.len() <= 1
        })
    }

    /// A digest of the run (chains, rounds, end time, message count) for the replay check.
    pub(crate) fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for chain in &self.chains {
            for (hash, cert) in chain {
                out.extend(hash.0);
                out.extend(cert.round.0.to_be_bytes());
                out.extend(cert.to_bytes());
            }
            out.push(0xff);
        }
        out.extend(self.end.to_be_bytes());
        out.extend(self.messages.to_be_bytes());
        out.extend(self.inputs.to_be_bytes());
        out
    }

    /// Engine wall time per finalized height, all delegates together.
    pub(crate) fn cpu_per_height(&self) -> Duration {
        let n = self.common_height().max(1) as u32;
        self.engine_time / n
    }

    /// Asserts what every run must hold.
    pub(crate) fn assert_safe(&self) {
        assert!(self.errors.is_empty(), "errors: {:#?}", self.errors);
        assert!(
            self.double_signs.is_empty(),
            "double signing: {:#?}",
            self.double_signs
        );
        assert!(
            self.conflicts.is_empty(),
            "conflicts: {:#?}",
            self.conflicts
        );
        assert!(self.agree(), "two blocks finalized at one height");
        assert!(
            self.bad_blocks_finalized.is_empty(),
            "invalid blocks finalized at {:?}",
            self.bad_blocks_finalized
        );
    }

    pub(crate) fn report(&self, name: &str) {
        println!(
            "FIGURE {name}: {} heights, rounds>0: {}, virtual {} ms, messages {}, inputs {}, restarts {}, syncs {}, replayed {}, evidence {}, engine CPU {:.3} ms/height (all delegates), wall {:.0} ms",
            self.common_height(),
            self.rounds().iter().filter(|r| **r > 0).count(),
            self.end,
            self.messages,
            self.inputs,
            self.restarts,
            self.syncs,
            self.replayed_entries,
            self.evidence.len(),
            self.cpu_per_height().as_secs_f64() * 1e3,
            self.wall.as_secs_f64() * 1e3,
        );
    }
}

/// What travels between delegates.
#[derive(Debug, Clone)]
enum Packet {
    /// An encoded `ConsensusMessage` (decoded at the receiver, as the transport will).
    Consensus(Vec<u8>),
    /// A block body, with the round it is proposed in.
    Body(Block, Round),
    /// Catch-up (the sidecar's `GET /ledger/sync`): finalized blocks from this height, please.
    SyncRequest(u64),
    /// The answer: finalized blocks with their certificates, in height order.
    SyncResponse(Vec<(Block, CommitCertificate)>),
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        packet: Packet,
    },
    Timer {
        node: usize,
        timer: Timer,
        token: u64,
    },
    /// The block builder's answer to `BuildBlock`, for one incarnation of the node.
    Built {
        node: usize,
        life: u64,
        height: u64,
        round: Round,
        block: Hash256,
    },
    Start {
        node: usize,
        life: u64,
        height: u64,
    },
    /// Kill one random delegate (when none is down).
    RandomCrash,
    Restart {
        node: usize,
    },
    /// A new partition window may open.
    Partition,
}

/// One delegate: its engine (gone while it is down) and runtime state. The "disk" fields
/// survive a crash; the others do not.
struct Node {
    key: SigningKey,
    engine: Option<MalachiteEngine>,
    /// Incarnation: events scheduled by an earlier life are ignored.
    life: u64,
    // -- disk --
    /// The flushed write-ahead log, encoded, and the height it is for.
    wal: Vec<Vec<u8>>,
    wal_height: u64,
    chain: Vec<(Block, CommitCertificate)>,
    bodies: BTreeMap<Hash256, Block>,
    // -- memory --
    /// Appended but not yet flushed: lost in a crash.
    wal_unflushed: Vec<Vec<u8>>,
    timers: BTreeMap<Timer, u64>,
    /// Bodies of heights not started yet.
    pending_bodies: Vec<(Block, Round)>,
    /// When we last asked a peer for blocks (one request in flight at a time).
    sync_asked: Option<Millis>,
}

impl Node {
    fn tip(&self) -> Option<&Block> {
        self.chain.last().map(|(b, _)| b)
    }

    fn next_height(&self) -> u64 {
        self.chain.len() as u64
    }
}

/// The simulator.
pub(crate) struct Sim {
    cfg: Config,
    now: Millis,
    seq: u64,
    events: BTreeMap<(Millis, u64), Event>,
    rng: u64,
    delegates: DelegateSet,
    roster: Roster,
    nodes: Vec<Node>,
    token: u64,
    /// Sides of the current partition (`None`: everyone talks).
    cut: Option<(Millis, Vec<bool>)>,
    /// (node, height, round, what) → the value it broadcast: survives crashes.
    sent: BTreeMap<(usize, u64, u32, &'static str), Vec<u8>>,
    crashed: BTreeSet<usize>,
    crash_done: bool,
    /// When the delegate down now went down.
    down_since: Millis,
    out: Outcome,
}

/// The delegates' keys: node `i` signs with `key(i)`.
pub(crate) fn key(i: usize) -> SigningKey {
    let mut seed = [0x11; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SigningKey::from_bytes(&seed)
}

impl Sim {
    pub(crate) fn new(cfg: Config) -> Self {
        let keys: Vec<SigningKey> = (0..cfg.k).map(key).collect();
        let delegates =
            DelegateSet::new(keys.iter().map(PublicKey::of).collect()).expect("distinct keys");
        let roster = Roster::new(delegates.clone(), []);
        let nodes = keys
            .into_iter()
            .map(|key| Node {
                key,
                engine: None,
                life: 0,
                wal: Vec::new(),
                wal_height: 0,
                chain: Vec::new(),
                bodies: BTreeMap::new(),
                wal_unflushed: Vec::new(),
                timers: BTreeMap::new(),
                pending_bodies: Vec::new(),
                sync_asked: None,
            })
            .collect();
        let k = cfg.k;
        let rng = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Self {
            cfg,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            rng,
            delegates,
            roster,
            nodes,
            token: 0,
            cut: None,
            sent: BTreeMap::new(),
            crashed: BTreeSet::new(),
            crash_done: false,
            down_since: 0,
            out: Outcome {
                chains: vec![Vec::new(); k],
                ..Outcome::default()
            },
        }
    }

    /// The delegate set every height uses.
    pub(crate) fn delegates(&self) -> &DelegateSet {
        &self.delegates
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.rand() % 1000 < per_mille
    }

    fn at(&mut self, time: Millis, event: Event) {
        self.seq += 1;
        self.events.insert((time.max(self.now), self.seq), event);
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some()
    }

    /// Runs to the end and returns what happened.
    pub(crate) fn run(mut self) -> Outcome {
        let wall = Instant::now();
        for i in 0..self.cfg.k {
            if self.cfg.silent.contains(&i) {
                continue;
            }
            self.nodes[i].engine = Some(MalachiteEngine::new(
                EngineConfig::new(CHAIN),
                self.nodes[i].key.clone(),
            ));
            self.at(
                0,
                Event::Start {
                    node: i,
                    life: 0,
                    height: 0,
                },
            );
        }
        if let Some((period, _)) = self.cfg.net.partitions {
            self.at(period, Event::Partition);
        }
        if let Some(CrashAt::Random { period }) = self.cfg.crash {
            self.at(period, Event::RandomCrash);
        }
        while let Some(((time, _), event)) = self.events.pop_first() {
            if time > self.cfg.time_limit || self.done() {
                break;
            }
            self.now = time;
            self.step(event);
        }
        self.out.end = self.now;
        self.out.live = (0..self.cfg.k)
            .filter(|&i| self.up(i) && self.cfg.honest(i))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            self.out.chains[i] = node
                .chain
                .iter()
                .map(|(b, c)| (b.header.hash(), c.clone()))
                .collect();
        }
        self.out.wall = wall.elapsed();
        self.out
    }

    fn done(&self) -> bool {
        let all_final = (0..self.cfg.k)
            .filter(|&i| self.cfg.honest(i))
            .all(|i| self.up(i) && self.nodes[i].chain.len() as u64 >= self.cfg.heights);
        all_final && self.crashed.is_empty()
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, packet } => self.deliver(from, to, packet),
            Event::Timer { node, timer, token } => {
                if self.up(node) && self.nodes[node].timers.get(&timer) == Some(&token) {
                    self.nodes[node].timers.remove(&timer);
                    self.feed(node, EngineInput::TimerFired(timer));
                }
            }
            Event::Built {
                node,
                life,
                height,
                round,
                block,
            } => {
                if self.up(node) && self.nodes[node].life == life {
                    self.feed(
                        node,
                        EngineInput::Propose {
                            height,
                            round,
                            block,
                        },
                    );
                }
            }
            Event::Start { node, life, height } => {
                if self.up(node) && self.nodes[node].life == life {
                    self.start(node, height);
                }
            }
            Event::RandomCrash => self.random_crash(),
            Event::Restart { node } => self.restart(node),
            Event::Partition => {
                if let Some((period, length)) = self.cfg.net.partitions {
                    if self.rand().is_multiple_of(2) {
                        let sides = (0..self.cfg.k)
                            .map(|_| self.rand().is_multiple_of(2))
                            .collect();
                        self.cut = Some((self.now + length, sides));
                    }
                    self.at(self.now + period, Event::Partition);
                }
            }
        }
    }

    fn connected(&mut self, a: usize, b: usize) -> bool {
        match &self.cut {
            Some((until, sides)) if self.now < *until => sides[a] == sides[b],
            Some(_) => {
                self.cut = None;
                true
            }
            None => true,
        }
    }

    fn send(&mut self, from: usize, to: usize, packet: Packet) {
        self.out.messages += 1;
        if !self.connected(from, to) || self.chance(self.cfg.net.drop_per_mille) {
            return;
        }
        let copies = if self.chance(self.cfg.net.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = self.cfg.net.max_delay - self.cfg.net.min_delay + 1;
            let delay = self.cfg.net.min_delay + self.rand() % spread;
            self.at(
                self.now + delay,
                Event::Deliver {
                    from,
                    to,
                    packet: packet.clone(),
                },
            );
        }
    }

    fn broadcast(&mut self, from: usize, packet: &Packet) {
        for to in 0..self.cfg.k {
            if to != from {
                self.send(from, to, packet.clone());
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, packet: Packet) {
        if !self.up(to) {
            return;
        }
        match packet {
            Packet::Consensus(bytes) => match ConsensusMessage::from_bytes(&bytes) {
                Ok(message) => {
                    // The transport's check: votes and proposals come from delegates only.
                    if message
                        .signer()
                        .is_some_and(|s| !self.delegates.contains(s))
                    {
                        self.out.errors.push("a message from a non-delegate".into());
                        return;
                    }
                    // A message of a later height: the sender has finalized what we have not.
                    if message.height() > self.nodes[to].next_height() {
                        self.request_sync(to, from);
                    }
                    self.feed(to, message.into_input());
                }
                Err(e) => self.out.errors.push(format!("undecodable message: {e}")),
            },
            Packet::Body(block, round) => self.on_body(to, block, round),
            Packet::SyncRequest(height) => {
                let blocks: Vec<(Block, CommitCertificate)> = self.nodes[to]
                    .chain
                    .iter()
                    .skip(height as usize)
                    .take(64)
                    .cloned()
                    .collect();
                if !blocks.is_empty() {
                    self.send(to, from, Packet::SyncResponse(blocks));
                }
            }
            Packet::SyncResponse(blocks) => self.on_sync(to, blocks),
        }
    }

    /// Asks `peer` for the finalized blocks we lack, at most once per 200 ms.
    fn request_sync(&mut self, i: usize, peer: usize) {
        let node = &mut self.nodes[i];
        if node.sync_asked.is_some_and(|t| self.now < t + 200) {
            return;
        }
        node.sync_asked = Some(self.now);
        let height = node.next_height();
        self.send(i, peer, Packet::SyncRequest(height));
    }

    /// Appends synced blocks that verify (certificate against the delegates, link to the tip);
    /// when the chain has moved past the engine's height, a new engine starts at the new tip + 1:
    /// the old one never signs at that height again, so nothing can be signed twice.
    fn on_sync(&mut self, i: usize, blocks: Vec<(Block, CommitCertificate)>) {
        self.nodes[i].sync_asked = None;
        let before = self.nodes[i].next_height();
        for (block, cert) in blocks {
            let height = block.header.height;
            let have = self.nodes[i].next_height();
            if height < have {
                let mine = self.nodes[i].chain[height as usize].0.header.hash();
                if mine != block.header.hash() {
                    self.out.conflicts.push(format!(
                        "height {height}: node {i} holds {mine}, a peer synced {}",
                        block.header.hash()
                    ));
                }
                continue;
            }
            if height > have || !self.append_verified(i, block, cert) {
                break;
            }
        }
        let now_at = self.nodes[i].next_height();
        let engine_at = self.nodes[i].engine.as_ref().and_then(|e| e.height());
        if now_at > before && engine_at.is_some_and(|h| h < now_at) {
            self.out.syncs += 1;
            let node = &mut self.nodes[i];
            node.life += 1;
            node.timers.clear();
            node.bodies.retain(|_, b| b.header.height >= now_at);
            node.engine = Some(MalachiteEngine::new(
                EngineConfig::new(CHAIN),
                node.key.clone(),
            ));
            self.start(i, now_at);
        }
    }

    /// Appends a block from a peer if it follows our tip and its certificate verifies.
    fn append_verified(&mut self, i: usize, block: Block, cert: CommitCertificate) -> bool {
        let tip = self.nodes[i].tip().map(|b| b.header.clone());
        let hash = validate_block(tip.as_ref(), &block, &self.roster);
        let certified = cert.verify(&CHAIN, &self.delegates).is_ok()
            && cert.height == block.header.height
            && hash.as_ref().is_ok_and(|h| *h == cert.block);
        if !certified {
            self.out
                .errors
                .push(format!("node {i}: a synced block does not verify"));
            return false;
        }
        self.record_final(block.header.height);
        self.nodes[i].chain.push((block, cert));
        true
    }

    /// A block body arrived: validate it against the tip, store it, give the verdict.
    fn on_body(&mut self, i: usize, block: Block, round: Round) {
        let height = self.nodes[i].next_height();
        match block.header.height.cmp(&height) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Greater => self.nodes[i].pending_bodies.push((block, round)),
            std::cmp::Ordering::Equal => {
                let valid =
                    validate_block(self.nodes[i].tip().map(|b| &b.header), &block, &self.roster)
                        .is_ok();
                let hash = block.header.hash();
                let proposer = block.header.producer;
                // Stored before the verdict is fed: a logged verdict refers to the body by hash.
                if valid {
                    self.nodes[i].bodies.insert(hash, block);
                }
                self.feed(
                    i,
                    EngineInput::BlockReceived {
                        height,
                        round,
                        proposer,
                        block: hash,
                        valid,
                    },
                );
            }
        }
    }

    fn start(&mut self, i: usize, height: u64) {
        // A new log for the new height.
        self.nodes[i].wal.clear();
        self.nodes[i].wal_unflushed.clear();
        self.nodes[i].wal_height = height;
        self.feed(
            i,
            EngineInput::StartHeight {
                height,
                delegates: self.delegates.clone(),
            },
        );
        self.feed_pending_bodies(i);
    }

    fn feed_pending_bodies(&mut self, i: usize) {
        let pending = std::mem::take(&mut self.nodes[i].pending_bodies);
        for (block, round) in pending {
            if self.up(i) {
                self.on_body(i, block, round);
            }
        }
    }

    fn feed(&mut self, i: usize, input: EngineInput) {
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        let is_propose = matches!(input, EngineInput::Propose { .. });
        self.out.inputs += 1;
        let t0 = Instant::now();
        let result = engine.handle(input, self.now);
        self.out.engine_time += t0.elapsed();
        match result {
            Ok(effects) => {
                if is_propose
                    && self.cfg.k == 1
                    && effects
                        .iter()
                        .any(|e| matches!(e, EngineEffect::Finalized { .. }))
                {
                    self.out.final_in_propose_call += 1;
                }
                self.perform(i, effects);
            }
            Err(e) => self.engine_error(i, e),
        }
    }

    fn engine_error(&mut self, i: usize, e: EngineError) {
        self.out
            .errors
            .push(format!("node {i} at {} ms: {e}", self.now));
        if e.is_fatal() {
            self.nodes[i].engine = None;
        }
    }

    /// Performs effects in order, the way the sidecar's runtime will.
    fn perform(&mut self, i: usize, effects: Vec<EngineEffect>) {
        for effect in effects {
            if !self.up(i) {
                // Killed in the middle of the call: the rest never happened.
                return;
            }
            if effect.needs_durable_log() {
                let node = &mut self.nodes[i];
                let flushed = std::mem::take(&mut node.wal_unflushed);
                node.wal.extend(flushed);
            }
            match effect {
                EngineEffect::Persist(entry) => self.nodes[i].wal_unflushed.push(entry.to_bytes()),
                EngineEffect::Broadcast(message) => self.on_broadcast(i, message),
                EngineEffect::Schedule { timer, at } => {
                    self.token += 1;
                    let token = self.token;
                    self.nodes[i].timers.insert(timer, token);
                    self.at(
                        at,
                        Event::Timer {
                            node: i,
                            timer,
                            token,
                        },
                    );
                }
                EngineEffect::Cancel(timer) => {
                    self.nodes[i].timers.remove(&timer);
                }
                EngineEffect::CancelAll => self.nodes[i].timers.clear(),
                EngineEffect::BuildBlock { height, round, .. } => self.build(i, height, round),
                EngineEffect::Restream { block, round, .. } => {
                    if let Some(body) = self.nodes[i].bodies.get(&block).cloned() {
                        self.broadcast(i, &Packet::Body(body, round));
                    }
                }
                EngineEffect::Decided { .. } | EngineEffect::RoundStarted { .. } => {}
                EngineEffect::Finalized {
                    height,
                    block,
                    certificate,
                    evidence,
                } => self.finalized(i, height, block, certificate, evidence),
            }
        }
    }

    fn build(&mut self, i: usize, height: u64, round: Round) {
        let producer = BlockProducer::new(PublicKey::of(&self.nodes[i].key));
        let mut block = producer.propose(
            self.nodes[i].tip().map(|b| &b.header),
            Vec::new(),
            0,
            Timestamp(self.now),
        );
        debug_assert_eq!(block.header.height, height);
        if self.cfg.bad_proposer == Some(i) {
            // Not linked to the chain: every validator refuses it.
            block.header.previous = Hash256([0xba; 32]);
        }
        let hash = block.header.hash();
        self.nodes[i].bodies.insert(hash, block);
        let life = self.nodes[i].life;
        self.at(
            self.now + 1,
            Event::Built {
                node: i,
                life,
                height,
                round,
                block: hash,
            },
        );
    }

    fn on_broadcast(&mut self, i: usize, message: ConsensusMessage) {
        self.record_sent(i, &message);
        if let ConsensusMessage::Proposal(p) = &message {
            // Our own proposal: its body goes out with it.
            if let Some(body) = self.nodes[i].bodies.get(&p.block).cloned() {
                self.broadcast(i, &Packet::Body(body, p.round));
            }
        }
        if self.cfg.withholder == Some(i) && matches!(message, ConsensusMessage::Vote(_)) {
            return;
        }
        self.broadcast(i, &Packet::Consensus(message.to_bytes()));
        if self.cfg.equivocator == Some(i) {
            self.equivocate(i, &message);
        }
        if let (Some(CrashAt::AfterPrevote { node, height }), ConsensusMessage::Vote(v)) =
            (self.cfg.crash, &message)
        {
            if node == i && v.height == height && v.kind == VoteKind::Prevote && !self.crash_done {
                self.crash_done = true;
                self.crash(i);
            }
        }
    }

    /// The double-sign check, outside the node: what each honest delegate sent, by slot.
    fn record_sent(&mut self, i: usize, message: &ConsensusMessage) {
        if !self.cfg.honest(i) {
            return;
        }
        let (height, round, what, value) = match message {
            ConsensusMessage::Vote(v) => {
                let what = match v.kind {
                    VoteKind::Prevote => "prevote",
                    VoteKind::Precommit => "precommit",
                };
                (v.height, v.round.0, what, v.to_bytes_of_value())
            }
            ConsensusMessage::Proposal(p) => {
                (p.height, p.round.0, "proposal", p.to_bytes_of_value())
            }
            _ => return,
        };
        match self.sent.get(&(i, height, round, what)) {
            Some(before) if *before != value => self.out.double_signs.push(format!(
                "node {i} sent two {what}s at height {height} round {round}"
            )),
            Some(_) => {}
            None => {
                self.sent.insert((i, height, round, what), value);
            }
        }
    }

    fn equivocate(&mut self, i: usize, message: &ConsensusMessage) {
        let key = self.nodes[i].key.clone();
        match message {
            ConsensusMessage::Vote(v) if v.block.is_some() => {
                let twin = Vote::sign(v.kind, v.height, v.round, None, &CHAIN, &key);
                self.broadcast(
                    i,
                    &Packet::Consensus(ConsensusMessage::Vote(twin).to_bytes()),
                );
            }
            ConsensusMessage::Proposal(p) => {
                let Some(body) = self.nodes[i].bodies.get(&p.block) else {
                    return;
                };
                let mut twin_body = body.clone();
                twin_body.header.time = Timestamp(twin_body.header.time.0 + 1);
                let twin_hash = twin_body.header.hash();
                let twin = Proposal::sign(p.height, p.round, p.pol_round, twin_hash, &CHAIN, &key);
                self.broadcast(i, &Packet::Body(twin_body, p.round));
                self.broadcast(
                    i,
                    &Packet::Consensus(ConsensusMessage::Proposal(twin).to_bytes()),
                );
            }
            _ => {}
        }
    }

    fn finalized(
        &mut self,
        i: usize,
        height: u64,
        block: Hash256,
        certificate: CommitCertificate,
        evidence: Vec<Evidence>,
    ) {
        if certificate.block != block || certificate.height != height {
            self.out.errors.push(format!(
                "node {i}: certificate of {height} names another block"
            ));
        }
        if let Err(e) = certificate.verify(&CHAIN, &self.delegates) {
            self.out
                .errors
                .push(format!("node {i}: certificate of {height} fails: {e}"));
        }
        for e in evidence {
            if let Err(err) = e.verify(&CHAIN, &self.delegates) {
                self.out
                    .errors
                    .push(format!("node {i}: evidence at {height} fails: {err}"));
            }
            self.out.evidence.push((i, height, e));
        }
        let Some(body) = self.nodes[i].bodies.get(&block).cloned() else {
            self.out
                .errors
                .push(format!("node {i}: finalized {height} without its body"));
            return;
        };
        if let Some(bad) = self.cfg.bad_proposer {
            if body.header.producer == PublicKey::of(&self.nodes[bad].key)
                && body.header.previous == Hash256([0xba; 32])
            {
                self.out.bad_blocks_finalized.push(height);
            }
        }
        // The agreement check, at the moment a block is stored.
        for (j, other) in self.nodes.iter().enumerate() {
            if let Some((b, _)) = other.chain.get(height as usize) {
                if b.header.hash() != block {
                    self.out.conflicts.push(format!(
                        "height {height}: node {i} finalized {block}, node {j} holds {}",
                        b.header.hash()
                    ));
                }
            }
        }
        self.record_final(height);
        // Store the block with its certificate, drop the bodies of the height, start a new log,
        // then the next height.
        let node = &mut self.nodes[i];
        node.chain.push((body, certificate));
        node.bodies.retain(|_, b| b.header.height > height);
        node.wal.clear();
        node.wal_unflushed.clear();
        let life = node.life;
        self.at(
            self.now,
            Event::Start {
                node: i,
                life,
                height: height + 1,
            },
        );
    }

    fn record_final(&mut self, height: u64) {
        self.out.finalized_at.entry(height).or_insert(self.now);
    }

    fn random_crash(&mut self) {
        let Some(CrashAt::Random { period }) = self.cfg.crash else {
            return;
        };
        if self.crashed.is_empty() {
            let candidates: Vec<usize> = (0..self.cfg.k)
                .filter(|&i| self.cfg.honest(i) && self.up(i))
                .collect();
            if !candidates.is_empty() {
                let i = candidates[(self.rand() as usize) % candidates.len()];
                self.crash(i);
            }
        }
        self.at(self.now + period, Event::RandomCrash);
    }

    /// SIGKILL: memory is lost, the unflushed tail of the log too; the disk stays.
    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.engine = None;
        node.life += 1;
        node.wal_unflushed.clear();
        node.timers.clear();
        node.pending_bodies.clear();
        self.crashed.insert(i);
        self.down_since = self.now;
        self.at(self.now + self.cfg.down_for, Event::Restart { node: i });
    }

    /// The restart procedure of `consensus/BFT.md`: catch up on finalized blocks (each verified),
    /// then replay the log if it is for the next height, or start it afresh.
    fn restart(&mut self, i: usize) {
        self.crashed.remove(&i);
        self.out.restarts += 1;
        self.out.downtime.push((i, self.down_since, self.now));
        self.nodes[i].sync_asked = None;
        let source = (0..self.cfg.k)
            .filter(|&j| j != i && self.up(j))
            .max_by_key(|&j| self.nodes[j].chain.len());
        if let Some(j) = source {
            let have = self.nodes[i].chain.len();
            let missing: Vec<(Block, CommitCertificate)> =
                self.nodes[j].chain.iter().skip(have).cloned().collect();
            for (block, cert) in missing {
                if !self.append_verified(i, block, cert) {
                    break;
                }
            }
        }
        let height = self.nodes[i].next_height();
        let mut engine = MalachiteEngine::new(EngineConfig::new(CHAIN), self.nodes[i].key.clone());
        let mut wal = Vec::new();
        if self.nodes[i].wal_height == height {
            for bytes in &self.nodes[i].wal {
                match WalEntry::from_bytes(bytes) {
                    Ok(entry) => wal.push(entry),
                    Err(e) => self
                        .out
                        .errors
                        .push(format!("node {i}: bad log entry: {e}")),
                }
            }
        } else {
            // The height the log guarded is final: nothing to replay.
            self.nodes[i].wal.clear();
            self.nodes[i].wal_height = height;
        }
        self.out.replayed_entries += wal.len();
        let t0 = Instant::now();
        let result = engine.replay(height, self.delegates.clone(), wal, self.now);
        self.out.engine_time += t0.elapsed();
        self.nodes[i].engine = Some(engine);
        match result {
            Ok(effects) => self.perform(i, effects),
            Err(e) => self.engine_error(i, e),
        }
        self.feed_pending_bodies(i);
    }

    /// Injects a message as if `from` had sent it to `to` (a scripted adversary).
    pub(crate) fn inject(&mut self, time: Millis, to: usize, message: ConsensusMessage) {
        self.at(
            time,
            Event::Deliver {
                from: to,
                to,
                packet: Packet::Consensus(message.to_bytes()),
            },
        );
    }

    /// Injects a block body to `to`.
    pub(crate) fn inject_body(&mut self, time: Millis, to: usize, block: Block, round: Round) {
        self.at(
            time,
            Event::Deliver {
                from: to,
                to,
                packet: Packet::Body(block, round),
            },
        );
    }
}

/// What a vote or proposal commits to, for the double-sign check.
trait ValueBytes {
    fn to_bytes_of_value(&self) -> Vec<u8>;
}

impl ValueBytes for Vote {
    fn to_bytes_of_value(&self) -> Vec<u8> {
        self.block.map_or_else(Vec::new, |h| h.0.to_vec())
    }
}

impl ValueBytes for Proposal {
    fn to_bytes_of_value(&self) -> Vec<u8> {
        let mut v = self.block.0.to_vec();
        v.extend(
            self.pol_round
                .map_or(u64::MAX, |r| u64::from(r.0))
                .to_be_bytes(),
        );
        v
    }
}
