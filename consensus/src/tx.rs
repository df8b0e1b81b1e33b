//! Transactions: institution-signed batches of anchor entries, of access events, of evidence of
//! double signing by delegates and of a member's beacon commitments and reveals; and anonymous
//! ballots, which no institution signs (a ring signature over the epoch's voters authorizes them).
//!
//! A batch is a [`BatchHeader`] (kind, batch id, institution, signer, item count, Merkle root of
//! the items, signature) followed by its items. The header alone is the transaction's
//! *commitment*: the transaction hash covers it (signature included), the block's Merkle tree is
//! built over transaction hashes, and the items are bound to it through the root. An anchor's
//! proof therefore needs only its entry, its path in the batch and the batch header, never the
//! other entries.

use std::collections::HashSet;

use ed25519_dalek::{Signature, Signer as _, SigningKey};
use fhirseal_storage::chain_store::composite_key;
use fhirseal_storage::outbox::{access_flags, read_access_flags, Exchange};

use crate::bft::{CommitCertificate, Evidence};
use crate::codec::{self, limits, top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::election::beacon::Reveal;
use crate::election::lsag::RingSignature;
use crate::erasure::ErasureBatch;
use crate::error::{Error, Result};
use crate::grant::{GrantBatch, RevocationBatch};
use crate::hash::{hex, tag, tagged, Hash256};
use crate::keys::PublicKey;
use crate::merkle::{self, MerkleProof};

/// Milliseconds since the Unix epoch. Passed in by the caller: nothing in this crate reads a
/// clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

/// One anchored resource version: what the write path seals and forwards, reduced to hashes and
/// FHIR ids (which are pseudonymous: identity never reaches the ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorEntry {
    /// The institution that wrote it (the batch's institution).
    pub institution: String,
    /// FHIR resource type, e.g. `Patient`.
    pub resource_type: String,
    /// Logical id the upstream assigned.
    pub logical_id: String,
    /// Version id the upstream assigned.
    pub version_id: String,
    /// The identity fingerprint (keyed hash of the identity key).
    pub fingerprint: [u8; 32],
    /// Content address of the sealed identity record (SHA-256 of its bytes).
    pub sealed_address: [u8; 32],
    /// SHA-256 of the clinical resource as the upstream stores it, canonicalized.
    pub clinical_hash: [u8; 32],
}

top_level_encoding!(AnchorEntry);

impl AnchorEntry {
    /// The anchor index key of this entry: see [`anchor_key`].
    pub fn key(&self) -> Vec<u8> {
        anchor_key(
            &self.institution,
            &self.resource_type,
            &self.logical_id,
            &self.version_id,
        )
    }

    /// Its Merkle leaf in the batch: `leaf_hash(to_bytes())`.
    pub fn leaf_hash(&self) -> Hash256 {
        merkle::leaf_hash(&self.to_bytes())
    }

    /// `type/id/_history/version`, for messages.
    pub fn resource(&self) -> String {
        format!(
            "{}/{}/_history/{}",
            self.resource_type, self.logical_id, self.version_id
        )
    }
}

/// The key under which a resource version's anchor is indexed. The institution is part of it:
/// every member's FHIR server assigns its own logical ids, so `Patient/1` of one institution is
/// not `Patient/1` of another.
pub fn anchor_key(
    institution: &str,
    resource_type: &str,
    logical_id: &str,
    version_id: &str,
) -> Vec<u8> {
    composite_key(&[
        institution.as_bytes(),
        resource_type.as_bytes(),
        logical_id.as_bytes(),
        version_id.as_bytes(),
    ])
}

/// The prefix of the anchor keys of every version of one of `institution`'s resources, and of
/// no other resource's ([`composite_key`] writes each part's length before it).
pub fn resource_anchor_prefix(institution: &str, resource_type: &str, logical_id: &str) -> Vec<u8> {
    composite_key(&[
        institution.as_bytes(),
        resource_type.as_bytes(),
        logical_id.as_bytes(),
    ])
}

impl Wire for AnchorEntry {
    const MIN_LEN: usize = 4 * 4 + 3 * 32;

    fn write(&self, w: &mut Writer) {
        w.str(&self.institution);
        w.str(&self.resource_type);
        w.str(&self.logical_id);
        w.str(&self.version_id);
        w.raw(&self.fingerprint);
        w.raw(&self.sealed_address);
        w.raw(&self.clinical_hash);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            institution: r.string("entry institution", limits::MAX_NAME_LEN)?,
            resource_type: r.string("entry resource type", limits::MAX_NAME_LEN)?,
            logical_id: r.string("entry logical id", limits::MAX_NAME_LEN)?,
            version_id: r.string("entry version id", limits::MAX_NAME_LEN)?,
            fingerprint: r.array("entry fingerprint")?,
            sealed_address: r.array("entry sealed address")?,
            clinical_hash: r.array("entry clinical hash")?,
        })
    }
}

/// One access to a resource, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEvent {
    /// Who accessed (the principal's id, as the auth adapter names it).
    pub principal: String,
    /// The institution where the access happened (the batch's institution).
    pub institution: String,
    /// FHIR resource type.
    pub resource_type: String,
    /// Logical id; empty for a type-level search.
    pub logical_id: String,
    /// Version id; empty when the current version was read.
    pub version_id: String,
    /// Purpose of use as the token states it (e.g. `TREAT`); may be empty.
    pub purpose_of_use: String,
    /// When.
    pub time: Timestamp,
    /// `false`: the request itself (a read, a search, named by what it named); `true`: one
    /// resource version shown with the person's identity merged back.
    pub reidentified: bool,
    /// For records shared between members under a grant: which side of the exchange the
    /// batch's institution was, and the other member.
    pub exchange: Option<Exchange>,
}

top_level_encoding!(AccessEvent);

impl Wire for AccessEvent {
    const MIN_LEN: usize = 6 * 4 + 8 + 1;

    fn write(&self, w: &mut Writer) {
        w.str(&self.principal);
        w.str(&self.institution);
        w.str(&self.resource_type);
        w.str(&self.logical_id);
        w.str(&self.version_id);
        w.str(&self.purpose_of_use);
        w.u64(self.time.0);
        w.u8(access_flags(self.reidentified, self.exchange.as_ref()));
        if let Some(exchange) = &self.exchange {
            w.str(&exchange.peer);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self {
            principal: r.string("event principal", limits::MAX_NAME_LEN)?,
            institution: r.string("event institution", limits::MAX_NAME_LEN)?,
            resource_type: r.string("event resource type", limits::MAX_NAME_LEN)?,
            logical_id: r.string("event logical id", limits::MAX_NAME_LEN)?,
            version_id: r.string("event version id", limits::MAX_NAME_LEN)?,
            purpose_of_use: r.string("event purpose of use", limits::MAX_NAME_LEN)?,
            time: Timestamp(r.u64("event time")?),
            reidentified: false,
            exchange: None,
        }
        .with_flags(r)
    }
}

impl AccessEvent {
    /// Reads the flags byte (and the exchange's peer after it, when it names one).
    fn with_flags(mut self, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u8("event flags")?;
        let Some((reidentified, kind)) = read_access_flags(flags) else {
            return Err(DecodeError::UnknownTag {
                field: "event flags",
                tag: flags,
            });
        };
        self.reidentified = reidentified;
        if let Some(kind) = kind {
            self.exchange = Some(Exchange {
                kind,
                peer: r.string("event exchange peer", limits::MAX_NAME_LEN)?,
            });
        }
        Ok(self)
    }
}

/// What an institution chose to identify a batch by. Submitting a batch id again is idempotent:
/// the outbox retries with the same id until it has a receipt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub [u8; 16]);

impl std::fmt::Debug for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchId({})", hex(&self.0))
    }
}

/// The kind of a transaction; its tag byte in the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxKind {
    /// An [`AnchorBatch`].
    Anchor,
    /// An [`AccessBatch`].
    Access,
    /// A [`GrantBatch`]: consent to share a person's records.
    Grant,
    /// A [`RevocationBatch`]: the end of consents.
    Revocation,
    /// An [`EvidenceBatch`]: double signing a member's node saw.
    Evidence,
    /// An [`ElectionBatch`]: a member's beacon commitment or reveal.
    Election,
    /// A [`Ballot`]: anonymous, signed by no institution.
    Ballot,
    /// The previous block's commit, as its proposer holds it (with an election only).
    LastCommit,
    /// An [`ErasureBatch`]: persons whose identity an institution erased.
    Erasure,
}

impl TxKind {
    fn tag(self) -> u8 {
        match self {
            Self::Anchor => 1,
            Self::Access => 2,
            Self::Grant => 3,
            Self::Revocation => 4,
            Self::Evidence => 5,
            Self::Election => 6,
            Self::Ballot => 7,
            Self::LastCommit => 8,
            Self::Erasure => 9,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Anchor),
            2 => Ok(Self::Access),
            3 => Ok(Self::Grant),
            4 => Ok(Self::Revocation),
            5 => Ok(Self::Evidence),
            6 => Ok(Self::Election),
            7 => Ok(Self::Ballot),
            8 => Ok(Self::LastCommit),
            9 => Ok(Self::Erasure),
            tag => Err(DecodeError::UnknownTag {
                field: "transaction kind",
                tag,
            }),
        }
    }
}

/// The signed commitment of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// What the items are.
    pub kind: TxKind,
    /// The institution's id for this batch.
    pub id: BatchId,
    /// The institution that signs it.
    pub institution: String,
    /// The key it signs with (must be the institution's key in the roster).
    pub signer: PublicKey,
    /// How many items.
    pub count: u32,
    /// Merkle root of the items' leaves.
    pub root: Hash256,
    /// Ed25519 signature of [`BatchHeader::signing_message`].
    pub signature: Signature,
}

impl BatchHeader {
    /// What the institution signs: tag 0x20, format version, then every field but the signature.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + self.institution.len());
        w.u8(tag::BATCH_SIGNATURE);
        w.u8(codec::FORMAT_VERSION);
        self.write_unsigned(&mut w);
        w.into_bytes()
    }

    /// The transaction hash: `SHA-256(0x11 ‖ version ‖ header with signature)`.
    pub fn hash(&self) -> Hash256 {
        let mut w = Writer::with_capacity(<Self as Wire>::MIN_LEN + 1 + self.institution.len());
        w.u8(codec::FORMAT_VERSION);
        self.write(&mut w);
        tagged(tag::TRANSACTION, &[w.as_slice()])
    }

    /// The key under which the transaction is indexed: kind, institution and batch id, so that
    /// one institution's ids cannot collide with (or pre-empt) another's.
    pub fn key(&self) -> Vec<u8> {
        tx_key(self.kind, &self.institution, &self.id)
    }

    /// The identity of the transaction it heads.
    pub fn id_of(&self) -> TxId {
        TxId {
            kind: self.kind,
            institution: self.institution.clone(),
            batch: self.id,
        }
    }

    /// Checks the signature against [`BatchHeader::signer`] (not whether that key is the
    /// institution's: the roster knows that).
    pub fn verify_signature(&self) -> Result<()> {
        self.signer
            .verify(&self.signing_message(), &self.signature, "batch")
    }

    fn write_unsigned(&self, w: &mut Writer) {
        w.u8(self.kind.tag());
        w.raw(&self.id.0);
        w.str(&self.institution);
        w.raw(&self.signer.0);
        w.u32(self.count);
        w.raw(&self.root.0);
    }
}

impl Wire for BatchHeader {
    const MIN_LEN: usize = 1 + 16 + 4 + 32 + 4 + 32 + 64;

    fn write(&self, w: &mut Writer) {
        self.write_unsigned(w);
        w.raw(&self.signature.to_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = TxKind::from_tag(r.u8("transaction kind")?)?;
        Self::read_after_kind(kind, r)
    }
}

impl BatchHeader {
    /// The rest of a header whose kind was read.
    fn read_after_kind(kind: TxKind, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            kind,
            id: BatchId(r.array("batch id")?),
            institution: r.string("batch institution", limits::MAX_NAME_LEN)?,
            signer: PublicKey(r.array("batch signer")?),
            count: r.u32("batch count")?,
            root: Hash256(r.array("batch root")?),
            signature: Signature::from_bytes(&r.array("batch signature")?),
        })
    }
}

/// What batches of any kind have in common, for the generic code below.
pub(crate) trait Item: Wire {
    /// The kind of batch that carries it.
    const KIND: TxKind;

    /// The institution the item names, which must be its batch's; `None` for items that name
    /// none (evidence convicts a delegate, whoever reports it).
    fn institution(&self) -> Option<&str>;

    /// Field checks, so that nothing accepted is refused by the decoder.
    fn check(&self) -> Result<()>;
}

fn check_name(value: &str, required: bool, what: &'static str) -> Result<()> {
    if required && value.is_empty() {
        return Err(Error::InvalidBatch(what));
    }
    if value.len() > limits::MAX_NAME_LEN {
        return Err(Error::InvalidBatch(what));
    }
    Ok(())
}

impl Item for AnchorEntry {
    const KIND: TxKind = TxKind::Anchor;

    fn institution(&self) -> Option<&str> {
        Some(&self.institution)
    }

    fn check(&self) -> Result<()> {
        check_name(
            &self.institution,
            true,
            "entry institution empty or too long",
        )?;
        check_name(
            &self.resource_type,
            true,
            "entry resource type empty or too long",
        )?;
        check_name(&self.logical_id, true, "entry logical id empty or too long")?;
        check_name(&self.version_id, true, "entry version id empty or too long")
    }
}

impl Item for AccessEvent {
    const KIND: TxKind = TxKind::Access;

    fn institution(&self) -> Option<&str> {
        Some(&self.institution)
    }

    fn check(&self) -> Result<()> {
        check_name(&self.principal, true, "event principal empty or too long")?;
        check_name(
            &self.institution,
            true,
            "event institution empty or too long",
        )?;
        check_name(
            &self.resource_type,
            true,
            "event resource type empty or too long",
        )?;
        check_name(&self.logical_id, false, "event logical id too long")?;
        check_name(&self.version_id, false, "event version id too long")?;
        check_name(&self.purpose_of_use, false, "event purpose of use too long")
    }
}

fn leaves<T: Item>(items: &[T]) -> Vec<Hash256> {
    // One buffer reused for every item: encoding is most of the per-entry cost after hashing.
    let mut w = Writer::with_capacity(256);
    items
        .iter()
        .map(|item| {
            w.clear();
            w.u8(codec::FORMAT_VERSION);
            item.write(&mut w);
            merkle::leaf_hash(w.as_slice())
        })
        .collect()
}

fn sign_batch<T: Item>(
    id: BatchId,
    institution: String,
    items: &[T],
    key: &SigningKey,
) -> Result<BatchHeader> {
    check_items(&institution, items)?;
    let mut header = BatchHeader {
        kind: T::KIND,
        id,
        institution,
        signer: PublicKey::of(key),
        count: u32::try_from(items.len()).map_err(|_| Error::InvalidBatch("too many items"))?,
        root: merkle::root(&leaves(items)),
        signature: Signature::from_bytes(&[0; 64]),
    };
    header.signature = key.sign(&header.signing_message());
    Ok(header)
}

fn check_items<T: Item>(institution: &str, items: &[T]) -> Result<()> {
    check_name(institution, true, "institution empty or too long")?;
    if items.is_empty() {
        return Err(Error::InvalidBatch("no items"));
    }
    if items.len() > limits::MAX_BATCH_ITEMS {
        return Err(Error::InvalidBatch("too many items"));
    }
    for item in items {
        item.check()?;
        if item.institution().is_some_and(|i| i != institution) {
            return Err(Error::InvalidBatch("an item names another institution"));
        }
    }
    Ok(())
}

/// Everything about a batch that needs no roster: kind, count, items, root, signature.
fn verify_batch<T: Item>(header: &BatchHeader, items: &[T]) -> Result<()> {
    if header.kind != T::KIND {
        return Err(Error::InvalidBatch("kind does not match the items"));
    }
    check_items(&header.institution, items)?;
    if usize::try_from(header.count).ok() != Some(items.len()) {
        return Err(Error::InvalidBatch("count does not match the items"));
    }
    if merkle::root(&leaves(items)) != header.root {
        return Err(Error::RootMismatch("batch"));
    }
    header.verify_signature()
}

fn read_items<T: Item>(r: &mut Reader<'_>, header: &BatchHeader) -> Result<Vec<T>, DecodeError> {
    let n = r.bound(
        "batch items",
        header.count as usize,
        limits::MAX_BATCH_ITEMS,
        T::MIN_LEN,
    )?;
    (0..n).map(|_| T::read(r)).collect()
}

/// An institution's signed batch of anchor entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorBatch {
    /// The signed commitment.
    pub header: BatchHeader,
    /// The entries, in leaf order.
    pub entries: Vec<AnchorEntry>,
}

impl AnchorBatch {
    /// Builds and signs a batch. Refused: no entries, too many, an entry of another institution,
    /// an empty or over-long field, the same resource version twice.
    pub fn sign(
        id: BatchId,
        institution: impl Into<String>,
        entries: Vec<AnchorEntry>,
        key: &SigningKey,
    ) -> Result<Self> {
        check_unique_entries(&entries)?;
        let header = sign_batch(id, institution.into(), &entries, key)?;
        Ok(Self { header, entries })
    }

    /// Checks everything that needs no roster: see [`AnchorBatch::sign`], plus the root and the
    /// signature.
    pub fn verify(&self) -> Result<()> {
        verify_batch(&self.header, &self.entries)?;
        check_unique_entries(&self.entries)
    }

    /// The Merkle leaves of the entries.
    pub fn leaves(&self) -> Vec<Hash256> {
        leaves(&self.entries)
    }

    /// The inclusion proof of entry `index` in this batch.
    pub fn prove(&self, index: usize) -> Option<MerkleProof> {
        merkle::prove(&self.leaves(), index)
    }
}

fn check_unique_entries(entries: &[AnchorEntry]) -> Result<()> {
    let mut seen = HashSet::with_capacity(entries.len());
    for entry in entries {
        if !seen.insert(entry.key()) {
            return Err(Error::AlreadyAnchored {
                resource: entry.resource(),
                location: None,
            });
        }
    }
    Ok(())
}

/// An institution's signed batch of access events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessBatch {
    /// The signed commitment.
    pub header: BatchHeader,
    /// The events, in leaf order.
    pub events: Vec<AccessEvent>,
}

impl AccessBatch {
    /// Builds and signs a batch. Refused: no events, too many, an event of another institution,
    /// a required field empty or any field over-long.
    pub fn sign(
        id: BatchId,
        institution: impl Into<String>,
        events: Vec<AccessEvent>,
        key: &SigningKey,
    ) -> Result<Self> {
        let header = sign_batch(id, institution.into(), &events, key)?;
        Ok(Self { header, events })
    }

    /// Checks everything that needs no roster.
    pub fn verify(&self) -> Result<()> {
        verify_batch(&self.header, &self.events)
    }

    /// The Merkle leaves of the events.
    pub fn leaves(&self) -> Vec<Hash256> {
        leaves(&self.events)
    }
}

impl Item for Evidence {
    const KIND: TxKind = TxKind::Evidence;

    fn institution(&self) -> Option<&str> {
        None
    }

    /// Whether it proves anything is judged against the delegates of its height, which the chain
    /// knows (see `Chain::check_evidence`); here, only that it holds one pair for one slot.
    fn check(&self) -> Result<()> {
        let same_slot = match self {
            Self::DoubleVote(a, b) => {
                a.delegate == b.delegate
                    && a.kind == b.kind
                    && a.height == b.height
                    && a.round == b.round
            }
            Self::DoubleProposal(a, b) => {
                a.proposer == b.proposer && a.height == b.height && a.round == b.round
            }
        };
        if !same_slot {
            return Err(Error::InvalidEvidence("the pair is not of one slot"));
        }
        Ok(())
    }
}

/// A signed batch of items of one kind: the shape every transaction kind after anchors and
/// access events takes (those two keep their named fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// The signed commitment.
    pub header: BatchHeader,
    /// The items, in leaf order.
    pub items: Vec<T>,
}

// The bound is the crate's own: batches are built of the item kinds this module defines.
#[allow(private_bounds)]
impl<T: Item> Batch<T> {
    /// Builds and signs a batch of `items` for `institution`.
    pub fn sign(
        id: BatchId,
        institution: impl Into<String>,
        items: Vec<T>,
        key: &SigningKey,
    ) -> Result<Self> {
        let header = sign_batch(id, institution.into(), &items, key)?;
        Ok(Self { header, items })
    }

    /// Checks everything that needs no roster.
    pub fn verify(&self) -> Result<()> {
        verify_batch(&self.header, &self.items)
    }

    /// The Merkle leaves of the items.
    pub fn leaves(&self) -> Vec<Hash256> {
        leaves(&self.items)
    }
}

/// A member's report of delegates' double signing.
pub type EvidenceBatch = Batch<Evidence>;

/// A member's contribution to an epoch's beacon, in its two phases (see
/// `election::schedule`): the batch's institution is the member, its signature the member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionItem {
    /// The commitment to its VRF output for `epoch`.
    Commit { epoch: u64, commitment: [u8; 32] },
    /// The VRF output for `epoch` and its proof.
    Reveal { epoch: u64, reveal: Reveal },
}

impl ElectionItem {
    /// The ledger epoch it is for.
    pub fn epoch(&self) -> u64 {
        match self {
            Self::Commit { epoch, .. } | Self::Reveal { epoch, .. } => *epoch,
        }
    }
}

impl Wire for ElectionItem {
    const MIN_LEN: usize = 1 + 8 + 32;

    fn write(&self, w: &mut Writer) {
        match self {
            Self::Commit { epoch, commitment } => {
                w.u8(1);
                w.u64(*epoch);
                w.raw(commitment);
            }
            Self::Reveal { epoch, reveal } => {
                w.u8(2);
                w.u64(*epoch);
                w.raw(&reveal.output);
                w.raw(&reveal.proof);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("election item")? {
            1 => Ok(Self::Commit {
                epoch: r.u64("commit epoch")?,
                commitment: r.array("commitment")?,
            }),
            2 => Ok(Self::Reveal {
                epoch: r.u64("reveal epoch")?,
                reveal: Reveal {
                    output: r.array("beacon output")?,
                    proof: r.array("beacon proof")?,
                },
            }),
            tag => Err(DecodeError::UnknownTag {
                field: "election item",
                tag,
            }),
        }
    }
}

impl Item for ElectionItem {
    const KIND: TxKind = TxKind::Election;

    fn institution(&self) -> Option<&str> {
        None
    }

    /// Phases, commitments and proofs are the election's to judge, against the chain.
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// A member's beacon commitments and reveals, signed by it.
pub type ElectionBatch = Batch<ElectionItem>;

/// Most keys in a ballot's ring (the epoch's voters: far fewer).
const MAX_RING_KEYS: usize = 1024;

/// An anonymous ballot for `candidate` in ledger epoch `epoch`, ring-signed over the epoch's
/// voters (whose ring the election takes from the chain, never from the ballot). No institution
/// signs it and nothing in it names the voter; its key image, which is the same for every
/// ballot of one voter in one epoch, is its transaction key, so a second ballot is refused as a
/// transaction already in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    /// The ledger epoch it votes in.
    pub epoch: u64,
    /// The member it votes for.
    pub candidate: String,
    /// The linkable ring signature over `election::schedule::ballot_message`.
    pub signature: RingSignature,
}

top_level_encoding!(Ballot);

impl Ballot {
    /// Its identity: no institution, and the first 16 bytes of its key image for a batch id.
    pub fn id(&self) -> TxId {
        let mut batch = [0; 16];
        batch.copy_from_slice(&self.signature.key_image[..16]);
        TxId {
            kind: TxKind::Ballot,
            institution: String::new(),
            batch: BatchId(batch),
        }
    }

    /// Field checks, so that nothing accepted is refused by the decoder.
    pub fn check(&self) -> Result<()> {
        check_name(&self.candidate, true, "ballot candidate empty or too long")?;
        let ring = self.signature.responses.len();
        if ring == 0 || ring > MAX_RING_KEYS {
            return Err(Error::InvalidBatch("ballot ring empty or too large"));
        }
        Ok(())
    }

    fn write_body(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.str(&self.candidate);
        w.raw(&self.signature.challenge);
        w.raw(&self.signature.key_image);
        w.len(self.signature.responses.len());
        for response in &self.signature.responses {
            w.raw(response);
        }
    }

    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let epoch = r.u64("ballot epoch")?;
        let candidate = r.string("ballot candidate", limits::MAX_NAME_LEN)?;
        let challenge = r.array("ballot challenge")?;
        let key_image = r.array("ballot key image")?;
        let n = r.count("ballot responses", MAX_RING_KEYS, 32)?;
        let responses = (0..n)
            .map(|_| r.array("ballot response"))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            epoch,
            candidate,
            signature: RingSignature {
                challenge,
                responses,
                key_image,
            },
        })
    }
}

impl Wire for Ballot {
    const MIN_LEN: usize = 1 + 8 + 4 + 32 + 32 + 4;

    fn write(&self, w: &mut Writer) {
        w.u8(TxKind::Ballot.tag());
        self.write_body(w);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("transaction kind")? {
            7 => Self::read_body(r),
            tag => Err(DecodeError::UnknownTag {
                field: "ballot kind",
                tag,
            }),
        }
    }
}

/// A ledger transaction.
///
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transaction {
    /// Anchors of sealed writes.
    Anchor(AnchorBatch),
    /// Access events for the audit trail.
    Access(AccessBatch),
    /// Consent: grants of access to a person's records for another member.
    Grant(GrantBatch),
    /// The end of consents.
    Revocation(RevocationBatch),
    /// Persons whose identity an institution erased.
    Erasure(ErasureBatch),
    /// Evidence of double signing.
    Evidence(EvidenceBatch),
    /// A member's beacon commitments and reveals.
    Election(ElectionBatch),
    /// An anonymous ballot.
    Ballot(Ballot),
    /// The previous block's commit certificate, which a block of a chain with an election
    /// carries so that every member counts the same signers of it (the certificate each node
    /// stores is the quorum it saw, which differs from node to node).
    LastCommit(CommitCertificate),
}

top_level_encoding!(Transaction);

impl Transaction {
    /// The batch header: every kind but a ballot is an institution's signed batch.
    pub fn header(&self) -> Option<&BatchHeader> {
        match self {
            Self::Anchor(b) => Some(&b.header),
            Self::Access(b) => Some(&b.header),
            Self::Grant(b) => Some(&b.header),
            Self::Revocation(b) => Some(&b.header),
            Self::Erasure(b) => Some(&b.header),
            Self::Evidence(b) => Some(&b.header),
            Self::Election(b) => Some(&b.header),
            Self::Ballot(_) | Self::LastCommit(_) => None,
        }
    }

    /// The transaction hash: a batch's is its header's (see [`BatchHeader::hash`]); a ballot's
    /// is `SHA-256(0x11 ‖ version ‖ encoded ballot)`, the encoding starting with its kind.
    pub fn hash(&self) -> Hash256 {
        match (self, self.header()) {
            (_, Some(header)) => header.hash(),
            (_, None) => {
                let mut w = Writer::with_capacity(256);
                w.u8(codec::FORMAT_VERSION);
                self.write(&mut w);
                tagged(tag::TRANSACTION, &[w.as_slice()])
            }
        }
    }

    /// The key it is indexed under, which makes submission idempotent (see [`BatchHeader::key`]
    /// and [`Ballot`]).
    pub fn key(&self) -> Vec<u8> {
        self.id().key()
    }

    /// Its identity: kind, institution, batch id.
    pub fn id(&self) -> TxId {
        match self {
            Self::Ballot(ballot) => ballot.id(),
            Self::LastCommit(certificate) => {
                let mut batch = [0; 16];
                batch[..8].copy_from_slice(&certificate.height.to_be_bytes());
                TxId {
                    kind: TxKind::LastCommit,
                    institution: String::new(),
                    batch: BatchId(batch),
                }
            }
            Self::Anchor(b) => b.header.id_of(),
            Self::Access(b) => b.header.id_of(),
            Self::Grant(b) => b.header.id_of(),
            Self::Revocation(b) => b.header.id_of(),
            Self::Erasure(b) => b.header.id_of(),
            Self::Evidence(b) => b.header.id_of(),
            Self::Election(b) => b.header.id_of(),
        }
    }

    /// How many items it carries.
    pub fn item_count(&self) -> usize {
        match self {
            Self::Anchor(b) => b.entries.len(),
            Self::Access(b) => b.events.len(),
            Self::Grant(b) => b.items.len(),
            Self::Revocation(b) => b.items.len(),
            Self::Erasure(b) => b.items.len(),
            Self::Evidence(b) => b.items.len(),
            Self::Election(b) => b.items.len(),
            Self::Ballot(_) => 1,
            Self::LastCommit(c) => c.signatures().len(),
        }
    }

    /// Checks everything that needs no roster (a ballot's ring signature needs the epoch's
    /// voters, which the election knows).
    pub fn verify(&self) -> Result<()> {
        match self {
            Self::Anchor(b) => b.verify(),
            Self::Access(b) => b.verify(),
            Self::Grant(b) => b.verify(),
            Self::Revocation(b) => b.verify(),
            Self::Erasure(b) => b.verify(),
            Self::Evidence(b) => b.verify(),
            Self::Election(b) => b.verify(),
            Self::Ballot(b) => b.check(),
            // Whether its signers are the previous height's delegates is the election's to
            // judge (it knows them); here, that it holds any.
            Self::LastCommit(c) => {
                if c.signatures().is_empty() {
                    return Err(Error::InvalidCertificate(
                        "a last commit without signatures",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Wire for Transaction {
    const MIN_LEN: usize = <Ballot as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        match self {
            Self::Anchor(b) => {
                b.header.write(w);
                b.entries.iter().for_each(|e| e.write(w));
            }
            Self::Access(b) => {
                b.header.write(w);
                b.events.iter().for_each(|e| e.write(w));
            }
            Self::Grant(b) => {
                b.header.write(w);
                b.items.iter().for_each(|e| e.write(w));
            }
            Self::Revocation(b) => {
                b.header.write(w);
                b.items.iter().for_each(|e| e.write(w));
            }
            Self::Erasure(b) => {
                b.header.write(w);
                b.items.iter().for_each(|e| e.write(w));
            }
            Self::Evidence(b) => {
                b.header.write(w);
                b.items.iter().for_each(|e| e.write(w));
            }
            Self::Election(b) => {
                b.header.write(w);
                b.items.iter().for_each(|e| e.write(w));
            }
            Self::Ballot(b) => b.write(w),
            Self::LastCommit(c) => {
                w.u8(TxKind::LastCommit.tag());
                c.write(w);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = TxKind::from_tag(r.u8("transaction kind")?)?;
        let header = match kind {
            TxKind::Ballot => return Ballot::read_body(r).map(Self::Ballot),
            TxKind::LastCommit => return CommitCertificate::read(r).map(Self::LastCommit),
            _ => BatchHeader::read_after_kind(kind, r)?,
        };
        Ok(match header.kind {
            TxKind::Anchor => {
                let entries = read_items(r, &header)?;
                Self::Anchor(AnchorBatch { header, entries })
            }
            TxKind::Access => {
                let events = read_items(r, &header)?;
                Self::Access(AccessBatch { header, events })
            }
            TxKind::Grant => {
                let items = read_items(r, &header)?;
                Self::Grant(GrantBatch { header, items })
            }
            TxKind::Revocation => {
                let items = read_items(r, &header)?;
                Self::Revocation(RevocationBatch { header, items })
            }
            TxKind::Erasure => {
                let items = read_items(r, &header)?;
                Self::Erasure(ErasureBatch { header, items })
            }
            TxKind::Evidence => {
                let items = read_items(r, &header)?;
                Self::Evidence(EvidenceBatch { header, items })
            }
            TxKind::Election => {
                let items = read_items(r, &header)?;
                Self::Election(ElectionBatch { header, items })
            }
            // Read above, without a batch header.
            kind @ (TxKind::Ballot | TxKind::LastCommit) => {
                return Err(DecodeError::UnknownTag {
                    field: "transaction kind",
                    tag: kind.tag(),
                })
            }
        })
    }
}

/// Identifies a transaction: kind, institution, batch id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxId {
    /// Its kind.
    pub kind: TxKind,
    /// The institution that signed it.
    pub institution: String,
    /// The institution's batch id.
    pub batch: BatchId,
}

impl TxId {
    /// The key it is indexed under (see [`BatchHeader::key`]).
    pub fn key(&self) -> Vec<u8> {
        tx_key(self.kind, &self.institution, &self.batch)
    }
}

fn tx_key(kind: TxKind, institution: &str, batch: &BatchId) -> Vec<u8> {
    composite_key(&[&[kind.tag()], institution.as_bytes(), &batch.0])
}
