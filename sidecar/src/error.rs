//! The sidecar's errors, tagged by the side that failed, and the one place where errors become
//! responses: FHIR `OperationOutcome`s on the FHIR listener ([`ProxyError::into_response`],
//! [`outcome_response`]), and JSON bodies (`{"error": …}`) on the node-to-node APIs — the
//! consortium's governance API, the ledger's routes and the join desk ([`json_response`],
//! [`json_error`]). Each error type says its own status (`ProxyError::status`,
//! `DeskError::status`, …); the bodies are made here only.

use bytes::Bytes;
use fhirseal_adapters::{Format, IssueType, OperationOutcome, RouteError};
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};
use crate::smart::TokenError;
use fhirseal_adapters::smart::Refusal;

impl From<crate::auth::Unauthenticated> for ProxyError {
    fn from(error: crate::auth::Unauthenticated) -> Self {
        match error {
            crate::auth::Unauthenticated::Key(e) => ProxyError::Unauthorized(e),
            crate::auth::Unauthenticated::Token(e) => ProxyError::Token(e),
        }
    }
}

/// Who caused a failure: the client (4xx), the upstream (502/504), or the sidecar (500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

/// Everything that stops the sidecar from relaying a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("'{0}' is outside the FHIR base path {1}")]
    OutsideBase(String, String),
    #[error("the request body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("Content-Type '{0}' is not a FHIR format (application/fhir+json or application/fhir+xml) nor a patch format")]
    UnsupportedMediaType(String),
    #[error("the request has an invalid header: {0}")]
    BadHeader(String),
    #[error("{0}")]
    Unauthorized(#[from] fhirseal_adapters::auth::AuthError),
    #[error("{0}")]
    Token(#[from] crate::smart::TokenError),
    #[error("{0}")]
    Scope(#[from] fhirseal_adapters::smart::Refusal),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Denied(#[from] fhirseal_adapters::policy::Denied),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("too many identity searches by this principal: try again in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("fhirseal is handling its limit of {0} requests at once: try again shortly")]
    Overloaded(usize),
    #[error("identity searches wait while fhirseal refiles its blind index in this build's layout: try again shortly")]
    Refiling,
    #[error("the answer is over {limit} bytes, too large to merge identity into: ask for fewer resources at once (_count)")]
    TooLargeToReidentify { limit: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Search(#[from] fhirseal_adapters::search::SearchError),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("sealing: {0}")]
    Seal(#[from] crate::sealing::SealError),
    #[error("the upstream FHIR server cannot be reached: {0}")]
    UpstreamUnavailable(String),
    #[error("the upstream FHIR server did not answer within {0} ms")]
    UpstreamTimeout(u64),
    #[error("the upstream FHIR server's response could not be read: {0}")]
    UpstreamBody(String),
    #[error("the upstream FHIR server's response is over the limit of {limit} bytes")]
    UpstreamTooLarge { limit: u64 },
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::error::LedgerError),
    #[error(
        "the upstream stored the write and its identity is sealed, but it is not anchored: {0}"
    )]
    NotAnchored(String),
    #[error("the write is stored and durable, but its block was not final within {0} ms; it will be anchored")]
    AnchorTimeout(u64),
    /// A grant, revocation or erasure on the chain that is not final (or cannot be signed):
    /// what was and was not done, in words.
    #[error("{0}")]
    ChainPending(String),
    /// Another member's node, asked for records it shares, could not be reached or did not
    /// answer as it should.
    #[error("member {member}'s node: {reason}")]
    Member { member: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// A 405 unless `method` is `allowed`: an operation the sidecar answers itself, which
    /// `what` names.
    pub(crate) fn unless_method(
        method: &http::Method,
        allowed: http::Method,
        what: &str,
    ) -> Result<(), ProxyError> {
        if *method == allowed {
            return Ok(());
        }
        Err(ProxyError::Route(RouteError::Method {
            method: method.clone(),
            path: format!("{what} ({allowed})"),
        }))
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::Route(_)
            | ProxyError::OutsideBase(..)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyRead(_)
            | ProxyError::UnsupportedMediaType(_)
            | ProxyError::BadHeader(_)
            | ProxyError::Unauthorized(_)
            | ProxyError::Scope(_)
            | ProxyError::Forbidden(_)
            | ProxyError::Denied(_)
            | ProxyError::BodyTimeout(_)
            | ProxyError::Throttled { .. }
            | ProxyError::Overloaded(_)
            | ProxyError::Refiling
            | ProxyError::TooLargeToReidentify { .. }
            | ProxyError::Invalid(_)
            | ProxyError::Search(_)
            | ProxyError::NotSupported(_)
            | ProxyError::Unprocessable(_)
            | ProxyError::NotFound(_)
            | ProxyError::Gone(_) => Side::Downstream,
            ProxyError::Token(TokenError::Jwks(_)) => Side::Upstream,
            ProxyError::Token(_) => Side::Downstream,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamBody(_)
            | ProxyError::UpstreamTooLarge { .. }
            | ProxyError::NotAnchored(_)
            | ProxyError::Member { .. } => Side::Upstream,
            ProxyError::Internal(_)
            | ProxyError::Seal(_)
            | ProxyError::Ledger(_)
            | ProxyError::AnchorTimeout(_)
            | ProxyError::ChainPending(_) => Side::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(e) if e.is_method() => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Route(_)
            | ProxyError::BodyRead(_)
            | ProxyError::BadHeader(_)
            | ProxyError::Invalid(_)
            | ProxyError::Search(_)
            | ProxyError::NotSupported(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Token(TokenError::UnknownRole) => StatusCode::FORBIDDEN,
            ProxyError::Token(TokenError::Jwks(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Token(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) | ProxyError::Denied(_) | ProxyError::Scope(_) => {
                StatusCode::FORBIDDEN
            }
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Overloaded(_) | ProxyError::Refiling | ProxyError::ChainPending(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::TooLargeToReidentify { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ProxyError::OutsideBase(..) | ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::Gone(_) => StatusCode::GONE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamBody(_)
            | ProxyError::UpstreamTooLarge { .. }
            | ProxyError::NotAnchored(_)
            | ProxyError::Member { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) | ProxyError::AnchorTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Internal(_) | ProxyError::Seal(_) | ProxyError::Ledger(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Why, in a word: the `OperationOutcome`'s issue code (the metrics' refusal reason).
    pub fn reason(&self) -> &'static str {
        self.issue_type().code()
    }

    fn issue_type(&self) -> IssueType {
        match self {
            ProxyError::Route(e) if e.is_method() => IssueType::NotSupported,
            ProxyError::Route(_) | ProxyError::BadHeader(_) | ProxyError::Invalid(_) => {
                IssueType::Invalid
            }
            ProxyError::Unauthorized(_) => IssueType::Login,
            ProxyError::Token(TokenError::UnknownRole) => IssueType::Forbidden,
            ProxyError::Token(TokenError::Jwks(_)) => IssueType::Transient,
            ProxyError::Token(_) => IssueType::Login,
            ProxyError::Forbidden(_) | ProxyError::Denied(_) | ProxyError::Scope(_) => {
                IssueType::Forbidden
            }
            ProxyError::BodyTimeout(_) => IssueType::Timeout,
            ProxyError::Throttled { .. } => IssueType::Throttled,
            ProxyError::Overloaded(_) | ProxyError::Refiling | ProxyError::ChainPending(_) => {
                IssueType::Transient
            }
            ProxyError::TooLargeToReidentify { .. } => IssueType::TooCostly,
            ProxyError::Search(_) | ProxyError::NotSupported(_) => IssueType::NotSupported,
            ProxyError::Unprocessable(_) => IssueType::Processing,
            ProxyError::BodyRead(_) => IssueType::Structure,
            ProxyError::OutsideBase(..) | ProxyError::NotFound(_) => IssueType::NotFound,
            ProxyError::Gone(_) => IssueType::Deleted,
            ProxyError::BodyTooLarge { .. } | ProxyError::UpstreamTooLarge { .. } => {
                IssueType::TooCostly
            }
            ProxyError::UnsupportedMediaType(_) => IssueType::NotSupported,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamBody(_)
            | ProxyError::Member { .. } => IssueType::Transient,
            ProxyError::UpstreamTimeout(_) | ProxyError::AnchorTimeout(_) => IssueType::Timeout,
            ProxyError::NotAnchored(_) => IssueType::Incomplete,
            ProxyError::Internal(_) | ProxyError::Seal(_) | ProxyError::Ledger(_) => {
                IssueType::Exception
            }
        }
    }

    /// The `OperationOutcome` for this error. Internal errors carry no detail to the client
    /// (the log has it, under the request id), so no secret can leak through a message.
    pub fn outcome(&self) -> OperationOutcome {
        let diagnostics = match self {
            // Says what happened to the write, and carries no detail of ours.
            ProxyError::AnchorTimeout(_) | ProxyError::ChainPending(_) => self.to_string(),
            // Says why no identity is shown, and carries no detail of ours either.
            ProxyError::Seal(e) if e.is_damage() => DAMAGED_IDENTITY.to_owned(),
            _ if self.side() == Side::Internal => {
                "fhirseal failed to process the request; see its log".to_owned()
            }
            _ => self.to_string(),
        };
        OperationOutcome::error(self.issue_type(), diagnostics)
    }

    /// The response a client gets for this error.
    pub fn into_response(self, format: Format) -> Response<ProxyBody> {
        let status = self.status();
        let mut response = outcome_response(status, &self.outcome(), format);
        // RFC 6750 §3: a bad token is `invalid_token`, too little scope `insufficient_scope`.
        let challenge = match &self {
            ProxyError::Token(error) if status == StatusCode::UNAUTHORIZED => Some(format!(
                "Bearer realm=\"fhirseal\", error=\"invalid_token\", error_description=\"{}\"",
                error.to_string().replace(['"', '\\'], "")
            )),
            ProxyError::Scope(Refusal::Scope { .. }) => {
                Some("Bearer realm=\"fhirseal\", error=\"insufficient_scope\"".to_owned())
            }
            _ if status == StatusCode::UNAUTHORIZED => Some("Bearer realm=\"fhirseal\"".to_owned()),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        let retry_after = match &self {
            ProxyError::Throttled { retry_after } => Some(*retry_after),
            ProxyError::Overloaded(_) => Some(1),
            ProxyError::Refiling => Some(5),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// The error as a log line may show it: what the client sent is quoted in messages (a
    /// parser's complaint about a value, a date that is no date), and a value may be a name or
    /// a birth date, so every quoted stretch is left out.
    pub fn log_text(&self) -> String {
        redact_quoted(&self.to_string())
    }
}

/// What a client is told when the identity the vault holds for a resource fails its integrity
/// check: nothing of the record, and nothing that was not verified, is shown.
pub const DAMAGED_IDENTITY: &str = "the identity fhirseal holds for this resource fails its \
     integrity check (the vault is damaged): it is withheld rather than shown wrong. The \
     node's operator finds the damage with `fhirseal check`";

/// A response carrying `outcome` in `format`.
pub fn outcome_response(
    status: StatusCode,
    outcome: &OperationOutcome,
    format: Format,
) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(outcome.render(format))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    response
}

/// `text` with what stands between quotes (`'…'`, `"…"`, `` `…` ``) replaced by `…`.
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.chars() {
        match open {
            Some(q) if c == q => {
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                // An apostrophe inside a word ("isn't") opens nothing.
                let word_apostrophe = c == '\''
                    && out[..out.len() - 1]
                        .chars()
                        .last()
                        .is_some_and(char::is_alphanumeric);
                if matches!(c, '\'' | '"' | '`') && !word_apostrophe {
                    out.push('…');
                    open = Some(c);
                }
            }
        }
    }
    out
}

/// The body of the node-to-node APIs' responses.
pub type JsonBody = http_body_util::Full<Bytes>;

/// A JSON response of the node-to-node APIs.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<JsonBody> {
    json_bytes(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// A response of JSON already encoded.
fn json_bytes(status: StatusCode, body: Bytes) -> Response<JsonBody> {
    let mut response = Response::new(http_body_util::Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The body of a node-to-node API's error: `{"error": message}`.
pub fn json_error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message }).to_string())
}

/// A node-to-node API's error response.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response<JsonBody> {
    json_bytes(status, json_error_body(&message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_leaves_out_what_the_client_quoted() {
        let error = ProxyError::Invalid(
            "the body is not a valid FHIR R4 JSON resource: invalid type: string \"Reinger\", expected a boolean".to_owned(),
        );
        let text = error.log_text();
        assert!(!text.contains("Reinger"), "{text}");
        assert!(text.contains("invalid type"), "{text}");
        let search = ProxyError::Search(fhirseal_adapters::search::SearchError {
            param: "birthdate".into(),
            reason: "'1970-13-45' is not YYYY, YYYY-MM or YYYY-MM-DD".into(),
        });
        assert!(!search.log_text().contains("1970-13-45"));
        assert_eq!(redact_quoted("isn't 'x'"), "isn't '…'");
    }

    #[test]
    fn each_side_maps_to_its_status_class() {
        let cases = [
            (
                ProxyError::BodyTooLarge { limit: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                ProxyError::Route(RouteError::Id("a_b".into())),
                StatusCode::BAD_REQUEST,
            ),
            (
                ProxyError::UpstreamUnavailable("refused".into()),
                StatusCode::BAD_GATEWAY,
            ),
            (ProxyError::UpstreamTimeout(5), StatusCode::GATEWAY_TIMEOUT),
            (
                ProxyError::Internal("key file".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status(), status, "{error}");
        }
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let outcome = ProxyError::Internal("secret path /keys/private.pem".into()).outcome();
        assert!(!outcome.diagnostics.contains("private.pem"));
    }
}
