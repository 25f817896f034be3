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

/// Backends a key made that the cache may not show yet.
#[derive(Default)]
pub struct Recent {
    made: Vec<(String, String, Instant)>,
}

impl Recent {
    /// Live backends of `key` now: the cache's, and those made since that it lacks.
    pub fn live(&mut self, cache: &BackendCache, key: &str) -> usize {
        let live = cache
            .all()
            .into_iter()
            .filter(|b| b.labels().get(API_KEY_LABEL).map(String::as_str) == Some(key))
            .filter(|b| state(b) != State::Over)
            .count();
        self.made.retain(|(namespace, name, at)| at.elapsed() < REMEMBER && cache.get(namespace, name).is_none());
        live + self.made.len()
    }

    pub fn made(&mut self, namespace: &str, name: &str) {
        self.made.push((namespace.into(), name.into(), Instant::now()));
    }

    /// `namespace/name` was deleted: it no longer counts, whatever the cache shows yet.
    pub fn deleted(&mut self, namespace: &str, name: &str) {
        self.made.retain(|(ns, n, _)| !(ns == namespace && n == name));
    }
}

impl Limits {
    /// The key's lock: hold it across the check and the create.
    pub fn of(&self, key: &str) -> Arc<tokio::sync::Mutex<Recent>> {
        self.keys.lock().expect("limits lock").entry(key.into()).or_default().clone()
    }
}
