//! The governance state and the rules that change it.
//!
//! [`GovernanceState::apply`] is the whole of the authorization: every node applies the same
//! commands in the same order with the same time (the log entry's), so every node accepts and
//! refuses the same commands and ends in the same state. A refusal changes nothing but the
//! refusal log (and, for an authentic command, its signer's sequence number).

use std::collections::{BTreeMap, VecDeque};

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::codec::{top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::governance::command::{Command, CommandKind, SignedCommand};
use crate::governance::epoch::{ElectionParams, Epoch, EpochSeat};
use crate::governance::limits;
use crate::governance::member::{
    name_ok, Admission, Member, MemberId, MemberKeys, MemberKind, MemberStatus, RaftRole,
};
use crate::keys::{DelegateSet, PublicKey, Roster};
use crate::tx::Timestamp;

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Accepted,
    /// Refused, and recorded in the refusal log.
    Refused(Refusal),
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// A field is empty, too long, or a list repeats a member.
    #[error("malformed command")]
    Malformed,
    /// Only genesis is possible before genesis.
    #[error("the consortium has no genesis yet")]
    NoGenesis,
    /// Genesis happens once.
    #[error("the consortium already has its genesis")]
    AlreadyGenesis,
    /// Genesis must found a regulator, voting, signed by itself.
    #[error("genesis must admit a voting regulator, signed by that regulator")]
    BadGenesis,
    /// The command names another consortium.
    #[error("the command is for another consortium")]
    WrongConsortium,
    /// The signer is not a member.
    #[error("the signer is not a member")]
    UnknownSigner,
    /// The signer was revoked.
    #[error("the signer is revoked")]
    SignerRevoked,
    /// The signature does not verify under the signer's current key.
    #[error("the signature does not verify under the signer's key")]
    BadSignature,
    /// The sequence number is not above the signer's last one: a replay.
    #[error("the sequence number was already used")]
    Replayed,
    /// The command needs the regulator's signature.
    #[error("only the regulator may sign this command")]
    NotRegulator,
    /// A member's keys can be rotated only by that member.
    #[error("only the member itself may rotate its keys")]
    NotSelf,
    /// There is one regulator.
    #[error("the consortium already has a regulator")]
    SecondRegulator,
    /// The member named is unknown.
    #[error("no such member")]
    UnknownMember,
    /// The member id is taken (member ids are never reused).
    #[error("the member id is taken")]
    MemberExists,
    /// The Raft node id is taken (node ids are never reused).
    #[error("the node id is taken")]
    NodeIdTaken,
    /// The certificate is on the revocation list.
    #[error("the certificate is revoked")]
    CertificateRevoked,
    /// Another member presents this certificate.
    #[error("the certificate belongs to another member")]
    CertificateInUse,
    /// Another member signs with this key.
    #[error("the signing key belongs to another member")]
    SigningKeyInUse,
    /// Another member votes with this key (ring votes need distinct keys).
    #[error("the vote key belongs to another member")]
    VoteKeyInUse,
    /// The new signing key's proof of possession does not verify.
    #[error("the proof of possession of the new signing key does not verify")]
    BadKeyProof,
    /// The regulator cannot be suspended or revoked.
    #[error("the regulator cannot be suspended or revoked")]
    TargetIsRegulator,
    /// Revocation is final.
    #[error("the member is revoked")]
    AlreadyRevoked,
    /// Only an active member can be suspended.
    #[error("the member is not active")]
    NotActive,
    /// Only a suspended member can be reinstated.
    #[error("the member is not suspended")]
    NotSuspended,
    /// Epochs advance one at a time.
    #[error("the epoch is not the next one")]
    StaleEpoch,
    /// A link key version below the current one.
    #[error("the link key version is older than the current one")]
    StaleLinkKey,
    /// The member list or the revocation list is at its bound.
    #[error("the consortium is full")]
    Full,
    /// The command's validity window ended before the time it is applied at.
    #[error("the command's validity window has passed")]
    Expired,
    /// The command's validity window begins after the time it is applied at.
    #[error("the command's validity window has not begun")]
    NotYetValid,
    /// Another member contributes to the beacon with this key (one VRF output per key).
    #[error("the beacon key belongs to another member")]
    BeaconKeyInUse,
    /// With an election, K is fixed when the consortium is founded: every member folds the
    /// chain's elections with it, the past ones included.
    #[error("the number of delegates is fixed by the election since the founding")]
    DelegatesFixed,
}

impl Refusal {
    fn tag(self) -> u8 {
        match self {
            Self::Malformed => 1,
            Self::NoGenesis => 2,
            Self::AlreadyGenesis => 3,
            Self::BadGenesis => 4,
            Self::WrongConsortium => 5,
            Self::UnknownSigner => 6,
            Self::SignerRevoked => 7,
            Self::BadSignature => 8,
            Self::Replayed => 9,
            Self::NotRegulator => 10,
            Self::NotSelf => 11,
            Self::SecondRegulator => 12,
            Self::UnknownMember => 13,
            Self::MemberExists => 14,
            Self::NodeIdTaken => 15,
            Self::CertificateRevoked => 16,
            Self::CertificateInUse => 17,
            Self::SigningKeyInUse => 18,
            Self::VoteKeyInUse => 19,
            Self::BadKeyProof => 20,
            Self::TargetIsRegulator => 21,
            Self::AlreadyRevoked => 22,
            Self::NotActive => 23,
            Self::NotSuspended => 24,
            Self::StaleEpoch => 25,
            Self::StaleLinkKey => 26,
            Self::Full => 27,
            Self::Expired => 28,
            Self::NotYetValid => 29,
            Self::BeaconKeyInUse => 30,
            Self::DelegatesFixed => 31,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Ok(match tag {
            1 => Self::Malformed,
            2 => Self::NoGenesis,
            3 => Self::AlreadyGenesis,
            4 => Self::BadGenesis,
            5 => Self::WrongConsortium,
            6 => Self::UnknownSigner,
            7 => Self::SignerRevoked,
            8 => Self::BadSignature,
            9 => Self::Replayed,
            10 => Self::NotRegulator,
            11 => Self::NotSelf,
            12 => Self::SecondRegulator,
            13 => Self::UnknownMember,
            14 => Self::MemberExists,
            15 => Self::NodeIdTaken,
            16 => Self::CertificateRevoked,
            17 => Self::CertificateInUse,
            18 => Self::SigningKeyInUse,
            19 => Self::VoteKeyInUse,
            20 => Self::BadKeyProof,
            21 => Self::TargetIsRegulator,
            22 => Self::AlreadyRevoked,
            23 => Self::NotActive,
            24 => Self::NotSuspended,
            25 => Self::StaleEpoch,
            26 => Self::StaleLinkKey,
            27 => Self::Full,
            28 => Self::Expired,
            29 => Self::NotYetValid,
            30 => Self::BeaconKeyInUse,
            31 => Self::DelegatesFixed,
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "refusal",
                    tag,
                })
            }
        })
    }
}

/// A refused command, as the refusal log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRecord {
    /// When (the log entry's time).
    pub at: Timestamp,
    /// Who signed it, as the command says (empty if that was not even a valid id).
    pub signer: MemberId,
    /// Its sequence number.
    pub sequence: u64,
    /// What it asked.
    pub command: CommandKind,
    /// Why it was refused.
    pub reason: Refusal,
}

impl Wire for RefusalRecord {
    const MIN_LEN: usize = 8 + 4 + 8 + 1 + 1;

    fn write(&self, w: &mut Writer) {
        w.u64(self.at.0);
        w.str(&self.signer);
        w.u64(self.sequence);
        w.u8(self.command.tag());
        w.u8(self.reason.tag());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            at: Timestamp(r.u64("refusal time")?),
            signer: r.string("refusal signer", limits::MAX_NAME_LEN)?,
            sequence: r.u64("refusal sequence")?,
            command: CommandKind::from_tag(r.u8("command kind")?)?,
            reason: Refusal::from_tag(r.u8("refusal")?)?,
        })
    }
}

/// A certificate on the revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// The member that presented it.
    pub member: MemberId,
    /// Why it was revoked.
    pub reason: String,
    /// When.
    pub revoked_at: Timestamp,
}

/// The consortium link key wrapped for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedLinkKey {
    /// The link key's version.
    pub version: u32,
    /// SHA-256 of the wrapping key it was wrapped for: after the member rotates its RSA key this
    /// no longer matches, and the regulator must wrap the link key again.
    pub wrapped_for: [u8; 32],
    /// The RSA-OAEP ciphertext, as the regulator made it.
    pub ciphertext: Vec<u8>,
}

/// The consortium as the governance layer keeps it: members, the certificate revocation list,
/// the wrapped link keys, epochs (with their delegates and seats), the election's parameters
/// and the refusal log.
///
/// Pure data and rules: no I/O, no clock (time is passed in), no randomness. Its canonical
/// encoding ([`GovernanceState::to_bytes`]) is the Raft snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GovernanceState {
    // Empty before genesis.
    consortium: String,
    regulator: Option<MemberId>,
    // Every member ever admitted, revoked ones included, so that ids are never reused.
    members: BTreeMap<MemberId, Member>,
    crl: BTreeMap<[u8; 32], RevokedCertificate>,
    link_key_version: u32,
    link_keys: BTreeMap<MemberId, WrappedLinkKey>,
    epochs: BTreeMap<u64, Epoch>,
    // K: how many delegates an epoch has.
    delegates_k: u32,
    // Set by genesis, never changed: the election's epochs on the chain count on them.
    election_params: ElectionParams,
    // The last `MAX_REFUSALS_KEPT` refusals: kept bounded because any member can make the
    // regulator's node record a refusal, and the state is copied whole into every snapshot.
    refusals: VecDeque<RefusalRecord>,
    refusals_total: u64,
}

top_level_encoding!(GovernanceState);

impl GovernanceState {
    /// The empty state, before genesis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `command` at time `now` (the log entry's time, the same on every node): checks
    /// that it is well formed, for this consortium, signed by a member with its current key,
    /// fresh, and authorized, then applies it. A refusal is recorded in the refusal log.
    ///
    /// A command that changes the delegates or the seats an epoch would have now (an
    /// admission; a suspension, reinstatement or revocation of an active member; a stake; a key
    /// rotation by an active member) also begins the next epoch, with those delegates and
    /// seats: the shared ledger's delegates and the election's seats follow the state at once,
    /// and every node, applying the same commands, begins the same epochs.
    pub fn apply(&mut self, command: &SignedCommand, now: Timestamp) -> Outcome {
        match self.try_apply(command, now) {
            Ok(()) => {
                if !matches!(
                    command.command,
                    Command::Genesis { .. } | Command::BeginEpoch { .. }
                ) {
                    self.follow_members(now);
                }
                Outcome::Accepted
            }
            Err(reason) => {
                self.record_refusal(command, now, reason);
                Outcome::Refused(reason)
            }
        }
    }

    fn try_apply(&mut self, signed: &SignedCommand, now: Timestamp) -> Result<(), Refusal> {
        if !name_ok(&signed.consortium)
            || !name_ok(&signed.signer)
            || !signed.command.is_well_formed()
            || !signed.validity.is_well_formed()
        {
            return Err(Refusal::Malformed);
        }
        if let Command::Genesis {
            regulator,
            election,
        } = &signed.command
        {
            return self.genesis(signed, regulator, *election, now);
        }
        if self.regulator.is_none() {
            return Err(Refusal::NoGenesis);
        }
        if signed.consortium != self.consortium {
            return Err(Refusal::WrongConsortium);
        }
        let signer = self
            .members
            .get_mut(&signed.signer)
            .ok_or(Refusal::UnknownSigner)?;
        if signer.status == MemberStatus::Revoked {
            return Err(Refusal::SignerRevoked);
        }
        if !signed.is_signed_by(&signer.keys().signing_key) {
            return Err(Refusal::BadSignature);
        }
        if signed.sequence <= signer.last_sequence {
            return Err(Refusal::Replayed);
        }
        // From here the command is authentic and fresh. It uses its sequence number up whatever
        // follows: a command refused now (say, an admission whose node id is taken, or one whose
        // window has not begun) must not be replayable later, when it would pass.
        signer.last_sequence = signed.sequence;
        within_window(signed, now)?;
        let by_regulator = self.regulator.as_deref() == Some(signed.signer.as_str());

        match &signed.command {
            Command::RotateKeys {
                member,
                keys,
                possession,
            } => {
                if *member != signed.signer {
                    return Err(Refusal::NotSelf);
                }
                self.rotate_keys(member, keys, possession, now)
            }
            _ if !by_regulator => Err(Refusal::NotRegulator),
            Command::Admit { member, possession } => self.admit(member, possession, now),
            Command::Suspend { member, .. } => {
                let target = self.target(member)?;
                match target.status {
                    MemberStatus::Active => {
                        target.status = MemberStatus::Suspended;
                        target.status_since = now;
                        Ok(())
                    }
                    MemberStatus::Suspended => Err(Refusal::NotActive),
                    MemberStatus::Revoked => Err(Refusal::AlreadyRevoked),
                }
            }
            Command::Reinstate { member } => {
                let target = self.target(member)?;
                match target.status {
                    MemberStatus::Suspended => {
                        target.status = MemberStatus::Active;
                        target.status_since = now;
                        Ok(())
                    }
                    MemberStatus::Active => Err(Refusal::NotSuspended),
                    MemberStatus::Revoked => Err(Refusal::AlreadyRevoked),
                }
            }
            Command::Revoke { member, reason } => {
                let target = self.target(member)?;
                if target.status == MemberStatus::Revoked {
                    return Err(Refusal::AlreadyRevoked);
                }
                target.status = MemberStatus::Revoked;
                target.status_since = now;
                let certificate = target.keys().tls_certificate;
                self.crl.insert(
                    certificate,
                    RevokedCertificate {
                        member: member.clone(),
                        reason: reason.clone(),
                        revoked_at: now,
                    },
                );
                // A revoked member must not be handed the next link key; the one it holds is
                // the regulator's to rotate.
                self.link_keys.remove(member);
                Ok(())
            }
            Command::SetStake { member, stake } => {
                let target = self.members.get_mut(member).ok_or(Refusal::UnknownMember)?;
                if target.status == MemberStatus::Revoked {
                    return Err(Refusal::AlreadyRevoked);
                }
                target.profile.stake = *stake;
                Ok(())
            }
            Command::WrapLinkKey { version, wrapped } => self.wrap_link_key(*version, wrapped),
            Command::BeginEpoch { epoch, delegates } => {
                let current = self.current_epoch();
                if current.checked_add(1) != Some(*epoch) {
                    return Err(Refusal::StaleEpoch);
                }
                // The founding's own `BeginEpoch` (epoch 1) sets K; with an election no later
                // one may change it.
                if self.election_params.elects() && *epoch > 1 && *delegates != self.delegates_k {
                    return Err(Refusal::DelegatesFixed);
                }
                self.delegates_k = *delegates;
                let delegates = self.choose_delegates(*delegates as usize);
                self.begin_epoch(*epoch, now, delegates);
                Ok(())
            }
            // Handled above, before the signer was looked up.
            Command::Genesis { .. } => Err(Refusal::AlreadyGenesis),
        }
    }

    fn genesis(
        &mut self,
        signed: &SignedCommand,
        regulator: &Admission,
        election: ElectionParams,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        if self.regulator.is_some() {
            return Err(Refusal::AlreadyGenesis);
        }
        if regulator.kind != MemberKind::Regulator
            || regulator.raft_role != RaftRole::Voter
            || signed.signer != regulator.id
        {
            return Err(Refusal::BadGenesis);
        }
        // The regulator's signature with the key it declares is also its proof of possession.
        if !signed.is_signed_by(&regulator.keys.signing_key) {
            return Err(Refusal::BadSignature);
        }
        within_window(signed, now)?;
        self.consortium = signed.consortium.clone();
        self.regulator = Some(regulator.id.clone());
        self.members.insert(
            regulator.id.clone(),
            Member {
                profile: regulator.clone(),
                status: MemberStatus::Active,
                last_sequence: signed.sequence,
                admitted_at: now,
                status_since: now,
            },
        );
        let delegates = vec![(regulator.id.clone(), regulator.keys.signing_key)];
        self.delegates_k = limits::DEFAULT_DELEGATES;
        self.election_params = election;
        self.begin_epoch(0, now, delegates);
        Ok(())
    }

    /// Whether the regulator may admit `member`, proven by `possession`, in this state: the
    /// checks [`Command::Admit`] makes before it changes anything. The join desk calls it on an
    /// applicant's request, so that what it keeps pending is what the state would admit now.
    pub fn check_admission(
        &self,
        member: &Admission,
        possession: &Signature,
    ) -> Result<(), Refusal> {
        if self.regulator.is_none() {
            return Err(Refusal::NoGenesis);
        }
        if !member.is_well_formed() {
            return Err(Refusal::Malformed);
        }
        if member.kind == MemberKind::Regulator {
            return Err(Refusal::SecondRegulator);
        }
        if self.members.contains_key(&member.id) {
            return Err(Refusal::MemberExists);
        }
        if self.members.len() >= limits::MAX_MEMBERS {
            return Err(Refusal::Full);
        }
        if self
            .members
            .values()
            .any(|m| m.profile.node_id == member.node_id)
        {
            return Err(Refusal::NodeIdTaken);
        }
        self.check_keys(&member.id, &member.keys)?;
        if !member
            .keys
            .verify_possession(&self.consortium, &member.id, possession)
        {
            return Err(Refusal::BadKeyProof);
        }
        Ok(())
    }

    fn admit(
        &mut self,
        member: &Admission,
        possession: &Signature,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        self.check_admission(member, possession)?;
        self.members.insert(
            member.id.clone(),
            Member {
                profile: member.clone(),
                status: MemberStatus::Active,
                last_sequence: 0,
                admitted_at: now,
                status_since: now,
            },
        );
        Ok(())
    }

    fn rotate_keys(
        &mut self,
        member: &str,
        keys: &MemberKeys,
        possession: &Signature,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        self.check_keys(member, keys)?;
        if !keys.verify_possession(&self.consortium, member, possession) {
            return Err(Refusal::BadKeyProof);
        }
        // Rotations stop short of the bound by room for every member's revocation, which
        // cannot be refused for want of space.
        if self.crl.len() >= limits::MAX_REVOKED_CERTIFICATES - limits::MAX_MEMBERS {
            return Err(Refusal::Full);
        }
        let target = self.members.get_mut(member).ok_or(Refusal::UnknownMember)?;
        let old_certificate = target.keys().tls_certificate;
        target.profile.keys = keys.clone();
        if old_certificate != keys.tls_certificate {
            // A rotation is often a response to a leak: the old certificate must not open a
            // connection again, whoever holds it.
            self.crl.insert(
                old_certificate,
                RevokedCertificate {
                    member: member.to_owned(),
                    reason: "replaced by a key rotation".to_owned(),
                    revoked_at: now,
                },
            );
        }
        Ok(())
    }

    fn wrap_link_key(
        &mut self,
        version: u32,
        wrapped: &[(MemberId, Vec<u8>)],
    ) -> Result<(), Refusal> {
        if version < self.link_key_version {
            return Err(Refusal::StaleLinkKey);
        }
        // Check every entry before changing anything: the command applies whole or not at all.
        let mut seen = std::collections::BTreeSet::new();
        let mut records = Vec::with_capacity(wrapped.len());
        for (member, ciphertext) in wrapped {
            if !seen.insert(member) {
                return Err(Refusal::Malformed);
            }
            let target = self.members.get(member).ok_or(Refusal::UnknownMember)?;
            if target.status == MemberStatus::Revoked {
                return Err(Refusal::AlreadyRevoked);
            }
            records.push((
                member.clone(),
                WrappedLinkKey {
                    version,
                    wrapped_for: target.keys().wrapping_key_id(),
                    ciphertext: ciphertext.clone(),
                },
            ));
        }
        self.link_key_version = version;
        self.link_keys.extend(records);
        Ok(())
    }

    /// The member a regulator's command acts on, which cannot be the regulator itself.
    fn target(&mut self, member: &str) -> Result<&mut Member, Refusal> {
        if self.regulator.as_deref() == Some(member) {
            return Err(Refusal::TargetIsRegulator);
        }
        self.members.get_mut(member).ok_or(Refusal::UnknownMember)
    }

    /// Keys `owner` may take: a certificate not revoked and no key another member holds.
    fn check_keys(&self, owner: &str, keys: &MemberKeys) -> Result<(), Refusal> {
        if self.crl.contains_key(&keys.tls_certificate) {
            return Err(Refusal::CertificateRevoked);
        }
        for other in self.members.values().filter(|m| m.id() != owner) {
            let theirs = other.keys();
            if theirs.tls_certificate == keys.tls_certificate {
                return Err(Refusal::CertificateInUse);
            }
            if theirs.signing_key == keys.signing_key {
                return Err(Refusal::SigningKeyInUse);
            }
            if theirs.vote_key == keys.vote_key {
                return Err(Refusal::VoteKeyInUse);
            }
            if theirs.beacon_key == keys.beacon_key {
                return Err(Refusal::BeaconKeyInUse);
            }
        }
        Ok(())
    }

    fn record_refusal(&mut self, command: &SignedCommand, now: Timestamp, reason: Refusal) {
        // The signer is recorded as the command gives it, unless it could not be encoded.
        let signer = if name_ok(&command.signer) {
            command.signer.clone()
        } else {
            String::new()
        };
        if self.refusals.len() == limits::MAX_REFUSALS_KEPT {
            self.refusals.pop_front();
        }
        self.refusals.push_back(RefusalRecord {
            at: now,
            signer,
            sequence: command.sequence,
            command: command.command.kind(),
            reason,
        });
        self.refusals_total = self.refusals_total.saturating_add(1);
    }

    // Queries.

    /// The consortium's name; `None` before genesis.
    pub fn consortium(&self) -> Option<&str> {
        self.regulator.as_ref().map(|_| self.consortium.as_str())
    }

    /// The regulator.
    pub fn regulator(&self) -> Option<&Member> {
        self.regulator.as_ref().and_then(|id| self.members.get(id))
    }

    /// The key the regulator signs with.
    pub fn regulator_key(&self) -> Option<PublicKey> {
        self.regulator().map(|m| m.keys().signing_key)
    }

    /// A member, whatever its status.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Every member ever admitted, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Whether `id` is an active member.
    pub fn is_active(&self, id: &str) -> bool {
        self.members.get(id).is_some_and(Member::is_active)
    }

    /// The active member whose node presents the certificate with this SHA-256 fingerprint, if
    /// the certificate is not revoked: who a TLS peer is, or `None` to refuse it.
    pub fn member_by_certificate(&self, fingerprint: &[u8; 32]) -> Option<&Member> {
        if self.crl.contains_key(fingerprint) {
            return None;
        }
        // A scan: a consortium has tens of members, and a handshake is rare next to requests.
        self.members
            .values()
            .find(|m| m.is_active() && m.keys().tls_certificate == *fingerprint)
    }

    /// Whether a peer presenting this certificate may connect: an active member's current
    /// certificate, not on the revocation list.
    pub fn cert_allowed(&self, fingerprint: &[u8; 32]) -> bool {
        self.member_by_certificate(fingerprint).is_some()
    }

    /// The certificate revocation list, by fingerprint.
    pub fn revoked_certificates(&self) -> &BTreeMap<[u8; 32], RevokedCertificate> {
        &self.crl
    }

    /// The Raft voters the state calls for: node id → address of every active member whose role
    /// is voter.
    pub fn voters(&self) -> BTreeMap<u64, String> {
        self.nodes_with(RaftRole::Voter)
    }

    /// The Raft learners the state calls for: node id → address of every other active member.
    pub fn learners(&self) -> BTreeMap<u64, String> {
        self.nodes_with(RaftRole::Learner)
    }

    fn nodes_with(&self, role: RaftRole) -> BTreeMap<u64, String> {
        self.members
            .values()
            .filter(|m| m.is_active() && m.profile.raft_role == role)
            .map(|m| (m.profile.node_id, m.profile.address.clone()))
            .collect()
    }

    /// The current link key version (0 before any was wrapped).
    pub fn link_key_version(&self) -> u32 {
        self.link_key_version
    }

    /// The link key wrapped for `member`.
    pub fn wrapped_link_key(&self, member: &str) -> Option<&WrappedLinkKey> {
        self.link_keys.get(member)
    }

    /// The current epoch (0 from genesis).
    pub fn current_epoch(&self) -> u64 {
        self.epochs.keys().next_back().copied().unwrap_or(0)
    }

    /// An epoch.
    pub fn epoch(&self, epoch: u64) -> Option<&Epoch> {
        self.epochs.get(&epoch)
    }

    /// The election's parameters, as genesis set them ([`ElectionParams::NONE`] before).
    pub fn election_params(&self) -> ElectionParams {
        self.election_params
    }

    /// The last refusals, oldest first (at most [`limits::MAX_REFUSALS_KEPT`]).
    pub fn refusals(&self) -> impl Iterator<Item = &RefusalRecord> {
        self.refusals.iter()
    }

    /// How many commands were ever refused.
    pub fn refusals_total(&self) -> u64 {
        self.refusals_total
    }

    /// Begins the next epoch if the delegates or the seats one would have now differ from the
    /// current epoch's.
    fn follow_members(&mut self, now: Timestamp) {
        let delegates = self.choose_delegates(self.delegates_k as usize);
        if delegates.is_empty() {
            return;
        }
        let unchanged = self.epochs.values().next_back().is_some_and(|current| {
            current.delegates == delegates && current.seats == self.seats_now()
        });
        if !unchanged {
            let epoch = self.current_epoch().saturating_add(1);
            self.begin_epoch(epoch, now, delegates);
        }
    }

    /// Records epoch `epoch`, begun at `now`, with `delegates` and the seats of this moment.
    fn begin_epoch(&mut self, epoch: u64, now: Timestamp, delegates: Vec<(MemberId, PublicKey)>) {
        let seats = self.seats_now();
        self.epochs.insert(
            epoch,
            Epoch {
                started_at: now,
                delegates,
                seats,
            },
        );
    }

    /// Every active member, in id order, with its stake and keys now: the seats of an epoch
    /// begun now.
    fn seats_now(&self) -> Vec<EpochSeat> {
        self.members
            .values()
            .filter(|m| m.is_active())
            .map(|m| {
                let keys = m.keys();
                EpochSeat {
                    member: m.id().to_owned(),
                    stake: m.profile.stake,
                    signing_key: keys.signing_key,
                    vote_key: keys.vote_key,
                    beacon_key: keys.beacon_key,
                }
            })
            .collect()
    }

    /// How many delegates (K) each epoch has: [`limits::DEFAULT_DELEGATES`] from genesis, then
    /// what the regulator's last [`Command::BeginEpoch`] said.
    pub fn delegates_k(&self) -> u32 {
        self.delegates_k
    }

    /// The `k` active members with the highest stake, ties by member id, with their current
    /// signing keys: the delegates an epoch begun now would have (at least the regulator, which
    /// is never suspended nor revoked).
    pub fn choose_delegates(&self, k: usize) -> Vec<(MemberId, PublicKey)> {
        let mut active: Vec<&Member> = self.members.values().filter(|m| m.is_active()).collect();
        // `members` iterates by id, and the sort is stable: equal stakes stay in id order.
        active.sort_by_key(|m| std::cmp::Reverse(m.profile.stake));
        active
            .into_iter()
            .take(k)
            .map(|m| (m.id().to_owned(), m.keys().signing_key))
            .collect()
    }

    /// The current epoch's delegates.
    pub fn current_delegates(&self) -> &[(MemberId, PublicKey)] {
        self.epochs
            .values()
            .next_back()
            .map_or(&[], |e| e.delegates.as_slice())
    }

    /// Every epoch, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = (u64, &Epoch)> {
        self.epochs.iter().map(|(e, r)| (*e, r))
    }

    /// The ledger roster these members make with `delegates`: every active member's signing key
    /// under its id, which is its institution id on the ledger.
    pub fn roster(&self, delegates: DelegateSet) -> Roster {
        Roster::new(
            delegates,
            self.members
                .values()
                .filter(|m| m.is_active())
                .map(|m| (m.id().to_owned(), m.keys().signing_key)),
        )
    }
}

impl Wire for GovernanceState {
    const MIN_LEN: usize = 4 + 1 + 4 + 4 + 4 + 4 + 4 + 4 + ElectionParams::MIN_LEN + 4 + 8;

    fn write(&self, w: &mut Writer) {
        w.str(&self.consortium);
        match &self.regulator {
            None => w.u8(0),
            Some(id) => {
                w.u8(1);
                w.str(id);
            }
        }
        w.len(self.members.len());
        for member in self.members.values() {
            member.write(w);
        }
        w.len(self.crl.len());
        for (fingerprint, entry) in &self.crl {
            w.raw(fingerprint);
            w.str(&entry.member);
            w.str(&entry.reason);
            w.u64(entry.revoked_at.0);
        }
        w.u32(self.link_key_version);
        w.len(self.link_keys.len());
        for (member, key) in &self.link_keys {
            w.str(member);
            w.u32(key.version);
            w.raw(&key.wrapped_for);
            w.bytes(&key.ciphertext);
        }
        w.len(self.epochs.len());
        for (epoch, record) in &self.epochs {
            w.u64(*epoch);
            record.write(w);
        }
        w.u32(self.delegates_k);
        self.election_params.write(w);
        w.len(self.refusals.len());
        for refusal in &self.refusals {
            refusal.write(w);
        }
        w.u64(self.refusals_total);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let consortium = r.string("consortium", limits::MAX_NAME_LEN)?;
        let regulator = match r.u8("regulator presence")? {
            0 => None,
            1 => Some(r.string("regulator", limits::MAX_NAME_LEN)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "regulator presence",
                    tag,
                })
            }
        };

        let mut members = BTreeMap::new();
        let n = r.count("members", limits::MAX_MEMBERS, Member::MIN_LEN)?;
        for _ in 0..n {
            let member = Member::read(r)?;
            insert_in_order(&mut members, member.id().to_owned(), member, "members")?;
        }
        if regulator
            .as_ref()
            .is_some_and(|id| !members.contains_key(id))
        {
            return Err(DecodeError::NotCanonical("regulator"));
        }

        let mut crl = BTreeMap::new();
        let n = r.count(
            "revocation list",
            limits::MAX_REVOKED_CERTIFICATES,
            32 + 4 + 4 + 8,
        )?;
        for _ in 0..n {
            let fingerprint = r.array("revoked certificate")?;
            let entry = RevokedCertificate {
                member: r.string("revoked member", limits::MAX_NAME_LEN)?,
                reason: r.string("revocation reason", limits::MAX_REASON_LEN)?,
                revoked_at: Timestamp(r.u64("revoked at")?),
            };
            insert_in_order(&mut crl, fingerprint, entry, "revocation list")?;
        }

        let link_key_version = r.u32("link key version")?;
        let mut link_keys = BTreeMap::new();
        let n = r.count("link keys", limits::MAX_MEMBERS, 4 + 4 + 32 + 4)?;
        for _ in 0..n {
            let member = r.string("link key member", limits::MAX_NAME_LEN)?;
            let key = WrappedLinkKey {
                version: r.u32("link key version")?,
                wrapped_for: r.array("link key wrapped for")?,
                ciphertext: r.bytes("wrapped link key", limits::MAX_WRAPPED_KEY_LEN)?,
            };
            insert_in_order(&mut link_keys, member, key, "link keys")?;
        }

        let mut epochs = BTreeMap::new();
        let n = r.count("epochs", usize::MAX, 8 + Epoch::MIN_LEN)?;
        for _ in 0..n {
            let epoch = r.u64("epoch")?;
            let record = Epoch::read(r)?;
            insert_in_order(&mut epochs, epoch, record, "epochs")?;
        }
        let delegates_k = r.u32("delegates per epoch")?;
        let election_params = ElectionParams::read(r)?;

        let n = r.count(
            "refusals",
            limits::MAX_REFUSALS_KEPT,
            RefusalRecord::MIN_LEN,
        )?;
        let refusals = (0..n)
            .map(|_| RefusalRecord::read(r))
            .collect::<Result<VecDeque<_>, _>>()?;
        let refusals_total = r.u64("refusals total")?;

        Ok(Self {
            consortium,
            regulator,
            members,
            crl,
            link_key_version,
            link_keys,
            epochs,
            delegates_k,
            election_params,
            refusals,
            refusals_total,
        })
    }
}

/// Refuses a command applied outside its validity window.
fn within_window(signed: &SignedCommand, now: Timestamp) -> Result<(), Refusal> {
    if now < signed.validity.not_before {
        Err(Refusal::NotYetValid)
    } else if now > signed.validity.not_after {
        Err(Refusal::Expired)
    } else {
        Ok(())
    }
}

/// Inserts a decoded map entry, refusing keys out of strictly increasing order: the encoder
/// writes maps in key order, so any other order is another encoding of the same value.
fn insert_in_order<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    field: &'static str,
) -> Result<(), DecodeError> {
    if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
        return Err(DecodeError::NotCanonical(field));
    }
    map.insert(key, value);
    Ok(())
}
