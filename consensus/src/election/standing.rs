//! Penalties and incentives: what one epoch's record on the chain does to each member's stake,
//! reputation and eligibility. A deterministic function of that record, so every member computes
//! the same changes, applied once at the epoch's end.
//!
//! - **Double signing** (evidence of two signatures by one delegate at one height, verified by
//!   the ledger): a share of the stake slashed, and the member tombstoned — never a candidate
//!   again. Several pieces of evidence against one member in one epoch count once.
//! - **Absence**: a delegate that signed fewer than a configured share of the epoch's blocks, or
//!   a member that committed to a beacon contribution and did not reveal it, is jailed (no
//!   candidate) for a number of epochs and loses reputation.
//! - **Incentives**: each block proposed, each block signed, and each batch of anchors served
//!   raises reputation (capped at [`MAX_REPUTATION`]), which weighs in the next election.

use std::collections::{BTreeMap, BTreeSet};

use super::elect::MAX_REPUTATION;

/// The governance parameters of penalties and incentives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// A delegate must sign at least this share of the epoch's blocks, in per mille.
    pub min_signed_permille: u16,
    /// Epochs a jailed member sits out.
    pub jail_epochs: u64,
    /// Share of the stake slashed for double signing, in per mille.
    pub slash_permille: u16,
    /// Reputation lost for an absence.
    pub absence_loss: u16,
    /// Reputation gained per block proposed, per block signed, per `anchors_per_point` anchors.
    pub per_proposal: u16,
    pub per_signature: u16,
    pub anchors_per_point: u64,
    /// Most reputation one epoch's incentives can add.
    pub max_gain_per_epoch: u16,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_signed_permille: 500,
            jail_epochs: 2,
            slash_permille: 500,
            absence_loss: 100,
            per_proposal: 2,
            per_signature: 1,
            anchors_per_point: 1_000,
            max_gain_per_epoch: 50,
        }
    }
}

/// One finalized block as the standing rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord<'a> {
    pub proposer: &'a str,
    /// The delegates whose signatures the finality certificate holds.
    pub signers: Vec<&'a str>,
}

/// What one epoch left on the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochRecord<'a> {
    pub epoch: u64,
    pub delegates: Vec<&'a str>,
    pub blocks: Vec<BlockRecord<'a>>,
    /// Members that committed to a beacon contribution, and those whose reveal was valid.
    pub committed: BTreeSet<&'a str>,
    pub revealed: BTreeSet<&'a str>,
    /// Anchors each member's institution submitted and the chain finalized.
    pub anchors: BTreeMap<&'a str, u64>,
    /// Members with verified double-sign evidence finalized in this epoch.
    pub double_signed: Vec<&'a str>,
}

/// A member's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub stake: u64,
    pub reputation: u16,
    /// No candidate before this epoch.
    pub jailed_until: u64,
    /// Never a candidate again.
    pub tombstoned: bool,
}

impl Standing {
    /// Whether the member may stand in the election of `epoch` (the regulator's admission,
    /// suspension and revocation are checked apart, in governance state).
    pub fn eligible(&self, epoch: u64) -> bool {
        !self.tombstoned && self.jailed_until <= epoch && self.stake > 0
    }
}

/// One change to one member's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Slash { member: String, amount: u64 },
    Tombstone { member: String },
    Jail { member: String, until: u64 },
    Reputation { member: String, delta: i32 },
}

/// The changes one epoch's record brings, penalties first, in member order.
pub fn assess(
    record: &EpochRecord<'_>,
    standings: &BTreeMap<&str, Standing>,
    params: &Params,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let double: BTreeSet<&str> = record.double_signed.iter().copied().collect();
    for member in &double {
        let Some(standing) = standings.get(member).filter(|s| !s.tombstoned) else {
            continue;
        };
        let amount = (u128::from(standing.stake) * u128::from(params.slash_permille.min(1000))
            / 1000) as u64;
        changes.push(Change::Slash {
            member: (*member).to_owned(),
            amount,
        });
        changes.push(Change::Tombstone {
            member: (*member).to_owned(),
        });
    }
    let blocks = record.blocks.len() as u64;
    let mut signed: BTreeMap<&str, u64> = BTreeMap::new();
    let mut proposed: BTreeMap<&str, u64> = BTreeMap::new();
    for block in &record.blocks {
        *proposed.entry(block.proposer).or_default() += 1;
        let unique: BTreeSet<&str> = block.signers.iter().copied().collect();
        for signer in unique {
            *signed.entry(signer).or_default() += 1;
        }
    }
    let mut absent: BTreeSet<&str> = BTreeSet::new();
    if blocks > 0 {
        for delegate in &record.delegates {
            let count = signed.get(delegate).copied().unwrap_or(0);
            if count * 1000 < u64::from(params.min_signed_permille) * blocks {
                absent.insert(delegate);
            }
        }
    }
    absent.extend(record.committed.difference(&record.revealed).copied());
    for member in absent.iter().filter(|m| !double.contains(*m)) {
        if standings.get(member).is_none_or(|s| s.tombstoned) {
            continue;
        }
        changes.push(Change::Jail {
            member: (*member).to_owned(),
            until: record.epoch + 1 + params.jail_epochs,
        });
        changes.push(Change::Reputation {
            member: (*member).to_owned(),
            delta: -i32::from(params.absence_loss),
        });
    }
    let mut gains: BTreeMap<&str, u64> = BTreeMap::new();
    for (member, n) in &proposed {
        *gains.entry(member).or_default() += n * u64::from(params.per_proposal);
    }
    for (member, n) in &signed {
        *gains.entry(member).or_default() += n * u64::from(params.per_signature);
    }
    for (member, n) in &record.anchors {
        *gains.entry(member).or_default() += n / params.anchors_per_point.max(1);
    }
    for (member, gain) in gains {
        let eligible =
            standings.get(member).is_some_and(|s| !s.tombstoned) && !double.contains(member);
        let gain = gain.min(u64::from(params.max_gain_per_epoch));
        if eligible && gain > 0 {
            changes.push(Change::Reputation {
                member: member.to_owned(),
                delta: i32::try_from(gain).unwrap_or(i32::MAX),
            });
        }
    }
    changes
}

/// The standings after `changes` (reputation kept within 0 and [`MAX_REPUTATION`]).
pub fn apply(standings: &mut BTreeMap<String, Standing>, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Slash { member, amount } => {
                if let Some(s) = standings.get_mut(member) {
                    s.stake = s.stake.saturating_sub(*amount);
                }
            }
            Change::Tombstone { member } => {
                if let Some(s) = standings.get_mut(member) {
                    s.tombstoned = true;
                }
            }
            Change::Jail { member, until } => {
                if let Some(s) = standings.get_mut(member) {
                    s.jailed_until = s.jailed_until.max(*until);
                }
            }
            Change::Reputation { member, delta } => {
                if let Some(s) = standings.get_mut(member) {
                    let next = (i64::from(s.reputation) + i64::from(*delta))
                        .clamp(0, i64::from(MAX_REPUTATION));
                    s.reputation = next as u16;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standings() -> BTreeMap<&'static str, Standing> {
        ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(|m| {
                (
                    m,
                    Standing {
                        stake: 1_000,
                        reputation: 500,
                        ..Standing::default()
                    },
                )
            })
            .collect()
    }

    fn honest_epoch() -> EpochRecord<'static> {
        let delegates = vec!["a", "b", "c", "d"];
        EpochRecord {
            epoch: 7,
            blocks: (0..20)
                .map(|i| BlockRecord {
                    proposer: delegates[i % 4],
                    signers: delegates.clone(),
                })
                .collect(),
            delegates,
            committed: ["a", "b", "c", "d", "e"].into(),
            revealed: ["a", "b", "c", "d", "e"].into(),
            anchors: [("e", 3_000)].into(),
            double_signed: vec![],
        }
    }

    #[test]
    fn an_honest_epoch_only_rewards() {
        let changes = assess(&honest_epoch(), &standings(), &Params::default());
        assert!(changes
            .iter()
            .all(|c| matches!(c, Change::Reputation { delta, .. } if *delta > 0)));
        // a: 5 proposals × 2 + 20 signatures = 30; e: 3 points for 3,000 anchors.
        assert!(changes.contains(&Change::Reputation {
            member: "a".into(),
            delta: 30
        }));
        assert!(changes.contains(&Change::Reputation {
            member: "e".into(),
            delta: 3
        }));
    }

    #[test]
    fn double_signing_slashes_and_tombstones_once() {
        let mut record = honest_epoch();
        record.double_signed = vec!["b", "b"];
        let changes = assess(&record, &standings(), &Params::default());
        let against_b: Vec<&Change> = changes
            .iter()
            .filter(|c| match c {
                Change::Slash { member, .. }
                | Change::Tombstone { member }
                | Change::Jail { member, .. }
                | Change::Reputation { member, .. } => member == "b",
            })
            .collect();
        assert_eq!(
            against_b,
            vec![
                &Change::Slash {
                    member: "b".into(),
                    amount: 500
                },
                &Change::Tombstone { member: "b".into() }
            ]
        );
        let mut owned: BTreeMap<String, Standing> = standings()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        apply(&mut owned, &changes);
        assert!(!owned["b"].eligible(100));
        assert_eq!(owned["b"].stake, 500);
        // A tombstoned member is not penalized again.
        let again = assess(
            &record,
            &owned.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
            &Params::default(),
        );
        assert!(!again.iter().any(|c| matches!(c, Change::Slash { .. })));
    }

    #[test]
    fn absence_jails_and_costs_reputation() {
        let mut record = honest_epoch();
        // d signs 9 of 20 blocks (under half); e commits and does not reveal.
        for block in record.blocks.iter_mut().skip(9) {
            block.signers.retain(|s| *s != "d");
        }
        record.revealed.remove("e");
        let changes = assess(&record, &standings(), &Params::default());
        for member in ["d", "e"] {
            assert!(changes.contains(&Change::Jail {
                member: member.into(),
                until: 10
            }));
            assert!(changes.contains(&Change::Reputation {
                member: member.into(),
                delta: -100
            }));
        }
        assert!(!changes
            .iter()
            .any(|c| matches!(c, Change::Jail { member, .. } if member == "a")));
        let mut owned: BTreeMap<String, Standing> = standings()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        apply(&mut owned, &changes);
        assert!(!owned["d"].eligible(9) && owned["d"].eligible(10));
        assert!(owned["a"].reputation > 500);
    }

    #[test]
    fn reputation_stays_within_bounds() {
        let mut owned: BTreeMap<String, Standing> = [(
            "a".to_owned(),
            Standing {
                stake: 1,
                reputation: 990,
                ..Standing::default()
            },
        )]
        .into();
        apply(
            &mut owned,
            &[Change::Reputation {
                member: "a".into(),
                delta: 50,
            }],
        );
        assert_eq!(owned["a"].reputation, MAX_REPUTATION);
        apply(
            &mut owned,
            &[Change::Reputation {
                member: "a".into(),
                delta: -5_000,
            }],
        );
        assert_eq!(owned["a"].reputation, 0);
    }
}
