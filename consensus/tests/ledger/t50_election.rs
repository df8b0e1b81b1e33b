//! The election on the shared chain, in one process: seven members' real drivers (Malachite's
//! engine, sled chains) exchange their messages in memory on a simulated clock, submit their
//! election duties as the sidecar's runtime does, and elect four delegates every ledger epoch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use fhirseal_consensus::bft::{
    ConsensusMessage, EngineConfig, MalachiteEngine, Millis, Timer, Vote, VoteKind,
};
use fhirseal_consensus::election::beacon::BeaconKey;
use fhirseal_consensus::election::lsag::{self, Scope, VoteSecret};
use fhirseal_consensus::election::schedule::{self, Seat};
use fhirseal_consensus::election::{elect, standing};
use fhirseal_consensus::ledger::{
    Effect, ElectionKeys, ElectionTracker, FixedContext, FixedElection, History, Input, Outbound,
    Recipients,
};
use fhirseal_consensus::{
    chain_id, BatchId, DelegateSet, Driver, DriverConfig, ElectionItem, EvidenceBatch, PublicKey,
    Roster, SigningKey, Submitted, Timestamp, Transaction,
};

use crate::support::db;

const MEMBERS: usize = 7;
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

struct Node {
    _dir: tempfile::TempDir,
    chain: fhirseal_consensus::Chain,
    driver: SimDriver,
    /// One governance epoch that never changes: every member seated, m1..m4 its top-stake
    /// delegates.
    ctx: FixedContext,
    timers: BTreeMap<Timer, Millis>,
    inbox: VecDeque<Input>,
}

fn config(delegates: usize) -> schedule::Config {
    schedule::Config {
        chain: chain_id(CONSORTIUM).0.to_vec(),
        epoch_blocks: EPOCH_BLOCKS,
        election: elect::Params {
            delegates,
            max_consecutive: 1,
        },
        standing: standing::Params::default(),
    }
}

fn nodes(members: &[Member], delegates: usize) -> Vec<Node> {
    let keys: Vec<(String, PublicKey)> = members
        .iter()
        .map(|m| (m.name.clone(), PublicKey::of(&m.signing)))
        .collect();
    let founders: Vec<(String, PublicKey)> = keys[..delegates].to_vec();
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
            let tracker = ElectionTracker::new(
                config(delegates),
                founders.iter().map(|(n, _)| n.clone()).collect(),
            )
            .unwrap();
            let driver: SimDriver = Driver::new(
                driver_config,
                m.name.clone(),
                MalachiteEngine::new as fn(EngineConfig, SigningKey) -> MalachiteEngine,
                chain.tip().cloned(),
            )
            .with_election(tracker);
            let ctx = FixedContext {
                reader: chain.reader(),
                roster: roster.clone(),
                members: founders.iter().map(|(n, _)| n.clone()).collect(),
                keys: vec![m.signing.clone()],
                holding: true,
                election: Some(FixedElection {
                    seats: seats.clone(),
                    history: Arc::new(History::new()),
                    epoch_blocks: EPOCH_BLOCKS,
                }),
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
/// (answered from the asked node's chain); a double signer's prevotes go out with a conflicting
/// nil prevote; evidence becomes the node's evidence batch, submitted everywhere.
async fn perform(
    nodes: &mut [Node],
    at: usize,
    effects: Vec<Effect>,
    now: Millis,
    plan: &Plan,
    members: &[Member],
) {
    let names: Vec<String> = (0..nodes.len()).map(|i| format!("m{}", i + 1)).collect();
    for effect in effects {
        match effect {
            Effect::Append(block) => {
                let node = &mut nodes[at];
                let history = node.driver.election().unwrap().history().clone();
                node.ctx.election.as_mut().unwrap().history = history;
                node.chain
                    .append(&block, &node.ctx.rosters())
                    .await
                    .unwrap();
            }
            Effect::Schedule { timer, at: when } => {
                nodes[at].timers.insert(timer, when);
            }
            Effect::Cancel(timer) => {
                nodes[at].timers.remove(&timer);
            }
            Effect::CancelAll => nodes[at].timers.clear(),
            Effect::Evidence(evidence) => {
                let id = BatchId([at as u8 + 1; 16].map(|b| b ^ (evidence[0].height() as u8)));
                let batch = EvidenceBatch::sign(
                    id,
                    members[at].name.clone(),
                    evidence,
                    &members[at].signing,
                )
                .unwrap();
                let tx = Transaction::Evidence(batch);
                let wall = Timestamp(1_700_000_000_000 + now);
                for i in 0..nodes.len() {
                    let node = &mut nodes[i];
                    let (_, effects) = node
                        .driver
                        .submit(vec![tx.clone()], now, wall, &node.ctx)
                        .unwrap();
                    Box::pin(perform(nodes, i, effects, now, plan, members)).await;
                }
            }
            Effect::Send { to, message } => {
                let conflicting = match (&message, plan.double_signer) {
                    (Outbound::Message(ConsensusMessage::Vote(v)), Some((who, from)))
                        if who == at
                            && v.kind == VoteKind::Prevote
                            && v.block.is_some()
                            && v.height >= from =>
                    {
                        Some(Outbound::Message(ConsensusMessage::Vote(Vote::sign(
                            VoteKind::Prevote,
                            v.height,
                            v.round,
                            None,
                            &chain_id(CONSORTIUM),
                            &members[at].signing,
                        ))))
                    }
                    _ => None,
                };
                let silenced = plan.silent == Some(at)
                    && matches!(&message, Outbound::Message(ConsensusMessage::Vote(v)) if v.kind == VoteKind::Precommit);
                if silenced {
                    continue;
                }
                let messages: Vec<Outbound> = std::iter::once(message).chain(conflicting).collect();
                for message in messages {
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
}

/// Who misbehaves in a simulation, and how.
#[derive(Default)]
struct Plan {
    /// K.
    delegates: usize,
    /// This member commits and never reveals.
    withholder: Option<usize>,
    /// This member sends a conflicting prevote beside each of its prevotes from this height.
    double_signer: Option<(usize, u64)>,
    /// These members always vote for `favorite`.
    colluders: Vec<usize>,
    favorite: usize,
    /// This member, when a delegate, never sends its precommits.
    silent: Option<usize>,
}

/// What a simulation saw: the ballots refused, and the nodes at the end.
struct Run {
    nodes: Vec<Node>,
    double_ballots: usize,
    forged_ballots: usize,
    replayed_ballots: usize,
}

/// Runs the seven members until every node has stored `EPOCHS` ledger epochs, each submitting
/// its election duties for the coming height (as the sidecar's runtime does) and trying, once per
/// epoch, a second ballot, a ballot over a ring of strangers and a ballot replayed from the epoch
/// before: each must be refused.
async fn simulate(members: &[Member], plan: &Plan) -> Run {
    let mut nodes = nodes(members, plan.delegates);
    let target = EPOCHS * EPOCH_BLOCKS;
    let mut now: Millis = 0;
    let mut submitted_heights = [u64::MAX; MEMBERS];
    let mut last_ballot: Vec<Option<Transaction>> = vec![None; MEMBERS];
    let (mut double_ballots, mut forged_ballots, mut replayed_ballots) = (0, 0, 0);
    let strangers: Vec<VoteSecret> = (0..MEMBERS)
        .map(|i| {
            let mut b = [0u8; 32];
            b[0] = 200 + i as u8;
            VoteSecret::from_bytes(b).unwrap()
        })
        .collect();
    while nodes.iter().any(|n| n.driver.height() <= target) {
        assert!(
            now < 600_000,
            "the simulated consortium stalled at {:?}",
            heights(&nodes)
        );
        now += 10;
        let wall = Timestamp(1_700_000_000_000 + now);
        for at in 0..nodes.len() {
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
                let epoch = height / EPOCH_BLOCKS;
                let candidate = if plan.colluders.contains(&at) {
                    members[plan.favorite].name.clone()
                } else {
                    members[(at + epoch as usize) % MEMBERS].name.clone()
                };
                let mut duties = nodes[at]
                    .driver
                    .election()
                    .unwrap()
                    .duties(&keys, Some(&candidate));
                if plan.withholder == Some(at) {
                    duties.retain(|tx| {
                        !matches!(tx, Transaction::Election(b)
                            if b.items.iter().any(|i| matches!(i, ElectionItem::Reveal { .. })))
                    });
                }
                for i in 0..nodes.len() {
                    let node = &mut nodes[i];
                    let (_, effects) = node
                        .driver
                        .submit(duties.clone(), now, wall, &node.ctx)
                        .unwrap();
                    perform(&mut nodes, i, effects, now, plan, members).await;
                }
                if let Some(Transaction::Ballot(first)) = duties
                    .iter()
                    .find(|t| matches!(t, Transaction::Ballot(_)))
                    .cloned()
                {
                    let tracker = nodes[at].driver.election().unwrap();
                    let ring = schedule::ring(tracker.state().seats());
                    let chain = config(plan.delegates).chain;
                    let scope = Scope {
                        chain: &chain,
                        epoch: first.epoch,
                    };
                    let other = if first.candidate == "m1" { "m2" } else { "m1" };
                    let message = schedule::ballot_message(other, first.epoch);
                    // A second ballot of the same voter in the same epoch.
                    let second = lsag::sign(&scope, &ring, &m.vote, &message).unwrap();
                    // A stranger's ballot over a ring of strangers: it verifies against that
                    // ring, never against the epoch's voters.
                    let forged_ring: Vec<[u8; 32]> =
                        strangers.iter().map(VoteSecret::public).collect();
                    let forged =
                        lsag::sign(&scope, &forged_ring, &strangers[at], &message).unwrap();
                    let mut attempts = vec![
                        (0, ballot(first.epoch, other, second)),
                        (1, ballot(first.epoch, other, forged)),
                    ];
                    // Last epoch's ballot, replayed.
                    if let Some(old) = last_ballot[at].replace(Transaction::Ballot(first.clone())) {
                        attempts.push((2, old));
                    }
                    for (kind, tx) in attempts {
                        let node = &mut nodes[at];
                        let (answers, effects) =
                            node.driver.submit(vec![tx], now, wall, &node.ctx).unwrap();
                        let refused = match &answers[0] {
                            Err(_) => true,
                            // The same key image as the first ballot: the pool or the chain
                            // holds it already, and nothing more is queued.
                            Ok(Submitted::AlreadyPending) => kind == 0,
                            // A replayed ballot is the very transaction the chain holds.
                            Ok(Submitted::AlreadyAnchored(_)) => kind != 1,
                            Ok(_) => false,
                        };
                        assert!(
                            refused,
                            "a ballot (kind {kind}) was queued: {:?}",
                            answers[0]
                        );
                        match kind {
                            0 => double_ballots += 1,
                            1 => forged_ballots += 1,
                            _ => replayed_ballots += 1,
                        }
                        perform(&mut nodes, at, effects, now, plan, members).await;
                    }
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
                perform(&mut nodes, at, effects, now, plan, members).await;
            }
        }
    }
    Run {
        nodes,
        double_ballots,
        forged_ballots,
        replayed_ballots,
    }
}

fn ballot(epoch: u64, candidate: &str, signature: lsag::RingSignature) -> Transaction {
    Transaction::Ballot(fhirseal_consensus::Ballot {
        epoch,
        candidate: candidate.to_owned(),
        signature,
    })
}

/// Every node's closed epochs, checked equal; those of the first node.
fn agreed(run: &Run) -> Vec<schedule::Closed> {
    let states: Vec<_> = run
        .nodes
        .iter()
        .map(|n| n.driver.election().unwrap().state().closed()[..(EPOCHS as usize - 1)].to_vec())
        .collect();
    for s in &states[1..] {
        assert_eq!(s, &states[0], "members disagree on the elections");
    }
    states[0].clone()
}

/// The penalties (not reputation changes) of `closed`, by member.
fn penalties(closed: &[schedule::Closed]) -> Vec<(u64, standing::Change)> {
    closed
        .iter()
        .flat_map(|c| {
            c.changes
                .iter()
                .filter(|ch| !matches!(ch, standing::Change::Reputation { .. }))
                .map(|ch| (c.epoch, ch.clone()))
        })
        .collect()
}

#[tokio::test]
async fn seven_members_elect_four_delegates_every_epoch_and_agree() {
    let members = members();
    let plan = Plan {
        delegates: 4,
        ..Plan::default()
    };
    let run = simulate(&members, &plan).await;
    let closed = agreed(&run);
    assert!(closed.len() >= (EPOCHS - 1) as usize);
    for c in &closed {
        assert_eq!(c.elected.len(), 4, "epoch {}: {:?}", c.epoch, c);
        assert!(
            c.votes.values().sum::<u32>() >= MEMBERS as u32,
            "epoch {}: every member's ballot counts once: {:?}",
            c.epoch,
            c.votes
        );
    }
    // Nobody here misbehaves: no honest member is penalized.
    assert_eq!(penalties(&closed), []);
    // With M = 1 nobody serves two epochs in a row while others can: of 7 members and 4 seats,
    // at most one delegate of an epoch serves the next.
    for pair in closed.windows(2) {
        let (a, b) = (&pair[0].elected, &pair[1].elected);
        let again = a.iter().filter(|m| b.contains(m)).count();
        assert!(again <= 2 * 4 - MEMBERS, "{a:?} then {b:?}");
    }
    // Each block of ledger epoch ≥ 2 was certified by the delegates elected for it.
    let chain = &run.nodes[0].chain;
    let tracker = run.nodes[0].driver.election().unwrap();
    for height in 2 * EPOCH_BLOCKS + 1..=EPOCHS * EPOCH_BLOCKS {
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
        // Each block carries the previous one's commit, once.
        let commits = block
            .block
            .transactions
            .iter()
            .filter(|tx| matches!(tx, Transaction::LastCommit(c) if c.height + 1 == height))
            .count();
        assert_eq!(commits, 1, "height {height}");
        // Ballots on the chain name no institution.
        for tx in &block.block.transactions {
            if let Transaction::Ballot(_) = tx {
                assert!(tx.header().is_none());
                assert!(tx.id().institution.is_empty());
            }
        }
    }
    assert!(run.double_ballots > 0 && run.forged_ballots > 0 && run.replayed_ballots > 0);
}

#[tokio::test]
async fn byzantine_members_are_penalized_once_each_and_honest_ones_never() {
    let members = members();
    // K = 2. m7 withholds its reveals; m6 double signs whenever it is a delegate from height 10
    // on; m1 and m2 always vote for m3, trying to keep it in office.
    let plan = Plan {
        delegates: 2,
        withholder: Some(6),
        double_signer: Some((5, 10)),
        colluders: vec![0, 1],
        favorite: 2,
        silent: None,
    };
    let run = simulate(&members, &plan).await;
    let closed = agreed(&run);
    let penalties = penalties(&closed);
    // The withholder is jailed once for each epoch it committed in without revealing: every
    // closed epoch, since it stays a seated member.
    for c in &closed {
        let jailed_m7 = penalties
            .iter()
            .filter(|(e, ch)| {
                *e == c.epoch
                    && matches!(ch, standing::Change::Jail { member, .. } if member == "m7")
            })
            .count();
        assert_eq!(jailed_m7, 1, "epoch {}: {penalties:?}", c.epoch);
    }
    // The double signer: slashed and tombstoned once, never elected after.
    let tombstones: Vec<u64> = penalties
        .iter()
        .filter(|(_, ch)| {
            *ch == standing::Change::Tombstone {
                member: "m6".into(),
            }
        })
        .map(|(e, _)| *e)
        .collect();
    assert_eq!(tombstones.len(), 1, "{penalties:?}");
    let slashes = penalties
        .iter()
        .filter(|(_, ch)| matches!(ch, standing::Change::Slash { member, .. } if member == "m6"))
        .count();
    assert_eq!(slashes, 1, "{penalties:?}");
    for c in closed.iter().filter(|c| c.epoch >= tombstones[0]) {
        assert!(!c.elected.contains(&"m6".to_owned()), "{c:?}");
    }
    // Nobody else is penalized.
    for (epoch, change) in &penalties {
        let who = match change {
            standing::Change::Slash { member, .. }
            | standing::Change::Tombstone { member }
            | standing::Change::Jail { member, .. }
            | standing::Change::Reputation { member, .. } => member,
        };
        assert!(who == "m6" || who == "m7", "epoch {epoch}: {change:?}");
    }
    // The colluders' favourite gets their votes, and still never serves two epochs in a row
    // (M = 1, K = 2, and at least three others can always stand).
    assert!(closed
        .iter()
        .all(|c| c.votes.get("m3").copied().unwrap_or(0) >= 2));
    for pair in closed.windows(2) {
        assert!(
            !(pair[0].elected.contains(&"m3".to_owned())
                && pair[1].elected.contains(&"m3".to_owned())),
            "m3 kept in office: {:?} then {:?}",
            pair[0].elected,
            pair[1].elected
        );
    }
    assert!(run.double_ballots > 0 && run.forged_ballots > 0 && run.replayed_ballots > 0);
}

fn heights(nodes: &[Node]) -> Vec<u64> {
    nodes.iter().map(|n| n.driver.height()).collect()
}

#[tokio::test]
async fn a_delegate_that_never_precommits_is_jailed_for_its_absence_and_nobody_else() {
    let members = members();
    // K = 4: three precommits finalize without m4's, which never sends them.
    let plan = Plan {
        delegates: 4,
        silent: Some(3),
        ..Plan::default()
    };
    let run = simulate(&members, &plan).await;
    let closed = agreed(&run);
    let penalties = penalties(&closed);
    let tracker = run.nodes[0].driver.election().unwrap();
    for c in &closed {
        let served = tracker
            .state()
            .delegates(c.epoch)
            .is_some_and(|d| d.contains(&"m4".to_owned()));
        let jailed = penalties
            .iter()
            .filter(|(e, ch)| {
                *e == c.epoch
                    && matches!(ch, standing::Change::Jail { member, .. } if member == "m4")
            })
            .count();
        assert_eq!(
            jailed,
            usize::from(served),
            "epoch {}: m4 served: {served}; {penalties:?}",
            c.epoch
        );
    }
    assert!(
        penalties
            .iter()
            .any(|(_, ch)| matches!(ch, standing::Change::Jail { member, .. } if member == "m4")),
        "m4 never served: {closed:?}"
    );
    for (epoch, change) in &penalties {
        assert!(
            matches!(change, standing::Change::Jail { member, .. } if member == "m4"),
            "epoch {epoch}: {change:?}"
        );
    }
}
