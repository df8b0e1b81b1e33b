//! The election over a simulated chain: members with real vote and beacon keys, blocks fed in
//! height order to several independent states, honest and Byzantine behaviour.

use super::*;
use crate::election::beacon::BeaconKey;
use crate::election::lsag::VoteSecret;

const E: u64 = 9;
const CHAIN: &[u8] = b"test-chain";

struct Member {
    name: String,
    vote: VoteSecret,
    beacon: BeaconKey,
    stake: u64,
}

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            name: format!("h{i}"),
            vote: VoteSecret::from_bytes([i as u8 + 1; 32]).unwrap(),
            beacon: BeaconKey::from_seed(&[i as u8 + 101; 32]).unwrap(),
            stake: 1_000,
        })
        .collect()
}

fn seats(members: &[Member]) -> Vec<Seat> {
    members
        .iter()
        .map(|m| Seat {
            member: m.name.clone(),
            stake: m.stake,
            vote_key: m.vote.public(),
            beacon_key: m.beacon.public(),
        })
        .collect()
}

fn config(k: usize, m: u32) -> Config {
    Config {
        chain: CHAIN.to_vec(),
        epoch_blocks: E,
        election: elect::Params {
            delegates: k,
            max_consecutive: m,
        },
        standing: standing::Params::default(),
    }
}

fn founders(members: &[Member], k: usize) -> Vec<String> {
    members.iter().take(k).map(|m| m.name.clone()).collect()
}

/// How the simulated members behave in one run.
#[derive(Default)]
struct Behaviour {
    /// Members that commit and never reveal.
    withholders: Vec<String>,
    /// Members whose double signing is convicted in this epoch.
    double_signers: Vec<(u64, String)>,
    /// Every voter votes for this candidate (a colluding bloc), else for themselves.
    bloc_vote: Option<String>,
}

/// The honest blocks of one epoch: commits in the first block, reveals in the first block of
/// the reveal phase, every member's ballot in the last block, proposers and signers the epoch's
/// delegates.
fn epoch_blocks(
    state: &ElectionState,
    members: &[Member],
    epoch: u64,
    behaviour: &Behaviour,
) -> Vec<BlockFacts> {
    let (first, last) = bounds(epoch, E);
    let delegates = state.delegates(epoch).unwrap().to_vec();
    let previous_seed = state.previous_seed(epoch).unwrap();
    let input = BeaconInput {
        chain: CHAIN,
        epoch,
        previous_seed,
    };
    let ring = ring(&seats(members));
    let scope = Scope {
        chain: CHAIN,
        epoch,
    };
    (first..=last)
        .map(|height| {
            let mut actions = Vec::new();
            if height == first {
                for m in members {
                    let reveal = m.beacon.contribute(&input);
                    actions.push(Action::Commit {
                        member: m.name.clone(),
                        commitment: reveal.commitment(&m.name, &input),
                    });
                }
            }
            if height == first + E / 3 {
                for m in members {
                    if !behaviour.withholders.contains(&m.name) {
                        actions.push(Action::Reveal {
                            member: m.name.clone(),
                            reveal: m.beacon.contribute(&input),
                        });
                    }
                }
            }
            if height == last {
                for m in members {
                    let candidate = behaviour.bloc_vote.clone().unwrap_or(m.name.clone());
                    let message = ballot_message(&candidate, epoch);
                    let signature = lsag::sign(&scope, &ring, &m.vote, &message).unwrap();
                    actions.push(Action::Ballot {
                        candidate,
                        signature,
                    });
                }
            }
            BlockFacts {
                height,
                proposer: delegates[(height as usize) % delegates.len()].clone(),
                signers: delegates.clone(),
                actions,
                anchors: BTreeMap::new(),
                double_signed: behaviour
                    .double_signers
                    .iter()
                    .filter(|(e, _)| *e == epoch && height == first + 1)
                    .map(|(_, m)| m.clone())
                    .collect(),
                seats: (height == first).then(|| seats(members)),
            }
        })
        .collect()
}

/// Runs `epochs` epochs at three independent states; asserts they agree at every close and
/// returns one of them.
fn run(members: &[Member], config: Config, epochs: u64, behaviour: &Behaviour) -> ElectionState {
    let k = config.election.delegates;
    let mut states: Vec<ElectionState> = (0..3)
        .map(|_| ElectionState::genesis(config.clone(), founders(members, k)).unwrap())
        .collect();
    for epoch in 0..epochs {
        let blocks = epoch_blocks(&states[0], members, epoch, behaviour);
        for block in &blocks {
            let closes: Vec<Option<Closed>> =
                states.iter_mut().map(|s| s.apply(block).unwrap()).collect();
            assert!(closes.iter().all(|c| c == &closes[0]));
        }
    }
    assert!(states.iter().all(|s| s == &states[0]));
    states.swap_remove(0)
}

#[test]
fn phases_split_each_epoch_in_thirds() {
    assert_eq!(epoch_of(0, 9), 0);
    assert_eq!(epoch_of(1, 9), 0);
    assert_eq!(epoch_of(9, 9), 0);
    assert_eq!(epoch_of(10, 9), 1);
    assert_eq!(bounds(1, 9), (10, 18));
    let phases: Vec<Phase> = (10..=18).map(|h| phase(h, 9)).collect();
    assert_eq!(
        phases,
        [
            [Phase::Commit; 3].as_slice(),
            &[Phase::Reveal; 3],
            &[Phase::Closed; 3]
        ]
        .concat()
    );
    assert_eq!(
        ElectionState::genesis(
            Config {
                epoch_blocks: 2,
                ..config(4, 2)
            },
            vec![]
        ),
        Err(ElectionError::EpochTooShort)
    );
}

#[test]
fn honest_members_agree_on_changing_sets_and_nobody_serves_past_m() {
    let members = members(7);
    let state = run(&members, config(4, 2), 8, &Behaviour::default());
    let sets: Vec<Vec<String>> = (0..10)
        .map(|e| state.delegates(e).unwrap().to_vec())
        .collect();
    for set in &sets {
        assert_eq!(set.len(), 4);
    }
    assert!(
        sets[2..].windows(2).any(|w| {
            let a: BTreeSet<&String> = w[0].iter().collect();
            let b: BTreeSet<&String> = w[1].iter().collect();
            a != b
        }),
        "the set never changed: {sets:?}"
    );
    // From epoch 2 on (elected sets), nobody serves more than M = 2 epochs in a row while
    // seven members can fill four seats.
    for member in &members {
        let mut run = 0;
        for set in &sets[2..] {
            run = if set.contains(&member.name) {
                run + 1
            } else {
                0
            };
            assert!(run <= 2, "{} served {run} in a row: {sets:?}", member.name);
        }
    }
    // No honest member is penalized.
    for closed in state.closed() {
        for change in &closed.changes {
            assert!(
                matches!(change, standing::Change::Reputation { delta, .. } if *delta > 0),
                "{change:?}"
            );
        }
    }
    // The seeds differ epoch to epoch.
    let seeds: BTreeSet<[u8; 32]> = state.closed().iter().map(|c| c.seed).collect();
    assert_eq!(seeds.len(), 8);
}

#[test]
fn a_withheld_reveal_is_jailed_once_and_stands_for_nothing_while_jailed() {
    let members = members(7);
    let behaviour = Behaviour {
        withholders: vec!["h3".into()],
        ..Behaviour::default()
    };
    let state = run(&members, config(4, 10), 1, &behaviour);
    let closed = &state.closed()[0];
    let jails: Vec<&standing::Change> = closed
        .changes
        .iter()
        .filter(|c| matches!(c, standing::Change::Jail { .. }))
        .collect();
    assert_eq!(
        jails,
        [&standing::Change::Jail {
            member: "h3".into(),
            until: 1 + standing::Params::default().jail_epochs
        }]
    );
    assert!(!closed.elected.contains(&"h3".to_owned()), "{closed:?}");
    assert!(state.standings()["h3"].reputation < elect::MAX_REPUTATION / 2);
}

#[test]
fn a_double_signer_is_slashed_and_tombstoned_once_and_never_elected_again() {
    let members = members(7);
    let behaviour = Behaviour {
        double_signers: vec![(0, "h1".into()), (1, "h1".into())],
        ..Behaviour::default()
    };
    let state = run(&members, config(4, 10), 5, &behaviour);
    let slashes: usize = state
        .closed()
        .iter()
        .flat_map(|c| &c.changes)
        .filter(|c| matches!(c, standing::Change::Slash { member, .. } if member == "h1"))
        .count();
    assert_eq!(slashes, 1, "slashed once for the evidence of two epochs");
    let h1 = state.standings()["h1"];
    assert!(h1.tombstoned);
    assert_eq!(h1.stake, 500);
    for epoch in 2..7 {
        assert!(
            !state.delegates(epoch).unwrap().contains(&"h1".to_owned()),
            "epoch {epoch}"
        );
    }
}

#[test]
fn a_colluding_bloc_cannot_keep_its_delegate_past_m() {
    // Eight members for four seats: enough to fill the set while the founders sit out.
    let members = members(8);
    let behaviour = Behaviour {
        bloc_vote: Some("h0".into()),
        ..Behaviour::default()
    };
    let state = run(&members, config(4, 2), 8, &behaviour);
    let mut run = 0;
    for epoch in 0..10 {
        let serving = state.delegates(epoch).unwrap().contains(&"h0".to_owned());
        run = if serving { run + 1 } else { 0 };
        assert!(run <= 2, "h0 served {run} in a row by epoch {epoch}");
    }
    assert!(state.closed().iter().all(|c| c.votes.get("h0") == Some(&8)));
}

/// A state at the first block of epoch 0's closed phase, all members committed and revealed.
fn mid_epoch(members: &[Member]) -> (ElectionState, Vec<BlockFacts>) {
    let state = ElectionState::genesis(config(4, 2), founders(members, 4)).unwrap();
    let blocks = epoch_blocks(&state, members, 0, &Behaviour::default());
    (state, blocks)
}

fn ballot(
    members: &[Member],
    voter: usize,
    candidate: &str,
    epoch: u64,
    ring: &[[u8; 32]],
) -> Action {
    let scope = Scope {
        chain: CHAIN,
        epoch,
    };
    Action::Ballot {
        candidate: candidate.to_owned(),
        signature: lsag::sign(
            &scope,
            ring,
            &members[voter].vote,
            &ballot_message(candidate, epoch),
        )
        .unwrap(),
    }
}

#[test]
fn byzantine_ballots_are_refused() {
    let members = members(5);
    let (mut state, blocks) = mid_epoch(&members);
    for block in &blocks[..7] {
        state.apply(block).unwrap();
    }
    let ring = ring(&seats(&members));
    let next = |actions: Vec<Action>| BlockFacts {
        height: 8,
        proposer: "h0".into(),
        actions,
        ..BlockFacts::default()
    };
    // One ballot counts; a second from the same voter, in the same block or later, does not.
    let first = ballot(&members, 2, "h1", 0, &ring);
    let second = ballot(&members, 2, "h4", 0, &ring);
    assert_eq!(
        state.check(&next(vec![first.clone(), second.clone()])),
        Err(ElectionError::DoubleBallot(0))
    );
    // A ring with a stranger in it: the signature is not over the epoch's voters.
    let stranger = VoteSecret::from_bytes([15; 32]).unwrap();
    let mut forged_ring = ring.clone();
    forged_ring[0] = stranger.public();
    let forged = Action::Ballot {
        candidate: "h1".into(),
        signature: lsag::sign(
            &Scope {
                chain: CHAIN,
                epoch: 0,
            },
            &forged_ring,
            &stranger,
            &ballot_message("h1", 0),
        )
        .unwrap(),
    };
    assert!(matches!(
        state.check(&next(vec![forged])),
        Err(ElectionError::BadBallot { .. })
    ));
    // A ballot of another epoch (replayed, or made for the next one) does not verify here.
    let replayed = ballot(&members, 3, "h1", 1, &ring);
    assert!(matches!(
        state.check(&next(vec![replayed])),
        Err(ElectionError::BadBallot { .. })
    ));
    // A ballot for someone not seated.
    let nobody = ballot(&members, 3, "h9", 0, &ring);
    assert!(matches!(
        state.check(&next(vec![nobody])),
        Err(ElectionError::BadBallot { .. })
    ));
    // The honest one is taken.
    state.apply(&next(vec![first])).unwrap();
    assert_eq!(
        state.check(&BlockFacts {
            height: 9,
            actions: vec![second],
            ..BlockFacts::default()
        }),
        Err(ElectionError::DoubleBallot(0))
    );
}

#[test]
fn commits_and_reveals_keep_to_their_phase_and_their_member() {
    let members = members(5);
    let state = ElectionState::genesis(config(4, 2), founders(&members, 4)).unwrap();
    let input = BeaconInput {
        chain: CHAIN,
        epoch: 0,
        previous_seed: state.previous_seed(0).unwrap(),
    };
    let reveal = members[1].beacon.contribute(&input);
    let commit = Action::Commit {
        member: "h1".into(),
        commitment: reveal.commitment("h1", &input),
    };
    let block = |height, actions: Vec<Action>| BlockFacts {
        height,
        actions,
        seats: (height == 1).then(|| seats(&members)),
        ..BlockFacts::default()
    };
    // The first block of an epoch must name its seats.
    assert_eq!(
        state.check(&BlockFacts {
            height: 1,
            ..BlockFacts::default()
        }),
        Err(ElectionError::NoSeats(0))
    );
    assert_eq!(
        state.check(&block(2, vec![])),
        Err(ElectionError::OutOfOrder { after: 0, got: 2 })
    );
    // Commit twice, or as a stranger: refused.
    assert_eq!(
        state.check(&block(1, vec![commit.clone(), commit.clone()])),
        Err(ElectionError::CommittedTwice("h1".into()))
    );
    assert_eq!(
        state.check(&block(
            1,
            vec![Action::Commit {
                member: "h9".into(),
                commitment: [0; 32]
            }]
        )),
        Err(ElectionError::NotSeated("h9".into()))
    );
    let mut state = state;
    state.apply(&block(1, vec![commit.clone()])).unwrap();
    // Revealing during the commit phase is refused; so is committing during the reveal phase.
    let reveal_action = Action::Reveal {
        member: "h1".into(),
        reveal,
    };
    assert!(matches!(
        state.check(&block(2, vec![reveal_action.clone()])),
        Err(ElectionError::WrongPhase { .. })
    ));
    state.apply(&block(2, vec![])).unwrap();
    state.apply(&block(3, vec![])).unwrap();
    assert!(matches!(
        state.check(&block(4, vec![commit])),
        Err(ElectionError::WrongPhase { .. })
    ));
    // Another member's contribution under h1's name does not match the commitment.
    let other = members[2].beacon.contribute(&input);
    assert!(matches!(
        state.check(&block(
            4,
            vec![Action::Reveal {
                member: "h1".into(),
                reveal: other
            }]
        )),
        Err(ElectionError::BadReveal { .. })
    ));
    state.apply(&block(4, vec![reveal_action.clone()])).unwrap();
    assert_eq!(state.contributed("h1"), (true, true));
    assert_eq!(
        state.check(&block(5, vec![reveal_action])),
        Err(ElectionError::RevealedTwice("h1".into()))
    );
}

#[test]
fn with_nobody_eligible_the_last_set_serves_on() {
    let mut members = members(2);
    for m in &mut members {
        m.stake = 0;
    }
    let state = run(&members, config(2, 2), 2, &Behaviour::default());
    assert_eq!(state.delegates(2), state.delegates(1));
    assert_eq!(state.delegates(3), state.delegates(1));
}

#[test]
fn an_old_state_keeps_a_window_of_epochs_and_goes_on_electing() {
    let members = members(6);
    let epochs = KEPT_EPOCHS + 6;
    let state = run(&members, config(3, 1), epochs, &Behaviour::default());
    let closing = epochs - 1;
    let oldest = closing - KEPT_EPOCHS + 1;
    assert_eq!(state.closed().len() as u64, KEPT_EPOCHS);
    assert_eq!(state.closed()[0].epoch, oldest);
    assert_eq!(state.delegates(oldest - 1), None);
    assert_eq!(state.previous_seed(oldest), None);
    assert!(state.previous_seed(epochs).is_some());
    // The epochs ahead are elected, and M = 1 is still kept across the window's edge.
    let next = state.delegates(epochs + 1).unwrap();
    assert_eq!(next.len(), 3);
    for member in next {
        assert!(!state.delegates(epochs).unwrap().contains(member));
    }
}
