//! Every Ed25519 signing key each member has held, from the governance history.
//!
//! The state keeps each member's current keys only; a rotation replaces them. What a member
//! signed before it rotated (its institution's ledger batches, above all) must still verify,
//! so the keys it held are read back from the history of applied commands: replayed through
//! [`GovernanceState::apply`] (each at the time it was applied at), so that only a key the
//! state accepted — a genesis, an admission, a rotation — counts, never one a refused command
//! names.

use std::collections::BTreeMap;

use crate::governance::command::{Command, SignedCommand};
use crate::governance::member::MemberId;
use crate::governance::state::{GovernanceState, Outcome};
use crate::keys::{DelegateSet, PublicKey, Roster};
use crate::tx::Timestamp;

/// The signing keys members have held, built by replaying the governance history one request
/// at a time.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    state: GovernanceState,
    seen: usize,
    held: BTreeMap<MemberId, Vec<PublicKey>>,
}

impl KeyHistory {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many requests of the history it has seen: the next one given must be the one at
    /// this position. A history shorter than that is another history: start a new one.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Takes the next request of the history: `command`, applied at `at`.
    pub fn apply_next(&mut self, command: &SignedCommand, at: Timestamp) {
        self.seen += 1;
        if self.state.apply(command, at) != Outcome::Accepted {
            return;
        }
        let member = match &command.command {
            Command::Genesis { regulator, .. } => &regulator.id,
            Command::Admit { member, .. } => &member.id,
            Command::RotateKeys { member, .. } => member,
            _ => return,
        };
        if let Some(key) = self.state.member(member).map(|m| m.keys().signing_key) {
            let keys = self.held.entry(member.clone()).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }

    /// Every signing key `member` has held, oldest first.
    pub fn held(&self, member: &str) -> &[PublicKey] {
        self.held.get(member).map_or(&[], Vec::as_slice)
    }

    /// The roster that verifies what was signed in the past: every member, revoked ones too
    /// (what they signed while they were members stays valid), with every key it has held, and
    /// `delegates`.
    pub fn roster(&self, delegates: DelegateSet) -> Roster {
        Roster::new(
            delegates,
            self.held
                .iter()
                .flat_map(|(id, keys)| keys.iter().map(move |k| (id.clone(), *k))),
        )
    }
}
