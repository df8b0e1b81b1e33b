//! Governance commands and their signatures.
//!
//! Every command is signed by one member with its current Ed25519 key, over a domain-separated
//! message (tag 0x30, format version, the consortium's name, the signer, a sequence number, the
//! validity window, the command). The consortium's name keeps a command signed for one
//! consortium from being played in another; the sequence number, which must exceed the signer's
//! last one, keeps a command from being played twice in the same one; the validity window keeps
//! a command signed now from being played much later (a command held back, or signed before its
//! key leaked).

use ed25519_dalek::{Signature, Signer as _, SigningKey};

use crate::codec::{self, top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::governance::epoch::ElectionParams;
use crate::governance::limits;
use crate::governance::member::{name_ok, Admission, MemberId, MemberKeys};
use crate::hash::tag;
use crate::keys::PublicKey;
use crate::tx::Timestamp;

/// What a member asks the consortium to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Founds the consortium with its regulator and the election's parameters. Only on an
    /// empty state, signed by the regulator's own key (which also proves that it holds it).
    Genesis {
        /// The regulator.
        regulator: Admission,
        /// The election's parameters, for the consortium's whole life; valid
        /// ([`ElectionParams::is_valid`]) or the genesis is malformed.
        election: ElectionParams,
    },
    /// Admits a member. Regulator only.
    Admit {
        /// The new member.
        member: Admission,
        /// The new member's signature proving it holds its signing key (see
        /// [`MemberKeys::prove_possession`]).
        possession: Signature,
    },
    /// Sets an active member aside. Regulator only.
    Suspend {
        /// The member.
        member: MemberId,
        /// Why, for the record.
        reason: String,
    },
    /// Brings a suspended member back. Regulator only.
    Reinstate {
        /// The member.
        member: MemberId,
    },
    /// Expels a member for good and puts its certificate on the revocation list. Regulator only.
    Revoke {
        /// The member.
        member: MemberId,
        /// Why, for the record.
        reason: String,
    },
    /// Sets a member's stake. Regulator only.
    SetStake {
        /// The member.
        member: MemberId,
        /// The new stake.
        stake: u64,
    },
    /// Replaces a member's keys. Only the member itself, signing with its current key; the
    /// certificate it replaces goes on the revocation list.
    RotateKeys {
        /// The member (must be the signer).
        member: MemberId,
        /// The new keys.
        keys: MemberKeys,
        /// The new signing key's proof of possession.
        possession: Signature,
    },
    /// Records the consortium link key wrapped (RSA-OAEP, by the regulator) for some members.
    /// Regulator only.
    WrapLinkKey {
        /// The link key's version; not below the current one.
        version: u32,
        /// For each member, the link key wrapped for its current wrapping key.
        wrapped: Vec<(MemberId, Vec<u8>)>,
    },
    /// Opens the next epoch, whose delegates are the `delegates` active members with the highest
    /// stake at that moment (ties by member id), recorded with it, and makes K = `delegates` for
    /// the epochs the state begins by itself after it. Regulator only until the DPoS election
    /// drives epochs.
    BeginEpoch {
        /// The new epoch: the current one plus one.
        epoch: u64,
        /// How many delegates (K), at least 1 and at most [`limits::MAX_DELEGATES`].
        delegates: u32,
    },
}

/// The kind of a command, for the refusal log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// [`Command::Genesis`].
    Genesis,
    /// [`Command::Admit`].
    Admit,
    /// [`Command::Suspend`].
    Suspend,
    /// [`Command::Reinstate`].
    Reinstate,
    /// [`Command::Revoke`].
    Revoke,
    /// [`Command::SetStake`].
    SetStake,
    /// [`Command::RotateKeys`].
    RotateKeys,
    /// [`Command::WrapLinkKey`].
    WrapLinkKey,
    /// [`Command::BeginEpoch`].
    BeginEpoch,
}

impl CommandKind {
    pub(crate) fn tag(self) -> u8 {
        match self {
            Self::Genesis => 1,
            Self::Admit => 2,
            Self::Suspend => 3,
            Self::Reinstate => 4,
            Self::Revoke => 5,
            Self::SetStake => 6,
            Self::RotateKeys => 7,
            Self::WrapLinkKey => 8,
            Self::BeginEpoch => 9,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Ok(match tag {
            1 => Self::Genesis,
            2 => Self::Admit,
            3 => Self::Suspend,
            4 => Self::Reinstate,
            5 => Self::Revoke,
            6 => Self::SetStake,
            7 => Self::RotateKeys,
            8 => Self::WrapLinkKey,
            9 => Self::BeginEpoch,
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "command kind",
                    tag,
                })
            }
        })
    }
}

impl Command {
    /// Its kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::Genesis { .. } => CommandKind::Genesis,
            Self::Admit { .. } => CommandKind::Admit,
            Self::Suspend { .. } => CommandKind::Suspend,
            Self::Reinstate { .. } => CommandKind::Reinstate,
            Self::Revoke { .. } => CommandKind::Revoke,
            Self::SetStake { .. } => CommandKind::SetStake,
            Self::RotateKeys { .. } => CommandKind::RotateKeys,
            Self::WrapLinkKey { .. } => CommandKind::WrapLinkKey,
            Self::BeginEpoch { .. } => CommandKind::BeginEpoch,
        }
    }

    /// Field checks, so that nothing accepted is refused by the decoder.
    pub(crate) fn is_well_formed(&self) -> bool {
        match self {
            Self::Genesis {
                regulator,
                election,
            } => regulator.is_well_formed() && election.is_valid(),
            Self::Admit { member, .. } => member.is_well_formed(),
            Self::Suspend { member, reason } | Self::Revoke { member, reason } => {
                name_ok(member) && reason.len() <= limits::MAX_REASON_LEN
            }
            Self::Reinstate { member } | Self::SetStake { member, .. } => name_ok(member),
            Self::RotateKeys { member, keys, .. } => {
                name_ok(member)
                    && !keys.wrapping_key.is_empty()
                    && keys.wrapping_key.len() <= limits::MAX_WRAPPING_KEY_LEN
            }
            Self::WrapLinkKey { wrapped, .. } => {
                !wrapped.is_empty()
                    && wrapped.len() <= limits::MAX_MEMBERS
                    && wrapped.iter().all(|(member, key)| {
                        name_ok(member)
                            && !key.is_empty()
                            && key.len() <= limits::MAX_WRAPPED_KEY_LEN
                    })
            }
            Self::BeginEpoch { delegates, .. } => {
                (1..=limits::MAX_DELEGATES).contains(&(*delegates as usize))
            }
        }
    }
}

impl Wire for Command {
    // The shortest is a reinstatement: the tag and an empty member id.
    const MIN_LEN: usize = 1 + 4;

    fn write(&self, w: &mut Writer) {
        w.u8(self.kind().tag());
        match self {
            Self::Genesis {
                regulator,
                election,
            } => {
                regulator.write(w);
                election.write(w);
            }
            Self::Admit { member, possession } => {
                member.write(w);
                w.raw(&possession.to_bytes());
            }
            Self::Suspend { member, reason } | Self::Revoke { member, reason } => {
                w.str(member);
                w.str(reason);
            }
            Self::Reinstate { member } => w.str(member),
            Self::SetStake { member, stake } => {
                w.str(member);
                w.u64(*stake);
            }
            Self::RotateKeys {
                member,
                keys,
                possession,
            } => {
                w.str(member);
                keys.write(w);
                w.raw(&possession.to_bytes());
            }
            Self::WrapLinkKey { version, wrapped } => {
                w.u32(*version);
                w.len(wrapped.len());
                for (member, key) in wrapped {
                    w.str(member);
                    w.bytes(key);
                }
            }
            Self::BeginEpoch { epoch, delegates } => {
                w.u64(*epoch);
                w.u32(*delegates);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = CommandKind::from_tag(r.u8("command kind")?)?;
        Ok(match kind {
            CommandKind::Genesis => Self::Genesis {
                regulator: Admission::read(r)?,
                election: ElectionParams::read(r)?,
            },
            CommandKind::Admit => Self::Admit {
                member: Admission::read(r)?,
                possession: Signature::from_bytes(&r.array("possession proof")?),
            },
            CommandKind::Suspend => Self::Suspend {
                member: r.string("member", limits::MAX_NAME_LEN)?,
                reason: r.string("reason", limits::MAX_REASON_LEN)?,
            },
            CommandKind::Reinstate => Self::Reinstate {
                member: r.string("member", limits::MAX_NAME_LEN)?,
            },
            CommandKind::Revoke => Self::Revoke {
                member: r.string("member", limits::MAX_NAME_LEN)?,
                reason: r.string("reason", limits::MAX_REASON_LEN)?,
            },
            CommandKind::SetStake => Self::SetStake {
                member: r.string("member", limits::MAX_NAME_LEN)?,
                stake: r.u64("stake")?,
            },
            CommandKind::RotateKeys => Self::RotateKeys {
                member: r.string("member", limits::MAX_NAME_LEN)?,
                keys: MemberKeys::read(r)?,
                possession: Signature::from_bytes(&r.array("possession proof")?),
            },
            CommandKind::WrapLinkKey => {
                let version = r.u32("link key version")?;
                let n = r.count("wrapped link keys", limits::MAX_MEMBERS, 4 + 4)?;
                let mut wrapped = Vec::with_capacity(n);
                for _ in 0..n {
                    wrapped.push((
                        r.string("member", limits::MAX_NAME_LEN)?,
                        r.bytes("wrapped link key", limits::MAX_WRAPPED_KEY_LEN)?,
                    ));
                }
                Self::WrapLinkKey { version, wrapped }
            }
            CommandKind::BeginEpoch => Self::BeginEpoch {
                epoch: r.u64("epoch")?,
                delegates: r.u32("delegates")?,
            },
        })
    }
}

/// When a signed command may be applied: from `not_before` to `not_after`, both included, in
/// the time of the log entry that carries it (the proposing leader's clock). Inside the signed
/// bytes, so that no one but the signer sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Validity {
    /// The first instant it may be applied.
    pub not_before: Timestamp,
    /// The last instant it may be applied.
    pub not_after: Timestamp,
}

impl Validity {
    /// From `now - before_ms` to `now + after_ms` (saturating): what a signer that submits at
    /// once gives its command, the margin before `now` covering a leader whose clock is behind.
    pub fn around(now: Timestamp, before_ms: u64, after_ms: u64) -> Self {
        Self {
            not_before: Timestamp(now.0.saturating_sub(before_ms)),
            not_after: Timestamp(now.0.saturating_add(after_ms)),
        }
    }

    /// Whether `at` is inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// Whether it is a window a command may carry: not inverted, and no longer than
    /// [`limits::MAX_VALIDITY_MS`].
    pub fn is_well_formed(&self) -> bool {
        self.not_after
            .0
            .checked_sub(self.not_before.0)
            .is_some_and(|len| len <= limits::MAX_VALIDITY_MS)
    }
}

/// A command with its signer, sequence number, validity window and signature: what is
/// replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommand {
    /// The consortium it is meant for.
    pub consortium: String,
    /// The member that signs it.
    pub signer: MemberId,
    /// Above the signer's last used sequence number.
    pub sequence: u64,
    /// When it may be applied.
    pub validity: Validity,
    /// What it asks.
    pub command: Command,
    /// Ed25519 signature of [`SignedCommand::signing_message`].
    pub signature: Signature,
}

top_level_encoding!(SignedCommand);

impl SignedCommand {
    /// Signs `command` as `signer` with `key`, to be applied within `validity`.
    pub fn sign(
        consortium: impl Into<String>,
        signer: impl Into<MemberId>,
        sequence: u64,
        validity: Validity,
        command: Command,
        key: &SigningKey,
    ) -> Self {
        let mut signed = Self {
            consortium: consortium.into(),
            signer: signer.into(),
            sequence,
            validity,
            command,
            signature: Signature::from_bytes(&[0; 64]),
        };
        signed.signature = key.sign(&signed.signing_message());
        signed
    }

    /// What the signer signs: tag 0x30, format version, then every field but the signature
    /// (the validity window included).
    pub fn signing_message(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.u8(tag::GOVERNANCE_COMMAND);
        w.u8(codec::FORMAT_VERSION);
        self.write_unsigned(&mut w);
        w.into_bytes()
    }

    /// Whether the signature verifies (strictly) under `key`.
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        key.verify(
            &self.signing_message(),
            &self.signature,
            "governance command",
        )
        .is_ok()
    }

    /// Whether it survives its own encoding: every field within the decoder's bounds. A command
    /// that does not is refused before it is proposed, because a log entry that cannot be read
    /// back would stop every node that stored it.
    pub fn is_encodable(&self) -> bool {
        name_ok(&self.consortium)
            && name_ok(&self.signer)
            && self.command.is_well_formed()
            && Self::from_bytes(&self.to_bytes()).as_ref() == Ok(self)
    }

    fn write_unsigned(&self, w: &mut Writer) {
        w.str(&self.consortium);
        w.str(&self.signer);
        w.u64(self.sequence);
        w.u64(self.validity.not_before.0);
        w.u64(self.validity.not_after.0);
        self.command.write(w);
    }

    /// If this is a join request — an admission signed by the applicant itself, with its own
    /// new key — the admission and its proof of possession. The join desk takes only these,
    /// and the regulator admits only these.
    pub fn join_request(&self) -> Option<(&Admission, &Signature)> {
        match &self.command {
            Command::Admit { member, possession }
                if self.signer == member.id && self.is_signed_by(&member.keys.signing_key) =>
            {
                Some((member, possession))
            }
            _ => None,
        }
    }
}

impl Wire for SignedCommand {
    const MIN_LEN: usize = 4 + 4 + 8 + 8 + 8 + Command::MIN_LEN + 64;

    fn write(&self, w: &mut Writer) {
        self.write_unsigned(w);
        w.raw(&self.signature.to_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            consortium: r.string("consortium", limits::MAX_NAME_LEN)?,
            signer: r.string("signer", limits::MAX_NAME_LEN)?,
            sequence: r.u64("sequence")?,
            validity: Validity {
                not_before: Timestamp(r.u64("not before")?),
                not_after: Timestamp(r.u64("not after")?),
            },
            command: Command::read(r)?,
            signature: Signature::from_bytes(&r.array("command signature")?),
        })
    }
}
