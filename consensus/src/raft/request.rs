//! What the Raft log carries ([`GovernanceRequest`]) and what applying it answers
//! ([`GovernanceResponse`]).

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::governance::{Outcome, SignedCommand};
use crate::tx::Timestamp;

/// A signed governance command and the time the proposing node gave it: the `now` every node
/// applies it with, so that every node records the same times.
///
/// A request can only be made from a command that survives its own encoding
/// ([`SignedCommand::is_encodable`]): a log entry a node could not read back would stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernanceRequest {
    proposed_at: Timestamp,
    command: SignedCommand,
}

top_level_encoding!(GovernanceRequest);

/// The command has a field over its bound: it could not be read back from the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the command has a field over its bound and cannot be replicated")]
pub struct Unencodable;

impl GovernanceRequest {
    /// A request for `command`, proposed at `proposed_at`.
    pub fn new(command: SignedCommand, proposed_at: Timestamp) -> Result<Self, Unencodable> {
        if !command.is_encodable() {
            return Err(Unencodable);
        }
        Ok(Self {
            proposed_at,
            command,
        })
    }

    /// The command.
    pub fn command(&self) -> &SignedCommand {
        &self.command
    }

    /// When it was proposed.
    pub fn proposed_at(&self) -> Timestamp {
        self.proposed_at
    }
}

impl Wire for GovernanceRequest {
    const MIN_LEN: usize = 8 + SignedCommand::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        w.u64(self.proposed_at.0);
        self.command.write(w);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            proposed_at: Timestamp(r.u64("proposed at")?),
            command: SignedCommand::read(r)?,
        })
    }
}

// openraft's `serde` feature asks its application data to be serde types, for transports that
// serialize its messages. The request crosses as its canonical bytes, so the one encoding the
// signature covers is also the one on the wire, whatever serde format the transport picks.
impl Serialize for GovernanceRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for GovernanceRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = GovernanceRequest;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the canonical bytes of a governance request")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
        GovernanceRequest::from_bytes(bytes).map_err(E::custom)
    }

    // Self-describing formats without a bytes type (JSON) give a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        self.visit_bytes(&bytes)
    }
}

/// What applying one log entry answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GovernanceResponse {
    /// A governance command was accepted or refused.
    Command(Outcome),
    /// The entry was Raft's own (a leader's blank entry or a membership change).
    Raft,
}
