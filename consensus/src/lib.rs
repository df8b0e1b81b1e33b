//! fhirseal's consortium ledger: transactions, blocks and Merkle proofs, the governance state
//! machine on openraft, the improved-DPoS election, block production and finality, and the node
//! transport.
//!
//! It knows nothing of FHIR; it depends only on `fhirseal-storage` for its sled-backed stores.
//! The ledger and governance arrive with their own issues; until then this crate holds no code.
