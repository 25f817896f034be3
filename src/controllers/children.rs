//! The objects a backend owns, declared once.
//!
//! Each child kind implements [`Child`] in its own module ([`pod`](super::pod),
//! [`service`](super::service), [`secret`](super::secret)): how it is built from the backend.
//! Finding a child (cache first), creating it and checking whom it belongs to are written here
//! once for every kind; [`run`](super::run) watches a kind with one [`owns`] line, which also
//! fills its cache. A new child is a new module implementing [`Child`], plus that line if its
//! changes should trigger a reconciliation.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;

use futures::FutureExt;
use futures::future::{self, BoxFuture, Shared};
use kube::api::PostParams;
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::controllers::Error;
use crate::controllers::context::Context;
use crate::crd::{FIELD_MANAGER, SessionLivedBackend};
use crate::names;

/// A kind of object made for each backend, named after it and owned by it.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The kind, as errors name it.
    const KIND: &'static str;

    /// The child `backend` needs, or `None` when it needs none of this kind.
    fn build(backend: &SessionLivedBackend, ctx: &Context) -> Option<Self>;

    /// Drops from a watched object what reconciliation never reads, before it is cached: at
    /// 10,000 backends the caches are most of the controller's memory. The default drops the
    /// managed fields.
    fn trim(&mut self) {
        trim(self);
    }
}

/// Caches of the watched child kinds, filled by the same watches that trigger reconciliations
/// (so a trigger never outruns its cache).
pub struct Caches {
    stores: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    /// Resolves once every store has been listed. Shared, because every reconciliation waits on
    /// it and kube's `Store::wait_until_ready` wakes only the last of several tasks waiting at
    /// once (one oneshot receiver, one waker): the others would wait forever.
    listed: Shared<BoxFuture<'static, ()>>,
}

impl Default for Caches {
    fn default() -> Self {
        Self { stores: HashMap::new(), listed: future::ready(()).boxed().shared() }
    }
}

impl Caches {
    fn insert<C: Child>(&mut self, store: Store<C>) {
        self.stores.insert(TypeId::of::<C>(), Box::new(store.clone()));
        let before = self.listed.clone();
        self.listed = async move {
            before.await;
            // An error means the watch was dropped: the controller is stopping.
            let _ = store.wait_until_ready().await;
        }
        .boxed()
        .shared();
    }

    pub(crate) fn get<C: Child>(&self) -> Option<&Store<C>> {
        self.stores.get(&TypeId::of::<C>()).and_then(|s| s.downcast_ref())
    }

    /// Waits until every cache has been listed once (at once, after that). Until then a
    /// reconciliation would miss each child in the cache and ask the API server: after a restart
    /// at 10,000 backends, whose list arrives before their pods', 20,000 reads.
    pub async fn listed(&self) {
        self.listed.clone().await;
    }
}

/// Objects per page when a child kind is listed (kube's default is 500). A page is parsed whole
/// before its objects are trimmed, and 500 pods — each with its containers, volumes and the
/// projected API token — took 30 MB while parsed: the controller's peak after a restart was one
/// page of pods (heaptrack, `cargo xtask bench scale` at 2,000 backends). A page of 100 costs a
/// fifth of that, and 100 list requests for 10,000 pods, which the API server serves in a second
/// or two.
const LIST_PAGE: u32 = 100;

/// Has `controller` watch the children of kind `C` that Spawner made (in `namespace`, or
/// everywhere): their changes trigger their backend's reconciliation, and they are cached in
/// `caches` for [`find`].
pub fn owns<C: Child>(
    controller: Controller<SessionLivedBackend>,
    client: &Client,
    namespace: Option<&str>,
    caches: &mut Caches,
) -> Controller<SessionLivedBackend> {
    let api: Api<C> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mine = watcher::Config::default()
        .labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE))
        .page_size(LIST_PAGE);
    let (store, writer) = reflector::store::<C>();
    caches.insert(store);
    let events = watcher(api, mine).modify(C::trim);
    controller.owns_stream(reflector::reflector(writer, events).default_backoff().touched_objects())
}

/// What the controller's caches drop from each object: its managed fields, which nothing
/// reads and which are often the larger part of an object.
pub fn trim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
}

/// What a reconciliation found of one child.
pub enum Found<C> {
    /// The backend's own.
    Mine(C),
    /// An object of the same name that belongs to someone else: in practice the child of a
    /// deleted backend of the same name, still being garbage-collected.
    Foreign,
    Missing,
}

impl<C> Found<C> {
    pub fn is_foreign(&self) -> bool {
        matches!(self, Found::Foreign)
    }
}

/// The backend's child of kind `C`: from the cache, or from the API server when the cache does
/// not have it (a cache still filling after a restart, or a child created a moment ago).
/// "Missing" is only ever concluded from the API server, never from a cache.
pub async fn find<C: Child>(ctx: &Context, backend: &SessionLivedBackend, namespace: &str) -> Result<Found<C>, Error> {
    let name = backend.name_any();
    let cached = ctx.caches.get::<C>().and_then(|c| c.get(&ObjectRef::new(&name).within(namespace)));
    let found = match cached {
        Some(cached) => Some((*cached).clone()),
        None => {
            api::<C>(ctx, namespace).get_opt(&name).await.map_err(|e| Error::api("get", C::KIND, &id(backend), e))?
        }
    };
    Ok(match found {
        Some(child) if owned_by(&child, backend) => Found::Mine(child),
        Some(_) => Found::Foreign,
        None => Found::Missing,
    })
}

/// Whether the cache has an object of kind `C` named after the backend (whoever owns it).
pub fn cached<C: Child>(ctx: &Context, backend: &SessionLivedBackend, namespace: &str) -> bool {
    ctx.caches.get::<C>().is_some_and(|c| c.get(&ObjectRef::new(&backend.name_any()).within(namespace)).is_some())
}

/// Creates the backend's child of kind `C` (if it needs one), never touching an existing object
/// of the same name: an apply would adopt the still-terminating child of a deleted namesake
/// (rewriting its owner reference) and report its death as the new backend's. "Already exists"
/// is an error here; the next reconcile finds the object and checks whom it belongs to.
pub async fn create<C: Child>(
    ctx: &Context,
    backend: &SessionLivedBackend,
    namespace: &str,
) -> Result<Option<C>, Error> {
    let Some(child) = C::build(backend, ctx) else { return Ok(None) };
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match api::<C>(ctx, namespace).create(&params, &child).await {
        Ok(created) => Ok(Some(created)),
        Err(e) => Err(Error::api("create", C::KIND, &id(backend), e)),
    }
}

/// [`create`], where an existing object of the name is taken as the child (a Secret, which is
/// made once and never changes).
pub async fn ensure<C: Child>(ctx: &Context, backend: &SessionLivedBackend, namespace: &str) -> Result<(), Error> {
    match create::<C>(ctx, backend, namespace).await {
        Ok(_) => Ok(()),
        Err(Error::Api { source: kube::Error::Api(status), .. }) if status.is_already_exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the object's controller owner reference is this very backend (same uid): a child of
/// a deleted backend with the same name must not be adopted.
pub fn owned_by<K: Resource>(child: &K, backend: &SessionLivedBackend) -> bool {
    let uid = backend.metadata.uid.as_deref();
    child.meta().owner_references.iter().flatten().any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

fn api<C: Child>(ctx: &Context, namespace: &str) -> Api<C> {
    Api::namespaced(ctx.client.clone(), namespace)
}

/// `namespace/name`, as logs and errors name a backend.
pub fn id(backend: &SessionLivedBackend) -> String {
    format!("{}/{}", backend.namespace().unwrap_or_default(), backend.name_any())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::Caches;

    #[tokio::test]
    async fn every_reconciliation_waiting_for_the_caches_goes_on_once_they_are_listed() {
        let (store, mut writer) = reflector::store::<Pod>();
        let mut caches = Caches::default();
        caches.insert(store);
        let caches = std::sync::Arc::new(caches);
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let caches = caches.clone();
                tokio::spawn(async move { caches.listed().await })
            })
            .collect();
        // Each waiter runs until it waits (this runtime has one thread: yielding lets them run).
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(waiting.iter().all(|w| !w.is_finished()), "nothing is listed yet");
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w).await.expect("every waiter goes on").unwrap();
        }
    }
}
