//! How many live backends each API key has, and the check before it makes another.
//!
//! Backends made through the API carry their key's id as a label, so the count is read from
//! the backend cache. A backend just created may not be in the cache yet: it is remembered
//! until it is, and the check and the create of one key run one at a time, so racing callers
//! cannot together pass the limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::backend_cache::BackendCache;
use crate::client::{State, state};

/// Label on a backend made through the API: the id of the key that made it.
pub const API_KEY_LABEL: &str = "spawner.dev/api-key";

/// A created backend is counted from memory until the cache has it, at most this long (the
/// watch lags a create by milliseconds; a backend deleted before the cache showed it must not
/// count for long).
const REMEMBER: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Limits {
    keys: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Recent>>>>>,
}

/// What a key did that the cache may not show yet: backends it made, and backends deleted.
#[derive(Default)]
pub struct Recent {
    made: Vec<(String, String, Instant)>,
    deleted: Vec<(String, String, Instant)>,
}

impl Recent {
    /// Live backends of `key` now: the cache's, and those made since that it lacks, less those
    /// deleted since that it still shows as live.
    pub fn live(&mut self, cache: &BackendCache, key: &str) -> usize {
        self.made.retain(|(namespace, name, at)| at.elapsed() < REMEMBER && cache.get(namespace, name).is_none());
        self.deleted.retain(|(_, _, at)| at.elapsed() < REMEMBER);
        let deleted = &self.deleted;
        let live = cache
            .all()
            .into_iter()
            .filter(|b| b.labels().get(API_KEY_LABEL).map(String::as_str) == Some(key))
            .filter(|b| state(b) != State::Over)
            .filter(|b| {
                !deleted.iter().any(|(ns, n, _)| b.namespace().as_deref() == Some(ns.as_str()) && b.name_any() == *n)
            })
            .count();
        live + self.made.len()
    }

    pub fn made(&mut self, namespace: &str, name: &str) {
        self.made.push((namespace.into(), name.into(), Instant::now()));
    }

    /// `namespace/name` was deleted: it no longer counts, whatever the cache shows yet.
    pub fn deleted(&mut self, namespace: &str, name: &str) {
        self.made.retain(|(ns, n, _)| !(ns == namespace && n == name));
        self.deleted.push((namespace.into(), name.into(), Instant::now()));
    }
}

impl Limits {
    /// The key's lock: hold it across the check and the create.
    pub fn of(&self, key: &str) -> Arc<tokio::sync::Mutex<Recent>> {
        self.keys.lock().expect("limits lock").entry(key.into()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::client::{BackendRequest, Naming};

    fn backend(name: &str, key: &str) -> crate::crd::SessionLivedBackend {
        let mut backend = BackendRequest::from_pool(Naming::Name(name.into()), "games").to_backend();
        backend.metadata.namespace = Some("ns".into());
        backend.labels_mut().insert(API_KEY_LABEL.into(), key.into());
        backend
    }

    #[test]
    fn counts_what_the_cache_does_not_show_yet() {
        let (cache, mut feed) = crate::backend_cache::cache();
        feed.apply(&Event::Apply(backend("a", "k")));
        feed.apply(&Event::Apply(backend("other", "k2")));
        let mut recent = Recent::default();
        assert_eq!(recent.live(&cache, "k"), 1);

        // Made, not yet in the cache: counted once; once the cache has it, still once.
        recent.made("ns", "b");
        assert_eq!(recent.live(&cache, "k"), 2);
        feed.apply(&Event::Apply(backend("b", "k")));
        assert_eq!(recent.live(&cache, "k"), 2);

        // Deleted, the cache still showing it live: no longer counted.
        recent.deleted("ns", "a");
        assert_eq!(recent.live(&cache, "k"), 1);
        // Made and deleted before the cache saw it: not counted either.
        recent.made("ns", "c");
        recent.deleted("ns", "c");
        assert_eq!(recent.live(&cache, "k"), 1);
    }
}
