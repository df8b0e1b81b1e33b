//! SHA-256 with domain separation.
//!
//! Every hashed or signed message starts with one tag byte naming its purpose, so that bytes
//! produced for one purpose can never be passed off as another's: a Merkle leaf as an inner node
//! (the classic second-preimage trick on Merkle trees), a transaction as a header, an
//! institution's batch signature as a delegate's finality vote (the embedded node may well use
//! one key for both).

use sha2::{Digest as _, Sha256};

/// The tag bytes. Merkle tags are 0x00/0x01 as in RFC 6962; the others are kept apart from them.
pub mod tag {
    /// A Merkle leaf: `SHA-256(0x00 ‖ leaf bytes)`.
    pub const MERKLE_LEAF: u8 = 0x00;
    /// A Merkle inner node: `SHA-256(0x01 ‖ left ‖ right)`.
    pub const MERKLE_NODE: u8 = 0x01;
    /// A block header: `SHA-256(0x10 ‖ encoded header)`; this is the block's hash.
    pub const BLOCK_HEADER: u8 = 0x10;
    /// A transaction: `SHA-256(0x11 ‖ encoded transaction commitment)`.
    pub const TRANSACTION: u8 = 0x11;
    /// A chain's identity: `SHA-256(0x12 ‖ consortium name)` (see [`crate::block::chain_id`]).
    pub const CHAIN_ID: u8 = 0x12;
    /// First byte of the message an institution signs for a batch.
    pub const BATCH_SIGNATURE: u8 = 0x20;
    /// First byte of the message the single-node chain's delegate signed to finalize a block,
    /// before blocks carried BFT commit certificates; retired, never to be reused.
    pub const FINALITY_VOTE: u8 = 0x21;
    /// First byte of the message a member signs for a governance command.
    pub const GOVERNANCE_COMMAND: u8 = 0x30;
    /// First byte of the message a new Ed25519 key signs to prove that its owner holds it.
    pub const KEY_POSSESSION: u8 = 0x31;
    /// First byte of a BFT proposal a delegate signs (see [`crate::bft`]).
    pub const BFT_PROPOSAL: u8 = 0x40;
    /// First byte of a BFT prevote.
    pub const BFT_PREVOTE: u8 = 0x41;
    /// First byte of a BFT precommit: the votes a commit certificate is made of.
    pub const BFT_PRECOMMIT: u8 = 0x42;
}

/// A SHA-256 output.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash256(pub [u8; 32]);

impl Hash256 {
    /// All zeros: the "previous hash" of the genesis block.
    pub const ZERO: Self = Self([0; 32]);

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hexadecimal.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl std::fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash256({})", self.to_hex())
    }
}

impl std::fmt::Display for Hash256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// `SHA-256(tag ‖ parts…)`.
pub(crate) fn tagged(tag: u8, parts: &[&[u8]]) -> Hash256 {
    let mut hasher = Sha256::new();
    hasher.update([tag]);
    for part in parts {
        hasher.update(part);
    }
    Hash256(hasher.finalize().into())
}

/// Lower-case hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_hash_is_sha256_of_tag_then_parts() {
        // `printf '\x10abc' | sha256sum`, computed outside this code.
        assert_eq!(
            tagged(tag::BLOCK_HEADER, &[b"a", b"bc"]).to_hex(),
            "2f3980626d475130b6cd1626266e9cdf1ed10985790a9c4c9054ba614707a925"
        );
    }
}
