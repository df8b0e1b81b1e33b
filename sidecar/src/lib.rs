//! fhirseal: a security sidecar for FHIR servers.
//!
//! This crate wires the parts together: the configuration ([`config`]), the reverse proxy as a
//! tower service ([`proxy`]), the listener with optional TLS ([`server`]), the same proxy as a
//! tower layer around a FHIR service in process ([`layer`]), who calls ([`auth`]:
//! API keys, and [`smart`]: SMART on FHIR access tokens verified against their issuer's JWKS),
//! and logging ([`telemetry`]). The `fhirseal` binary only parses its command line and calls in here.
//!
//! It owns no FHIR knowledge (that is `fhirseal-adapters`), no storage (`fhirseal-storage`) and
//! no ledger (`fhirseal-consensus`): it composes them.

mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod body;
pub mod check;
pub mod clock;
pub mod config;
pub mod consortium;
mod crash;
pub mod error;
pub mod fhir_client;
mod gate;
mod http_util;
pub mod import;
pub mod keystore;
pub mod layer;
pub mod ledger;
pub mod ledger_tool;
mod limits;
pub mod listener;
pub mod metrics;
pub mod migrate;
pub mod proxy;
pub mod report;
pub mod sealing;
mod search_pages;
pub mod server;
pub mod smart;
pub mod stores;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod verify;

pub use config::Config;
pub use error::ProxyError;
pub use layer::{FhirSeal, FhirSealLayer};
pub use proxy::Proxy;
pub use server::{ServerError, Sidecar};
