//! The election: who the delegates of an epoch are, and in which order they propose. Pure and
//! deterministic: every member computes the same result from the same finalized state and seed.
//!
//! **Weight.** A candidate's weight is
//! `(votes + 1) × stake × (500 + reputation)`, with reputation in per mille (0 to 1000):
//! - votes are the members' anonymous judgement of who should produce blocks; `+ 1` keeps a
//!   candidate nobody voted for in the draw, with a small chance, so that a majority of voters
//!   cannot make the set entirely predictable;
//! - stake is what the member puts at risk: it is slashed for double signing, so weight grows
//!   with what misbehaving would cost;
//! - reputation (earned by producing and signing blocks and serving anchors, lost by absence)
//!   moves the weight between half (0) and one and a half times (1000) the neutral value, so a
//!   track record counts without ever outweighing stake and votes entirely.
//!
//! Members with no stake are no candidates. All arithmetic is in integers (`u128`), so no
//! platform computes another result.
//!
//! **Draw.** K delegates are drawn by weighted sampling without replacement from a stream of
//! SHA-256 blocks keyed by the beacon's seed and the epoch, with rejection sampling so that no
//! candidate is favoured by a modulo.
//!
//! **Rotation.** A delegate that has served M epochs in a row sits the next one out, as long as
//! enough other candidates remain to fill the set; when too few do, those who would sit out come
//! back, fewest epochs served first, so that the chain never runs short of delegates.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Domain of the draws.
const DRAW_DOMAIN: &[u8] = b"fhirseal/elect/draw/v1";
/// Domain of the proposer order.
const ORDER_DOMAIN: &[u8] = b"fhirseal/elect/order/v1";
/// Highest reputation, in per mille.
pub const MAX_REPUTATION: u16 = 1000;

/// One member as the election sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub member: &'a str,
    pub stake: u64,
    /// Per mille, 0 to [`MAX_REPUTATION`] (higher values count as the maximum).
    pub reputation: u16,
    /// Anonymous ballots for this candidate in the epoch's tally.
    pub votes: u32,
    /// Epochs in a row this member has been a delegate, up to the one before the election's.
    pub served_in_a_row: u32,
}

/// The governance parameters of an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// K: how many delegates.
    pub delegates: usize,
    /// M: epochs in a row a delegate may serve before sitting one out.
    pub max_consecutive: u32,
}

/// A candidate's weight (see the module's documentation).
pub fn weight(candidate: &Candidate<'_>) -> u128 {
    let reputation = u128::from(candidate.reputation.min(MAX_REPUTATION));
    (u128::from(candidate.votes) + 1) * u128::from(candidate.stake) * (500 + reputation)
}

/// The delegates of an epoch, in the order they were drawn.
pub fn elect<'a>(
    candidates: &[Candidate<'a>],
    params: &Params,
    seed: &[u8; 32],
    epoch: u64,
) -> Vec<&'a str> {
    let mut eligible: Vec<&Candidate<'a>> = candidates.iter().filter(|c| c.stake > 0).collect();
    eligible.sort_by(|a, b| a.member.cmp(b.member));
    eligible.dedup_by(|a, b| a.member == b.member);
    let (mut pool, mut resting): (Vec<&Candidate<'a>>, Vec<&Candidate<'a>>) = eligible
        .into_iter()
        .partition(|c| c.served_in_a_row < params.max_consecutive);
    if pool.len() < params.delegates {
        resting.sort_by(|a, b| {
            a.served_in_a_row
                .cmp(&b.served_in_a_row)
                .then(a.member.cmp(b.member))
        });
        let missing = params.delegates - pool.len();
        pool.extend(resting.into_iter().take(missing));
        pool.sort_by(|a, b| a.member.cmp(b.member));
    }
    let mut draws = Draws::new(DRAW_DOMAIN, seed, epoch);
    let mut weights: Vec<u128> = pool.iter().map(|c| weight(c)).collect();
    let mut chosen = Vec::with_capacity(params.delegates.min(pool.len()));
    while chosen.len() < params.delegates {
        let total: u128 = weights.iter().sum();
        if total == 0 {
            break;
        }
        let mut point = draws.below(total);
        let index = weights
            .iter()
            .position(|w| {
                if point < *w {
                    true
                } else {
                    point -= w;
                    false
                }
            })
            .unwrap_or(0);
        chosen.push(pool[index].member);
        weights[index] = 0;
    }
    chosen
}

/// The order the delegates propose in during the epoch: a permutation of `delegates` drawn from
/// the seed (Fisher–Yates), handed to the BFT engine.
pub fn proposer_order<'a>(delegates: &[&'a str], seed: &[u8; 32], epoch: u64) -> Vec<&'a str> {
    let mut order: Vec<&'a str> = delegates.to_vec();
    order.sort_unstable();
    let mut draws = Draws::new(ORDER_DOMAIN, seed, epoch);
    for i in (1..order.len()).rev() {
        let j = draws.below(i as u128 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// The votes of one epoch's ballots: each ballot names a candidate and carries its key image;
/// a second ballot with a key image already seen is linked to the first and does not count.
/// Returns the votes per candidate and the positions of the refused ballots.
pub fn tally<'a>(ballots: &[([u8; 32], &'a str)]) -> (BTreeMap<&'a str, u32>, Vec<usize>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut votes = BTreeMap::new();
    let mut refused = Vec::new();
    for (i, (key_image, candidate)) in ballots.iter().enumerate() {
        if seen.insert(*key_image) {
            *votes.entry(*candidate).or_insert(0) += 1;
        } else {
            refused.push(i);
        }
    }
    (votes, refused)
}

/// A stream of uniform draws from SHA-256 blocks of (domain, seed, epoch, counter).
struct Draws {
    prefix: Sha256,
    counter: u64,
}

impl Draws {
    fn new(domain: &[u8], seed: &[u8; 32], epoch: u64) -> Draws {
        let mut prefix = Sha256::new();
        prefix.update(domain);
        prefix.update(seed);
        prefix.update(epoch.to_be_bytes());
        Draws { prefix, counter: 0 }
    }

    fn next_u128(&mut self) -> u128 {
        let mut h = self.prefix.clone();
        h.update(self.counter.to_be_bytes());
        self.counter += 1;
        let block: [u8; 32] = h.finalize().into();
        let mut first = [0u8; 16];
        first.copy_from_slice(&block[..16]);
        u128::from_be_bytes(first)
    }

    /// A uniform draw in `0..n` (`n > 0`), without modulo bias.
    fn below(&mut self, n: u128) -> u128 {
        let zone = u128::MAX - (u128::MAX % n);
        loop {
            let x = self.next_u128();
            if x < zone {
                return x % n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate(member: &str, stake: u64, votes: u32, served: u32) -> Candidate<'_> {
        Candidate {
            member,
            stake,
            reputation: 500,
            votes,
            served_in_a_row: served,
        }
    }

    const PARAMS: Params = Params {
        delegates: 4,
        max_consecutive: 3,
    };

    #[test]
    fn every_member_computes_the_same_set_and_order() {
        let names: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let candidates: Vec<Candidate<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| candidate(n, 100 + i as u64, i as u32 % 3, 0))
            .collect();
        let mut shuffled = candidates.clone();
        shuffled.reverse();
        let seed = [42; 32];
        let a = elect(&candidates, &PARAMS, &seed, 9);
        assert_eq!(a, elect(&shuffled, &PARAMS, &seed, 9));
        assert_eq!(a.len(), 4);
        let unique: std::collections::BTreeSet<_> = a.iter().collect();
        assert_eq!(unique.len(), 4);
        assert_ne!(a, elect(&candidates, &PARAMS, &[43; 32], 9));
        let order = proposer_order(&a, &seed, 9);
        assert_eq!(order, proposer_order(&a, &seed, 9));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let mut expected = a.clone();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
    }

    #[test]
    fn no_stake_no_candidacy_and_too_few_candidates_give_a_smaller_set() {
        let candidates = [candidate("a", 0, 10, 0), candidate("b", 5, 0, 0)];
        assert_eq!(elect(&candidates, &PARAMS, &[1; 32], 1), vec!["b"]);
        assert!(elect(&[], &PARAMS, &[1; 32], 1).is_empty());
    }

    #[test]
    fn a_delegate_that_served_m_epochs_sits_out_while_others_can_serve() {
        let candidates: Vec<Candidate<'_>> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|m| candidate(m, 10, 0, if *m == "a" { 3 } else { 0 }))
            .collect();
        for epoch in 0..50 {
            assert!(!elect(&candidates, &PARAMS, &[epoch as u8; 32], epoch).contains(&"a"));
        }
        // With only four candidates, the one who would sit out serves: the set stays full.
        assert_eq!(elect(&candidates[..4], &PARAMS, &[0; 32], 0).len(), 4);
        // A consortium of one keeps its only delegate.
        let alone = [candidate("solo", 1, 0, 1_000)];
        assert_eq!(elect(&alone, &PARAMS, &[0; 32], 0), vec!["solo"]);
    }

    #[test]
    fn weight_follows_votes_stake_and_reputation() {
        let base = candidate("a", 10, 0, 0);
        assert_eq!(weight(&base), 10 * 1000);
        assert_eq!(
            weight(&Candidate {
                votes: 3,
                ..base.clone()
            }),
            4 * 10 * 1000
        );
        assert_eq!(
            weight(&Candidate {
                reputation: 1000,
                ..base.clone()
            }),
            10 * 1500
        );
        assert_eq!(
            weight(&Candidate {
                reputation: u16::MAX,
                ..base.clone()
            }),
            10 * 1500
        );
        assert_eq!(weight(&Candidate { stake: 0, ..base }), 0);
    }

    #[test]
    fn heavier_candidates_are_drawn_more_often_in_proportion() {
        // One delegate from two candidates weighing 1 and 3: over many seeds the heavier wins
        // about three times in four.
        let candidates = [candidate("light", 1, 0, 0), candidate("heavy", 3, 0, 0)];
        let one = Params {
            delegates: 1,
            max_consecutive: 10,
        };
        let heavy = (0..4_000u64)
            .filter(|e| elect(&candidates, &one, &[9; 32], *e) == vec!["heavy"])
            .count();
        assert!((2_800..=3_200).contains(&heavy), "{heavy} of 4000");
    }

    #[test]
    fn a_second_ballot_with_the_same_key_image_does_not_count() {
        let ballots = [
            ([1; 32], "a"),
            ([2; 32], "b"),
            ([1; 32], "b"),
            ([3; 32], "a"),
        ];
        let (votes, refused) = tally(&ballots);
        assert_eq!(votes.get("a"), Some(&2));
        assert_eq!(votes.get("b"), Some(&1));
        assert_eq!(refused, vec![2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_set_has_min_k_eligible_distinct_members(
            stakes in proptest::collection::vec(0u64..1_000, 0..12),
            k in 1usize..8,
            seed in any::<[u8; 32]>(),
            epoch in any::<u64>(),
        ) {
            let names: Vec<String> = (0..stakes.len()).map(|i| format!("m{i}")).collect();
            let candidates: Vec<Candidate<'_>> = names
                .iter()
                .zip(&stakes)
                .map(|(n, s)| candidate(n, *s, 0, 0))
                .collect();
            let params = Params { delegates: k, max_consecutive: 2 };
            let set = elect(&candidates, &params, &seed, epoch);
            let eligible = stakes.iter().filter(|s| **s > 0).count();
            prop_assert_eq!(set.len(), k.min(eligible));
            let unique: std::collections::BTreeSet<_> = set.iter().collect();
            prop_assert_eq!(unique.len(), set.len());
            for member in &set {
                let c = candidates.iter().find(|c| c.member == *member).unwrap();
                prop_assert!(c.stake > 0);
            }
        }
    }
}
