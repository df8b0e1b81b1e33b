//! Integration tests of the reverse proxy against a real HAPI FHIR JPA server.
//!
//! The HAPI base comes from `FHIRSEAL_TEST_HAPI` (e.g. `http://127.0.0.1:18080/fhir`); the
//! README's test command starts HAPI and sets it. Tests that need no FHIR server (TLS, bad
//! input answered by the sidecar itself, a slow upstream) run their own loopback servers.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;
#[path = "../support/ports.rs"]
mod ports;
mod t10_transparency;
mod t20_bad_input;
mod t30_transport;
mod t40_sealing;
mod t50_ledger;
mod t60_crash;
mod t70_hostile;
mod t75_smart;
mod t80_crash_window;
mod t90_stores;
mod t95_crash_campaign;
mod t96_report;
mod t97_import;
mod t98_explorer;
mod t99_migrate;
