//! What delegates sign, send and log, as data: rounds and vote kinds, [`Vote`]s and
//! [`Proposal`]s with the bytes they sign ([`vote_bytes`], [`proposal_bytes`]), the certificates
//! ([`PolkaCert`], [`RoundCert`], [`CommitCertificate`]), [`ConsensusMessage`], [`Timer`],
//! [`WalEntry`] and [`Evidence`]; their canonical encodings; and `tally`, the one vote count
//! behind every certificate check.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::codec::{self, limits, top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::error::{Error, Result};
use crate::hash::{tag, Hash256};
use crate::keys::{ascending_distinct, DelegateSet, PublicKey};

/// A round of one height: 0, then one more each time a round fails to decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Round(pub u32);

impl std::fmt::Display for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The two votes of a Tendermint round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VoteKind {
    /// First vote: the block looks valid to me (or nil).
    Prevote,
    /// Second vote, after a quorum of prevotes: 2f + 1 of these for one block finalize it.
    Precommit,
}

impl VoteKind {
    fn tag(self) -> u8 {
        match self {
            Self::Prevote => tag::BFT_PREVOTE,
            Self::Precommit => tag::BFT_PRECOMMIT,
        }
    }
}

/// What a delegate signs to vote: `tag (0x41 prevote | 0x42 precommit) ‖ format version ‖
/// chain id ‖ height (u64) ‖ round (u32) ‖ (0x00 ‖ 0³² for nil | 0x01 ‖ block hash) ‖ delegate
/// key`, big-endian. Every field that the engine compares is signed: without the round, a
/// round-0 precommit could be replayed as round 1's (forging equivocation evidence and skewing
/// counts); without the chain id, a vote could be replayed on another consortium's chain.
pub fn vote_bytes(
    chain: &Hash256,
    kind: VoteKind,
    height: u64,
    round: Round,
    block: Option<&Hash256>,
    delegate: &PublicKey,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(111);
    w.u8(kind.tag());
    w.u8(codec::FORMAT_VERSION);
    w.raw(&chain.0);
    w.u64(height);
    w.u32(round.0);
    match block {
        None => {
            w.u8(0);
            w.raw(&[0; 32]);
        }
        Some(hash) => {
            w.u8(1);
            w.raw(&hash.0);
        }
    }
    w.raw(&delegate.0);
    w.into_bytes()
}

/// What a proposer signs: `0x40 ‖ format version ‖ chain id ‖ height (u64) ‖ round (u32) ‖
/// (0x00 ‖ 0⁴ | 0x01 ‖ proof-of-lock round (u32)) ‖ block hash ‖ proposer key`.
pub fn proposal_bytes(
    chain: &Hash256,
    height: u64,
    round: Round,
    pol_round: Option<Round>,
    block: &Hash256,
    proposer: &PublicKey,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(115);
    w.u8(tag::BFT_PROPOSAL);
    w.u8(codec::FORMAT_VERSION);
    w.raw(&chain.0);
    w.u64(height);
    w.u32(round.0);
    match pol_round {
        None => {
            w.u8(0);
            w.u32(0);
        }
        Some(r) => {
            w.u8(1);
            w.u32(r.0);
        }
    }
    w.raw(&block.0);
    w.raw(&proposer.0);
    w.into_bytes()
}

/// `verify_strict` with a decompressed key: one message and key have one valid signature, so
/// evidence and certificates cannot be altered into other valid ones.
pub(crate) fn verifies(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    key.verify_strict(message, signature).is_ok()
}

/// A signed prevote or precommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// Prevote or precommit.
    pub kind: VoteKind,
    /// The height voted on.
    pub height: u64,
    /// The round voted in.
    pub round: Round,
    /// The block hash voted for; `None` is a nil vote.
    pub block: Option<Hash256>,
    /// Who votes.
    pub delegate: PublicKey,
    /// Its signature over [`Vote::signed_bytes`].
    pub signature: Signature,
}

impl Vote {
    /// Signs a vote with `key` (whose public key becomes the vote's delegate).
    pub fn sign(
        kind: VoteKind,
        height: u64,
        round: Round,
        block: Option<Hash256>,
        chain: &Hash256,
        key: &SigningKey,
    ) -> Self {
        let delegate = PublicKey::of(key);
        let message = vote_bytes(chain, kind, height, round, block.as_ref(), &delegate);
        Self {
            kind,
            height,
            round,
            block,
            delegate,
            signature: key.sign(&message),
        }
    }

    /// The bytes the signature covers: see [`vote_bytes`].
    pub fn signed_bytes(&self, chain: &Hash256) -> Vec<u8> {
        vote_bytes(
            chain,
            self.kind,
            self.height,
            self.round,
            self.block.as_ref(),
            &self.delegate,
        )
    }

    /// Checks the signature (strictly) under the vote's own delegate key; whether that key is a
    /// delegate of the height is the caller's question.
    pub fn verify(&self, chain: &Hash256) -> Result<()> {
        self.delegate
            .verify(&self.signed_bytes(chain), &self.signature, "BFT vote")
    }
}

/// A signed proposal: the proposer of `(height, round)` proposes the block with this hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The height.
    pub height: u64,
    /// The round.
    pub round: Round,
    /// The round in which the block gathered a quorum of prevotes, when the proposer re-proposes
    /// the block it is locked on.
    pub pol_round: Option<Round>,
    /// The block's hash.
    pub block: Hash256,
    /// Who proposes.
    pub proposer: PublicKey,
    /// Its signature over [`Proposal::signed_bytes`].
    pub signature: Signature,
}

impl Proposal {
    /// Signs a proposal with `key` (whose public key becomes the proposer).
    pub fn sign(
        height: u64,
        round: Round,
        pol_round: Option<Round>,
        block: Hash256,
        chain: &Hash256,
        key: &SigningKey,
    ) -> Self {
        let proposer = PublicKey::of(key);
        let message = proposal_bytes(chain, height, round, pol_round, &block, &proposer);
        Self {
            height,
            round,
            pol_round,
            block,
            proposer,
            signature: key.sign(&message),
        }
    }

    /// The bytes the signature covers: see [`proposal_bytes`].
    pub fn signed_bytes(&self, chain: &Hash256) -> Vec<u8> {
        proposal_bytes(
            chain,
            self.height,
            self.round,
            self.pol_round,
            &self.block,
            &self.proposer,
        )
    }

    /// Checks the signature (strictly) under the proposer's own key.
    pub fn verify(&self, chain: &Hash256) -> Result<()> {
        self.proposer
            .verify(&self.signed_bytes(chain), &self.signature, "BFT proposal")
    }
}

/// One delegate's signature in a certificate whose other fields say what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSignature {
    /// The delegate.
    pub delegate: PublicKey,
    /// Its signature.
    pub signature: Signature,
}

/// A quorum of prevotes for one block in one round (the liveness protocol sends it so that a
/// delegate that missed the prevotes can still lock and precommit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolkaCert {
    /// The height.
    pub height: u64,
    /// The round of the prevotes.
    pub round: Round,
    /// The block they prevoted.
    pub block: Hash256,
    /// Each signs the prevote `(height, round, block)`.
    pub signatures: Vec<CertSignature>,
}

/// Which round certificate: the votes that let a delegate move to another round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundCertKind {
    /// f + 1 votes of any kind in a higher round: skip to it.
    Skip,
    /// 2f + 1 precommits of any value in this round: go to the next.
    Precommit,
}

/// One vote in a [`RoundCert`]: its kind and value vary, height and round are the certificate's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundSignature {
    /// Prevote or precommit.
    pub kind: VoteKind,
    /// The block voted for, or nil.
    pub block: Option<Hash256>,
    /// Who voted.
    pub delegate: PublicKey,
    /// The vote's signature.
    pub signature: Signature,
}

/// Votes that justify entering another round (the liveness protocol's round certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundCert {
    /// The height.
    pub height: u64,
    /// The round of the votes.
    pub round: Round,
    /// Skip or precommit.
    pub kind: RoundCertKind,
    /// The votes.
    pub signatures: Vec<RoundSignature>,
}

/// What finalizes a block: 2f + 1 distinct delegates' precommits for its hash in one round.
///
/// Like [`crate::FinalityCertificate`], it holds one signature per delegate in ascending key
/// order and asks for [`DelegateSet::quorum`] of them; unlike it, each signature covers the
/// precommit bytes ([`vote_bytes`]: chain id, height, round, hash), which is why it is a type of
/// its own until the chain format moves to it (see `consensus/BFT.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCertificate {
    /// The block's height.
    pub height: u64,
    /// The round it was decided in.
    pub round: Round,
    /// The block's hash.
    pub block: Hash256,
    // Private to the `bft` module (whose unit tests build a certificate out of order): elsewhere
    // only `new` makes one.
    pub(super) signatures: Vec<CertSignature>,
}

top_level_encoding!(CommitCertificate);

impl CommitCertificate {
    /// A certificate from precommit signatures in any order; a delegate's later duplicates are
    /// dropped, so that a certificate has one encoding.
    pub fn new(
        height: u64,
        round: Round,
        block: Hash256,
        mut signatures: Vec<CertSignature>,
    ) -> Self {
        signatures.sort_by_key(|s| s.delegate);
        signatures.dedup_by_key(|s| s.delegate);
        Self {
            height,
            round,
            block,
            signatures,
        }
    }

    /// The signatures, in ascending delegate order.
    pub fn signatures(&self) -> &[CertSignature] {
        &self.signatures
    }

    /// The precommit `signature` of this certificate stands for, as a vote.
    pub fn precommit(&self, signature: &CertSignature) -> Vote {
        Vote {
            kind: VoteKind::Precommit,
            height: self.height,
            round: self.round,
            block: Some(self.block),
            delegate: signature.delegate,
            signature: signature.signature,
        }
    }

    /// The double vote `vote` proves against this certificate: a precommit of the same height
    /// and round for another value (another block, or nil) by a delegate whose precommit for
    /// this block the certificate holds. Signatures are not checked here ([`Evidence::verify`]
    /// does).
    pub fn conflicting_vote(&self, vote: &Vote) -> Option<Evidence> {
        if vote.kind != VoteKind::Precommit
            || vote.height != self.height
            || vote.round != self.round
            || vote.block == Some(self.block)
        {
            return None;
        }
        let mine = self
            .signatures
            .iter()
            .find(|s| s.delegate == vote.delegate)?;
        Some(Evidence::DoubleVote(self.precommit(mine), vote.clone()))
    }

    /// The double votes `other`, a certificate for another block at the same height, proves
    /// against this one: the two precommits of every delegate that signed both in the same
    /// round. Two certificates of one height and different rounds convict no one by their
    /// precommits alone (a delegate may precommit another block in a later round once a quorum
    /// prevoted it; telling that apart from "amnesia" needs the prevotes, which certificates do
    /// not carry). Signatures are not checked here ([`Evidence::verify`] does).
    pub fn conflicts(&self, other: &CommitCertificate) -> Vec<Evidence> {
        if other.height != self.height || other.block == self.block {
            return Vec::new();
        }
        other
            .signatures
            .iter()
            .filter_map(|s| self.conflicting_vote(&other.precommit(s)))
            .collect()
    }

    /// Checks that at least [`DelegateSet::quorum`] distinct `delegates` precommitted the block
    /// at this height and round on chain `chain`: every signature must be a delegate's and valid,
    /// in ascending delegate order. Returns how many signed.
    ///
    /// This is the count the engine itself decides by (a unit test holds the two equal for every
    /// size of delegate set), so a certificate the engine emits always passes.
    pub fn verify(&self, chain: &Hash256, delegates: &DelegateSet) -> Result<usize> {
        if !ascending_distinct(self.signatures.iter().map(|s| &s.delegate)) {
            return Err(Error::InvalidCertificate(
                "signatures not in ascending delegate order, or repeated",
            ));
        }
        let votes = self.signatures.iter().map(|s| {
            (
                VoteKind::Precommit,
                Some(&self.block),
                &s.delegate,
                s.signature,
            )
        });
        let signed = tally(chain, self.height, self.round, votes, |key| {
            delegate_key(delegates, key)
        })
        .map_err(|fault| match fault {
            TallyFault::Repeated(_) => Error::InvalidCertificate("a delegate signs twice"),
            TallyFault::Unknown(_) => Error::InvalidCertificate("a signer is not a delegate"),
            TallyFault::BadSignature(_) => Error::BadSignature("commit certificate precommit"),
        })?;
        if signed < delegates.quorum() {
            return Err(Error::NotEnoughSignatures {
                have: signed,
                need: delegates.quorum(),
            });
        }
        Ok(signed)
    }
}

/// A delegate's decompressed key, if `key` is one of `delegates` and a valid point.
pub(crate) fn delegate_key(delegates: &DelegateSet, key: &PublicKey) -> Option<VerifyingKey> {
    if !delegates.contains(key) {
        return None;
    }
    VerifyingKey::from_bytes(&key.0).ok()
}

/// Why [`tally`] refused a set of votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TallyFault {
    /// The delegate appears twice.
    Repeated(PublicKey),
    /// The signer is not a delegate (or its key is not a valid point).
    Unknown(PublicKey),
    /// The signature does not verify.
    BadSignature(PublicKey),
}

/// Counts the distinct signers of votes of one `(height, round)`, each given as (kind, value,
/// signer, signature), refusing the whole set at the first repeated signer, unknown signer or
/// invalid signature. Every delegate weighs 1.
///
/// One function for every certificate the engine checks and for [`CommitCertificate::verify`]:
/// the engine's core panics if a certificate it built from votes it accepted fails the check,
/// so "accepted vote" and "counted signature" must be the same rule.
pub(crate) fn tally<'a>(
    chain: &Hash256,
    height: u64,
    round: Round,
    votes: impl IntoIterator<Item = (VoteKind, Option<&'a Hash256>, &'a PublicKey, Signature)>,
    key_of: impl Fn(&PublicKey) -> Option<VerifyingKey>,
) -> std::result::Result<usize, TallyFault> {
    let mut seen = std::collections::BTreeSet::new();
    for (kind, block, delegate, signature) in votes {
        if !seen.insert(*delegate) {
            return Err(TallyFault::Repeated(*delegate));
        }
        let key = key_of(delegate).ok_or(TallyFault::Unknown(*delegate))?;
        let message = vote_bytes(chain, kind, height, round, block, delegate);
        if !verifies(&key, &message, &signature) {
            return Err(TallyFault::BadSignature(*delegate));
        }
    }
    Ok(seen.len())
}

/// A consensus message between delegates: what
/// [`EngineEffect::Broadcast`](crate::bft::EngineEffect::Broadcast) asks to send and
/// what the runtime feeds back as input on the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsensusMessage {
    /// A vote.
    Vote(Vote),
    /// A proposal (the block body travels apart).
    Proposal(Proposal),
    /// A polka certificate.
    Polka(PolkaCert),
    /// A round certificate.
    RoundCert(RoundCert),
}

top_level_encoding!(ConsensusMessage);

impl ConsensusMessage {
    /// The height it is about.
    pub fn height(&self) -> u64 {
        match self {
            Self::Vote(v) => v.height,
            Self::Proposal(p) => p.height,
            Self::Polka(c) => c.height,
            Self::RoundCert(c) => c.height,
        }
    }

    /// Who signed it, for a vote or a proposal: the transport checks it is the sending peer's
    /// delegate key. Certificates carry others' signatures and may be relayed by anyone.
    pub fn signer(&self) -> Option<&PublicKey> {
        match self {
            Self::Vote(v) => Some(&v.delegate),
            Self::Proposal(p) => Some(&p.proposer),
            Self::Polka(_) | Self::RoundCert(_) => None,
        }
    }
}

/// A timer of the current height, keyed by kind and round. Scheduling a timer again replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// No proposal came in time: prevote nil.
    Propose(Round),
    /// Prevotes reached a quorum for no single block: precommit nil.
    Prevote(Round),
    /// Precommits reached a quorum for no single block: next round.
    Precommit(Round),
    /// Re-send our latest votes (peers may have missed them).
    Rebroadcast(Round),
}

/// A block body's arrival and our verdict on it, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedBlock {
    /// The height.
    pub height: u64,
    /// The round it was proposed in.
    pub round: Round,
    /// The round it was locked in, when re-proposed.
    pub valid_round: Option<Round>,
    /// Its proposer.
    pub proposer: PublicKey,
    /// Its hash.
    pub block: Hash256,
    /// Whether it passed validation.
    pub valid: bool,
}

/// One record of the write-ahead log: an input that changed what the engine may sign, kept so
/// that a restarted delegate replays it instead of signing anew (which could sign differently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEntry {
    /// A vote received, or our own (logged before it is sent).
    Vote(Vote),
    /// A proposal received, or our own.
    Proposal(Proposal),
    /// A block body and its verdict (the body itself is stored by the runtime, by hash).
    ProposedBlock(ProposedBlock),
    /// A polka certificate received.
    Polka(PolkaCert),
    /// A timer that fired.
    Timeout(Timer),
}

top_level_encoding!(WalEntry);

impl WalEntry {
    /// The height it belongs to; `None` for a timer (which belongs to the log's height).
    pub fn height(&self) -> Option<u64> {
        match self {
            Self::Vote(v) => Some(v.height),
            Self::Proposal(p) => Some(p.height),
            Self::ProposedBlock(b) => Some(b.height),
            Self::Polka(c) => Some(c.height),
            Self::Timeout(_) => None,
        }
    }
}

/// Proof that a delegate signed two conflicting messages for one height, round and kind: either
/// pair alone convicts, whoever presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// Two votes of one kind for different values.
    DoubleVote(Vote, Vote),
    /// Two different proposals (another block, or the same with another lock round).
    DoubleProposal(Proposal, Proposal),
}

top_level_encoding!(Evidence);

impl Evidence {
    /// The delegate convicted.
    pub fn offender(&self) -> &PublicKey {
        match self {
            Self::DoubleVote(a, _) => &a.delegate,
            Self::DoubleProposal(a, _) => &a.proposer,
        }
    }

    /// The height of the offence.
    pub fn height(&self) -> u64 {
        match self {
            Self::DoubleVote(a, _) => a.height,
            Self::DoubleProposal(a, _) => a.height,
        }
    }

    /// Checks the evidence against the delegates of its height: one signer, a delegate, the same
    /// height, round and kind, two different messages, both signatures valid.
    pub fn verify(&self, chain: &Hash256, delegates: &DelegateSet) -> Result<()> {
        match self {
            Self::DoubleVote(a, b) => {
                if a.delegate != b.delegate
                    || a.kind != b.kind
                    || a.height != b.height
                    || a.round != b.round
                {
                    return Err(Error::InvalidEvidence("the votes are not of one slot"));
                }
                if a.block == b.block {
                    return Err(Error::InvalidEvidence("the votes do not conflict"));
                }
                if !delegates.contains(&a.delegate) {
                    return Err(Error::InvalidEvidence("the signer is not a delegate"));
                }
                a.verify(chain)?;
                b.verify(chain)
            }
            Self::DoubleProposal(a, b) => {
                if a.proposer != b.proposer || a.height != b.height || a.round != b.round {
                    return Err(Error::InvalidEvidence("the proposals are not of one slot"));
                }
                if a.block == b.block && a.pol_round == b.pol_round {
                    return Err(Error::InvalidEvidence("the proposals do not conflict"));
                }
                if !delegates.contains(&a.proposer) {
                    return Err(Error::InvalidEvidence("the signer is not a delegate"));
                }
                a.verify(chain)?;
                b.verify(chain)
            }
        }
    }
}

// ---- encodings (see `crate::codec` for the conventions) ----

/// An enum variant: its tag, then its body.
fn write_variant(w: &mut Writer, tag: u8, body: &impl Wire) {
    w.u8(tag);
    body.write(w);
}

fn unknown<T>(field: &'static str, tag: u8) -> Result<T, DecodeError> {
    Err(DecodeError::UnknownTag { field, tag })
}

fn write_round_opt(w: &mut Writer, round: Option<Round>) {
    match round {
        None => w.u8(0),
        Some(r) => {
            w.u8(1);
            w.u32(r.0);
        }
    }
}

fn read_round_opt(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Round>, DecodeError> {
    match r.u8(field)? {
        0 => Ok(None),
        1 => Ok(Some(Round(r.u32(field)?))),
        tag => unknown(field, tag),
    }
}

fn write_block_opt(w: &mut Writer, block: Option<&Hash256>) {
    match block {
        None => w.u8(0),
        Some(h) => {
            w.u8(1);
            w.raw(&h.0);
        }
    }
}

fn read_block_opt(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Hash256>, DecodeError> {
    match r.u8(field)? {
        0 => Ok(None),
        1 => Ok(Some(Hash256(r.array(field)?))),
        tag => unknown(field, tag),
    }
}

fn write_kind(w: &mut Writer, kind: VoteKind) {
    w.u8(match kind {
        VoteKind::Prevote => 0,
        VoteKind::Precommit => 1,
    });
}

fn read_kind(r: &mut Reader<'_>) -> Result<VoteKind, DecodeError> {
    match r.u8("vote kind")? {
        0 => Ok(VoteKind::Prevote),
        1 => Ok(VoteKind::Precommit),
        tag => unknown("vote kind", tag),
    }
}

fn read_signature(r: &mut Reader<'_>, field: &'static str) -> Result<Signature, DecodeError> {
    Ok(Signature::from_bytes(&r.array(field)?))
}

impl Wire for Vote {
    const MIN_LEN: usize = 1 + 8 + 4 + 1 + 32 + 64;

    fn write(&self, w: &mut Writer) {
        write_kind(w, self.kind);
        w.u64(self.height);
        w.u32(self.round.0);
        write_block_opt(w, self.block.as_ref());
        w.raw(&self.delegate.0);
        w.raw(&self.signature.to_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            kind: read_kind(r)?,
            height: r.u64("vote height")?,
            round: Round(r.u32("vote round")?),
            block: read_block_opt(r, "vote block")?,
            delegate: PublicKey(r.array("vote delegate")?),
            signature: read_signature(r, "vote signature")?,
        })
    }
}

impl Wire for Proposal {
    const MIN_LEN: usize = 8 + 4 + 1 + 32 + 32 + 64;

    fn write(&self, w: &mut Writer) {
        w.u64(self.height);
        w.u32(self.round.0);
        write_round_opt(w, self.pol_round);
        w.raw(&self.block.0);
        w.raw(&self.proposer.0);
        w.raw(&self.signature.to_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            height: r.u64("proposal height")?,
            round: Round(r.u32("proposal round")?),
            pol_round: read_round_opt(r, "proposal lock round")?,
            block: Hash256(r.array("proposal block")?),
            proposer: PublicKey(r.array("proposer")?),
            signature: read_signature(r, "proposal signature")?,
        })
    }
}

impl Wire for CertSignature {
    const MIN_LEN: usize = 32 + 64;

    fn write(&self, w: &mut Writer) {
        w.raw(&self.delegate.0);
        w.raw(&self.signature.to_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            delegate: PublicKey(r.array("certificate delegate")?),
            signature: read_signature(r, "certificate signature")?,
        })
    }
}

impl Wire for RoundSignature {
    const MIN_LEN: usize = 1 + 1 + 32 + 64;

    fn write(&self, w: &mut Writer) {
        write_kind(w, self.kind);
        write_block_opt(w, self.block.as_ref());
        w.raw(&self.delegate.0);
        w.raw(&self.signature.to_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            kind: read_kind(r)?,
            block: read_block_opt(r, "round certificate block")?,
            delegate: PublicKey(r.array("round certificate delegate")?),
            signature: read_signature(r, "round certificate signature")?,
        })
    }
}

fn write_list<T: Wire>(w: &mut Writer, items: &[T]) {
    w.len(items.len());
    for item in items {
        item.write(w);
    }
}

fn read_list<T: Wire>(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<T>, DecodeError> {
    let n = r.count(field, limits::MAX_SIGNATURES, T::MIN_LEN)?;
    (0..n).map(|_| T::read(r)).collect()
}

/// Height, round, block, then the signatures: the layout of polka and commit certificates.
type BlockSignatures = (u64, Round, Hash256, Vec<CertSignature>);

fn write_block_signatures(
    w: &mut Writer,
    height: u64,
    round: Round,
    block: &Hash256,
    signatures: &[CertSignature],
) {
    w.u64(height);
    w.u32(round.0);
    w.raw(&block.0);
    write_list(w, signatures);
}

fn read_block_signatures(r: &mut Reader<'_>) -> Result<BlockSignatures, DecodeError> {
    Ok((
        r.u64("certificate height")?,
        Round(r.u32("certificate round")?),
        Hash256(r.array("certificate block")?),
        read_list(r, "certificate signatures")?,
    ))
}

impl Wire for PolkaCert {
    const MIN_LEN: usize = 8 + 4 + 32 + 4;

    fn write(&self, w: &mut Writer) {
        write_block_signatures(w, self.height, self.round, &self.block, &self.signatures);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (height, round, block, signatures) = read_block_signatures(r)?;
        Ok(Self {
            height,
            round,
            block,
            signatures,
        })
    }
}

impl Wire for CommitCertificate {
    const MIN_LEN: usize = <PolkaCert as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        write_block_signatures(w, self.height, self.round, &self.block, &self.signatures);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (height, round, block, signatures) = read_block_signatures(r)?;
        // One certificate, one encoding: what `new` produces and nothing else.
        if !ascending_distinct(signatures.iter().map(|s| &s.delegate)) {
            return Err(DecodeError::NotCanonical("certificate signatures"));
        }
        Ok(Self {
            height,
            round,
            block,
            signatures,
        })
    }
}

impl Wire for RoundCert {
    const MIN_LEN: usize = 8 + 4 + 1 + 4;

    fn write(&self, w: &mut Writer) {
        w.u64(self.height);
        w.u32(self.round.0);
        w.u8(match self.kind {
            RoundCertKind::Skip => 0,
            RoundCertKind::Precommit => 1,
        });
        write_list(w, &self.signatures);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let height = r.u64("round certificate height")?;
        let round = Round(r.u32("round certificate round")?);
        let kind = match r.u8("round certificate kind")? {
            0 => RoundCertKind::Skip,
            1 => RoundCertKind::Precommit,
            tag => return unknown("round certificate kind", tag),
        };
        let signatures = read_list(r, "round certificate signatures")?;
        Ok(Self {
            height,
            round,
            kind,
            signatures,
        })
    }
}

impl Wire for ConsensusMessage {
    const MIN_LEN: usize = 1 + <RoundCert as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        match self {
            Self::Vote(v) => write_variant(w, 0, v),
            Self::Proposal(p) => write_variant(w, 1, p),
            Self::Polka(c) => write_variant(w, 2, c),
            Self::RoundCert(c) => write_variant(w, 3, c),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("consensus message kind")? {
            0 => Vote::read(r).map(Self::Vote),
            1 => Proposal::read(r).map(Self::Proposal),
            2 => PolkaCert::read(r).map(Self::Polka),
            3 => RoundCert::read(r).map(Self::RoundCert),
            tag => unknown("consensus message kind", tag),
        }
    }
}

impl Wire for Timer {
    const MIN_LEN: usize = 1 + 4;

    fn write(&self, w: &mut Writer) {
        let (kind, round) = match self {
            Self::Propose(r) => (0, r),
            Self::Prevote(r) => (1, r),
            Self::Precommit(r) => (2, r),
            Self::Rebroadcast(r) => (3, r),
        };
        w.u8(kind);
        w.u32(round.0);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = r.u8("timer kind")?;
        let round = Round(r.u32("timer round")?);
        match kind {
            0 => Ok(Self::Propose(round)),
            1 => Ok(Self::Prevote(round)),
            2 => Ok(Self::Precommit(round)),
            3 => Ok(Self::Rebroadcast(round)),
            tag => unknown("timer kind", tag),
        }
    }
}

impl Wire for ProposedBlock {
    const MIN_LEN: usize = 8 + 4 + 1 + 32 + 32 + 1;

    fn write(&self, w: &mut Writer) {
        w.u64(self.height);
        w.u32(self.round.0);
        write_round_opt(w, self.valid_round);
        w.raw(&self.proposer.0);
        w.raw(&self.block.0);
        w.u8(u8::from(self.valid));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let height = r.u64("proposed block height")?;
        let round = Round(r.u32("proposed block round")?);
        let valid_round = read_round_opt(r, "proposed block valid round")?;
        let proposer = PublicKey(r.array("proposed block proposer")?);
        let block = Hash256(r.array("proposed block hash")?);
        let valid = match r.u8("proposed block verdict")? {
            0 => false,
            1 => true,
            tag => return unknown("proposed block verdict", tag),
        };
        Ok(Self {
            height,
            round,
            valid_round,
            proposer,
            block,
            valid,
        })
    }
}

impl Wire for WalEntry {
    const MIN_LEN: usize = 1 + <Timer as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        match self {
            Self::Vote(v) => write_variant(w, 0, v),
            Self::Proposal(p) => write_variant(w, 1, p),
            Self::ProposedBlock(b) => write_variant(w, 2, b),
            Self::Polka(c) => write_variant(w, 3, c),
            Self::Timeout(t) => write_variant(w, 4, t),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("log entry kind")? {
            0 => Vote::read(r).map(Self::Vote),
            1 => Proposal::read(r).map(Self::Proposal),
            2 => ProposedBlock::read(r).map(Self::ProposedBlock),
            3 => PolkaCert::read(r).map(Self::Polka),
            4 => Timer::read(r).map(Self::Timeout),
            tag => unknown("log entry kind", tag),
        }
    }
}

impl Wire for Evidence {
    const MIN_LEN: usize = 1 + 2 * <Vote as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        match self {
            Self::DoubleVote(a, b) => {
                write_variant(w, 0, a);
                b.write(w);
            }
            Self::DoubleProposal(a, b) => {
                write_variant(w, 1, a);
                b.write(w);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("evidence kind")? {
            0 => Ok(Self::DoubleVote(Vote::read(r)?, Vote::read(r)?)),
            1 => Ok(Self::DoubleProposal(Proposal::read(r)?, Proposal::read(r)?)),
            tag => unknown("evidence kind", tag),
        }
    }
}
