//! The suite run for real against a HAPI FHIR JPA server: conformance passes, differential mode
//! finds a difference that exists and none where there is none, privacy mode catches identity
//! that plain HAPI shows to anyone, and the command's exit codes and JUnit file.
//!
//! The HAPI base comes from `FHIRSEAL_TEST_HAPI` (e.g. `http://127.0.0.1:18080/fhir`), which
//! `deploy/test.sh` sets after starting HAPI.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;
mod t10_conformance;
mod t20_differential;
mod t30_privacy;
mod t40_command;
