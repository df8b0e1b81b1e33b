//! The outbox: what the ledger still has to record, kept in the vault's sled database so that a
//! sealed write and its anchor-to-be are one transaction.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `outbox.anchors` | sequence number, u64 big-endian | a [`PendingAnchor`] |
//! | `outbox.access` | sequence number, u64 big-endian | a [`PendingAccess`] |
//! | `outbox.round` | `round` | the [`KeptRound`] in flight, if any |
//!
//! Sequence numbers come from sled's id generator, which only grows, across restarts too, so a
//! scan returns entries roughly in the order they were written; never below one past the
//! highest entry found at open, because a database loaded from a dump (`fhirseal restore`)
//! starts its generator again at 0 and would otherwise write over what still waits. An entry leaves the outbox only
//! when the caller says its block is final ([`Outbox::clear_anchors`]); after a crash whatever
//! is still here is submitted again, and the ledger's index of anchored versions is what makes
//! that resubmission harmless for anchors. Access events have no such index: the round in
//! flight is kept ([`Outbox::keep_round`], made durable before its transactions are submitted)
//! so that after a crash the very same transactions, with the same batch ids, are submitted
//! again, and the chain takes a batch once; the round leaves with its entries, in one
//! transaction ([`Outbox::finish_round`]).
//!
//! Values are lists of fields, each preceded by its length (see [`composite_key`]): this module
//! stores them, the ledger gives them meaning.

use sled::{Transactional as _, Tree};

use crate::chain_store::composite_key;
use crate::error::{Result, StorageError};

/// Name of the tree of anchors waiting for a final block.
pub const ANCHORS_TREE: &str = "outbox.anchors";
/// Name of the tree of access events waiting for a final block.
pub const ACCESS_TREE: &str = "outbox.access";
/// Name of the tree that holds the anchoring round in flight.
pub const ROUND_TREE: &str = "outbox.round";
/// The round's key in [`ROUND_TREE`].
const ROUND_KEY: &[u8] = b"round";

/// A resource version the upstream accepted, to be anchored. The institution is the node's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAnchor {
    /// Resource type, opaque here.
    pub resource_type: String,
    /// Logical id the upstream assigned.
    pub id: String,
    /// Version id the upstream assigned.
    pub version: String,
    /// Fingerprint of the person the resource is about; zeros when none is known.
    pub fingerprint: [u8; 32],
    /// Content address of the sealed identity record; zeros when nothing was sealed.
    pub sealed_address: [u8; 32],
    /// Hash of the clinical resource as the upstream stores it (computed by the caller).
    pub clinical_hash: [u8; 32],
}

impl PendingAnchor {
    pub(crate) fn encode(&self) -> Vec<u8> {
        composite_key(&[
            self.resource_type.as_bytes(),
            self.id.as_bytes(),
            self.version.as_bytes(),
            &self.fingerprint,
            &self.sealed_address,
            &self.clinical_hash,
        ])
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let parts = split_fields::<6>(bytes, ANCHORS_TREE)?;
        Ok(Self {
            resource_type: text(parts[0], ANCHORS_TREE)?,
            id: text(parts[1], ANCHORS_TREE)?,
            version: text(parts[2], ANCHORS_TREE)?,
            fingerprint: hash(parts[3], ANCHORS_TREE)?,
            sealed_address: hash(parts[4], ANCHORS_TREE)?,
            clinical_hash: hash(parts[5], ANCHORS_TREE)?,
        })
    }
}

/// One access to record on the ledger's audit trail. The institution is the node's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAccess {
    /// Who accessed, as the auth adapter names them (never a credential).
    pub principal: String,
    /// Resource type; opaque here.
    pub resource_type: String,
    /// Logical id; empty for a search or history over a type.
    pub id: String,
    /// Version id; empty when the current version was asked for.
    pub version: String,
    /// Purpose of use as the caller stated it; may be empty.
    pub purpose_of_use: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `false`: the request (a read, a search); `true`: one resource shown with its identity
    /// merged back.
    pub reidentified: bool,
    /// Whether the access was an exchange with another member's node under a grant, and which.
    pub exchange: Option<Exchange>,
}

/// An access that crossed institutions (the sharing of records under a grant, or a look at a
/// version another member wrote): which side of it this node was, and the other member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub kind: ExchangeKind,
    /// The other member: the grantee for what a grantor records, the grantor for a grantee,
    /// the writer for a version written elsewhere.
    pub peer: String,
}

/// What happened in an [`Exchange`], as the node that records it saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// The grantor sent this resource to the grantee.
    SentTo,
    /// The grantor refused the grantee's request.
    RefusedTo,
    /// The grantee received this resource from the grantor.
    ReceivedFrom,
    /// The grantor refused this node's request.
    RefusedBy,
    /// The version looked at here is the other member's, as this node's copy of the chain
    /// holds it (a `$verify` of another member's write): the event names that member's
    /// resource, not this node's.
    WrittenBy,
}

impl ExchangeKind {
    /// The kind's code, 1 to 5 (0 is no exchange): kept in the access flags' upper bits.
    pub fn code(self) -> u8 {
        match self {
            ExchangeKind::SentTo => 1,
            ExchangeKind::RefusedTo => 2,
            ExchangeKind::ReceivedFrom => 3,
            ExchangeKind::RefusedBy => 4,
            ExchangeKind::WrittenBy => 5,
        }
    }

    /// The kind of a code; `None` for 0 and for codes no kind has.
    pub fn from_code(code: u8) -> Option<ExchangeKind> {
        Some(match code {
            1 => ExchangeKind::SentTo,
            2 => ExchangeKind::RefusedTo,
            3 => ExchangeKind::ReceivedFrom,
            4 => ExchangeKind::RefusedBy,
            5 => ExchangeKind::WrittenBy,
            _ => return None,
        })
    }

    /// How it reads in the ledger's JSON.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::SentTo => "sent-to",
            ExchangeKind::RefusedTo => "refused-to",
            ExchangeKind::ReceivedFrom => "received-from",
            ExchangeKind::RefusedBy => "refused-by",
            ExchangeKind::WrittenBy => "written-by",
        }
    }
}

/// An access's flags byte: bit 0 whether it was re-identified, the bits above the exchange's
/// kind (0: none). Events of a build without exchanges have 0 or 1, and read the same.
pub fn access_flags(reidentified: bool, exchange: Option<&Exchange>) -> u8 {
    u8::from(reidentified) | exchange.map_or(0, |e| e.kind.code() << 1)
}

/// What an access's flags byte says: (re-identified, exchange kind); `None` for a byte no
/// build writes.
pub fn read_access_flags(flags: u8) -> Option<(bool, Option<ExchangeKind>)> {
    let reidentified = flags & 1 == 1;
    match flags >> 1 {
        0 => Some((reidentified, None)),
        code => Some((reidentified, Some(ExchangeKind::from_code(code)?))),
    }
}

impl PendingAccess {
    fn encode(&self) -> Vec<u8> {
        composite_key(&[
            self.principal.as_bytes(),
            self.resource_type.as_bytes(),
            self.id.as_bytes(),
            self.version.as_bytes(),
            self.purpose_of_use.as_bytes(),
            &self.time_ms.to_be_bytes(),
            &self.flags_field(),
        ])
    }

    /// The flags byte, and the exchange's peer after it when there is one.
    fn flags_field(&self) -> Vec<u8> {
        let mut field = vec![access_flags(self.reidentified, self.exchange.as_ref())];
        if let Some(exchange) = &self.exchange {
            field.extend_from_slice(exchange.peer.as_bytes());
        }
        field
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let parts = split_fields::<7>(bytes, ACCESS_TREE)?;
        let time: [u8; 8] = parts[5]
            .try_into()
            .map_err(|_| corrupt(ACCESS_TREE, "time is not 8 bytes"))?;
        let (flags, peer) = parts[6]
            .split_first()
            .ok_or_else(|| corrupt(ACCESS_TREE, "no access flags"))?;
        let (reidentified, kind) = read_access_flags(*flags)
            .ok_or_else(|| corrupt(ACCESS_TREE, "access flags no build writes"))?;
        let exchange = match kind {
            Some(kind) if !peer.is_empty() => Some(Exchange {
                kind,
                peer: text(peer, ACCESS_TREE)?,
            }),
            None if peer.is_empty() => None,
            _ => return Err(corrupt(ACCESS_TREE, "an exchange without its peer")),
        };
        Ok(Self {
            principal: text(parts[0], ACCESS_TREE)?,
            resource_type: text(parts[1], ACCESS_TREE)?,
            id: text(parts[2], ACCESS_TREE)?,
            version: text(parts[3], ACCESS_TREE)?,
            purpose_of_use: text(parts[4], ACCESS_TREE)?,
            time_ms: u64::from_be_bytes(time),
            reidentified,
            exchange,
        })
    }
}

/// The anchoring round in flight: its transactions as the ledger encoded them (opaque here),
/// and the sequence numbers of the outbox entries they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRound {
    pub transactions: Vec<Vec<u8>>,
    pub anchors: Vec<u64>,
    pub access: Vec<u64>,
}

impl KeptRound {
    fn encode(&self) -> Vec<u8> {
        let transactions: Vec<&[u8]> = self.transactions.iter().map(Vec::as_slice).collect();
        let seqs =
            |seqs: &[u64]| -> Vec<u8> { seqs.iter().flat_map(|s| s.to_be_bytes()).collect() };
        composite_key(&[
            &composite_key(&transactions),
            &seqs(&self.anchors),
            &seqs(&self.access),
        ])
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let parts = split_fields::<3>(bytes, ROUND_TREE)?;
        let mut transactions = Vec::new();
        let mut rest = parts[0];
        while !rest.is_empty() {
            let (field, after) = split_first(rest, ROUND_TREE)?;
            transactions.push(field.to_vec());
            rest = after;
        }
        let seqs = |bytes: &[u8]| -> Result<Vec<u64>> {
            if !bytes.len().is_multiple_of(8) {
                return Err(corrupt(ROUND_TREE, "a sequence number is not 8 bytes"));
            }
            Ok(bytes
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect())
        };
        Ok(Self {
            transactions,
            anchors: seqs(parts[1])?,
            access: seqs(parts[2])?,
        })
    }
}

/// The outbox's trees in the vault's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: sled::Db,
    pub(crate) anchors: Tree,
    access: Tree,
    round: Tree,
    /// The lowest sequence number still free (see the module's documentation).
    floor: std::sync::Arc<std::sync::Mutex<u64>>,
}

impl Outbox {
    pub(crate) fn open(db: &sled::Db) -> Result<Self> {
        let anchors = db.open_tree(ANCHORS_TREE)?;
        let access = db.open_tree(ACCESS_TREE)?;
        let round = db.open_tree(ROUND_TREE)?;
        let mut floor = 0u64;
        for tree in [&anchors, &access] {
            if let Some((key, _)) = tree.last()? {
                let seq: [u8; 8] = key
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(ANCHORS_TREE, "key is not 8 bytes"))?;
                floor = floor.max(u64::from_be_bytes(seq).saturating_add(1));
            }
        }
        Ok(Self {
            db: db.clone(),
            anchors,
            access,
            round,
            floor: std::sync::Arc::new(std::sync::Mutex::new(floor)),
        })
    }

    /// A fresh sequence number, above every entry that waits.
    pub(crate) fn next_seq(&self) -> Result<u64> {
        let mut floor = self.floor.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.db.generate_id()?.max(*floor);
        *floor = seq.saturating_add(1);
        Ok(seq)
    }

    /// Queues an anchor on its own (a write with nothing to seal). Not yet durable: the vault's
    /// flush makes it so.
    pub fn push_anchor(&self, anchor: &PendingAnchor) -> Result<u64> {
        let seq = self.next_seq()?;
        let _writing = crate::pause::writing();
        self.anchors.insert(seq.to_be_bytes(), anchor.encode())?;
        Ok(seq)
    }

    /// Queues an access event. Not yet durable: the vault's flush makes it so.
    pub fn push_access(&self, event: &PendingAccess) -> Result<u64> {
        let seq = self.next_seq()?;
        let _writing = crate::pause::writing();
        self.access.insert(seq.to_be_bytes(), event.encode())?;
        Ok(seq)
    }

    /// Up to `max` waiting anchors, oldest first.
    pub fn anchors(&self, max: usize) -> Result<Vec<(u64, PendingAnchor)>> {
        read(&self.anchors, max, ANCHORS_TREE, PendingAnchor::decode)
    }

    /// Up to `max` waiting access events, oldest first.
    pub fn access_events(&self, max: usize) -> Result<Vec<(u64, PendingAccess)>> {
        read(&self.access, max, ACCESS_TREE, PendingAccess::decode)
    }

    /// How many anchors and access events wait (walks the trees: for status, not hot paths).
    pub fn pending(&self) -> (usize, usize) {
        (self.anchors.len(), self.access.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty() && self.access.is_empty()
    }

    /// Forgets anchors whose block is final (or that were found anchored already).
    pub fn clear_anchors(&self, seqs: &[u64]) -> Result<()> {
        clear(&self.anchors, seqs)
    }

    /// Forgets access events whose block is final.
    pub fn clear_access(&self, seqs: &[u64]) -> Result<()> {
        clear(&self.access, seqs)
    }

    /// Keeps `round` as the round in flight (replacing any). Not yet durable: flush before its
    /// transactions are submitted.
    pub fn keep_round(&self, round: &KeptRound) -> Result<()> {
        let _writing = crate::pause::writing();
        self.round.insert(ROUND_KEY, round.encode())?;
        Ok(())
    }

    /// The round in flight, if one is kept.
    pub fn kept_round(&self) -> Result<Option<KeptRound>> {
        self.round
            .get(ROUND_KEY)?
            .map(|bytes| KeptRound::decode(&bytes))
            .transpose()
    }

    /// Forgets the round in flight without its entries (they are to go into another round).
    pub fn drop_round(&self) -> Result<()> {
        let _writing = crate::pause::writing();
        self.round.remove(ROUND_KEY)?;
        Ok(())
    }

    /// Forgets the round in flight and the entries its transactions carried, whose block is
    /// final: one transaction, so that neither outlives the other.
    pub fn finish_round(&self, anchors: &[u64], access: &[u64]) -> Result<()> {
        let _writing = crate::pause::writing();
        (&self.anchors, &self.access, &self.round)
            .transaction(|(anchor_tree, access_tree, round_tree)| {
                for seq in anchors {
                    anchor_tree.remove(&seq.to_be_bytes())?;
                }
                for seq in access {
                    access_tree.remove(&seq.to_be_bytes())?;
                }
                round_tree.remove(ROUND_KEY)?;
                Ok(())
            })
            .map_err(crate::vault::tx_error::<()>)
    }

    /// Writes everything so far to disk (the whole vault database), off the async threads.
    pub async fn flush_async(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn read<T>(
    tree: &Tree,
    max: usize,
    name: &'static str,
    decode: fn(&[u8]) -> Result<T>,
) -> Result<Vec<(u64, T)>> {
    tree.iter()
        .take(max)
        .map(|item| {
            let (key, value) = item?;
            let seq: [u8; 8] = key
                .as_ref()
                .try_into()
                .map_err(|_| corrupt(name, "key is not 8 bytes"))?;
            Ok((u64::from_be_bytes(seq), decode(&value)?))
        })
        .collect()
}

fn clear(tree: &Tree, seqs: &[u64]) -> Result<()> {
    let _writing = crate::pause::writing();
    let mut batch = sled::Batch::default();
    for seq in seqs {
        batch.remove(&seq.to_be_bytes());
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// The `N` length-prefixed fields of a value written by [`composite_key`].
fn split_fields<'a, const N: usize>(
    mut bytes: &'a [u8],
    tree: &'static str,
) -> Result<[&'a [u8]; N]> {
    let mut out = [&[][..]; N];
    for slot in &mut out {
        let (field, rest) = split_first(bytes, tree)?;
        *slot = field;
        bytes = rest;
    }
    if !bytes.is_empty() {
        return Err(corrupt(tree, "trailing bytes"));
    }
    Ok(out)
}

/// The first length-prefixed field of `bytes`, and what follows it.
fn split_first<'a>(bytes: &'a [u8], tree: &'static str) -> Result<(&'a [u8], &'a [u8])> {
    if bytes.len() < 4 {
        return Err(corrupt(tree, "truncated field length"));
    }
    let (len, rest) = bytes.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(corrupt(tree, "truncated field"));
    }
    Ok(rest.split_at(len))
}

fn text(bytes: &[u8], tree: &'static str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(tree, "a text field is not UTF-8"))
}

fn hash(bytes: &[u8], tree: &'static str) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| corrupt(tree, "a hash field is not 32 bytes"))
}

fn corrupt(tree: &'static str, what: &str) -> StorageError {
    StorageError::Corrupt(format!("{tree}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(version: &str) -> PendingAnchor {
        PendingAnchor {
            resource_type: "Observation".into(),
            id: "o1".into(),
            version: version.into(),
            fingerprint: [1; 32],
            sealed_address: [0; 32],
            clinical_hash: [7; 32],
        }
    }

    #[test]
    fn access_flags_read_back_and_old_flags_read_the_same() {
        assert_eq!(read_access_flags(0), Some((false, None)));
        assert_eq!(read_access_flags(1), Some((true, None)));
        for kind in [
            ExchangeKind::SentTo,
            ExchangeKind::RefusedTo,
            ExchangeKind::ReceivedFrom,
            ExchangeKind::RefusedBy,
            ExchangeKind::WrittenBy,
        ] {
            let exchange = Exchange {
                kind,
                peer: "h1".into(),
            };
            for reidentified in [false, true] {
                let flags = access_flags(reidentified, Some(&exchange));
                assert_eq!(read_access_flags(flags), Some((reidentified, Some(kind))));
            }
        }
        assert_eq!(read_access_flags(6 << 1), None);
        assert_eq!(read_access_flags(0xff), None);
    }

    #[test]
    fn entries_survive_a_reopen_in_order_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = {
            let db = sled::open(dir.path()).unwrap();
            let outbox = Outbox::open(&db).unwrap();
            let a = outbox.push_anchor(&anchor("1")).unwrap();
            let b = outbox.push_anchor(&anchor("2")).unwrap();
            let event = PendingAccess {
                principal: "dr-who".into(),
                resource_type: "Patient".into(),
                id: String::new(),
                version: String::new(),
                purpose_of_use: "TREAT".into(),
                time_ms: 1_700_000_000_000,
                reidentified: true,
                exchange: None,
            };
            outbox.push_access(&event).unwrap();
            // One sent to another member under a grant keeps its peer.
            let shared = PendingAccess {
                exchange: Some(Exchange {
                    kind: ExchangeKind::SentTo,
                    peer: "h2".into(),
                }),
                ..event.clone()
            };
            outbox.push_access(&shared).unwrap();
            db.flush().unwrap();
            assert!(a < b);
            vec![a, b]
        };
        let db = crate::open::reopen(dir.path());
        let outbox = Outbox::open(&db).unwrap();
        let anchors = outbox.anchors(10).unwrap();
        assert_eq!(anchors.len(), 2);
        assert_eq!(anchors[0], (seqs[0], anchor("1")));
        assert_eq!(anchors[1], (seqs[1], anchor("2")));
        assert_eq!(outbox.anchors(1).unwrap().len(), 1);
        let events = outbox.access_events(10).unwrap();
        assert_eq!(events[0].1.purpose_of_use, "TREAT");
        assert_eq!(events[0].1.exchange, None);
        let exchange = events[1].1.exchange.as_ref().expect("the exchange kept");
        assert_eq!(
            (exchange.kind, exchange.peer.as_str()),
            (ExchangeKind::SentTo, "h2")
        );
        assert_eq!(outbox.pending(), (2, 2));
        outbox.clear_anchors(&seqs[..1]).unwrap();
        assert_eq!(outbox.anchors(10).unwrap(), vec![(seqs[1], anchor("2"))]);
        outbox.clear_anchors(&seqs[1..]).unwrap();
        outbox
            .clear_access(&[events[0].0, events[1].0])
            .expect("clearing access events");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_kept_round_survives_a_reopen_and_leaves_with_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let event = PendingAccess {
            principal: "dr-who".into(),
            resource_type: "Patient".into(),
            id: "p1".into(),
            version: "1".into(),
            purpose_of_use: String::new(),
            time_ms: 1_700_000_000_000,
            reidentified: true,
            exchange: None,
        };
        let round = {
            let db = sled::open(dir.path()).unwrap();
            let outbox = Outbox::open(&db).unwrap();
            let a = outbox.push_anchor(&anchor("1")).unwrap();
            let e = outbox.push_access(&event).unwrap();
            // Entries that came after the round was made stay.
            outbox.push_anchor(&anchor("2")).unwrap();
            outbox.push_access(&event).unwrap();
            assert_eq!(outbox.kept_round().unwrap(), None);
            let round = KeptRound {
                transactions: vec![b"anchor batch".to_vec(), Vec::new(), b"access".to_vec()],
                anchors: vec![a],
                access: vec![e],
            };
            outbox.keep_round(&round).unwrap();
            db.flush().unwrap();
            round
        };
        let db = crate::open::reopen(dir.path());
        let outbox = Outbox::open(&db).unwrap();
        assert_eq!(outbox.kept_round().unwrap(), Some(round.clone()));
        outbox.finish_round(&round.anchors, &round.access).unwrap();
        assert_eq!(outbox.kept_round().unwrap(), None);
        assert_eq!(outbox.pending(), (1, 1));
        assert_eq!(outbox.anchors(10).unwrap()[0].1, anchor("2"));
        outbox.keep_round(&round).unwrap();
        outbox.drop_round().unwrap();
        assert_eq!(outbox.kept_round().unwrap(), None);
        assert_eq!(outbox.pending(), (1, 1));
        // A damaged round is corruption, not a panic.
        let bytes = round.encode();
        assert!(KeptRound::decode(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn malformed_values_are_corruption_not_panics() {
        let bytes = anchor("1").encode();
        assert!(PendingAnchor::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(PendingAnchor::decode(&longer).is_err());
        assert!(PendingAccess::decode(&bytes).is_err());
    }
}
