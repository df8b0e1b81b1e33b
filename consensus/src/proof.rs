//! An anchor's proof: everything a consortium member needs to check, with nothing but the
//! roster, that a resource version was anchored in a finalized block.

use crate::bft::CommitCertificate;
use crate::block::BlockHeader;
use crate::codec::{top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::error::{Error, Result};
use crate::hash::Hash256;
use crate::keys::Roster;
use crate::merkle::{self, MerkleProof};
use crate::tx::{AnchorEntry, BatchHeader, TxKind};
use crate::validate::check_certificate;

/// The entry, its path in its batch, the batch header, the batch's path in the block, the block
/// header and its commit certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorProof {
    /// What was anchored.
    pub entry: AnchorEntry,
    /// The entry's path to [`BatchHeader::root`].
    pub entry_path: MerkleProof,
    /// The signed header of the batch that holds it.
    pub batch: BatchHeader,
    /// The batch's path (over its transaction hash) to [`BlockHeader::tx_root`].
    pub transaction_path: MerkleProof,
    /// The block's header.
    pub header: BlockHeader,
    /// The delegates' precommits for the block hash.
    pub certificate: CommitCertificate,
}

top_level_encoding!(AnchorProof);

impl AnchorProof {
    /// Checks the whole chain of commitments and returns the block hash:
    ///
    /// 1. the batch is an anchor batch of the entry's institution, signed (strictly) with that
    ///    institution's keys in `roster`;
    /// 2. the entry's path leads to the batch root, with the batch's entry count;
    /// 3. the batch's path leads to the header's transaction root, with its transaction count;
    /// 4. a quorum of `roster`'s delegates precommitted the header's hash on chain `chain` (use
    ///    the roster of the block's epoch, [`BlockHeader::epoch`]).
    ///
    /// Whether the upstream's current content still matches is the caller's comparison of its
    /// hash with [`AnchorEntry::clinical_hash`].
    pub fn verify(&self, chain: &Hash256, roster: &Roster) -> Result<Hash256> {
        if self.batch.kind != TxKind::Anchor {
            return Err(Error::InvalidBatch("not an anchor batch"));
        }
        if self.entry.institution != self.batch.institution {
            return Err(Error::InvalidBatch("the entry names another institution"));
        }
        roster.check_signer(&self.batch.institution, &self.batch.signer)?;
        self.batch.verify_signature()?;

        if self.entry_path.count != self.batch.count
            || self.entry_path.root_from(&self.entry.leaf_hash())? != self.batch.root
        {
            return Err(Error::RootMismatch("batch"));
        }
        let tx_leaf = merkle::leaf_hash(&self.batch.hash().0);
        if self.transaction_path.count != self.header.tx_count
            || self.transaction_path.root_from(&tx_leaf)? != self.header.tx_root
        {
            return Err(Error::RootMismatch("block transaction"));
        }

        check_certificate(chain, &self.certificate, &self.header, roster)
    }
}

impl Wire for AnchorProof {
    const MIN_LEN: usize = <AnchorEntry as Wire>::MIN_LEN
        + 2 * <MerkleProof as Wire>::MIN_LEN
        + <BatchHeader as Wire>::MIN_LEN
        + <BlockHeader as Wire>::MIN_LEN
        + <CommitCertificate as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        self.entry.write(w);
        self.entry_path.write(w);
        self.batch.write(w);
        self.transaction_path.write(w);
        self.header.write(w);
        self.certificate.write(w);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            entry: AnchorEntry::read(r)?,
            entry_path: MerkleProof::read(r)?,
            batch: BatchHeader::read(r)?,
            transaction_path: MerkleProof::read(r)?,
            header: BlockHeader::read(r)?,
            certificate: CommitCertificate::read(r)?,
        })
    }
}
