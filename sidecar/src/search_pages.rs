//! The ordered matches of identity searches the sidecar pages itself
//! ([`fhirseal_adapters::search::Paging`]), kept a few minutes in memory so that each page
//! after the first costs what a page costs, not what the blind-index lookup of every match
//! costs. A first page always looks the matches up afresh and replaces what was kept.
//!
//! Entries are named by a keyed hash of the search's identity criteria (never the criteria
//! themselves) and hold resource ids only. Time is passed in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Searches kept at once; the oldest goes first.
const KEPT: usize = 32;
/// How long a search's matches serve its later pages.
const KEPT_MS: u64 = 5 * 60 * 1000;
/// Ids kept at most, over every search (some 50 bytes each); a search matching more is not
/// kept, and its pages each look the matches up.
const KEPT_IDS: usize = 1_000_000;

/// A keyed hash of a search's identity criteria.
pub(crate) type SearchKey = [u8; 32];

/// The matches of the searches paged last.
#[derive(Debug, Default)]
pub(crate) struct MatchCache {
    entries: Mutex<VecDeque<Entry>>,
}

#[derive(Debug)]
struct Entry {
    key: SearchKey,
    at_ms: u64,
    ids: Arc<Vec<String>>,
}

impl MatchCache {
    /// The matches kept for `key`, if they were looked up less than [`KEPT_MS`] before `now_ms`.
    pub(crate) fn get(&self, key: &SearchKey, now_ms: u64) -> Option<Arc<Vec<String>>> {
        let entries = self.entries.lock().ok()?;
        entries
            .iter()
            .find(|e| &e.key == key && now_ms.saturating_sub(e.at_ms) < KEPT_MS)
            .map(|e| e.ids.clone())
    }

    /// Keeps `ids` as the matches of `key`, looked up at `now_ms`.
    pub(crate) fn put(&self, key: SearchKey, now_ms: u64, ids: Arc<Vec<String>>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|e| e.key != key && now_ms.saturating_sub(e.at_ms) < KEPT_MS);
        if ids.len() > KEPT_IDS {
            return;
        }
        while entries.len() >= KEPT
            || entries.iter().map(|e| e.ids.len()).sum::<usize>() + ids.len() > KEPT_IDS
        {
            entries.pop_front();
        }
        entries.push_back(Entry {
            key,
            at_ms: now_ms,
            ids,
        });
    }

    /// Forgets every search kept (after an erasure: a kept search must not name the erased
    /// person's resources).
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_serve_later_pages_for_a_while_and_the_newest_searches_are_kept() {
        let cache = MatchCache::default();
        let ids = Arc::new(vec!["1".to_owned(), "2".to_owned()]);
        cache.put([1; 32], 1_000, ids.clone());
        assert_eq!(cache.get(&[1; 32], 1_000 + KEPT_MS - 1), Some(ids.clone()));
        assert_eq!(cache.get(&[1; 32], 1_000 + KEPT_MS), None);
        assert_eq!(cache.get(&[2; 32], 1_000), None);
        // A new lookup replaces the old one.
        let fresh = Arc::new(vec!["3".to_owned()]);
        cache.put([1; 32], 2_000, fresh.clone());
        assert_eq!(cache.get(&[1; 32], 2_000), Some(fresh));
        for n in 0..KEPT as u8 {
            cache.put([n + 10; 32], 3_000, ids.clone());
        }
        assert_eq!(cache.get(&[1; 32], 3_000), None);
        assert_eq!(cache.get(&[10; 32], 3_000), Some(ids.clone()));
        assert_eq!(cache.entries.lock().unwrap().len(), KEPT);
        // Too many ids in all: the oldest go; a search over the bound is not kept.
        let big = Arc::new(vec![String::new(); KEPT_IDS - 1]);
        cache.put([99; 32], 3_000, big.clone());
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
        cache.put([98; 32], 3_000, Arc::new(vec![String::new(); KEPT_IDS + 1]));
        assert_eq!(cache.get(&[98; 32], 3_000), None);
        assert_eq!(cache.get(&[99; 32], 3_000), Some(big));
        cache.clear();
        assert_eq!(cache.get(&[99; 32], 3_000), None);
    }
}
