//! The `page_response` phase: the answer to one page of an identity search the sidecar pages
//! itself ([`super::ctx::PagedQuery`]). The upstream was asked for that page's ids alone, so
//! its Bundle says nothing of the other pages: the total becomes the number of matches, and
//! the links (`self`, `previous`, `next`) the client's own query at the sidecar with their
//! `_offset`.

use fhirseal_adapters::search::{with_offset, MAX_PAGE};
use fhirseal_adapters::{fhir, resource};
use http::{header, Response};
use serde_json::{json, Value};

use super::ctx::{PagedQuery, RequestCtx, UpstreamQuery};
use super::deps::Deps;
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::http_util::{collect_limited, response_format};

/// Phase `page_response`: a page's Bundle told where it stands among the matches.
pub(super) async fn page_response(
    deps: &Deps,
    ctx: &RequestCtx,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let UpstreamQuery::Paged(paged) = &ctx.query else {
        return Ok(response);
    };
    let Some(format) = response_format(response.headers()) else {
        return Ok(response);
    };
    if !response.status().is_success() {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let bytes = collect_limited(body, deps.limits.max_reidentify).await?;
    if bytes.is_empty() {
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    let page_url = |offset: usize| {
        format!(
            "{}{}?{}",
            ctx.public_base.url,
            ctx.rel_path,
            with_offset(&paged.client, offset)
        )
    };
    let links = links(paged, page_url);
    let (total, held) = (paged.total, paged.paging.held(paged.total));
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ProxyError> {
        let mut bundle = fhir::parse_lenient(&bytes, format)
            .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
        place(&mut bundle, total, held, links)?;
        fhir::serialize(&bundle, format).map_err(|e| ProxyError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| ProxyError::Internal(e.to_string()))??;
    parts
        .headers
        .insert(header::CONTENT_LENGTH, out.len().into());
    Ok(Response::from_parts(parts, full(out)))
}

/// The page's links: itself, and the pages beside it.
fn links(paged: &PagedQuery, url: impl Fn(usize) -> String) -> Value {
    let (previous, next) = paged.paging.neighbours(paged.total);
    let mut links = vec![json!({"relation": "self", "url": url(paged.paging.offset)})];
    if let Some(offset) = previous {
        links.push(json!({"relation": "previous", "url": url(offset)}));
    }
    if let Some(offset) = next {
        links.push(json!({"relation": "next", "url": url(offset)}));
    }
    Value::Array(links)
}

/// Sets a searchset page's total and links (the page asked for `held` ids). An upstream
/// that cut the page's ids into pages of its own would lose matches between the sidecar's
/// pages: that is its error. (A `next` link beside every id asked for is HAPI not yet knowing
/// its total, and is dropped.)
fn place(bundle: &mut Value, total: usize, held: usize, links: Value) -> Result<(), ProxyError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ProxyError::UpstreamBody(
            "a search answered with no Bundle".to_owned(),
        ));
    }
    let matched = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, |entries| {
            entries
                .iter()
                .filter(|e| e.pointer("/search/mode").and_then(Value::as_str) != Some("include"))
                .count()
        });
    if resource::next_link(bundle).is_some() && matched < held {
        return Err(ProxyError::UpstreamBody(format!(
            "the upstream paged one page's ids itself: its largest page is smaller than fhirseal's ({MAX_PAGE})"
        )));
    }
    if let Some(map) = bundle.as_object_mut() {
        map.insert("total".to_owned(), json!(total));
        map.insert("link".to_owned(), links);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirseal_adapters::profile::Profile;
    use fhirseal_adapters::search;

    fn paged(query: &str, total: usize) -> PagedQuery {
        let plan = search::plan(Some("Patient"), query, &Profile::default())
            .unwrap()
            .unwrap();
        PagedQuery {
            upstream: String::new(),
            client: query.to_owned(),
            paging: plan.paging(Some("Patient")).unwrap(),
            total,
        }
    }

    #[test]
    fn a_page_is_told_its_total_and_the_pages_beside_it() {
        let url = |offset: usize| format!("o={offset}");
        let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": 2,
            "link": [{"relation": "self", "url": "http://up/fhir/Patient?_id=1,2"}],
            "entry": [{"resource": {"resourceType": "Patient", "id": "1"}}]});
        let middle = paged("family=smith&_count=2&_offset=2", 5);
        place(&mut bundle, 5, 1, links(&middle, url)).unwrap();
        assert_eq!(bundle["total"], 5);
        assert_eq!(
            bundle["link"],
            json!([{"relation": "self", "url": "o=2"}, {"relation": "previous", "url": "o=0"},
                {"relation": "next", "url": "o=4"}])
        );
        assert_eq!(bundle["entry"][0]["resource"]["id"], "1");
        let first = paged("family=smith&_count=2", 2);
        assert_eq!(
            links(&first, url),
            json!([{"relation": "self", "url": "o=0"}])
        );
    }

    #[test]
    fn an_upstream_that_pages_a_page_itself_or_answers_no_bundle_is_refused() {
        let links = json!([]);
        let entry = json!({"resource": {"resourceType": "Patient", "id": "1"}, "search": {"mode": "match"}});
        let included = json!({"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}});
        let mut cut = json!({"resourceType": "Bundle", "entry": [entry, included],
            "link": [{"relation": "next", "url": "http://up/fhir?_getpages=x"}]});
        assert!(matches!(
            place(&mut cut, 9, 2, links.clone()),
            Err(ProxyError::UpstreamBody(_))
        ));
        // Every id asked for is there: the upstream's next link is its own not knowing.
        place(&mut cut, 9, 1, links.clone()).unwrap();
        assert_eq!(cut["link"], links);
        let mut odd = json!({"resourceType": "OperationOutcome"});
        assert!(place(&mut odd, 9, 0, links).is_err());
    }
}
