//! What a governance snapshot carries, and how a node that receives one checks it.
//!
//! A snapshot replaces the receiver's state whole, so a snapshot that is only a state would let
//! whoever sends one write any state it likes: name itself regulator, revoke the others, wrap a
//! link key of its choosing. A governance snapshot is therefore the state *and* its history:
//! every [`GovernanceRequest`] applied to build it, in log order, each with the time it was
//! applied at (refused ones too, since a refusal changes the refusal log and uses up a sequence
//! number). The receiver ([`SnapshotData::verify`]):
//!
//! 1. replays the history through the pure [`GovernanceState::apply`] from the empty state and
//!    refuses the snapshot unless the result is the state it carries. Every change to the state
//!    is then a command signed by a member entitled to it, as if the receiver had applied the
//!    log itself;
//! 2. refuses it unless the history continues the receiver's own: the commands it has applied
//!    are the first ones of the snapshot's, in the same order and with the same times. Signed
//!    commands alone do not stop a sender from leaving one out (a revocation, say) or from
//!    founding a consortium of its own with a genesis it signed; a committed log is never
//!    rewritten, so a genuine snapshot always extends what the receiver applied, or, if it was
//!    taken before the receiver got as far, is a part of it ([`Verified::Behind`]: nothing to
//!    install, as openraft itself ignores a snapshot older than what it committed).
//!
//! The history grows with every command ever replicated (hundreds of bytes each; a consortium
//! issues few). Compacting it would need a checkpoint the regulator signs; not done.

use std::sync::Arc;

use crate::codec::{top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::governance::GovernanceState;
use crate::raft::request::GovernanceRequest;

/// The governance requests applied so far, in log order: what a snapshot carries besides the
/// state. Shared, so that copying the state machine's view does not copy every request.
pub type History = Vec<Arc<GovernanceRequest>>;

/// Why a received snapshot is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefusal {
    /// The bytes are not a governance snapshot.
    #[error("the snapshot cannot be read: {0}")]
    Undecodable(#[from] DecodeError),
    /// Its state is not what its history builds.
    #[error("the snapshot's state is not what its signed commands build")]
    DoesNotVerify,
    /// Its history does not begin with the commands this node has applied.
    #[error(
        "the snapshot's history does not continue this node's ({applied} commands applied here, \
         {carried} in the snapshot)"
    )]
    DoesNotExtend {
        /// How many requests this node has applied.
        applied: usize,
        /// How many the snapshot carries.
        carried: usize,
    },
}

/// What [`SnapshotData::verify`] found a snapshot to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Its history continues (or is) the receiver's and builds its state: it may be installed.
    Continues,
    /// Its history is a part of the receiver's, which has applied more: nothing to install.
    Behind,
}

/// A governance snapshot's data: the state and the requests that built it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotData {
    state: GovernanceState,
    history: History,
}

top_level_encoding!(SnapshotData);

impl SnapshotData {
    /// A snapshot of `state`, which `history` built.
    pub fn new(state: GovernanceState, history: History) -> Self {
        Self { state, history }
    }

    /// The state it carries.
    pub fn state(&self) -> &GovernanceState {
        &self.state
    }

    /// The requests it carries.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Its parts.
    pub fn into_parts(self) -> (GovernanceState, History) {
        (self.state, self.history)
    }

    /// What `history` builds from the empty state, each request applied at its own time.
    pub fn replay<'a>(history: impl IntoIterator<Item = &'a GovernanceRequest>) -> GovernanceState {
        let mut state = GovernanceState::new();
        for request in history {
            // Refusals are part of the state (the refusal log), so every outcome is kept.
            let _outcome = state.apply(request.command(), request.proposed_at());
        }
        state
    }

    /// Whether a node that has applied `applied_here` may take this snapshot: its history
    /// continues `applied_here` and builds its state, or is a part of `applied_here` (see the
    /// module's documentation).
    pub fn verify(
        &self,
        applied_here: &[Arc<GovernanceRequest>],
    ) -> Result<Verified, SnapshotRefusal> {
        if self.history.len() < applied_here.len() && applied_here.starts_with(&self.history) {
            return Ok(Verified::Behind);
        }
        if !self.history.starts_with(applied_here) {
            return Err(SnapshotRefusal::DoesNotExtend {
                applied: applied_here.len(),
                carried: self.history.len(),
            });
        }
        if Self::replay(self.history.iter().map(Arc::as_ref)) != self.state {
            return Err(SnapshotRefusal::DoesNotVerify);
        }
        Ok(Verified::Continues)
    }
}

impl Wire for SnapshotData {
    const MIN_LEN: usize = GovernanceState::MIN_LEN + 4;

    fn write(&self, w: &mut Writer) {
        self.state.write(w);
        w.len(self.history.len());
        for request in &self.history {
            request.write(w);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let state = GovernanceState::read(r)?;
        let n = r.count("history", usize::MAX, GovernanceRequest::MIN_LEN)?;
        let history = (0..n)
            .map(|_| GovernanceRequest::read(r).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { state, history })
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::governance::tests::{
        admit_command, at, hospital, party, regulator, sign, REGULATOR,
    };
    use crate::governance::{Command, ElectionParams, MemberKind, RaftRole};
    use crate::tx::Timestamp;

    /// `signed`, applied at `ms`.
    fn request(signed: crate::governance::SignedCommand, ms: u64) -> Arc<GovernanceRequest> {
        Arc::new(GovernanceRequest::new(signed, at(ms)).unwrap())
    }

    /// A regulator's genesis, an admission of "h1", and a revocation of it.
    fn genuine() -> (History, SigningKey, SigningKey) {
        let regulator = regulator();
        let h1 = hospital("h1", 2);
        let genesis = Command::Genesis {
            regulator: regulator.admission.clone(),
            election: ElectionParams::NONE,
        };
        let revoke = Command::Revoke {
            member: "h1".into(),
            reason: "breach".into(),
        };
        let history = vec![
            request(sign(REGULATOR, 1, genesis, &regulator.key), 10),
            request(sign(REGULATOR, 2, admit_command(&h1), &regulator.key), 20),
            request(sign(REGULATOR, 3, revoke, &regulator.key), 30),
        ];
        (history, regulator.key, h1.key)
    }

    fn snapshot_of(history: &History) -> SnapshotData {
        SnapshotData::new(
            SnapshotData::replay(history.iter().map(Arc::as_ref)),
            history.clone(),
        )
    }

    #[test]
    fn a_genuine_snapshot_verifies_against_every_prefix_of_its_history() {
        let (history, _, _) = genuine();
        let snapshot = snapshot_of(&history);
        assert!(snapshot.state().member("h1").is_some());
        for applied in 0..=history.len() {
            assert_eq!(
                snapshot.verify(&history[..applied]),
                Ok(Verified::Continues),
                "{applied}"
            );
        }
        let back = SnapshotData::from_bytes(&snapshot.to_bytes()).unwrap();
        assert_eq!(back, snapshot);
        assert_eq!(back.verify(&history), Ok(Verified::Continues));
    }

    #[test]
    fn a_snapshot_older_than_what_this_node_applied_is_behind() {
        let (history, _, _) = genuine();
        for taken in 0..history.len() {
            let older = snapshot_of(&history[..taken].to_vec());
            assert_eq!(older.verify(&history), Ok(Verified::Behind), "{taken}");
        }
        // Behind means nothing is installed, so its state is not even looked at; but a history
        // that is not a part of ours is refused.
        let mut other = history[..2].to_vec();
        other[1] = Arc::clone(&history[2]);
        assert!(matches!(
            snapshot_of(&other).verify(&history),
            Err(SnapshotRefusal::DoesNotExtend { .. })
        ));
    }

    #[test]
    fn a_state_its_history_does_not_build_is_refused() {
        let (history, _, _) = genuine();
        // The state after the admission, carried with the history that also revokes.
        let before_revocation = SnapshotData::replay(history[..2].iter().map(Arc::as_ref));
        let forged = SnapshotData::new(before_revocation, history.clone());
        assert_eq!(forged.verify(&[]), Err(SnapshotRefusal::DoesNotVerify));
        // Any state at all with no history.
        let forged = SnapshotData::new(snapshot_of(&history).state().clone(), Vec::new());
        assert_eq!(forged.verify(&[]), Err(SnapshotRefusal::DoesNotVerify));
    }

    #[test]
    fn a_history_that_leaves_out_what_this_node_applied_is_refused() {
        let (history, reg_key, _) = genuine();
        // Without the revocation this node applied, and with another signed regulator command
        // in its place: h1 would be a member again. The history is signed throughout and
        // builds the state it carries, but does not continue ours.
        let mut without_revocation: History = history[..2].to_vec();
        let stake = Command::SetStake {
            member: "h1".into(),
            stake: 5,
        };
        without_revocation.push(request(sign(REGULATOR, 4, stake, &reg_key), 30));
        let snapshot = snapshot_of(&without_revocation);
        assert!(snapshot.state().is_active("h1"));
        assert_eq!(snapshot.verify(&history[..2]), Ok(Verified::Continues));
        assert_eq!(
            snapshot.verify(&history),
            Err(SnapshotRefusal::DoesNotExtend {
                applied: 3,
                carried: 3
            })
        );
    }

    #[test]
    fn a_consortium_founded_by_the_sender_is_refused() {
        let (history, _, _) = genuine();
        // h1 founds a consortium of its own, naming itself regulator, with a genesis it signs:
        // a history that builds its state, but not the one this node applied.
        // (The key h1 was admitted with: the same seed.)
        let h1 = party("h1", 2, MemberKind::Regulator, RaftRole::Voter);
        let genesis = Command::Genesis {
            regulator: h1.admission,
            election: ElectionParams::NONE,
        };
        let forged: History = vec![request(sign("h1", 1, genesis, &h1.key), 40)];
        let snapshot = snapshot_of(&forged);
        assert_eq!(snapshot.state().regulator().unwrap().id(), "h1");
        assert!(matches!(
            snapshot.verify(&history[..1]),
            Err(SnapshotRefusal::DoesNotExtend { .. })
        ));
        // The same state carried over the genuine history does not verify either.
        let mut extended = history.clone();
        extended.extend(forged);
        let replayed = SnapshotData::replay(extended.iter().map(Arc::as_ref));
        assert_eq!(
            replayed.refusals().last().map(|r| r.signer.as_str()),
            Some("h1")
        );
        let forged = SnapshotData::new(snapshot.state().clone(), extended);
        assert_eq!(forged.verify(&history), Err(SnapshotRefusal::DoesNotVerify));
    }

    #[test]
    fn times_are_part_of_the_history() {
        let (mut history, _, _) = genuine();
        let snapshot = snapshot_of(&history);
        // The same signed revocation, said to be applied later than this node applied it.
        let moved =
            Arc::new(GovernanceRequest::new(history[2].command().clone(), Timestamp(31)).unwrap());
        let applied_here = history.clone();
        history[2] = moved;
        let retimed = snapshot_of(&history);
        assert_ne!(retimed.state(), snapshot.state());
        assert!(matches!(
            retimed.verify(&applied_here),
            Err(SnapshotRefusal::DoesNotExtend { .. })
        ));
    }

    #[test]
    fn bytes_that_are_not_a_snapshot_are_refused() {
        assert!(SnapshotData::from_bytes(b"not a snapshot").is_err());
        let (history, _, _) = genuine();
        let mut bytes = snapshot_of(&history).to_bytes();
        bytes.push(0);
        assert!(SnapshotData::from_bytes(&bytes).is_err());
    }
}
