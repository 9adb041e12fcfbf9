//! Caches ref listings within one session (one git command's helper process), never across
//! sessions. Guarantee: a listing served from here was read from S3 after the git command that
//! asks for it began, so it can never hide a push that completed before that command started.
//! A push through a session drops that session's listing. (S3 has no conditional LIST, so a
//! cross-command cache could only be revalidated by listing again, which is the cost it saves.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::RemoteRefs;

/// Sessions are one git command; this only bounds memory if a client never says goodbye.
const ENTRY_LIFETIME: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListingKey {
    pub session: String,
    pub remote: String,
}

#[derive(Default)]
pub struct ListingCache {
    entries: Mutex<HashMap<ListingKey, (Instant, RemoteRefs, bool)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ListingCache {
    /// The session's listing, if it has one that includes HEAD when `with_head` asks for it.
    pub fn get(&self, key: &ListingKey, with_head: bool) -> Option<RemoteRefs> {
        let found = self.entries.lock().ok().and_then(|mut entries| {
            entries.retain(|_, (stored, _, _)| stored.elapsed() < ENTRY_LIFETIME);
            entries.get(key).filter(|(_, _, has_head)| *has_head || !with_head).map(|(_, listing, _)| listing.clone())
        });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: ListingKey, listing: RemoteRefs, with_head: bool) {
        if key.session.is_empty() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, (Instant::now(), listing, with_head));
        }
    }

    pub fn forget(&self, key: &ListingKey) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: &str) -> ListingKey {
        ListingKey { session: session.into(), remote: "s3://b/p".into() }
    }

    #[test]
    fn serves_only_the_same_session() {
        let cache = ListingCache::default();
        cache.put(key("a"), RemoteRefs::default(), true);
        assert!(cache.get(&key("a"), true).is_some());
        assert!(cache.get(&key("b"), true).is_none());
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }

    #[test]
    fn a_listing_without_head_cannot_answer_a_plain_list() {
        let cache = ListingCache::default();
        cache.put(key("a"), RemoteRefs::default(), false);
        assert!(cache.get(&key("a"), true).is_none());
        assert!(cache.get(&key("a"), false).is_some());
    }

    #[test]
    fn a_push_forgets_the_listing() {
        let cache = ListingCache::default();
        cache.put(key("a"), RemoteRefs::default(), true);
        cache.forget(&key("a"));
        assert!(cache.get(&key("a"), false).is_none());
    }

    #[test]
    fn anonymous_callers_are_never_cached() {
        let cache = ListingCache::default();
        cache.put(key(""), RemoteRefs::default(), true);
        assert!(cache.get(&key(""), true).is_none());
    }
}
