//! Bounds on what the state holds, enforced by the decoder and checked before a command is
//! accepted (so that nothing accepted is undecodable).

/// Longest id, name or node address, in bytes (as for ledger names).
pub const MAX_NAME_LEN: usize = crate::codec::limits::MAX_NAME_LEN;
/// Longest suspension or revocation reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest RSA public key (SubjectPublicKeyInfo DER): 8192-bit keys take about 1.1 KiB.
pub const MAX_WRAPPING_KEY_LEN: usize = 2048;
/// Longest wrapped link key: an RSA-OAEP ciphertext is as long as the modulus.
pub const MAX_WRAPPED_KEY_LEN: usize = 1024;
/// Most members, and most entries in one link-key command.
pub const MAX_MEMBERS: usize = 4096;
/// Most delegates of an epoch (K); a quorum certificate's signatures are bounded above it.
pub const MAX_DELEGATES: usize = 256;
/// K from genesis until the regulator sets another: every member, up to 4 (one fault
/// tolerated once there are four).
pub const DEFAULT_DELEGATES: u32 = 4;
/// Most certificates on the revocation list.
pub const MAX_REVOKED_CERTIFICATES: usize = 1 << 20;
/// Refusals kept in the state (the count of all of them is kept too).
pub const MAX_REFUSALS_KEPT: usize = 256;
/// Longest validity window a signed command may carry: 31 days, room for the regulator's
/// genesis commands, which `init` signs and the node submits when it first leads.
pub const MAX_VALIDITY_MS: u64 = 31 * 24 * 60 * 60 * 1000;
