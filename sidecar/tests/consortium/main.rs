//! The consortium as real processes: one `fhirseal run` node per member on loopback ports, each
//! with its own data directory and keystore, talking HTTP/2 over mutual TLS; founded, joined and
//! governed through the CLI. By area: the CLI and its refusals with one node, then whole
//! consortia of 3 and 5 nodes (admission, refusal of unsigned admissions, key rotation, a
//! leader killed, revocation, a restart of every node), which also print the figures (commit
//! latency, time to a new leader), the local-consortium script, a partition of 5 voters, each
//! node in a network namespace of its own (root and iproute2 needed, else skipped), the
//! leader rotating its keys while a node is away, least privilege (Raft RPCs a member may
//! not send, snapshots that do not verify, the invite-only join desk, admission by
//! certificate fingerprint, commands outside their validity window), and two institutions in
//! front of HAPI FHIR (one person, one fingerprint at both; a revoked member's node refuses
//! writes; a restart of every node; the HAPI servers of `deploy/test.sh` needed, else
//! skipped), consent between those two institutions (a `Consent` becomes a grant on the shared
//! chain, its end a revocation; what cannot be a grant is refused; records fetched under a live
//! grant with identity sealed end to end, refused without one), and the shared chain of four delegates (one chain held identically by every
//! member through one crash, halted below quorum, caught up after restarts; a member joining
//! later syncs it; a revoked delegate replaced at the next epoch; the same HAPI servers), and a
//! partition of that chain's four delegates in network namespaces (a 2|2 split finalizes
//! nothing, 3|1 finalizes on the three's side, every member holds one chain after healing; root
//! and iproute2 needed, else skipped), and the DPoS election among seven nodes (the same
//! elections at every member, a double signer tombstoned).
//!
//! The clusters run one at a time (`support::serial`): the CI machine has two cores.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

mod netns;
#[path = "../support/ports.rs"]
mod ports;
mod support;
mod t10_cli;
mod t20_consortium;
mod t30_script;
mod t40_partition;
mod t50_rotation;
mod t60_least_privilege;
mod t70_institutions;
mod t80_shared_ledger;
mod t85_sharing;
mod t90_ledger_partition;
mod t95_election;
