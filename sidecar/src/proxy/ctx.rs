//! The per-request context the phases pass along (pingora's `CTX`): what `request_filter`
//! routed, who asks, and what the upstream is to receive. Each phase takes it by reference and
//! says in its signature what it may change.

use std::collections::BTreeSet;

use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::search::Paging;
use fhirseal_adapters::smart::Reach;
use fhirseal_adapters::{Format, Interaction};

use crate::audit::Accessor;

/// One request, from routing to the answer.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    /// The client's request id, or a fresh one; sent upstream and answered.
    pub(crate) request_id: String,
    /// This request's own id for what it writes (a fresh UUID: a client's request id need not
    /// be unique): the written resources' `meta.source` and the vault's intents carry it.
    pub(crate) write_id: String,
    /// What the request asks for. `seal_request` turns a JSON Patch into the update it sends.
    pub(crate) interaction: Interaction,
    /// The path below our base, as the client encoded it (`/Patient/1`); a conditional update
    /// that matched no one goes to the resource's own path instead.
    pub(crate) rel_path: String,
    /// The query the upstream receives.
    pub(crate) query: UpstreamQuery,
    /// Who asks.
    pub(crate) principal: Principal,
    /// Who, why and when, for the access events of this request.
    pub(crate) accessor: Accessor,
    /// How the client reaches the sidecar.
    pub(crate) public_base: PublicBase,
    /// The elements a `_elements` parameter limited the answer to.
    pub(crate) elements: Option<BTreeSet<String>>,
    /// A HEAD request: no body is merged.
    pub(crate) head: bool,
    /// The format the client asked for (`_format`, `Accept`), for answers the sidecar writes.
    pub(crate) format: Format,
    /// Where an access token's bearer may reach (`authorize_token`); unconfined for API keys.
    pub(crate) reach: Reach,
}

/// The query string the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamQuery {
    /// The client's, as it came.
    Client,
    /// Rewritten (identity criteria answered from the blind index).
    Rewritten(String),
    /// One page of an identity search the sidecar pages itself (`page::page_response` sets
    /// the answer's total and links).
    Paged(Box<PagedQuery>),
    /// None at all (a conditional update that became a plain create or update).
    Dropped,
}

/// A page of an identity search the sidecar pages itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PagedQuery {
    /// What the upstream receives: this page's ids.
    pub(crate) upstream: String,
    /// The client's query, which the answer's links repeat with their own `_offset`.
    pub(crate) client: String,
    pub(crate) paging: Paging,
    /// Matches in all.
    pub(crate) total: usize,
}

/// How clients reach the sidecar, for one request.
#[derive(Debug, Clone)]
pub(crate) struct PublicBase {
    /// `https://seal.example:8443/fhir`
    pub(crate) url: String,
    pub(crate) scheme: String,
    /// `seal.example:8443`
    pub(crate) host: String,
    /// `/fhir`
    pub(crate) prefix: String,
}
