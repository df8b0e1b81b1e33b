//! The election on the shared chain, in one process: seven members' real drivers (Malachite's
//! engine, sled chains) exchange their messages in memory on a simulated clock, submit their
//! election duties as the sidecar's runtime does, and elect four delegates every ledger epoch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use fhirseal_consensus::bft::{EngineConfig, MalachiteEngine, Millis, Timer};
use fhirseal_consensus::election::beacon::BeaconKey;
use fhirseal_consensus::election::lsag::VoteSecret;
use fhirseal_consensus::election::schedule::{self, Seat};
use fhirseal_consensus::election::{elect, standing};
use fhirseal_consensus::ledger::{
    Effect, ElectedRosters, ElectionKeys, ElectionTracker, History, Input, LedgerContext, Outbound,
    Recipients, RosterUse,
};
use fhirseal_consensus::{
    chain_id, ChainReader, DelegateSet, Driver, DriverConfig, EntryLocation, PublicKey, Roster,
    SigningKey, Submitted, Timestamp, Transaction, TxLocation,
};

use crate::support::db;

const MEMBERS: usize = 7;
const DELEGATES: usize = 4;
const EPOCH_BLOCKS: u64 = 9;
const EPOCHS: u64 = 6;
const CONSORTIUM: &str = "election consortium";

type SimDriver = Driver<MalachiteEngine, fn(EngineConfig, SigningKey) -> MalachiteEngine>;

struct Member {
    name: String,
    signing: SigningKey,
    vote: VoteSecret,
    beacon: BeaconKey,
}

fn members() -> Vec<Member> {
    (0..MEMBERS)
        .map(|i| {
            let mut vote = [0u8; 32];
            vote[0] = 10 + i as u8;
            Member {
                name: format!("m{}", i + 1),
                signing: SigningKey::from_bytes(&[40 + i as u8; 32]),
                vote: VoteSecret::from_bytes(vote).unwrap(),
                beacon: BeaconKey::from_seed(&[70 + i as u8; 32]).unwrap(),
            }
        })
        .collect()
}

/// One governance epoch that never changes: every member seated, m1..m4 its top-stake
/// delegates.
struct SimContext {
    reader: ChainReader,
    roster: Arc<Roster>,
    founders: Vec<(String, PublicKey)>,
    seats: Vec<(Seat, PublicKey)>,
    key: SigningKey,
    history: Arc<History>,
}

impl LedgerContext for SimContext {
    fn roster(&self, epoch: u64, _: RosterUse) -> Option<Arc<Roster>> {
        (epoch == 0).then(|| self.roster.clone())
    }

    fn delegates(&self, epoch: u64) -> Option<Vec<(String, PublicKey)>> {
        (epoch == 0).then(|| self.founders.clone())
    }

    fn seats(&self, epoch: u64) -> Option<Vec<(Seat, PublicKey)>> {
        (epoch == 0).then(|| self.seats.clone())
    }

    fn latest_epoch(&self) -> Option<u64> {
        Some(0)
    }

    fn transaction(&self, key: &[u8]) -> fhirseal_consensus::Result<Option<TxLocation>> {
        self.reader.locate_transaction(key)
    }

    fn anchor(&self, key: &[u8]) -> fhirseal_consensus::Result<Option<EntryLocation>> {
        self.reader.anchor(key)
    }

    fn check_evidence(&self, height: u64, txs: &[Transaction]) -> fhirseal_consensus::Result<()> {
        let rosters = ElectedRosters {
            base: &*self.roster,
            history: self.history.clone(),
            epoch_blocks: EPOCH_BLOCKS,
        };
        self.reader.check_evidence(height, txs, &rosters)
    }

    fn signing_key(&self, public: &PublicKey) -> Option<SigningKey> {
        (PublicKey::of(&self.key) == *public).then(|| self.key.clone())
    }
}

struct Node {
    _dir: tempfile::TempDir,
    chain: fhirseal_consensus::Chain,
    driver: SimDriver,
    ctx: SimContext,
    timers: BTreeMap<Timer, Millis>,
    inbox: VecDeque<Input>,
}

fn config() -> schedule::Config {
    schedule::Config {
        chain: chain_id(CONSORTIUM).0.to_vec(),
        epoch_blocks: EPOCH_BLOCKS,
        election: elect::Params {
            delegates: DELEGATES,
            max_consecutive: 1,
        },
        standing: standing::Params::default(),
    }
}

fn nodes(members: &[Member]) -> Vec<Node> {
    let keys: Vec<(String, PublicKey)> = members
        .iter()
        .map(|m| (m.name.clone(), PublicKey::of(&m.signing)))
        .collect();
    let founders: Vec<(String, PublicKey)> = keys[..DELEGATES].to_vec();
    let roster = Arc::new(Roster::new(
        DelegateSet::new(founders.iter().map(|(_, k)| *k).collect()).unwrap(),
        keys.clone(),
    ));
    let seats: Vec<(Seat, PublicKey)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                Seat {
                    member: m.name.clone(),
                    stake: 100 + 10 * (MEMBERS - i) as u64,
                    vote_key: m.vote.public(),
                    beacon_key: m.beacon.public(),
                },
                PublicKey::of(&m.signing),
            )
        })
        .collect();
    members
        .iter()
        .map(|m| {
            let (dir, db) = db();
            let chain = chain_on(&db);
            let mut driver_config = DriverConfig::new(EngineConfig::new(chain_id(CONSORTIUM)));
            driver_config.idle_block_interval = 200;
            let tracker =
                ElectionTracker::new(config(), founders.iter().map(|(n, _)| n.clone()).collect())
                    .unwrap();
            let driver: SimDriver = Driver::new(
                driver_config,
                m.name.clone(),
                MalachiteEngine::new as fn(EngineConfig, SigningKey) -> MalachiteEngine,
                chain.tip().cloned(),
            )
            .with_election(tracker);
            let ctx = SimContext {
                reader: chain.reader(),
                roster: roster.clone(),
                founders: founders.clone(),
                seats: seats.clone(),
                key: m.signing.clone(),
                history: Arc::new(History::new()),
            };
            Node {
                _dir: dir,
                chain,
                driver,
                ctx,
                timers: BTreeMap::new(),
                inbox: VecDeque::new(),
            }
        })
        .collect()
}

fn chain_on(db: &sled::Db) -> fhirseal_consensus::Chain {
    fhirseal_consensus::Chain::open(
        fhirseal_consensus::ChainStore::open(db).unwrap(),
        chain_id(CONSORTIUM),
    )
    .unwrap()
}

/// Performs one node's effects: appends, timers, messages (into the others' inboxes), syncs
/// (answered from the asked node's chain).
async fn perform(nodes: &mut [Node], at: usize, effects: Vec<Effect>, now: Millis) {
    let names: Vec<String> = (0..nodes.len()).map(|i| format!("m{}", i + 1)).collect();
    for effect in effects {
        match effect {
            Effect::Append(block) => {
                let node = &mut nodes[at];
                let history = node.driver.election().unwrap().history().clone();
                let rosters = ElectedRosters {
                    base: &*node.ctx.roster,
                    history: history.clone(),
                    epoch_blocks: EPOCH_BLOCKS,
                };
                node.chain.append(&block, &rosters).await.unwrap();
                node.ctx.history = history;
            }
            Effect::Schedule { timer, at: when } => {
                nodes[at].timers.insert(timer, when);
            }
            Effect::Cancel(timer) => {
                nodes[at].timers.remove(&timer);
            }
            Effect::CancelAll => nodes[at].timers.clear(),
            Effect::Send { to, message } => {
                let targets: Vec<usize> = (0..nodes.len())
                    .filter(|i| *i != at)
                    .filter(|i| match &to {
                        Recipients::Members(m) => m.contains(&names[*i]),
                        Recipients::AllExcept(m) => !m.contains(&names[*i]),
                    })
                    .collect();
                let from = names[at].clone();
                for i in targets {
                    let input = match &message {
                        Outbound::Message(m) => Input::Message {
                            from: from.clone(),
                            message: m.clone(),
                        },
                        Outbound::Body(block, round) => Input::Body {
                            from: from.clone(),
                            block: block.clone(),
                            round: *round,
                        },
                        Outbound::Block(block) => Input::Blocks {
                            from: Some(from.clone()),
                            blocks: vec![block.clone()],
                        },
                    };
                    nodes[i].inbox.push_back(input);
                }
            }
            Effect::Sync { from, height } => {
                let peer = from
                    .and_then(|f| names.iter().position(|n| *n == f))
                    .unwrap_or((at + 1) % nodes.len());
                let blocks = nodes[peer].chain.reader().blocks_from(height, 64).unwrap();
                if !blocks.is_empty() {
                    nodes[at].inbox.push_back(Input::Blocks {
                        from: Some(names[peer].clone()),
                        blocks,
                    });
                }
            }
            _ => {}
        }
    }
    let _ = now;
}

#[tokio::test]
async fn seven_members_elect_four_delegates_every_epoch_and_agree() {
    let members = members();
    let mut nodes = nodes(&members);
    let target = EPOCHS * EPOCH_BLOCKS;
    let mut now: Millis = 0;
    let mut submitted_heights = [u64::MAX; MEMBERS];
    let mut double_ballots = 0;
    while nodes.iter().any(|n| n.driver.height() <= target) {
        assert!(
            now < 600_000,
            "the simulated consortium stalled at {:?}",
            heights(&nodes)
        );
        now += 10;
        let wall = Timestamp(1_700_000_000_000 + now);
        for at in 0..nodes.len() {
            // Election duties for the coming height, sent to every node as a submission is.
            let height = nodes[at].driver.height();
            if submitted_heights[at] != height {
                submitted_heights[at] = height;
                let m = &members[at];
                let keys = ElectionKeys {
                    member: &m.name,
                    signing: &m.signing,
                    vote: &m.vote,
                    beacon: &m.beacon,
                };
                let candidate = members[(at + height as usize / EPOCH_BLOCKS as usize) % MEMBERS]
                    .name
                    .clone();
                let duties = nodes[at]
                    .driver
                    .election()
                    .unwrap()
                    .duties(&keys, Some(&candidate));
                for i in 0..nodes.len() {
                    let node = &mut nodes[i];
                    let (_, effects) = node
                        .driver
                        .submit(duties.clone(), now, wall, &node.ctx)
                        .unwrap();
                    perform(&mut nodes, i, effects, now).await;
                }
                // A second, different ballot by the same member in the same epoch: refused.
                if let Some(Transaction::Ballot(first)) =
                    duties.iter().find(|t| matches!(t, Transaction::Ballot(_)))
                {
                    let tracker = nodes[at].driver.election().unwrap();
                    let ring = schedule::ring(tracker.state().seats());
                    let scope = fhirseal_consensus::election::lsag::Scope {
                        chain: &config().chain,
                        epoch: first.epoch,
                    };
                    let other = if first.candidate == "m1" { "m2" } else { "m1" };
                    let signature = fhirseal_consensus::election::lsag::sign(
                        &scope,
                        &ring,
                        &m.vote,
                        &schedule::ballot_message(other, first.epoch),
                    )
                    .unwrap();
                    let second = Transaction::Ballot(fhirseal_consensus::Ballot {
                        epoch: first.epoch,
                        candidate: other.to_owned(),
                        signature,
                    });
                    let node = &mut nodes[at];
                    let (answers, effects) = node
                        .driver
                        .submit(vec![second], now, wall, &node.ctx)
                        .unwrap();
                    assert!(
                        matches!(
                            answers[0],
                            Ok(Submitted::AlreadyPending | Submitted::AlreadyAnchored(_))
                        ) || answers[0].is_err(),
                        "a second ballot was queued: {:?}",
                        answers[0]
                    );
                    double_ballots += 1;
                    perform(&mut nodes, at, effects, now).await;
                }
            }
            // Timers due, then the inbox, then a tick.
            let due: Vec<Timer> = nodes[at]
                .timers
                .iter()
                .filter(|(_, when)| **when <= now)
                .map(|(t, _)| *t)
                .collect();
            let mut inputs: Vec<Input> = due
                .into_iter()
                .map(|t| {
                    nodes[at].timers.remove(&t);
                    Input::Timer(t)
                })
                .collect();
            inputs.extend(nodes[at].inbox.drain(..));
            inputs.push(Input::Tick);
            for input in inputs {
                let node = &mut nodes[at];
                let effects = node.driver.handle(input, now, wall, &node.ctx).unwrap();
                perform(&mut nodes, at, effects, now).await;
            }
        }
    }

    // Every member folded the same election.
    let states: Vec<_> = nodes
        .iter()
        .map(|n| n.driver.election().unwrap().state().closed()[..(EPOCHS as usize - 1)].to_vec())
        .collect();
    for s in &states[1..] {
        assert_eq!(s, &states[0], "members disagree on the elections");
    }
    let closed = &states[0];
    assert!(closed.len() >= (EPOCHS - 1) as usize);
    for c in closed {
        assert_eq!(c.elected.len(), DELEGATES, "epoch {}: {:?}", c.epoch, c);
        assert!(
            c.votes.values().sum::<u32>() >= MEMBERS as u32,
            "epoch {}: every member's ballot counts once: {:?}",
            c.epoch,
            c.votes
        );
        // Nobody here misbehaves: no honest member is penalized.
        assert!(
            c.changes.iter().all(|ch| !matches!(
                ch,
                standing::Change::Slash { .. }
                    | standing::Change::Tombstone { .. }
                    | standing::Change::Jail { .. }
            )),
            "epoch {}: {:?}",
            c.epoch,
            c.changes
        );
    }
    // With M = 1 nobody serves two epochs in a row while others can: the sets change.
    for pair in closed.windows(2) {
        let (a, b) = (&pair[0].elected, &pair[1].elected);
        assert!(
            a.iter().all(|m| !b.contains(m)) || MEMBERS < 2 * DELEGATES,
            "{a:?} then {b:?}"
        );
    }
    // Each block of ledger epoch ≥ 2 was certified by the delegates elected for it.
    let chain = &nodes[0].chain;
    let tracker = nodes[0].driver.election().unwrap();
    for height in 2 * EPOCH_BLOCKS + 1..=target {
        let block = chain.block(height).unwrap().unwrap();
        let epoch = schedule::epoch_of(height, EPOCH_BLOCKS);
        let elected = tracker.state().delegates(epoch).unwrap();
        let keys: Vec<PublicKey> = elected
            .iter()
            .map(|name| PublicKey::of(&members.iter().find(|m| m.name == *name).unwrap().signing))
            .collect();
        assert!(keys.contains(&block.header().producer), "height {height}");
        for signature in block.certificate.signatures() {
            assert!(keys.contains(&signature.delegate), "height {height}");
        }
        // Ballots on the chain name no institution.
        for tx in &block.block.transactions {
            if let Transaction::Ballot(_) = tx {
                assert!(tx.header().is_none());
                assert!(tx.id().institution.is_empty());
            }
        }
    }
    assert!(double_ballots > 0);
}

fn heights(nodes: &[Node]) -> Vec<u64> {
    nodes.iter().map(|n| n.driver.height()).collect()
}
