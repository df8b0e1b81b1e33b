//! Whether this node takes part in its consortium, as a rule over data: its member's status in
//! the replicated state, whether the link key has reached it, and what the other members'
//! nodes make of its certificate.
//!
//! A node's own state can be behind: the leader cuts a revoked or suspended member's node off
//! as soon as it applies the command, often before that node has heard of it. So besides its
//! state, a node of a consortium with other voters asks them in turn ([`Verdict`]): when a
//! majority of the other voters refuse its certificate, it was revoked or suspended, whatever
//! its state says. One member alone cannot make another stop (it takes a majority), and
//! unreachable nodes count for nothing (a partition is not a revocation).

use fhirseal_consensus::governance::{GovernanceState, MemberStatus};
use serde::{Deserialize, Serialize};

/// What the other voters make of this node's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// There is no other voter to ask.
    Alone,
    /// Not asked yet (the node has just started).
    Unasked,
    /// Asked: no majority of them refuses it.
    NotRefused,
    /// A majority of the other voters refuses it.
    Refused,
}

/// The verdict of one round of asking: `refused` of the `others` other voters refused this
/// node's certificate (the rest accepted it or could not be reached).
pub fn verdict(others: usize, refused: usize) -> Verdict {
    if others == 0 {
        Verdict::Alone
    } else if refused * 2 > others {
        Verdict::Refused
    } else {
        Verdict::NotRefused
    }
}

/// Where the node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// An active member with the link key: it writes and anchors.
    Active,
    /// It asked to join, or was admitted and the link key has not reached it yet.
    Joining,
    /// Its state says it is active; the other voters have not been asked yet.
    Checking,
    /// Its member is suspended.
    Suspended,
    /// Its member is revoked.
    Revoked,
    /// Its state says it is active, but a majority of the other voters refuses its certificate:
    /// it was revoked or suspended, and the news did not reach it.
    CutOff,
}

/// Where the node of `member` stands, by `state`, whether it holds the link key the state
/// wrapped for it, and the other voters' `verdict`.
pub fn standing(
    state: &GovernanceState,
    member: &str,
    has_link_key: bool,
    verdict: Verdict,
) -> Standing {
    let Some(own) = state.member(member) else {
        return Standing::Joining;
    };
    match own.status {
        MemberStatus::Revoked => Standing::Revoked,
        MemberStatus::Suspended => Standing::Suspended,
        MemberStatus::Active => match verdict {
            Verdict::Refused => Standing::CutOff,
            Verdict::Unasked => Standing::Checking,
            Verdict::Alone | Verdict::NotRefused if !has_link_key => Standing::Joining,
            Verdict::Alone | Verdict::NotRefused => Standing::Active,
        },
    }
}

impl Standing {
    /// Whether the node writes and anchors.
    pub fn takes_part(self) -> bool {
        self == Standing::Active
    }

    /// Why the node refuses a write now (what its 503 says), if it does.
    pub fn refusal(self) -> Option<&'static str> {
        Some(match self {
            Standing::Active => return None,
            Standing::Joining => {
                "this node's institution is joining the consortium: writes wait until it is \
                 admitted and the consortium's link key has reached it (so that its \
                 fingerprints link with the other members'); retry later"
            }
            Standing::Checking => {
                "this node has just started and is checking its standing with the consortium; \
                 retry in a moment"
            }
            Standing::Suspended => {
                "this node's institution is suspended from the consortium: it cannot anchor \
                 writes until the regulator reinstates it"
            }
            Standing::Revoked => {
                "this node's institution was revoked from the consortium: it can no longer \
                 anchor writes"
            }
            Standing::CutOff => {
                "the consortium's voters refuse this node's certificate (its institution was \
                 revoked or suspended): it cannot anchor writes"
            }
        })
    }

    /// Its name, as `status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::Joining => "joining",
            Standing::Checking => "checking",
            Standing::Suspended => "suspended",
            Standing::Revoked => "revoked",
            Standing::CutOff => "cut-off",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_the_other_voters_decides() {
        assert_eq!(verdict(0, 0), Verdict::Alone);
        assert_eq!(verdict(1, 1), Verdict::Refused);
        assert_eq!(verdict(1, 0), Verdict::NotRefused);
        // One refusal of two is not enough (one member cannot stop another)...
        assert_eq!(verdict(2, 1), Verdict::NotRefused);
        assert_eq!(verdict(2, 2), Verdict::Refused);
        // ...and unreachable voters count for nothing either way.
        assert_eq!(verdict(5, 2), Verdict::NotRefused);
        assert_eq!(verdict(5, 3), Verdict::Refused);
    }

    #[test]
    fn a_node_not_in_its_state_is_joining() {
        let state = GovernanceState::new();
        let standing = standing(&state, "h2", false, Verdict::NotRefused);
        assert_eq!(standing, Standing::Joining);
        assert!(!standing.takes_part());
        assert!(standing.refusal().unwrap().contains("joining"));
        assert!(Standing::Active.refusal().is_none());
    }
}
