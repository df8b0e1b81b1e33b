//! Keeping clients on the sidecar: links that the upstream writes with its own base URL are
//! rewritten to the sidecar's public base.
//!
//! HAPI builds its links from `X-Forwarded-*` headers, so behind fhirseal it already writes the
//! sidecar's base and only response headers need a look. A generic upstream writes its own base
//! everywhere; for it the body is rewritten too. In FHIR a string that begins with the server's
//! own base URL is a link to that server, so every such string is rewritten, wherever it stands
//! (`Bundle.link.url`, `entry.fullUrl`, `entry.response.location`, absolute references).

/// Rewrites URLs under one upstream base to a public base.
#[derive(Debug, Clone)]
pub struct Rebase {
    upstream: String,
    public: String,
}

impl Rebase {
    /// Both bases without a trailing slash, e.g. `http://hapi:8080/fhir`.
    pub fn new(upstream: &str, public: &str) -> Rebase {
        Rebase {
            upstream: upstream.trim_end_matches('/').to_owned(),
            public: public.trim_end_matches('/').to_owned(),
        }
    }

    /// The URL under the public base, or `None` when `url` is not under the upstream base.
    /// `http://up/fhir2/x` is not under `http://up/fhir`: the base must end at a `/`, `?`,
    /// `#` or the end of the URL.
    pub fn url(&self, url: &str) -> Option<String> {
        let rest = url.strip_prefix(&self.upstream)?;
        if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
            Some(format!("{}{}", self.public, rest))
        } else {
            None
        }
    }

    /// A `Link` header value (`<url>; rel="next", <url>; rel="self"`) with each URL rewritten.
    pub fn link_header(&self, value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>') else {
                break;
            };
            out.push_str(&rest[..=open]);
            let url = &rest[open + 1..open + close];
            match self.url(url) {
                Some(rewritten) => out.push_str(&rewritten),
                None => out.push_str(url),
            }
            out.push('>');
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// A JSON or XML FHIR body with every string value that begins with the upstream base
    /// rewritten. JSON strings open with `"`, XML attribute values with `value="`; in both the
    /// base is followed by `/`, `?`, `#` or the closing quote. Returns `None` when nothing changed.
    pub fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let needle = format!("\"{}", self.upstream);
        let needle = needle.as_bytes();
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut at = 0;
        while let Some(pos) = find(&body[at..], needle) {
            let start = at + pos;
            let end = start + needle.len();
            let boundary = matches!(body.get(end), Some(b'/' | b'?' | b'#' | b'"'));
            if boundary {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 256));
                buf.extend_from_slice(&body[copied..start]);
                buf.push(b'"');
                buf.extend_from_slice(self.public.as_bytes());
                copied = end;
            }
            at = end;
        }
        let mut out = out?;
        out.extend_from_slice(&body[copied..]);
        Some(out)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rebase() -> Rebase {
        Rebase::new("http://up:8080/fhir/", "https://seal.example/fhir")
    }

    #[test]
    fn urls_under_the_base_only() {
        let r = rebase();
        assert_eq!(
            r.url("http://up:8080/fhir/Patient/1/_history/2").as_deref(),
            Some("https://seal.example/fhir/Patient/1/_history/2")
        );
        assert_eq!(
            r.url("http://up:8080/fhir").as_deref(),
            Some("https://seal.example/fhir")
        );
        assert_eq!(
            r.url("http://up:8080/fhir?_getpages=x").as_deref(),
            Some("https://seal.example/fhir?_getpages=x")
        );
        assert_eq!(r.url("http://up:8080/fhir2/Patient"), None);
        assert_eq!(r.url("http://other/fhir/Patient"), None);
    }

    #[test]
    fn link_headers_keep_their_parameters() {
        let r = rebase();
        assert_eq!(
            r.link_header(
                r#"<http://up:8080/fhir/Patient?page=2>; rel="next", <http://x/y>; rel="about""#
            ),
            r#"<https://seal.example/fhir/Patient?page=2>; rel="next", <http://x/y>; rel="about""#
        );
    }

    #[test]
    fn bodies_rewrite_json_strings_and_xml_values() {
        let r = rebase();
        let json = br#"{"link":[{"relation":"self","url":"http://up:8080/fhir/Patient?x=1"}],"entry":[{"fullUrl":"http://up:8080/fhir/Patient/1"},{"fullUrl":"http://up:8080/fhirX/1"}]}"#;
        let out = String::from_utf8(r.body(json).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"link":[{"relation":"self","url":"https://seal.example/fhir/Patient?x=1"}],"entry":[{"fullUrl":"https://seal.example/fhir/Patient/1"},{"fullUrl":"http://up:8080/fhirX/1"}]}"#
        );
        let xml = br#"<Bundle><link><url value="http://up:8080/fhir/Patient"/></link></Bundle>"#;
        let out = String::from_utf8(r.body(xml).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"<Bundle><link><url value="https://seal.example/fhir/Patient"/></link></Bundle>"#
        );
        assert_eq!(r.body(br#"{"resourceType":"Patient"}"#), None);
    }
}
