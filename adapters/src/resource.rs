//! Small reads and edits of FHIR resources as JSON that several parts of the sidecar make: a
//! tag added to `meta.tag`, a Bundle's entries' resources, and the `next` link of a page.

use serde_json::{json, Value};

/// Adds the tag `system|code` to `resource`'s `meta.tag`, making `meta` and its list when the
/// resource has none; a value that is no object is left alone.
pub fn add_tag(resource: &mut Value, system: &str, code: &str) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    if let Some(tags) = tags.as_array_mut() {
        tags.push(json!({"system": system, "code": code}));
    }
}

/// The resources of a Bundle's entries, in order (entries without one left out).
pub fn entry_resources(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
}

/// The URL of a Bundle page's `next` link, if it has one.
pub fn next_link(page: &Value) -> Option<&str> {
    page.get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_found_among_the_links() {
        let page = json!({"link": [
            {"relation": "self", "url": "s"}, {"relation": "next", "url": "n"}]});
        assert_eq!(next_link(&page), Some("n"));
        assert_eq!(
            next_link(&json!({"link": [{"relation": "self", "url": "s"}]})),
            None
        );
        assert_eq!(next_link(&json!({})), None);
    }

    #[test]
    fn a_tag_is_added_beside_the_others_or_as_the_first() {
        let mut tagged = json!({"resourceType": "Observation", "meta": {"tag": [{"code": "x"}]}});
        add_tag(&mut tagged, "urn:s", "h1");
        assert_eq!(
            tagged["meta"]["tag"][1],
            json!({"system": "urn:s", "code": "h1"})
        );
        let mut bare = json!({"resourceType": "Observation"});
        add_tag(&mut bare, "urn:s", "h1");
        assert_eq!(bare["meta"]["tag"][0]["system"], "urn:s");
        let mut odd = json!("not a resource");
        add_tag(&mut odd, "urn:s", "h1");
        assert_eq!(odd, json!("not a resource"));
    }

    #[test]
    fn a_bundles_resources_are_its_entries_resources() {
        let bundle = json!({"entry": [
            {"resource": {"id": "a"}},
            {"request": {"method": "DELETE", "url": "Patient/x"}},
            {"resource": {"id": "b"}}
        ]});
        let ids: Vec<&str> = entry_resources(&bundle)
            .filter_map(|r| r["id"].as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(entry_resources(&json!({})).count(), 0);
    }

    #[test]
    fn the_next_link_is_found_by_its_relation() {
        let page = json!({"link": [
            {"relation": "self", "url": "http://h/fhir?x"},
            {"relation": "next", "url": "http://h/fhir?page=2"}
        ]});
        assert_eq!(next_link(&page), Some("http://h/fhir?page=2"));
        assert_eq!(
            next_link(&json!({"link": [{"relation": "self", "url": "u"}]})),
            None
        );
        assert_eq!(next_link(&json!({})), None);
    }
}
