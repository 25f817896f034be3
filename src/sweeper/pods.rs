//! Finds the backends on this node: a watch over the managed pods of `spec.nodeName`, one
//! follower task per pod that has an IP and a sidecar, aborted when the pod goes away.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ErrorChain;
use super::follower::{self, Target, follow};
use super::guards::GaugeGuard;
use super::metrics::Metrics;
use super::sweep::{ApiSweeper, BackendRef};
use crate::backoff::Backoff;
use crate::crd::SessionLivedBackend;
use crate::names;

pub use crate::names::GRACE_PERIOD_ANNOTATION;

/// Longest wait between attempts to re-establish the pod watch.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What to do about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodView {
    /// Follow the sidecar at `ip`.
    Follow { backend: BackendRef, ip: String, grace: Option<Duration> },
    /// Not (yet) followable: no IP yet, no sidecar, or not owned by a backend.
    Wait,
    /// Gone or going: stop following.
    Gone,
}

/// Classifies a pod (pure: unit tested without a cluster).
pub fn classify(pod: &Pod) -> PodView {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodView::Gone;
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return PodView::Gone;
    }
    let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else {
        return PodView::Wait;
    };
    let Some(spec) = pod.spec.as_ref() else { return PodView::Wait };
    // The sidecar may be a regular container or a native sidecar (an init container that keeps
    // running); a backend without one is never swept for idleness.
    let has_sidecar =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == names::SIDECAR_CONTAINER);
    if !has_sidecar {
        return PodView::Wait;
    }
    let Some(backend) = owner(pod) else { return PodView::Wait };
    // A pool's pod claimed a moment ago: its sidecar's idle time is the pool's until the
    // controller has handed it over (which restarts it).
    if pod.labels().contains_key(names::POOL_LABEL)
        && pod.annotations().get(names::HANDED_OVER_ANNOTATION) != Some(&backend.uid)
    {
        return PodView::Wait;
    }
    let grace =
        pod.annotations().get(GRACE_PERIOD_ANNOTATION).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    PodView::Follow { backend, ip, grace }
}

/// The backend that controls the pod: its UID is the delete precondition.
fn owner(pod: &Pod) -> Option<BackendRef> {
    let namespace = pod.namespace()?;
    let api_version = SessionLivedBackend::api_version(&());
    let kind = SessionLivedBackend::kind(&());
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind && o.api_version == api_version)
        .map(|o| BackendRef { namespace, name: o.name.clone(), uid: o.uid.clone() })
}

/// Everything a follower task needs, shared by all of them.
#[derive(Clone)]
pub struct Context {
    pub sweeper: ApiSweeper,
    pub metrics: Metrics,
    pub config: follower::Config,
}

/// The followers of this node's pods, keyed by pod UID.
///
/// An entry stays while its pod exists, even after its follower finished (swept, or the backend
/// was found gone), so a pod that lingers while terminating is not followed a second time.
struct Followers {
    context: Context,
    tasks: HashMap<String, JoinHandle<()>>,
}

impl Followers {
    fn apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.uid() else { return };
        match classify(pod) {
            PodView::Follow { backend, ip, grace } => {
                if !self.tasks.contains_key(&uid) {
                    let task = self.spawn(pod.name_any(), backend, ip, grace);
                    self.tasks.insert(uid, task);
                }
            }
            PodView::Wait => {}
            PodView::Gone => self.remove(&uid),
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some(task) = self.tasks.remove(uid) {
            task.abort();
        }
    }

    /// After a relist: pods not listed are gone.
    fn retain(&mut self, listed: &HashSet<String>) {
        let gone: Vec<String> = self.tasks.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    fn spawn(&self, pod: String, backend: BackendRef, ip: String, grace: Option<Duration>) -> JoinHandle<()> {
        let context = self.context.clone();
        let span = tracing::info_span!("follower", backend = %backend.name, namespace = %backend.namespace, %pod, %ip);
        tracing::info!(parent: &span, "following the backend's sidecar");
        tokio::spawn(
            async move {
                let _followed = GaugeGuard::inc(&context.metrics.followed_backends);
                let url = match Target::events_url(&ip, names::SIDECAR_ADMIN_PORT) {
                    Ok(url) => url,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot follow this pod");
                        return;
                    }
                };
                let Some(grace) = (match grace {
                    Some(grace) => Some(grace),
                    None => grace_period(&context, &backend).await,
                }) else {
                    tracing::info!("backend gone or replaced; not following");
                    return;
                };
                let target = Target { name: format!("{}/{}", backend.namespace, backend.name), url, grace };
                let sweeper = context.sweeper.for_backend(backend);
                let (status, _) = watch::channel(follower::Status::default());
                follow(target, sweeper, context.config, context.metrics, status).await;
            }
            .instrument(span),
        )
    }

    fn abort_all(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
    }
}

/// Reads the grace period from the backend, retrying API errors; `None` if it is gone.
async fn grace_period(context: &Context, backend: &BackendRef) -> Option<Duration> {
    let mut backoff = Backoff::new(context.config.backoff_min, context.config.backoff_max);
    loop {
        match context.sweeper.grace_period(backend).await {
            Ok(grace) => return grace,
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %ErrorChain(&err),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot read the backend's grace period"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Watches this node's backend pods (in every namespace, or only `namespace`) and keeps one
/// follower per pod until `shutdown`.
pub async fn watch_pods(
    client: Client,
    node: &str,
    namespace: Option<&str>,
    context: Context,
    shutdown: CancellationToken,
) {
    let pods: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let config = watcher::Config::default()
        .labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE))
        .fields(&format!("spec.nodeName={node}"));
    // kube's default backoff grows to 30 s while the API server is away, so after it comes back
    // new pods would go unfollowed (their sweeps late) for up to that long. One watch per node
    // can afford a 10 s cap; the jitter spreads the nodes' retries.
    let backoff = Backoff::new(Duration::from_millis(500), WATCH_BACKOFF_MAX);
    let mut events = watcher::watcher(pods, config).backoff(backoff).boxed();
    let mut followers = Followers { context, tasks: HashMap::new() };
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        match event {
            None => break,
            Some(Err(err)) => {
                // The watcher retries with backoff by itself; followers keep running meanwhile.
                tracing::warn!(error = %ErrorChain(&err), "pod watch failed; retrying");
            }
            Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(Event::InitApply(pod))) => {
                if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.uid()) {
                    listed.insert(uid);
                }
                followers.apply(&pod);
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(listed) = listed.take() {
                    followers.retain(&listed);
                }
                tracing::info!(followed = followers.tasks.len(), "pod list synced");
            }
            Some(Ok(Event::Apply(pod))) => followers.apply(&pod),
            Some(Ok(Event::Delete(pod))) => {
                if let Some(uid) = pod.uid() {
                    followers.remove(&uid);
                }
            }
        }
    }
    followers.abort_all();
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    use super::*;

    fn backend_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("room-1".into()),
                namespace: Some("games".into()),
                uid: Some("pod-uid".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "spawner.dev/v1".into(),
                    kind: "SessionLivedBackend".into(),
                    name: "room-1".into(),
                    uid: "backend-uid".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    Container { name: "app".into(), ..Container::default() },
                    Container { name: names::SIDECAR_CONTAINER.into(), ..Container::default() },
                ],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.0.0.7".into()),
                ..PodStatus::default()
            }),
        }
    }

    fn followed(grace: Option<Duration>) -> PodView {
        PodView::Follow {
            backend: BackendRef { namespace: "games".into(), name: "room-1".into(), uid: "backend-uid".into() },
            ip: "10.0.0.7".into(),
            grace,
        }
    }

    #[test]
    fn a_running_backend_pod_with_a_sidecar_is_followed() {
        assert_eq!(classify(&backend_pod()), followed(None));
    }

    #[test]
    fn a_claimed_warm_pod_is_followed_only_once_handed_over_to_its_backend() {
        let mut pod = backend_pod();
        pod.labels_mut().insert(names::POOL_LABEL.into(), "lobby".into());
        assert_eq!(classify(&pod), PodView::Wait, "claimed, not handed over: the idle time is the pool's");
        pod.annotations_mut().insert(names::HANDED_OVER_ANNOTATION.into(), "another-backend-uid".into());
        assert_eq!(classify(&pod), PodView::Wait);
        pod.annotations_mut().insert(names::HANDED_OVER_ANNOTATION.into(), "backend-uid".into());
        assert_eq!(classify(&pod), followed(None));
    }

    #[test]
    fn the_grace_period_annotation_is_used_when_present() {
        let mut pod = backend_pod();
        pod.annotations_mut().insert(GRACE_PERIOD_ANNOTATION.into(), "42".into());
        assert_eq!(classify(&pod), followed(Some(Duration::from_secs(42))));
        pod.annotations_mut().insert(GRACE_PERIOD_ANNOTATION.into(), "soon".into());
        assert_eq!(classify(&pod), followed(None), "an unreadable annotation falls back to the backend");
    }

    #[test]
    fn a_native_sidecar_counts_as_a_sidecar() {
        let mut pod = backend_pod();
        let spec = pod.spec.as_mut().unwrap();
        let sidecar = spec.containers.pop().unwrap();
        spec.init_containers = Some(vec![sidecar]);
        assert_eq!(classify(&pod), followed(None));
    }

    #[test]
    fn a_pod_without_an_ip_waits() {
        let mut pod = backend_pod();
        pod.status.as_mut().unwrap().pod_ip = None;
        assert_eq!(classify(&pod), PodView::Wait);
    }

    #[test]
    fn a_pod_without_a_sidecar_is_not_followed() {
        let mut pod = backend_pod();
        pod.spec.as_mut().unwrap().containers.pop();
        assert_eq!(classify(&pod), PodView::Wait);
    }

    #[test]
    fn a_pod_not_controlled_by_a_backend_is_not_followed() {
        let mut pod = backend_pod();
        pod.metadata.owner_references.as_mut().unwrap()[0].kind = "ReplicaSet".into();
        assert_eq!(classify(&pod), PodView::Wait);
    }

    #[test]
    fn terminating_and_finished_pods_are_gone() {
        let mut terminating = backend_pod();
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(classify(&terminating), PodView::Gone);
        for phase in ["Succeeded", "Failed"] {
            let mut finished = backend_pod();
            finished.status.as_mut().unwrap().phase = Some(phase.into());
            assert_eq!(classify(&finished), PodView::Gone, "{phase}");
        }
    }
}
