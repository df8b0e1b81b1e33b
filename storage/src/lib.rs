//! fhirseal's storage: sealing (fingerprint, hybrid encryption, key wrapping), the sled vault, the
//! blind index, the outbox, and the typed sled stores that `consensus` uses (blocks, raft log).
//!
//! It knows nothing of FHIR: it stores and seals bytes under keys that callers give it.
//! The sealing and the vault arrive with the "seal writes, unseal reads" work; until then this
//! crate holds no code.
