//! Erasure on the chain: an institution's record that it destroyed a person's key, so that
//! their identity can no longer be decrypted from its vault or any copy of it. An item of a
//! batch the institution signs, naming the person by fingerprint and the request that erased
//! them. The anchors of the person's writes stay (the chain is append-only, and they never held
//! identity); the chain indexes the erasure under (institution, fingerprint) so that a check of
//! one of those anchors can say the identity is erased ([`erasure_key`]).

use fhirseal_storage::chain_store::composite_key;

use crate::codec::{limits, DecodeError, Reader, Wire, Writer};
use crate::error::{Error, Result};
use crate::tx::{Batch, Item, TxKind};

/// One person's identity erased by the batch's institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The person's fingerprint.
    pub fingerprint: [u8; 32],
    /// The institution's id of the request that erased them.
    pub request: String,
}

/// Erasures, signed by the institution that erased.
pub type ErasureBatch = Batch<Erasure>;

impl Wire for Erasure {
    const MIN_LEN: usize = 32 + 4;

    fn write(&self, w: &mut Writer) {
        w.raw(&self.fingerprint);
        w.str(&self.request);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            fingerprint: r.array("erasure fingerprint")?,
            request: r.string("erasure request", limits::MAX_NAME_LEN)?,
        })
    }
}

impl Item for Erasure {
    const KIND: TxKind = TxKind::Erasure;

    /// The institution is the batch's: a member erases only what it holds.
    fn institution(&self) -> Option<&str> {
        None
    }

    fn check(&self) -> Result<()> {
        if self.request.is_empty() || self.request.len() > limits::MAX_NAME_LEN {
            return Err(Error::InvalidBatch("erasure request empty or too long"));
        }
        Ok(())
    }
}

/// The index key of the erasure of the person `fingerprint` by `institution`.
pub fn erasure_key(institution: &str, fingerprint: &[u8; 32]) -> Vec<u8> {
    composite_key(&[b"erasure", institution.as_bytes(), fingerprint])
}
