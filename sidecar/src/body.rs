//! The body type the proxy speaks on both sides: any stream of bytes, boxed.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Errors of a body stream, boxed so that client, upstream and our own bodies mix.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed request or response body.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` whole.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body that is empty.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}
