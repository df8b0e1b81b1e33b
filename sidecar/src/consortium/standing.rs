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
    use fhirseal_consensus::governance::{
        Admission, Command, ElectionParams, MemberKeys, MemberKind, Outcome, RaftRole,
        SignedCommand, Validity,
    };
    use fhirseal_consensus::{PublicKey, SigningKey, Timestamp};

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

    /// A consortium founded by `regulator` with `h2` admitted (the regulator's last sequence
    /// number is 2).
    fn founded() -> (GovernanceState, SigningKey) {
        let regulator = SigningKey::from_bytes(&[1; 32]);
        let h2 = SigningKey::from_bytes(&[2; 32]);
        let admission = |id: &str, key: &SigningKey, seed: u8, kind| Admission {
            id: id.to_owned(),
            name: id.to_owned(),
            kind,
            node_id: u64::from(seed),
            address: format!("127.0.0.1:{}", 7100 + u16::from(seed)),
            raft_role: RaftRole::Voter,
            keys: MemberKeys {
                tls_certificate: [seed; 32],
                signing_key: PublicKey::of(key),
                wrapping_key: vec![seed; 300],
                vote_key: [seed + 100; 32],
                beacon_key: [seed + 150; 32],
            },
            stake: 0,
            reputation: 0,
        };
        let sign = |sequence, command| {
            SignedCommand::sign("c", "regulator", sequence, window(), command, &regulator)
        };
        let h2_admission = admission("h2", &h2, 2, MemberKind::Hospital);
        let possession = h2_admission.keys.prove_possession("c", "h2", &h2);
        let mut state = GovernanceState::new();
        for (sequence, command) in [
            (
                1,
                Command::Genesis {
                    regulator: admission("regulator", &regulator, 1, MemberKind::Regulator),
                    election: ElectionParams::NONE,
                },
            ),
            (
                2,
                Command::Admit {
                    member: h2_admission,
                    possession,
                },
            ),
        ] {
            assert_eq!(
                state.apply(&sign(sequence, command), Timestamp(10)),
                Outcome::Accepted
            );
        }
        (state, regulator)
    }

    fn window() -> Validity {
        Validity::around(Timestamp(10), 10, 1000)
    }

    #[test]
    fn an_active_member_takes_part_with_the_link_key_unless_the_voters_refuse_it() {
        let (mut state, regulator) = founded();
        assert_eq!(
            standing(&state, "h2", true, Verdict::NotRefused),
            Standing::Active
        );
        assert_eq!(
            standing(&state, "h2", true, Verdict::Alone),
            Standing::Active
        );
        // Admitted, the link key not here yet: still joining.
        assert_eq!(
            standing(&state, "h2", false, Verdict::NotRefused),
            Standing::Joining
        );
        assert_eq!(
            standing(&state, "h2", true, Verdict::Unasked),
            Standing::Checking
        );
        // Its state says active, the voters say otherwise: the voters win.
        assert_eq!(
            standing(&state, "h2", true, Verdict::Refused),
            Standing::CutOff
        );
        let suspend = Command::Suspend {
            member: "h2".into(),
            reason: String::new(),
        };
        let signed = SignedCommand::sign("c", "regulator", 3, window(), suspend, &regulator);
        assert_eq!(state.apply(&signed, Timestamp(11)), Outcome::Accepted);
        assert_eq!(
            standing(&state, "h2", true, Verdict::NotRefused),
            Standing::Suspended
        );
        let revoke = Command::Revoke {
            member: "h2".into(),
            reason: String::new(),
        };
        let signed = SignedCommand::sign("c", "regulator", 4, window(), revoke, &regulator);
        assert_eq!(state.apply(&signed, Timestamp(12)), Outcome::Accepted);
        let revoked = standing(&state, "h2", true, Verdict::NotRefused);
        assert_eq!(revoked, Standing::Revoked);
        assert!(revoked.refusal().unwrap().contains("revoked"));
        assert!(!revoked.takes_part());
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
