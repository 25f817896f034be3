//! Every backend as one cluster-wide watch has it, with a wake-up on each change: what the
//! router routes by and what the API's status streams and limits read, without a request to
//! the API server per question.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::crd::SessionLivedBackend;
use crate::text::ErrorChain;

/// The backends as the watch has them, and a wake-up for whoever waits on a change.
#[derive(Clone)]
pub struct BackendCache {
    store: Store<SessionLivedBackend>,
    changed: Arc<Notify>,
    /// The first list is in.
    listed: Arc<AtomicBool>,
    /// The watch is live: a backend missing from the cache does not exist (give or take the
    /// watch's lag).
    current: Arc<AtomicBool>,
}

/// Feeds a [`BackendCache`]: every watch event goes into the store, then wakes the waiters.
pub struct Feed {
    writer: reflector::store::Writer<SessionLivedBackend>,
    changed: Arc<Notify>,
    listed: Arc<AtomicBool>,
    current: Arc<AtomicBool>,
}

/// An empty cache and the feed that fills it.
pub fn cache() -> (BackendCache, Feed) {
    let (store, writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    let (listed, current) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let cache = BackendCache { store, changed: changed.clone(), listed: listed.clone(), current: current.clone() };
    (cache, Feed { writer, changed, listed, current })
}

impl BackendCache {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<SessionLivedBackend>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every backend in the cache.
    pub fn all(&self) -> Vec<Arc<SessionLivedBackend>> {
        self.store.state()
    }

    /// A wake-up for the next change. Create (and `enable`) it before looking, so a change
    /// between the look and the wait is not lost.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Whether the first list is in.
    pub fn is_synced(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// Whether the watch is live (a missing backend is really missing).
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }
}

impl Feed {
    pub fn apply(&mut self, event: &watcher::Event<SessionLivedBackend>) {
        self.writer.apply_watcher_event(event);
        match event {
            watcher::Event::InitDone => {
                self.listed.store(true, Ordering::Release);
                self.current.store(true, Ordering::Release);
            }
            // Only a live watch (after a list) delivers these.
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => self.current.store(true, Ordering::Release),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        self.changed.notify_waiters();
    }

    /// The watch failed: until it is back, the cache may lack backends created since.
    pub fn broken(&mut self) {
        self.current.store(false, Ordering::Release);
    }
}

/// Keeps `feed` in step with the backends (of `namespace`, or all) until `stop`.
pub async fn watch(client: Client, namespace: Option<&str>, mut feed: Feed, stop: CancellationToken) {
    let api: Api<SessionLivedBackend> = match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    // kube's default backoff grows to 30 s while the API server is away; backends created
    // after it comes back would wait that long to be seen. One watch can afford a 10 s cap.
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    // Readers need the spec and status; managed fields are most of an object.
    let events = watcher(api, watcher::Config::default()).backoff(backoff).modify(|backend| {
        backend.managed_fields_mut().clear();
    });
    let mut events = std::pin::pin!(events.take_until(stop.cancelled_owned()));
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => feed.apply(&event),
            // The watcher retries by itself. What is known keeps being served meanwhile.
            Err(err) => {
                tracing::warn!(error = %ErrorChain(&err), "backend watch failed; retrying");
                feed.broken();
            }
        }
    }
}
