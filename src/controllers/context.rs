//! What every reconciliation shares: the client, the settings, the Event recorder, the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};

use crate::controllers::children::Caches;
use crate::controllers::claim_key::ClaimKeys;
use crate::controllers::metrics::Metrics;
use crate::controllers::pod::SidecarConfig;
use crate::controllers::{Error, network_policy};
use crate::crd::FIELD_MANAGER;
use crate::crd::{SessionLivedBackend, SessionLivedBackendPool};

/// Default base of the URLs in `status.url` (the local cluster's NodePort).
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:30080";
/// Default time a Failed backend is kept (for `kubectl describe`) before it is deleted.
pub const DEFAULT_FAILED_RETENTION: Duration = Duration::from_secs(600);

/// The controller's settings (from its command line).
#[derive(Clone, Debug)]
pub struct Config {
    /// Base of `status.url`: `<base_url>/p/<namespace>/<name>/`.
    pub base_url: String,
    pub sidecar: SidecarConfig,
    /// How long a Failed backend is kept before it is deleted.
    pub failed_retention: Duration,
    /// What warm pods' claim keys are derived from.
    pub claim_keys: ClaimKeys,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            sidecar: SidecarConfig::default(),
            failed_retention: DEFAULT_FAILED_RETENTION,
            claim_keys: ClaimKeys::default(),
        }
    }
}

/// Where "now" comes from: the wall clock, or a fixed instant in unit tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// State shared by all reconciliations.
pub struct Context {
    pub client: Client,
    pub config: Config,
    /// One recorder for the whole controller: it deduplicates repeated Events into series.
    pub recorder: Recorder,
    /// Who publishes the Events that do not repeat (see [`Context::publish`]).
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Consecutive failures per backend (namespace/name), for the error policy's backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Caches of the watched children. Empty in unit tests: reads go to the API server.
    pub caches: Caches,
    /// The pools, as the pools' controller sees them. `None` in unit tests.
    pub pools: Option<Store<SessionLivedBackendPool>>,
    /// Namespaces whose NetworkPolicies this process has applied.
    pub isolated_namespaces: network_policy::Isolated,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: crate::names::CONTROLLER.to_string(), instance };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            config,
            metrics,
            clock: Arc::new(Timestamp::now),
            failures: Mutex::default(),
            caches: Caches::default(),
            pools: None,
            isolated_namespaces: network_policy::Isolated::default(),
        }
    }

    /// Same context reading pools from this cache first.
    pub fn with_pools(mut self, pools: Store<SessionLivedBackendPool>) -> Self {
        self.pools = Some(pools);
        self
    }

    /// Same context reading children from these caches first.
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = caches;
        self
    }

    /// Same context with a fixed clock (unit tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Publishes an Event on `object` (a backend or a pool). A lost Event is logged, never
    /// fatal: it must not stop a reconciliation.
    ///
    /// What can repeat on one object — warnings (NotReady while a backend flaps) and a pool's
    /// Events (a refill after each claim) — goes through the shared recorder, which turns
    /// repeats into one Event with a count. A backend's normal Events are milestones that come
    /// once (PodCreated, Ready...): they skip that recorder, whose cache keeps every Event for
    /// six minutes and was, at 3,000 backends, 15 % of the controller's heap (heaptrack under
    /// `cargo xtask bench scale`).
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        let repeats = type_ == EventType::Warning || K::kind(&()) != SessionLivedBackend::kind(&());
        let result = match repeats {
            true => self.recorder.publish(&event, &object.object_ref(&())).await,
            false => {
                Recorder::new(self.client.clone(), self.reporter.clone()).publish(&event, &object.object_ref(&())).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(object = %object.name_any(), reason, error = %e, "failed to publish Event");
        }
    }

    /// Writes `status` as the status of `object`, a `kind` (server-side apply, Spawner's field
    /// manager). An object deleted meanwhile is not an error: there is nothing left to report on.
    pub async fn apply_status<K>(
        &self,
        object: &K,
        kind: &'static str,
        status: &impl serde::Serialize,
        id: &str,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let patch = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&object.name_any(), &params, &Patch::Apply(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(Error::Api { action: "patch status of", kind, backend: id.to_string(), source: e }),
        }
    }

    /// Records one more failure of `key` and returns how many in a row.
    pub fn failed(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
