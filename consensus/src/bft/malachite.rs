//! [`BftEngine`] over Malachite's consensus core (`arc-malachitebft-core-consensus` =0.8.2): the
//! only file that names Malachite.
//!
//! The core is a coroutine that yields effects and waits for answers. Those that need an answer
//! are answered here, at once: signing with the delegate's key, `verify_strict` of signatures,
//! certificate checks through the one [`tally`] that [`CommitCertificate::verify`] uses too.
//! Every other effect becomes an [`EngineEffect`], in the order the core yields it.
//!
//! Settings, and why:
//! - `ValuePayload::ProposalAndParts`: the value is the block hash and the body travels apart, so
//!   our verdict on it ([`EngineInput::BlockReceived`]) is what the core votes by. (Proposal-only
//!   mode would store every proposed value as valid without asking.)
//! - vote extensions disabled, and no `target_time`: with one, the core reads the wall clock to
//!   hold a "finalization period" open; without, `Finalize` follows `Decide` in the same call and
//!   the engine stays a function of its inputs.
//! - `LinearTimeouts` from [`crate::bft::TimeoutConfig`]; proposer `(height + round) mod K` over
//!   the delegates' schedule order.
//!
//! The core panics if it decides on a certificate our check refuses, and asserts a few
//! invariants; the engine catches a panic all the same and turns it into a fatal
//! [`EngineError::Panicked`], so that a bug in an alpha dependency stops this delegate (which
//! restarts from its log) rather than the process.

// The certificate checks answer with the core's own `CertificateError`, and `process!` returns
// the core's `Error`: their size is the core's choice, not ours to box.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use arc_malachitebft_core_consensus as mc;
use arc_malachitebft_core_types as mt;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use mc::Resumable as _;
use mt::{NilOrVal, SignedMessage, ValidatorSet as _};

use super::engine::{
    BftEngine, EngineConfig, EngineEffect, EngineError, EngineInput, Millis, MAX_ROUND,
};
use super::messages::{
    proposal_bytes, tally, verifies, vote_bytes, CertSignature, CommitCertificate,
    ConsensusMessage, Evidence, PolkaCert, Proposal, ProposedBlock, Round, RoundCert,
    RoundCertKind, RoundSignature, TallyFault, Timer, Vote, VoteKind, WalEntry,
};
use crate::hash::Hash256;
use crate::keys::{DelegateSet, PublicKey};

// ---- the context: our types, seen by the core ----

/// The core's view of our chain. Stateless: the chain id and the key live in the engine, which
/// answers the effects that need them.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx;

/// A chain height (the core wants a type of its own with a `Display`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Height(u64);

impl std::fmt::Display for Height {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl mt::Height for Height {
    const ZERO: Self = Self(0);
    // Our chain starts at genesis, height 0.
    const INITIAL: Self = Self(0);

    fn increment_by(&self, n: u64) -> Self {
        Self(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Self)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// The value consensus runs on is a block hash, its own id.
impl mt::Value for Hash256 {
    type Id = Hash256;

    fn id(&self) -> Hash256 {
        *self
    }
}

/// A delegate's address is its public key.
impl mt::Address for PublicKey {}

/// An Ed25519 signature as bytes: the core wants signatures ordered, dalek's are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Sig([u8; 64]);

impl Sig {
    fn of(signature: &Signature) -> Self {
        Self(signature.to_bytes())
    }

    fn signature(&self) -> Signature {
        Signature::from_bytes(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ed25519;

impl mt::SigningScheme for Ed25519 {
    type DecodingError = &'static str;
    type Signature = Sig;
    type PublicKey = VerifyingKey;
    type PrivateKey = SigningKey;

    fn decode_signature(bytes: &[u8]) -> Result<Sig, &'static str> {
        bytes
            .try_into()
            .map(Sig)
            .map_err(|_| "an Ed25519 signature is 64 bytes")
    }

    fn encode_signature(signature: &Sig) -> Vec<u8> {
        signature.0.to_vec()
    }

    fn decode_public_key(bytes: &[u8]) -> Result<VerifyingKey, &'static str> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes")?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key")
    }

    fn encode_public_key(key: &VerifyingKey) -> Vec<u8> {
        key.to_bytes().to_vec()
    }
}

/// A proposal as the core builds it, unsigned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MProposal {
    height: Height,
    round: mt::Round,
    pol_round: mt::Round,
    block: Hash256,
    proposer: PublicKey,
}

impl mt::Proposal<Ctx> for MProposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> mt::Round {
        self.round
    }

    fn value(&self) -> &Hash256 {
        &self.block
    }

    fn take_value(self) -> Hash256 {
        self.block
    }

    fn pol_round(&self) -> mt::Round {
        self.pol_round
    }

    fn validator_address(&self) -> &PublicKey {
        &self.proposer
    }
}

/// A vote as the core builds it, unsigned. The extension field exists because the trait asks
/// for it; extensions are disabled, so it stays `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MVote {
    kind: mt::VoteType,
    height: Height,
    round: mt::Round,
    block: NilOrVal<Hash256>,
    delegate: PublicKey,
    extension: Option<mt::SignedExtension<Ctx>>,
}

impl MVote {
    fn new(
        kind: mt::VoteType,
        height: Height,
        round: mt::Round,
        block: NilOrVal<Hash256>,
        delegate: PublicKey,
    ) -> Self {
        Self {
            kind,
            height,
            round,
            block,
            delegate,
            extension: None,
        }
    }
}

impl mt::Vote<Ctx> for MVote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> mt::Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<Hash256> {
        &self.block
    }

    fn take_value(self) -> NilOrVal<Hash256> {
        self.block
    }

    fn vote_type(&self) -> mt::VoteType {
        self.kind
    }

    fn validator_address(&self) -> &PublicKey {
        &self.delegate
    }

    fn extension(&self) -> Option<&mt::SignedExtension<Ctx>> {
        self.extension.as_ref()
    }

    fn take_extension(&mut self) -> Option<mt::SignedExtension<Ctx>> {
        self.extension.take()
    }

    fn extend(self, extension: mt::SignedExtension<Ctx>) -> Self {
        Self {
            extension: Some(extension),
            ..self
        }
    }
}

/// Named by the core, never used by it: the block body travels outside consensus.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NoPart;

impl mt::ProposalPart<Ctx> for NoPart {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// A delegate with its key decompressed once per height rather than at every signature.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Validator {
    address: PublicKey,
    key: VerifyingKey,
}

impl mt::Validator<Ctx> for Validator {
    fn address(&self) -> &PublicKey {
        &self.address
    }

    fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    // Every delegate weighs the same: the quorum is a count, as in `DelegateSet::quorum`.
    fn voting_power(&self) -> mt::VotingPower {
        1
    }
}

/// The delegates of a height: sorted by key for lookups, with the schedule order kept for the
/// proposer rotation. Never empty (a `DelegateSet` is not).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Validators {
    by_key: Vec<Validator>,
    /// Indexes into `by_key`, in schedule order.
    schedule: Vec<usize>,
}

impl Validators {
    fn new(delegates: &DelegateSet) -> Result<Self, EngineError> {
        let mut by_key = delegates
            .keys()
            .iter()
            .map(|k| {
                VerifyingKey::from_bytes(&k.0)
                    .map(|key| Validator { address: *k, key })
                    .map_err(|_| EngineError::BadDelegateKey(*k))
            })
            .collect::<Result<Vec<_>, _>>()?;
        by_key.sort_by_key(|v| v.address);
        let schedule = delegates
            .keys()
            .iter()
            .filter_map(|k| by_key.binary_search_by_key(k, |v| v.address).ok())
            .collect();
        Ok(Self { by_key, schedule })
    }
}

impl mt::ValidatorSet<Ctx> for Validators {
    fn count(&self) -> usize {
        self.by_key.len()
    }

    fn total_voting_power(&self) -> mt::VotingPower {
        self.by_key.len() as u64
    }

    fn get_by_address(&self, address: &PublicKey) -> Option<&Validator> {
        self.by_key
            .binary_search_by_key(address, |v| v.address)
            .ok()
            .and_then(|i| self.by_key.get(i))
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.by_key.get(index)
    }
}

impl mt::Context for Ctx {
    type Address = PublicKey;
    type Height = Height;
    type ProposalPart = NoPart;
    type Proposal = MProposal;
    type Validator = Validator;
    type ValidatorSet = Validators;
    type Timeouts = mt::LinearTimeouts;
    type Value = Hash256;
    type Vote = MVote;
    type Extension = ();
    type SigningScheme = Ed25519;

    /// `(height + round) mod K` over the schedule order: every delegate proposes in turn.
    fn select_proposer<'a>(
        &self,
        validators: &'a Validators,
        height: Height,
        round: mt::Round,
    ) -> &'a Validator {
        let k = validators.schedule.len().max(1) as u64;
        let round = u64::from(round.as_u32().unwrap_or(0));
        // Reduced before adding, so that no height or round overflows.
        let slot = ((height.0 % k) + (round % k)) % k;
        let index = validators.schedule.get(slot as usize).copied().unwrap_or(0);
        // A set is never empty, and `schedule` indexes into `by_key`.
        &validators.by_key[index]
    }

    fn new_proposal(
        &self,
        height: Height,
        round: mt::Round,
        block: Hash256,
        pol_round: mt::Round,
        proposer: PublicKey,
    ) -> MProposal {
        MProposal {
            height,
            round,
            pol_round,
            block,
            proposer,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: mt::Round,
        block: NilOrVal<Hash256>,
        delegate: PublicKey,
    ) -> MVote {
        MVote::new(mt::VoteType::Prevote, height, round, block, delegate)
    }

    fn new_precommit(
        &self,
        height: Height,
        round: mt::Round,
        block: NilOrVal<Hash256>,
        delegate: PublicKey,
    ) -> MVote {
        MVote::new(mt::VoteType::Precommit, height, round, block, delegate)
    }
}

// ---- conversions between our types and the core's ----

/// The core's "no round" (-1) never appears in a message we sign or receive: our rounds are
/// always defined. Meeting one is the core breaking its contract, reported as fatal.
fn defined(round: mt::Round) -> Result<Round, EngineError> {
    round.as_u32().map(Round).ok_or(EngineError::Core(
        "a message of the core has no round".into(),
    ))
}

fn m_round(round: Round) -> mt::Round {
    mt::Round::new(round.0)
}

fn m_round_opt(round: Option<Round>) -> mt::Round {
    round.map_or(mt::Round::Nil, m_round)
}

fn m_value(block: Option<Hash256>) -> NilOrVal<Hash256> {
    block.map_or(NilOrVal::Nil, NilOrVal::Val)
}

fn our_value(value: &NilOrVal<Hash256>) -> Option<Hash256> {
    match value {
        NilOrVal::Nil => None,
        NilOrVal::Val(h) => Some(*h),
    }
}

fn m_kind(kind: VoteKind) -> mt::VoteType {
    match kind {
        VoteKind::Prevote => mt::VoteType::Prevote,
        VoteKind::Precommit => mt::VoteType::Precommit,
    }
}

fn our_kind(kind: mt::VoteType) -> VoteKind {
    match kind {
        mt::VoteType::Prevote => VoteKind::Prevote,
        mt::VoteType::Precommit => VoteKind::Precommit,
    }
}

fn m_vote(vote: &Vote) -> mt::SignedVote<Ctx> {
    let (height, round, block) = (
        Height(vote.height),
        m_round(vote.round),
        m_value(vote.block),
    );
    SignedMessage::new(
        MVote::new(m_kind(vote.kind), height, round, block, vote.delegate),
        Sig::of(&vote.signature),
    )
}

fn our_vote(vote: &mt::SignedVote<Ctx>) -> Result<Vote, EngineError> {
    Ok(Vote {
        kind: our_kind(vote.message.kind),
        height: vote.message.height.0,
        round: defined(vote.message.round)?,
        block: our_value(&vote.message.block),
        delegate: vote.message.delegate,
        signature: vote.signature.signature(),
    })
}

fn m_proposal(proposal: &Proposal) -> mt::SignedProposal<Ctx> {
    SignedMessage::new(
        MProposal {
            height: Height(proposal.height),
            round: m_round(proposal.round),
            pol_round: m_round_opt(proposal.pol_round),
            block: proposal.block,
            proposer: proposal.proposer,
        },
        Sig::of(&proposal.signature),
    )
}

fn our_proposal(proposal: &mt::SignedProposal<Ctx>) -> Result<Proposal, EngineError> {
    let m = &proposal.message;
    Ok(Proposal {
        height: m.height.0,
        round: defined(m.round)?,
        pol_round: m.pol_round.as_u32().map(Round),
        block: m.block,
        proposer: m.proposer,
        signature: proposal.signature.signature(),
    })
}

fn m_polka(cert: &PolkaCert) -> mt::PolkaCertificate<Ctx> {
    mt::PolkaCertificate {
        height: Height(cert.height),
        round: m_round(cert.round),
        value_id: cert.block,
        polka_signatures: cert
            .signatures
            .iter()
            .map(|s| mt::PolkaSignature::new(s.delegate, Sig::of(&s.signature)))
            .collect(),
    }
}

fn our_polka(cert: &mt::PolkaCertificate<Ctx>) -> Result<PolkaCert, EngineError> {
    Ok(PolkaCert {
        height: cert.height.0,
        round: defined(cert.round)?,
        block: cert.value_id,
        signatures: cert
            .polka_signatures
            .iter()
            .map(|s| CertSignature {
                delegate: s.address,
                signature: s.signature.signature(),
            })
            .collect(),
    })
}

fn m_round_cert(cert: &RoundCert) -> mt::RoundCertificate<Ctx> {
    mt::RoundCertificate {
        height: Height(cert.height),
        round: m_round(cert.round),
        cert_type: match cert.kind {
            RoundCertKind::Skip => mt::RoundCertificateType::Skip,
            RoundCertKind::Precommit => mt::RoundCertificateType::Precommit,
        },
        round_signatures: cert
            .signatures
            .iter()
            .map(|s| {
                mt::RoundSignature::new(
                    m_kind(s.kind),
                    m_value(s.block),
                    s.delegate,
                    Sig::of(&s.signature),
                )
            })
            .collect(),
    }
}

fn our_round_cert(cert: &mt::RoundCertificate<Ctx>) -> Result<RoundCert, EngineError> {
    Ok(RoundCert {
        height: cert.height.0,
        round: defined(cert.round)?,
        kind: match cert.cert_type {
            mt::RoundCertificateType::Skip => RoundCertKind::Skip,
            mt::RoundCertificateType::Precommit => RoundCertKind::Precommit,
        },
        signatures: cert
            .round_signatures
            .iter()
            .map(|s| RoundSignature {
                kind: our_kind(s.vote_type),
                block: our_value(&s.value_id),
                delegate: s.address,
                signature: s.signature.signature(),
            })
            .collect(),
    })
}

fn our_certificate(cert: &mt::CommitCertificate<Ctx>) -> Result<CommitCertificate, EngineError> {
    Ok(CommitCertificate::new(
        cert.height.0,
        defined(cert.round)?,
        cert.value_id,
        cert.commit_signatures
            .iter()
            .map(|s| CertSignature {
                delegate: s.address,
                signature: s.signature.signature(),
            })
            .collect(),
    ))
}

fn m_timeout(timer: Timer) -> mt::Timeout {
    match timer {
        Timer::Propose(r) => mt::Timeout::propose(m_round(r)),
        Timer::Prevote(r) => mt::Timeout::prevote(m_round(r)),
        Timer::Precommit(r) => mt::Timeout::precommit(m_round(r)),
        Timer::Rebroadcast(r) => mt::Timeout::rebroadcast(m_round(r)),
    }
}

fn our_timer(timeout: mt::Timeout) -> Result<Timer, EngineError> {
    let round = defined(timeout.round)?;
    match timeout.kind {
        mt::TimeoutKind::Propose => Ok(Timer::Propose(round)),
        mt::TimeoutKind::Prevote => Ok(Timer::Prevote(round)),
        mt::TimeoutKind::Precommit => Ok(Timer::Precommit(round)),
        mt::TimeoutKind::Rebroadcast => Ok(Timer::Rebroadcast(round)),
        // Only with a `target_time`, which we never set.
        mt::TimeoutKind::FinalizeHeight(_) => Err(EngineError::Unsupported("a finalization timer")),
    }
}

/// The log entry for an input the core asks to persist; `None` for inputs its own log codec
/// refuses too (a start, a local proposal, which is logged as the proposed value it becomes, a
/// round certificate, whose votes are logged one by one, a sync response).
fn wal_entry(input: &mc::Input<Ctx>) -> Result<Option<WalEntry>, EngineError> {
    Ok(Some(match input {
        mc::Input::Vote(v) => WalEntry::Vote(our_vote(v)?),
        mc::Input::Proposal(p) => WalEntry::Proposal(our_proposal(p)?),
        mc::Input::ProposedValue(v, _origin) => WalEntry::ProposedBlock(ProposedBlock {
            height: v.height.0,
            round: defined(v.round)?,
            valid_round: v.valid_round.as_u32().map(Round),
            proposer: v.proposer,
            block: v.value,
            valid: v.validity.is_valid(),
        }),
        mc::Input::PolkaCertificate(c) => WalEntry::Polka(our_polka(c)?),
        mc::Input::TimeoutElapsed(t) => WalEntry::Timeout(our_timer(*t)?),
        mc::Input::StartHeight(..)
        | mc::Input::Propose(_)
        | mc::Input::RoundCertificate(_)
        | mc::Input::SyncValueResponse(_) => return Ok(None),
    }))
}

/// The input a log entry replays as.
fn m_input(entry: &WalEntry) -> mc::Input<Ctx> {
    match entry {
        WalEntry::Vote(v) => mc::Input::Vote(m_vote(v)),
        WalEntry::Proposal(p) => mc::Input::Proposal(m_proposal(p)),
        WalEntry::ProposedBlock(b) => mc::Input::ProposedValue(
            mc::ProposedValue {
                height: Height(b.height),
                round: m_round(b.round),
                valid_round: m_round_opt(b.valid_round),
                proposer: b.proposer,
                value: b.block,
                validity: mt::Validity::from_bool(b.valid),
            },
            mt::ValueOrigin::Consensus,
        ),
        WalEntry::Polka(c) => mc::Input::PolkaCertificate(m_polka(c)),
        WalEntry::Timeout(t) => mc::Input::TimeoutElapsed(m_timeout(*t)),
    }
}

/// `StartHeight` as crash recovery wants it: not a "restart" (which would drop buffered inputs),
/// no target time, no vote extensions.
fn start_input(height: u64, validators: Validators) -> mc::Input<Ctx> {
    mc::Input::StartHeight(
        Height(height),
        validators,
        false,
        None,
        mt::VoteExtensionPolicy::Disabled,
    )
}

// ---- certificate checks the core asks for ----

/// A signature in one of the core's certificates, and the error that names it when it fails.
trait CertSig: Clone {
    fn address(&self) -> &PublicKey;
    fn signature(&self) -> Signature;
    fn invalid(self) -> mt::CertificateError<Ctx>;
}

/// The three signature types have the same two fields; only the error that names them differs.
macro_rules! cert_sig {
    ($signature:ident, $invalid:ident) => {
        impl CertSig for mt::$signature<Ctx> {
            fn address(&self) -> &PublicKey {
                &self.address
            }

            fn signature(&self) -> Signature {
                self.signature.signature()
            }

            fn invalid(self) -> mt::CertificateError<Ctx> {
                mt::CertificateError::$invalid(self)
            }
        }
    };
}

cert_sig!(CommitSignature, InvalidCommitSignature);
cert_sig!(PolkaSignature, InvalidPolkaSignature);
cert_sig!(RoundSignature, InvalidRoundSignature);

/// Counts a certificate's votes with [`tally`] (the rule of `CommitCertificate::verify`) and
/// asks `needed` of the delegates' power (each weighs 1). `vote` gives each signature's kind and
/// value; height and round are the certificate's.
fn check_certificate<'a, S: CertSig>(
    chain: &Hash256,
    (height, round): (Height, mt::Round),
    signatures: &'a [S],
    vote: impl Fn(&'a S) -> (VoteKind, Option<&'a Hash256>),
    validators: &Validators,
    needed: mt::ThresholdParam,
) -> Result<(), mt::CertificateError<Ctx>> {
    let round = round
        .as_u32()
        .map(Round)
        .ok_or(mt::CertificateError::VerificationError(None))?;
    let votes = signatures.iter().map(|s| {
        let (kind, value) = vote(s);
        (kind, value, s.address(), s.signature())
    });
    let key_of = |k: &PublicKey| validators.get_by_address(k).map(|v| v.key);
    let signed = tally(chain, height.0, round, votes, key_of).map_err(|fault| match fault {
        TallyFault::Repeated(a) => mt::CertificateError::DuplicateVote(a),
        TallyFault::Unknown(a) => mt::CertificateError::UnknownValidator(a),
        TallyFault::BadSignature(a) => signatures
            .iter()
            .find(|s| s.address() == &a)
            .map_or(mt::CertificateError::VerificationError(None), |s| {
                s.clone().invalid()
            }),
    })? as u64;
    let total = validators.total_voting_power();
    if needed.is_met(signed, total) {
        Ok(())
    } else {
        Err(mt::CertificateError::NotEnoughVotingPower {
            signed,
            total,
            expected: needed.min_expected(total),
        })
    }
}

/// 2f + 1 precommits for the value: the check the core makes on the certificate it decides by,
/// and panics if it fails.
fn verify_commit(
    chain: &Hash256,
    cert: &mt::CommitCertificate<Ctx>,
    validators: &Validators,
    threshold: mt::ThresholdParams,
) -> Result<(), mt::CertificateError<Ctx>> {
    let vote = |_: &_| (VoteKind::Precommit, Some(&cert.value_id));
    let at = (cert.height, cert.round);
    check_certificate(
        chain,
        at,
        &cert.commit_signatures,
        vote,
        validators,
        threshold.quorum,
    )
}

/// Skip: f + 1 votes of any kind; precommit: 2f + 1 precommits of any value.
fn verify_round(
    chain: &Hash256,
    cert: &mt::RoundCertificate<Ctx>,
    validators: &Validators,
    threshold: mt::ThresholdParams,
) -> Result<(), mt::CertificateError<Ctx>> {
    let needed = match cert.cert_type {
        mt::RoundCertificateType::Precommit => {
            let signatures = cert.round_signatures.iter();
            if let Some(s) = signatures
                .clone()
                .find(|s| s.vote_type == mt::VoteType::Prevote)
            {
                return Err(mt::CertificateError::InvalidVoteType(s.address));
            }
            threshold.quorum
        }
        mt::RoundCertificateType::Skip => threshold.honest,
    };
    let at = (cert.height, cert.round);
    check_certificate(
        chain,
        at,
        &cert.round_signatures,
        round_vote,
        validators,
        needed,
    )
}

/// A round certificate's signature carries its own kind and value.
fn round_vote(signature: &mt::RoundSignature<Ctx>) -> (VoteKind, Option<&Hash256>) {
    let value = match &signature.value_id {
        NilOrVal::Nil => None,
        NilOrVal::Val(h) => Some(h),
    };
    (our_kind(signature.vote_type), value)
}

// ---- the engine ----

/// [`BftEngine`] over Malachite's core: one delegate's state for the current height, and its
/// signing key.
pub struct MalachiteEngine {
    chain_id: Hash256,
    timeouts: mt::LinearTimeouts,
    buffered_heights: usize,
    buffered_per_height: usize,
    key: SigningKey,
    address: PublicKey,
    /// Created by the first start: the core wants a height and delegates to exist.
    state: Option<mc::State<Ctx>>,
    /// The last height this engine emitted `Finalized` for.
    finalized: Option<u64>,
    /// Timers scheduled and neither cancelled nor fired: a timer that fires after its
    /// cancellation (a race any runtime has) or that was never scheduled is ignored, never fed
    /// to the core, which trusts a timeout's round (one at `u32::MAX` overflows in it).
    timers: BTreeSet<Timer>,
    /// Set by a fatal error: the core's state may be half-updated.
    stopped: bool,
}

impl std::fmt::Debug for MalachiteEngine {
    // The signing key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MalachiteEngine")
            .field("chain_id", &self.chain_id)
            .field("address", &self.address)
            .field("height", &self.height())
            .field("finalized", &self.finalized)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl MalachiteEngine {
    /// An engine that signs with the delegate key `key`; it starts with the first
    /// [`EngineInput::StartHeight`] (or [`BftEngine::replay`]).
    pub fn new(config: EngineConfig, key: SigningKey) -> Self {
        let ms = Duration::from_millis;
        let t = config.timeouts;
        Self {
            chain_id: config.chain_id,
            timeouts: mt::LinearTimeouts {
                propose: ms(t.propose),
                propose_delta: ms(t.propose_delta),
                prevote: ms(t.prevote),
                prevote_delta: ms(t.prevote_delta),
                precommit: ms(t.precommit),
                precommit_delta: ms(t.precommit_delta),
                rebroadcast: ms(t.rebroadcast),
                max_timeout: ms(t.max),
            },
            buffered_heights: config.buffered_heights,
            buffered_per_height: config.buffered_per_height,
            address: PublicKey::of(&key),
            key,
            state: None,
            finalized: None,
            timers: BTreeSet::new(),
            stopped: false,
        }
    }

    /// This delegate's public key.
    pub fn public_key(&self) -> PublicKey {
        self.address
    }

    /// Creates the core's state at the first start; refuses a start out of order afterwards.
    fn prepare_start(&mut self, height: u64, validators: &Validators) -> Result<(), EngineError> {
        match &self.state {
            None => {
                let params = mc::Params {
                    address: self.address,
                    threshold_params: mc::ThresholdParams::default(),
                    value_payload: mc::ValuePayload::ProposalAndParts,
                    enabled: true,
                };
                self.state = Some(mc::State::new(
                    Ctx,
                    Height(height),
                    validators.clone(),
                    params,
                    self.buffered_heights,
                    self.buffered_per_height,
                ));
                Ok(())
            }
            Some(state) => {
                let current = state.height().0;
                let next = self
                    .finalized
                    .filter(|f| *f == current)
                    .and_then(|f| f.checked_add(1));
                if next == Some(height) {
                    Ok(())
                } else {
                    Err(EngineError::StartOutOfOrder {
                        requested: height,
                        current,
                        finalized: self.finalized,
                    })
                }
            }
        }
    }

    /// Runs one input through the core, answering what needs an answer and collecting the
    /// rest. `replayed` holds the log being replayed: its entries are not persisted again.
    fn run(
        &mut self,
        input: mc::Input<Ctx>,
        now: Millis,
        replayed: &[WalEntry],
    ) -> Result<Vec<EngineEffect>, EngineError> {
        if self.stopped {
            return Err(EngineError::Stopped);
        }
        let Some(state) = self.state.as_mut() else {
            return Err(EngineError::NotStarted);
        };
        let mut performer = Performer {
            chain: &self.chain_id,
            key: &self.key,
            timeouts: &self.timeouts,
            now,
            replayed,
            effects: Vec::new(),
            fault: None,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            mc::process!(
                input: input,
                state: state,
                metrics: &(),
                with: effect => performer.perform(effect)
            )
        }));
        let failure = match outcome {
            Err(panic) => Some(EngineError::Panicked(panic_message(panic.as_ref()))),
            Ok(Err(mc::Error::ReplayDivergence(kind, height, round))) => {
                Some(EngineError::ReplayDivergence {
                    kind: kind.to_string(),
                    height: height.0,
                    round: round.as_i64(),
                })
            }
            Ok(Err(e)) => Some(EngineError::Core(e.to_string())),
            Ok(Ok(())) => performer.fault.take(),
        };
        if let Some(error) = failure {
            self.stopped = true;
            return Err(error);
        }
        let effects = performer.effects;
        for effect in &effects {
            match effect {
                EngineEffect::Finalized { height, .. } => self.finalized = Some(*height),
                EngineEffect::Schedule { timer, .. } => {
                    self.timers.insert(*timer);
                }
                EngineEffect::Cancel(timer) => {
                    self.timers.remove(timer);
                }
                EngineEffect::CancelAll => self.timers.clear(),
                _ => {}
            }
        }
        Ok(effects)
    }
}

/// The highest round an input names.
fn highest_round(input: &EngineInput) -> Option<Round> {
    match input {
        EngineInput::StartHeight { .. } => None,
        EngineInput::Vote(v) => Some(v.round),
        EngineInput::Proposal(p) => Some(p.round.max(p.pol_round.unwrap_or_default())),
        EngineInput::Polka(c) => Some(c.round),
        EngineInput::RoundCert(c) => Some(c.round),
        EngineInput::Propose { round, .. } | EngineInput::BlockReceived { round, .. } => {
            Some(*round)
        }
        EngineInput::TimerFired(
            Timer::Propose(r) | Timer::Prevote(r) | Timer::Precommit(r) | Timer::Rebroadcast(r),
        ) => Some(*r),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

impl BftEngine for MalachiteEngine {
    fn handle(
        &mut self,
        input: EngineInput,
        now: Millis,
    ) -> Result<Vec<EngineEffect>, EngineError> {
        if self.stopped {
            return Err(EngineError::Stopped);
        }
        if let Some(round) = highest_round(&input).filter(|r| r.0 > MAX_ROUND) {
            return Err(EngineError::RoundOutOfRange(round.0));
        }
        let input = match input {
            EngineInput::StartHeight { height, delegates } => {
                let validators = Validators::new(&delegates)?;
                self.prepare_start(height, &validators)?;
                start_input(height, validators)
            }
            EngineInput::Vote(v) => mc::Input::Vote(m_vote(&v)),
            EngineInput::Proposal(p) => mc::Input::Proposal(m_proposal(&p)),
            EngineInput::Polka(c) => mc::Input::PolkaCertificate(m_polka(&c)),
            EngineInput::RoundCert(c) => mc::Input::RoundCertificate(m_round_cert(&c)),
            EngineInput::Propose {
                height,
                round,
                block,
            } => mc::Input::Propose(mc::LocallyProposedValue::new(
                Height(height),
                m_round(round),
                block,
            )),
            EngineInput::BlockReceived {
                height,
                round,
                proposer,
                block,
                valid,
            } => mc::Input::ProposedValue(
                mc::ProposedValue {
                    height: Height(height),
                    round: m_round(round),
                    valid_round: mt::Round::Nil,
                    proposer,
                    value: block,
                    validity: mt::Validity::from_bool(valid),
                },
                mt::ValueOrigin::Consensus,
            ),
            EngineInput::TimerFired(t) => {
                if self.state.is_some() && !self.timers.remove(&t) {
                    return Ok(Vec::new());
                }
                mc::Input::TimeoutElapsed(m_timeout(t))
            }
        };
        // Before the first start `run` refuses, whatever the input.
        self.run(input, now, &[])
    }

    fn replay(
        &mut self,
        height: u64,
        delegates: DelegateSet,
        wal: Vec<WalEntry>,
        now: Millis,
    ) -> Result<Vec<EngineEffect>, EngineError> {
        if self.stopped {
            return Err(EngineError::Stopped);
        }
        if self.state.is_some() {
            return Err(EngineError::ReplayAfterStart);
        }
        if let Some(found) = wal
            .iter()
            .filter_map(WalEntry::height)
            .find(|h| *h != height)
        {
            return Err(EngineError::WalHeight {
                expected: height,
                found,
            });
        }
        let mut effects = self.handle(EngineInput::StartHeight { height, delegates }, now)?;
        let inputs: Vec<mc::Input<Ctx>> = wal.iter().map(m_input).collect();
        // The index lets the core re-send what we signed before the crash instead of signing
        // again; it must be in place before the first entry is fed.
        if let Some(state) = self.state.as_mut() {
            state.index_wal_entries(&inputs);
        }
        let mut replayed = Ok(());
        for input in inputs {
            match self.run(input, now, &wal) {
                Ok(more) => effects.extend(more),
                Err(e) => {
                    replayed = Err(e);
                    break;
                }
            }
        }
        if let Some(state) = self.state.as_mut() {
            state.reset_entries_index();
        }
        replayed.map(|()| effects)
    }

    fn height(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.height().0)
    }
}

/// Answers the core's effects during one input: the key and the clock reading are lent for the
/// call.
struct Performer<'a> {
    chain: &'a Hash256,
    key: &'a SigningKey,
    timeouts: &'a mt::LinearTimeouts,
    now: Millis,
    replayed: &'a [WalEntry],
    effects: Vec<EngineEffect>,
    /// The first thing that went wrong; the core cannot be told, so it is reported after.
    fault: Option<EngineError>,
}

impl Performer<'_> {
    fn fail(&mut self, error: EngineError) {
        if self.fault.is_none() {
            self.fault = Some(error);
        }
    }

    /// Converts, or records the fault and yields nothing.
    fn take<T>(&mut self, converted: Result<T, EngineError>) -> Option<T> {
        converted.map_err(|e| self.fail(e)).ok()
    }

    fn deadline(&mut self, timeout: mt::Timeout) -> Millis {
        if timeout.round.is_nil() {
            self.fail(EngineError::Core(
                "a timeout of the core has no round".into(),
            ));
            return self.now;
        }
        let after = self.timeouts.duration_for(timeout);
        self.now
            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
    }

    fn sign(&mut self, message: Result<Vec<u8>, EngineError>) -> Sig {
        match message {
            Ok(bytes) => Sig::of(&self.key.sign(&bytes)),
            Err(e) => {
                // Never sign bytes we could not build; the zero signature verifies nowhere and
                // the fault stops the engine after this call.
                self.fail(e);
                Sig([0; 64])
            }
        }
    }

    fn vote_bytes(&self, vote: &MVote) -> Result<Vec<u8>, EngineError> {
        Ok(vote_bytes(
            self.chain,
            our_kind(vote.kind),
            vote.height.0,
            defined(vote.round)?,
            our_value(&vote.block).as_ref(),
            &vote.delegate,
        ))
    }

    fn proposal_bytes(&self, proposal: &MProposal) -> Result<Vec<u8>, EngineError> {
        Ok(proposal_bytes(
            self.chain,
            proposal.height.0,
            defined(proposal.round)?,
            proposal.pol_round.as_u32().map(Round),
            &proposal.block,
            &proposal.proposer,
        ))
    }

    /// Answers one effect. Never fails: an error handed back to the core is only logged, and the
    /// effect waiting for an answer would then fail in the core.
    fn perform(
        &mut self,
        effect: mc::Effect<Ctx>,
    ) -> Result<mc::Resume<Ctx>, std::convert::Infallible> {
        use mc::Effect as E;
        let broadcast = |m: Result<ConsensusMessage, EngineError>| m.map(EngineEffect::Broadcast);
        // Effects answered here return at once; the others become an effect for the runtime
        // (or nothing), and the core continues.
        let (ours, r) = match effect {
            E::SignVote(vote, r) => {
                let bytes = self.vote_bytes(&vote);
                let signature = self.sign(bytes);
                return Ok(r.resume_with(SignedMessage::new(vote, signature)));
            }
            E::SignProposal(proposal, r) => {
                let bytes = self.proposal_bytes(&proposal);
                let signature = self.sign(bytes);
                return Ok(r.resume_with(SignedMessage::new(proposal, signature)));
            }
            E::VerifySignature(message, key, r) => {
                let bytes = match &message.message {
                    mc::ConsensusMsg::Vote(v) => self.vote_bytes(v),
                    mc::ConsensusMsg::Proposal(p) => self.proposal_bytes(p),
                };
                // A peer's message with no round is simply not valid.
                let valid = bytes
                    .map(|b| verifies(&key, &b, &message.signature.signature()))
                    .unwrap_or(false);
                return Ok(r.resume_with(valid));
            }
            // The threshold is the core's own (the default 2/3, which a unit test holds equal
            // to `DelegateSet::quorum`): counted the way the core counted.
            E::VerifyCommitCertificate(cert, validators, threshold, r) => {
                return Ok(r.resume_with(verify_commit(self.chain, &cert, &validators, threshold)));
            }
            E::VerifyPolkaCertificate(cert, validators, threshold, r) => {
                let vote = |_: &_| (VoteKind::Prevote, Some(&cert.value_id));
                let (at, signatures) = ((cert.height, cert.round), &cert.polka_signatures);
                let needed = threshold.quorum;
                let checked =
                    check_certificate(self.chain, at, signatures, vote, &validators, needed);
                return Ok(r.resume_with(checked));
            }
            E::VerifyRoundCertificate(cert, validators, threshold, r) => {
                return Ok(r.resume_with(verify_round(self.chain, &cert, &validators, threshold)));
            }
            E::VerifyExtendedCommitCertificate(cert, validators, threshold, _policy, r) => {
                // Only on the sync path, which we never feed; answered all the same.
                let plain = cert.trim_vote_extensions();
                return Ok(r.resume_with(verify_commit(
                    self.chain,
                    &plain,
                    &validators,
                    threshold,
                )));
            }
            // Never emitted with extensions disabled; refused if they ever were.
            E::ExtendVote(.., r) => return Ok(r.resume_with(None)),
            E::VerifyVoteExtension(.., r) => {
                return Ok(r.resume_with(Err(mc::VoteExtensionError::InvalidVoteExtension)));
            }

            E::WalAppend(_height, input, r) => match wal_entry(&input) {
                // An entry already in the log being replayed is not appended twice.
                Ok(Some(entry)) if !self.replayed.contains(&entry) => {
                    (Ok(EngineEffect::Persist(entry)), r)
                }
                Ok(_) => return Ok(r.resume_with(())),
                Err(e) => (Err(e), r),
            },
            E::PublishConsensusMsg(mc::SignedConsensusMsg::Vote(v), r)
            | E::PublishLivenessMsg(mc::LivenessMsg::Vote(v), r)
            | E::RepublishVote(v, r) => (broadcast(our_vote(&v).map(ConsensusMessage::Vote)), r),
            E::PublishConsensusMsg(mc::SignedConsensusMsg::Proposal(p), r) => {
                let message = our_proposal(&p).map(ConsensusMessage::Proposal);
                (broadcast(message), r)
            }
            E::PublishLivenessMsg(mc::LivenessMsg::PolkaCertificate(c), r) => {
                (broadcast(our_polka(&c).map(ConsensusMessage::Polka)), r)
            }
            E::PublishLivenessMsg(mc::LivenessMsg::SkipRoundCertificate(c), r)
            | E::RepublishRoundCertificate(c, r) => (
                broadcast(our_round_cert(&c).map(ConsensusMessage::RoundCert)),
                r,
            ),
            E::ScheduleTimeout(timeout, r) => {
                let at = self.deadline(timeout);
                (
                    our_timer(timeout).map(|timer| EngineEffect::Schedule { timer, at }),
                    r,
                )
            }
            E::CancelTimeout(timeout, r) => (our_timer(timeout).map(EngineEffect::Cancel), r),
            E::CancelAllTimeouts(r) => (Ok(EngineEffect::CancelAll), r),
            E::StartRound(height, round, proposer, _role, r) => {
                let started = defined(round).map(|round| EngineEffect::RoundStarted {
                    height: height.0,
                    round,
                    proposer,
                });
                (started, r)
            }
            E::GetValue(height, round, timeout, r) => {
                let deadline = self.deadline(timeout);
                let build = defined(round).map(|round| EngineEffect::BuildBlock {
                    height: height.0,
                    round,
                    deadline,
                });
                (build, r)
            }
            E::RestreamProposal(height, round, _valid_round, _proposer, block, r) => {
                let restream = defined(round).map(|round| EngineEffect::Restream {
                    height: height.0,
                    round,
                    block,
                });
                (restream, r)
            }
            E::Decide(cert, _extensions, r) => {
                let decided = our_certificate(&cert).map(|certificate| EngineEffect::Decided {
                    height: cert.height.0,
                    block: cert.value_id,
                    certificate,
                });
                (decided, r)
            }
            E::Finalize(cert, _extensions, misbehavior, r) => {
                let finalized = our_certificate(&cert).and_then(|certificate| {
                    Ok(EngineEffect::Finalized {
                        height: cert.height.0,
                        block: cert.value_id,
                        certificate,
                        evidence: evidence_of(&misbehavior)?,
                    })
                });
                (finalized, r)
            }
            E::CertVerifiedSyncValue(.., r) | E::CertRejectedSyncValue(.., r) => (
                Err(EngineError::Unsupported("Malachite's sync protocol")),
                r,
            ),
        };
        if let Some(effect) = self.take(ours) {
            self.effects.push(effect);
        }
        Ok(r.resume_with(()))
    }
}

/// The core's evidence as ours, in its (address-sorted) order.
fn evidence_of(misbehavior: &mc::MisbehaviorEvidence<Ctx>) -> Result<Vec<Evidence>, EngineError> {
    let mut evidence = Vec::new();
    for (_delegate, pairs) in &misbehavior.votes {
        for (a, b) in pairs {
            evidence.push(Evidence::DoubleVote(our_vote(a)?, our_vote(b)?));
        }
    }
    for (_delegate, pairs) in &misbehavior.proposals {
        for (a, b) in pairs {
            evidence.push(Evidence::DoubleProposal(our_proposal(a)?, our_proposal(b)?));
        }
    }
    Ok(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::quorum;

    #[test]
    fn our_quorum_is_the_cores_two_thirds_for_every_size() {
        // The core decides when more than 2/3 of the power has precommitted; our certificate
        // check asks `quorum(K)` signatures. Were they to differ, the core would panic on a
        // certificate it built (or we would refuse one it accepts).
        let two_thirds = mc::ThresholdParams::default().quorum;
        for k in 1..=200u64 {
            let q = quorum(k as usize) as u64;
            assert!(two_thirds.is_met(q, k), "K={k}");
            assert!(!two_thirds.is_met(q - 1, k), "K={k}");
            assert_eq!(two_thirds.min_expected(k), q, "K={k}");
        }
    }

    #[test]
    fn the_engine_can_move_to_another_thread() {
        fn check<T: Send + Sync>() {}
        check::<MalachiteEngine>();
    }

    #[test]
    fn the_proposer_rotates_through_the_schedule_order() {
        use mt::Context as _;
        let keys: Vec<PublicKey> = (1..=4u8)
            .map(|i| PublicKey::of(&SigningKey::from_bytes(&[i; 32])))
            .collect();
        // Schedule order differs from key order.
        let mut schedule = keys.clone();
        schedule.reverse();
        let set = DelegateSet::new(schedule.clone()).unwrap();
        let validators = Validators::new(&set).unwrap();
        for (height, round, expected) in
            [(0, 0, 0), (1, 0, 1), (1, 1, 2), (7, 2, 1), (u64::MAX, 0, 3)]
        {
            let p = Ctx.select_proposer(&validators, Height(height), mt::Round::new(round));
            assert_eq!(p.address, schedule[expected], "h{height} r{round}");
        }
        let p = Ctx.select_proposer(&validators, Height(5), mt::Round::new(u32::MAX));
        assert!(schedule.contains(&p.address));
    }
}
