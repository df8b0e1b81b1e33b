//! Members of the consortium: who they are, the keys they hold, and where their node listens.

use ed25519_dalek::{Signature, Signer as _, SigningKey};
use sha2::{Digest as _, Sha256};

use crate::codec::{self, DecodeError, Reader, Wire, Writer};
use crate::governance::limits;
use crate::hash::tag;
use crate::keys::PublicKey;
use crate::tx::Timestamp;

/// A member's id: the institution id the ledger uses for the same institution (the
/// `institution` of its batches), so that one string names it everywhere.
pub type MemberId = String;

/// What kind of institution a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberKind {
    /// The consortium's regulator: admits, suspends and revokes members. There is one.
    Regulator,
    /// A hospital.
    Hospital,
    /// Another care provider.
    Provider,
}

impl MemberKind {
    fn tag(self) -> u8 {
        match self {
            Self::Regulator => 1,
            Self::Hospital => 2,
            Self::Provider => 3,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Regulator),
            2 => Ok(Self::Hospital),
            3 => Ok(Self::Provider),
            tag => Err(DecodeError::UnknownTag {
                field: "member kind",
                tag,
            }),
        }
    }
}

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberStatus {
    /// Takes part: its certificate is accepted, it signs, it votes.
    Active,
    /// Set aside by the regulator until reinstated; it may still rotate its own keys.
    Suspended,
    /// Expelled for good: its certificate is on the revocation list and nothing brings it back.
    Revoked,
}

impl MemberStatus {
    fn tag(self) -> u8 {
        match self {
            Self::Active => 1,
            Self::Suspended => 2,
            Self::Revoked => 3,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Active),
            2 => Ok(Self::Suspended),
            3 => Ok(Self::Revoked),
            tag => Err(DecodeError::UnknownTag {
                field: "member status",
                tag,
            }),
        }
    }
}

/// The part a member's node plays in the Raft group that replicates this state. Voters are the
/// regulator's node and a configured few institutions; every other node only follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaftRole {
    /// Votes and counts towards the commit quorum.
    Voter,
    /// Receives the log, does not vote.
    Learner,
}

impl RaftRole {
    fn tag(self) -> u8 {
        match self {
            Self::Voter => 1,
            Self::Learner => 2,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Voter),
            2 => Ok(Self::Learner),
            tag => Err(DecodeError::UnknownTag {
                field: "raft role",
                tag,
            }),
        }
    }
}

/// The public keys a member is known by.
#[derive(Clone, PartialEq, Eq)]
pub struct MemberKeys {
    /// SHA-256 of the DER of the TLS certificate its node presents (mTLS between nodes and to
    /// the sidecar).
    pub tls_certificate: [u8; 32],
    /// Ed25519 key: signs governance commands, ledger batches and finality votes.
    pub signing_key: PublicKey,
    /// RSA public key (SubjectPublicKeyInfo DER) that data keys and the link key are wrapped
    /// for. Opaque here: `storage` parses it.
    pub wrapping_key: Vec<u8>,
    /// Ristretto255 point (compressed) of its anonymous ring-vote key. Opaque here: the DPoS
    /// votes use it.
    pub vote_key: [u8; 32],
    /// schnorrkel (sr25519) public key, a compressed Ristretto255 point, of its contributions
    /// to the election beacon (VRF outputs, [`crate::election::beacon`]). Opaque here: the
    /// beacon checks it, and a member whose key is not one only loses its contributions.
    pub beacon_key: [u8; 32],
}

impl MemberKeys {
    /// SHA-256 of [`MemberKeys::wrapping_key`]: names the RSA key a link key was wrapped for.
    pub fn wrapping_key_id(&self) -> [u8; 32] {
        Sha256::digest(&self.wrapping_key).into()
    }

    /// What the new signing key signs to show its holder has it: tag 0x31, format version, the
    /// consortium, the member, then these keys. Binding the member and consortium stops a proof
    /// made for one admission from being replayed for another.
    pub fn possession_message(&self, consortium: &str, member: &str) -> Vec<u8> {
        let mut w = Writer::with_capacity(192 + self.wrapping_key.len());
        w.u8(tag::KEY_POSSESSION);
        w.u8(codec::FORMAT_VERSION);
        w.str(consortium);
        w.str(member);
        self.write(&mut w);
        w.into_bytes()
    }

    /// Proof that the holder of `key` (the new signing key) asks for these keys for `member`.
    pub fn prove_possession(&self, consortium: &str, member: &str, key: &SigningKey) -> Signature {
        key.sign(&self.possession_message(consortium, member))
    }

    /// Whether `proof` is [`MemberKeys::prove_possession`] by [`MemberKeys::signing_key`].
    pub fn verify_possession(&self, consortium: &str, member: &str, proof: &Signature) -> bool {
        self.signing_key
            .verify(
                &self.possession_message(consortium, member),
                proof,
                "key possession",
            )
            .is_ok()
    }
}

impl std::fmt::Debug for MemberKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberKeys")
            .field("tls_certificate", &crate::hash::hex(&self.tls_certificate))
            .field("signing_key", &self.signing_key)
            .field(
                "wrapping_key_id",
                &crate::hash::hex(&self.wrapping_key_id()),
            )
            .field("vote_key", &crate::hash::hex(&self.vote_key))
            .field("beacon_key", &crate::hash::hex(&self.beacon_key))
            .finish()
    }
}

impl Wire for MemberKeys {
    const MIN_LEN: usize = 32 + 32 + 4 + 32 + 32;

    fn write(&self, w: &mut Writer) {
        w.raw(&self.tls_certificate);
        w.raw(&self.signing_key.0);
        w.bytes(&self.wrapping_key);
        w.raw(&self.vote_key);
        w.raw(&self.beacon_key);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            tls_certificate: r.array("tls certificate")?,
            signing_key: PublicKey(r.array("signing key")?),
            wrapping_key: r.bytes("wrapping key", limits::MAX_WRAPPING_KEY_LEN)?,
            vote_key: r.array("vote key")?,
            beacon_key: r.array("beacon key")?,
        })
    }
}

/// Everything the regulator decides when it admits a member (and the regulator states about
/// itself at genesis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The member's id (never reused, even after revocation).
    pub id: MemberId,
    /// Its display name.
    pub name: String,
    /// What kind of institution it is.
    pub kind: MemberKind,
    /// The Raft node id of its node (unique in the consortium, never reused).
    pub node_id: u64,
    /// Where its node listens for the consortium transport (`host:port`).
    pub address: String,
    /// Whether its node votes in the Raft group.
    pub raft_role: RaftRole,
    /// Its keys.
    pub keys: MemberKeys,
    /// Its stake, in the consortium's units.
    pub stake: u64,
    /// Its starting reputation.
    pub reputation: u64,
}

impl Admission {
    /// Field checks, so that nothing accepted is refused by the decoder.
    pub(crate) fn is_well_formed(&self) -> bool {
        name_ok(&self.id)
            && name_ok(&self.name)
            && name_ok(&self.address)
            && !self.keys.wrapping_key.is_empty()
            && self.keys.wrapping_key.len() <= limits::MAX_WRAPPING_KEY_LEN
    }
}

impl Wire for Admission {
    const MIN_LEN: usize = 4 + 4 + 1 + 8 + 4 + 1 + MemberKeys::MIN_LEN + 8 + 8;

    fn write(&self, w: &mut Writer) {
        w.str(&self.id);
        w.str(&self.name);
        w.u8(self.kind.tag());
        w.u64(self.node_id);
        w.str(&self.address);
        w.u8(self.raft_role.tag());
        self.keys.write(w);
        w.u64(self.stake);
        w.u64(self.reputation);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.string("member id", limits::MAX_NAME_LEN)?,
            name: r.string("member name", limits::MAX_NAME_LEN)?,
            kind: MemberKind::from_tag(r.u8("member kind")?)?,
            node_id: r.u64("node id")?,
            address: r.string("node address", limits::MAX_NAME_LEN)?,
            raft_role: RaftRole::from_tag(r.u8("raft role")?)?,
            keys: MemberKeys::read(r)?,
            stake: r.u64("stake")?,
            reputation: r.u64("reputation")?,
        })
    }
}

/// A member as the governance state holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// What it was admitted with, keys and stake as they are now.
    pub profile: Admission,
    /// Where it stands.
    pub status: MemberStatus,
    /// The highest command sequence number it has used: a signed command is used once, so the
    /// next one must carry a higher number.
    pub last_sequence: u64,
    /// When it was admitted (the time of the log entry that admitted it).
    pub admitted_at: Timestamp,
    /// When its status last changed.
    pub status_since: Timestamp,
}

impl Member {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.profile.id
    }

    /// Its current keys.
    pub fn keys(&self) -> &MemberKeys {
        &self.profile.keys
    }

    /// Whether it is active.
    pub fn is_active(&self) -> bool {
        self.status == MemberStatus::Active
    }
}

impl Wire for Member {
    const MIN_LEN: usize = Admission::MIN_LEN + 1 + 8 + 8 + 8;

    fn write(&self, w: &mut Writer) {
        self.profile.write(w);
        w.u8(self.status.tag());
        w.u64(self.last_sequence);
        w.u64(self.admitted_at.0);
        w.u64(self.status_since.0);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            profile: Admission::read(r)?,
            status: MemberStatus::from_tag(r.u8("member status")?)?,
            last_sequence: r.u64("last sequence")?,
            admitted_at: Timestamp(r.u64("admitted at")?),
            status_since: Timestamp(r.u64("status since")?),
        })
    }
}

/// A required short string: non-empty and within the decoder's bound.
pub(crate) fn name_ok(value: &str) -> bool {
    !value.is_empty() && value.len() <= limits::MAX_NAME_LEN
}
