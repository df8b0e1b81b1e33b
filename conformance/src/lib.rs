//! A black-box FHIR R4 conformance, transparency and privacy suite that speaks HTTP only and is
//! run against any endpoint, with and without fhirseal in front.
//!
//! It owns: the case format (`case`: cases are data, TOML files under `cases/`, compiled in and
//! extensible with a folder of one's own), `{var}` substitution and body pointers (`vars`), the
//! HTTP client (`http`), running a case against an endpoint and checking each answer (`run`),
//! the comparison of two endpoints' answers (`diff`), the identity scan of privacy mode
//! (`privacy`), the three modes (`suite`) and the table and JUnit output (`report`).
//!
//! It must never import the code it judges: it depends on no other crate of this workspace and
//! knows fhirseal only as an HTTP endpoint, so a bug shared by the sidecar and the suite cannot
//! hide itself.

pub mod case;
pub mod diff;
pub mod http;
pub mod privacy;
pub mod report;
pub mod run;
pub mod suite;
pub mod vars;

pub use case::{Case, Mode, Suite};
pub use http::Client;
pub use run::Endpoint;
pub use suite::{run, CaseResult, Report, RunMode};

/// What can go wrong before a case has a verdict (a failed expectation is a verdict, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A case file that does not parse or does not make sense.
    #[error("case {source_name}: {message}")]
    Case {
        source_name: String,
        message: String,
    },
    /// A `{var}` that the run does not know, or an unknown filter.
    #[error("substitution: {0}")]
    Substitution(String),
    /// A request that could not be built, sent or answered in time.
    #[error("request to {url}: {message}")]
    Request { url: String, message: String },
    /// The TLS set-up of the client (e.g. no platform root certificates).
    #[error("TLS: {0}")]
    Tls(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
