//! The governance layer on openraft, by area: the sled store against openraft's own suite, one
//! node that restarts from its directory, a three-node cluster over an in-process network.

// clippy.toml allows `unwrap` in `#[test]` functions only; the helpers here are test code too.
#![allow(clippy::unwrap_used)]

mod support;
mod t10_store;
mod t20_node;
mod t30_cluster;
