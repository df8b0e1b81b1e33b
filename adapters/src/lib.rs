//! The FHIR edge of fhirseal: everything that knows what a FHIR REST request and a FHIR payload
//! look like, and nothing about the ledger or the vault.
//!
//! - [`route`] parses a FHIR REST URL and method into an [`route::Interaction`];
//! - [`format`] negotiates JSON or XML from `_format` and `Accept`;
//! - [`outcome`] builds the `OperationOutcome` that every error of the sidecar is answered with;
//! - [`rebase`] rewrites links that point at the upstream so that they point at the sidecar;
//! - [`resource`] adds a tag to a resource and finds a Bundle page's `next` link;
//! - [`canonical`] gives a stored resource its canonical form (RFC 8785) and the hash the ledger
//!   anchors;
//! - [`fhir`] parses and writes resources through fhirbolt, behind plain non-generic functions,
//!   so that no other crate pays fhirbolt's compile cost; [`profile`], [`identity`],
//!   [`blind`], [`scrub`] and [`search`] split identity from clinical data, key it, file it in
//!   the blind index, take it out of free text and plan identity searches;
//! - [`consent`] reads what a `Consent` grants (grantees, purposes, resource types, period);
//! - [`auth`] says who calls and [`policy`] what their role may do; [`smart`] reads the scopes
//!   of a SMART on FHIR access token and decides what its bearer may do (role × purpose of use ×
//!   resource type × own institution or granted scope, and the patient compartment).

pub mod auth;
pub mod blind;
pub mod canonical;
pub mod consent;
pub mod fhir;
pub mod format;
pub mod identity;
pub mod outcome;
pub mod patch;
pub mod policy;
pub mod profile;
pub mod rebase;
pub mod resource;
pub mod route;
pub mod scrub;
pub mod search;
pub mod smart;

pub use format::Format;
pub use outcome::{IssueType, OperationOutcome, Severity};
pub use rebase::Rebase;
pub use route::{Interaction, RouteError};
