//! Reconcile scenarios against a fake API server (tower-test), one scenario per test.
//!
//! The fake keeps Pods, Services and Secrets in memory and answers the handful of calls the
//! reconciler makes, recording each one, so a test reads as "given this cluster, reconciling
//! this backend makes these calls and leaves this status". Behaviour against a real API server
//! (SSA semantics, RBAC, garbage collection) is covered by tests/cluster/controller.rs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::context::{Config, Context};
use super::fixtures::{BackendExt, PodExt, at};
use super::metrics::Metrics;
use super::reconcile::{error_policy, reconcile};
use crate::crd::{Phase, SessionLivedBackend, SessionLivedBackendStatus};

/// The cluster as the fake API server sees it (namespace `room` only).
#[derive(Default)]
struct Cluster {
    /// "pods/game" → object.
    objects: BTreeMap<String, Value>,
    /// "METHOD path-after-namespace", in order.
    calls: Vec<String>,
    events: Vec<Value>,
    status: Option<Value>,
    /// Answer for pod creation, instead of accepting it.
    refuse_pods: Option<(u16, &'static str, &'static str)>,
    /// Answer every GET of a pod with this HTTP status.
    fail_pod_reads: Option<u16>,
}

impl Cluster {
    fn with(mut self, key: &str, object: Value) -> Self {
        self.objects.insert(key.to_string(), object);
        self
    }

    fn handle(&mut self, method: &Method, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        let rest = path.split_once("/namespaces/room/").map_or(path, |(_, r)| r).to_string();
        self.calls.push(format!("{method} {rest}"));
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let parts: Vec<&str> = rest.split('/').collect();
        match (method.clone(), parts.as_slice()) {
            (Method::GET, ["pods", _]) if self.fail_pod_reads.is_some() => {
                (self.fail_pod_reads.unwrap(), status_body(500, "InternalError", "etcdserver: request timed out"))
            }
            (Method::GET, [kind, name]) => match self.objects.get(&format!("{kind}/{name}")) {
                Some(o) => (200, o.clone()),
                None => (404, status_body(404, "NotFound", "not found")),
            },
            (Method::POST, ["pods"]) if self.refuse_pods.is_some() => {
                let (code, reason, message) = self.refuse_pods.unwrap();
                (code, status_body(code, reason, message))
            }
            (Method::PATCH, ["sessionlivedbackends", name, "status"]) => {
                assert!(
                    query.contains("fieldManager=spawner") && query.contains("force=true"),
                    "status by SSA: {query}"
                );
                self.status = Some(body["status"].clone());
                let mut backend = serde_json::to_value(SessionLivedBackend::test().named(name)).unwrap();
                backend["status"] = body["status"].clone();
                (200, backend)
            }
            (Method::POST, ["events"]) => {
                self.events.push(body.clone());
                (201, body)
            }
            // The recorder's next count of an Event it has published.
            (Method::PATCH, ["events", _]) => (200, body),
            (Method::POST, [kind]) => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = format!("{kind}/{name}");
                if self.objects.contains_key(&key) {
                    return (409, status_body(409, "AlreadyExists", "already exists"));
                }
                let mut object = body;
                object["metadata"]["uid"] = json!(format!("uid-{key}"));
                self.objects.insert(key, object.clone());
                (201, object)
            }
            (Method::DELETE, ["sessionlivedbackends", _]) => (200, status_body(200, "", "")),
            (Method::PATCH, ["networkpolicies", name]) => {
                assert!(
                    query.contains("fieldManager=spawner") && query.contains("force=true"),
                    "policies by SSA: {query}"
                );
                self.objects.insert(format!("networkpolicies/{name}"), body.clone());
                (200, body)
            }
            other => panic!("unexpected call {other:?}"),
        }
    }

    /// Calls that change something (everything but GET).
    fn writes(&self) -> Vec<&str> {
        self.calls.iter().filter(|c| !c.starts_with("GET")).map(String::as_str).collect()
    }

    fn event_reasons(&self) -> Vec<&str> {
        self.events.iter().filter_map(|e| e["reason"].as_str()).collect()
    }

    fn status(&self) -> SessionLivedBackendStatus {
        serde_json::from_value(self.status.clone().expect("status written")).unwrap()
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    let status = if code < 400 { "Success" } else { "Failure" };
    json!({"kind": "Status", "apiVersion": "v1", "status": status, "code": code, "reason": reason, "message": message})
}

/// A context whose client talks to `cluster`, with the clock stopped at `now`; the namespace's
/// NetworkPolicies count as applied (one test covers applying them).
fn context(cluster: Arc<Mutex<Cluster>>, now: i64) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let (ctx, server) = unisolated_context(cluster, now);
    ctx.isolated_namespaces.mark("room");
    (ctx, server)
}

/// [`context`] of a controller that has not yet applied the namespace's NetworkPolicies.
fn unisolated_context(cluster: Arc<Mutex<Cluster>>, now: i64) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let query = parts.uri.query().unwrap_or_default().to_string();
            let (code, value) = cluster.lock().unwrap().handle(&parts.method, parts.uri.path(), &query, &bytes);
            let response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    let client = Client::new(service, "default");
    let ctx = Context::new(client, Config::default(), Arc::new(Metrics::default()), None)
        .with_clock(Arc::new(move || at(now)));
    (Arc::new(ctx), server)
}

async fn reconcile_in(
    cluster: &Arc<Mutex<Cluster>>,
    backend: SessionLivedBackend,
    now: i64,
) -> Result<Action, super::Error> {
    let (ctx, server) = context(cluster.clone(), now);
    let result = reconcile(Arc::new(backend), ctx).await;
    server.abort();
    result
}

fn shared(cluster: Cluster) -> Arc<Mutex<Cluster>> {
    Arc::new(Mutex::new(cluster))
}

fn owned_pod(pod: Pod) -> Value {
    let mut pod = serde_json::to_value(pod).unwrap();
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "name": "game",
        "uid": "uid-game", "controller": true
    }]);
    pod
}

fn owned_service() -> Value {
    serde_json::to_value(super::service::build_service(&SessionLivedBackend::test())).unwrap()
}

#[tokio::test]
async fn a_new_backend_gets_its_secret_service_and_pod_then_a_pending_status() {
    let cluster = shared(Cluster::default());
    let action = reconcile_in(&cluster, SessionLivedBackend::test(), 1001).await.unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(
        c.writes(),
        vec!["POST services", "POST secrets", "POST pods", "PATCH sessionlivedbackends/game/status", "POST events"]
    );
    let pod = &c.objects["pods/game"];
    assert_eq!(pod["spec"]["containers"][1]["name"], "spawner-sidecar");
    assert_eq!(c.status().phase, Some(Phase::Pending));
    assert_eq!(c.status().url.as_deref(), Some("http://127.0.0.1:30080/p/room/game/"));
    assert_eq!(c.event_reasons(), vec!["PodCreated"]);
    assert_eq!(action, Action::requeue(Duration::from_secs(299)), "woken for the startup timeout");
}

#[tokio::test]
async fn a_namespace_is_isolated_before_its_first_pod_and_only_once_per_controller() {
    let cluster = shared(Cluster::default());
    let (ctx, server) = unisolated_context(cluster.clone(), 1001);
    // At the same time, as after a restart: the second waits for the first's apply.
    let (first, second) = futures::join!(
        reconcile(Arc::new(SessionLivedBackend::test()), ctx.clone()),
        reconcile(Arc::new(SessionLivedBackend::test().named("other")), ctx.clone()),
    );
    first.unwrap();
    second.unwrap();
    reconcile(Arc::new(SessionLivedBackend::test().named("third")), ctx).await.unwrap();
    server.abort();
    let c = cluster.lock().unwrap();
    let writes = c.writes();
    let policies: Vec<usize> = (0..writes.len()).filter(|&i| writes[i].starts_with("PATCH networkpolicies/")).collect();
    assert_eq!(policies.len(), 3, "three policies, applied once: {writes:?}");
    let first_pod = writes.iter().position(|w| *w == "POST pods").unwrap();
    assert!(policies.iter().all(|&i| i < first_pod), "policies before the first pod: {writes:?}");
    for name in
        [super::network_policy::INGRESS, super::network_policy::EGRESS_PUBLIC, super::network_policy::EGRESS_NONE]
    {
        assert!(c.objects.contains_key(&format!("networkpolicies/{name}")), "{name} applied");
    }
}

#[tokio::test]
async fn without_auth_no_secret_is_created() {
    let cluster = shared(Cluster::default());
    reconcile_in(&cluster, SessionLivedBackend::test().auth_none(), 1001).await.unwrap();
    assert!(!cluster.lock().unwrap().writes().iter().any(|w| w.contains("secrets")));
}

#[tokio::test]
async fn a_backend_without_a_service_never_asks_for_one() {
    let cluster = shared(Cluster::default());
    reconcile_in(&cluster, SessionLivedBackend::test().without_service(), 1001).await.unwrap();
    assert_eq!(
        cluster.lock().unwrap().writes(),
        vec!["POST secrets", "POST pods", "PATCH sessionlivedbackends/game/status", "POST events"]
    );
    // The next reconcile looks for the pod, not for a Service.
    let mut backend = SessionLivedBackend::test().without_service();
    backend.status = Some(cluster.lock().unwrap().status());
    reconcile_in(&cluster, backend, 1002).await.unwrap();
    let c = cluster.lock().unwrap();
    assert!(c.calls.iter().any(|call| call == "GET pods/game"), "{:?}", c.calls);
    assert!(!c.calls.iter().any(|call| call.contains("services")), "{:?}", c.calls);
}

#[tokio::test]
async fn an_existing_token_secret_is_kept_as_it_is() {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "game"}, "data": {"token": "b2xk"}});
    let cluster = shared(Cluster::default().with("secrets/game", secret.clone()));
    reconcile_in(&cluster, SessionLivedBackend::test(), 1001).await.unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(c.objects["secrets/game"], secret, "the token is never rotated");
    assert_eq!(c.writes().iter().filter(|w| w.contains("secrets")).count(), 1, "one create attempt, no update");
}

#[tokio::test]
async fn a_second_reconcile_of_an_unchanged_backend_only_reads() {
    let cluster = shared(Cluster::default());
    reconcile_in(&cluster, SessionLivedBackend::test(), 1001).await.unwrap();
    let mut backend = SessionLivedBackend::test();
    backend.status = Some(cluster.lock().unwrap().status());
    cluster.lock().unwrap().calls.clear();
    reconcile_in(&cluster, backend, 1002).await.unwrap();
    assert_eq!(cluster.lock().unwrap().writes(), Vec::<&str>::new());
}

#[tokio::test]
async fn a_pod_getting_ready_makes_the_backend_ready_and_announces_it() {
    let pod = Pod::test().scheduled_to("node-a").running().ready();
    let cluster = shared(Cluster::default().with("pods/game", owned_pod(pod)).with("services/game", owned_service()));
    let (ctx, server) = context(cluster.clone(), 1005);
    let backend = SessionLivedBackend::test().phase(Phase::Running);
    let action = reconcile(Arc::new(backend), ctx.clone()).await.unwrap();
    server.abort();
    let c = cluster.lock().unwrap();
    assert_eq!(c.writes(), vec!["PATCH sessionlivedbackends/game/status", "POST events"]);
    assert_eq!(c.status().phase, Some(Phase::Ready));
    assert_eq!(c.event_reasons(), vec!["Ready"]);
    let mut registry = prometheus_client::registry::Registry::default();
    Metrics::clone(&ctx.metrics).register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("spawner_controller_create_to_ready_seconds_count 1"), "{text}");
    assert_eq!(action, Action::await_change(), "no deadline left without maxLifetimeSeconds");
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_fails_the_backend_with_its_message() {
    let message = "Pod \"game\" is invalid: spec.containers[0].image: Required value";
    let cluster = shared(Cluster { refuse_pods: Some((422, "Invalid", message)), ..Cluster::default() });
    let action = reconcile_in(&cluster, SessionLivedBackend::test().auth_none(), 1001).await.unwrap();
    let c = cluster.lock().unwrap();
    let status = c.status();
    assert_eq!(status.phase, Some(Phase::Failed));
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!((failed.reason.as_str(), failed.message.as_str()), ("InvalidPod", message));
    assert_eq!(c.event_reasons(), vec!["InvalidPod"]);
    assert_eq!(c.events[0]["type"], "Warning");
    assert_eq!(action, Action::requeue(Duration::from_secs(600)), "next look: when the retention ends");
}

#[tokio::test]
async fn a_failed_backend_never_tries_its_pod_again() {
    let cluster = shared(Cluster { refuse_pods: Some((422, "Invalid", "invalid")), ..Cluster::default() });
    let backend = SessionLivedBackend::test().failed_at(1001);
    reconcile_in(&cluster, backend, 1002).await.unwrap();
    let c = cluster.lock().unwrap();
    assert!(!c.calls.iter().any(|w| w.contains("pods")), "no hot loop on an invalid pod: {:?}", c.calls);
}

#[tokio::test]
async fn a_backend_past_its_max_lifetime_is_deleted_with_an_event() {
    let cluster = shared(Cluster::default());
    let backend = SessionLivedBackend::test().max_lifetime(60).ready_at(1004);
    let action = reconcile_in(&cluster, backend, 1060).await.unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(c.writes(), vec!["POST events", "DELETE sessionlivedbackends/game"]);
    assert_eq!(c.event_reasons(), vec!["MaxLifetimeReached"]);
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_failed_backend_is_deleted_once_its_retention_ends() {
    let cluster = shared(Cluster::default());
    let backend = SessionLivedBackend::test().failed_at(1001);
    reconcile_in(&cluster, backend, 1601).await.unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(c.event_reasons(), vec!["FailedRetentionExpired"]);
    assert!(c.writes().contains(&"DELETE sessionlivedbackends/game"));
}

#[tokio::test]
async fn a_pod_left_by_a_deleted_namesake_is_not_adopted() {
    let mut old = owned_pod(Pod::test());
    old["metadata"]["ownerReferences"][0]["uid"] = json!("uid-of-the-old-backend");
    let cluster = shared(Cluster::default().with("pods/game", old.clone()));
    let action = reconcile_in(&cluster, SessionLivedBackend::test().phase(Phase::Pending), 1001).await.unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(c.objects["pods/game"], old);
    assert!(!c.writes().iter().any(|w| w.contains("pods") || w.contains("services")), "{:?}", c.writes());
    assert_eq!(action, Action::requeue(Duration::from_secs(1)), "look again once garbage collection is done");
}

#[tokio::test]
async fn a_new_backend_whose_name_an_old_pod_still_holds_waits_instead_of_failing() {
    let mut old = owned_pod(Pod::test());
    old["metadata"]["ownerReferences"][0]["uid"] = json!("uid-of-the-old-backend");
    let cluster = shared(Cluster::default().with("pods/game", old.clone()));
    let action = reconcile_in(&cluster, SessionLivedBackend::test(), 1001).await.unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(c.objects["pods/game"], old);
    assert_eq!(c.status().phase, Some(Phase::Pending), "refused only because of the old pod: not Failed");
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_pod_deleted_under_a_running_backend_is_not_recreated() {
    let cluster = shared(Cluster::default().with("services/game", owned_service()));
    let backend = SessionLivedBackend::test().ready_at(1004);
    reconcile_in(&cluster, backend, 1050).await.unwrap();
    let c = cluster.lock().unwrap();
    assert!(!c.writes().contains(&"POST pods"));
    assert_eq!(c.status().phase, Some(Phase::Failed));
    assert_eq!(c.event_reasons(), vec!["PodLost"]);
}

#[tokio::test]
async fn an_api_error_names_the_step_and_the_backend_and_backs_off() {
    let cluster = shared(Cluster { fail_pod_reads: Some(500), ..Cluster::default() });
    let (ctx, server) = context(cluster.clone(), 1001);
    let backend = Arc::new(SessionLivedBackend::test().phase(Phase::Pending));
    let error = reconcile(backend.clone(), ctx.clone()).await.unwrap_err();
    server.abort();
    assert!(error.to_string().starts_with("failed to get Pod for backend room/game: "), "{error}");
    assert_eq!(error.metric_label(), "get");
    let delays: Vec<Action> = (0..3).map(|_| error_policy(backend.clone(), &error, ctx.clone())).collect();
    assert_eq!(
        delays,
        vec![
            Action::requeue(Duration::from_millis(500)),
            Action::requeue(Duration::from_secs(1)),
            Action::requeue(Duration::from_secs(2))
        ]
    );
}

#[tokio::test]
async fn a_pod_against_the_namespaces_pod_security_level_fails_the_backend() {
    let message = "pods \"game\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
    let cluster = shared(Cluster { refuse_pods: Some((403, "Forbidden", message)), ..Cluster::default() });
    reconcile_in(&cluster, SessionLivedBackend::test().auth_none(), 1001).await.unwrap();
    assert_eq!(cluster.lock().unwrap().status().phase, Some(Phase::Failed));
}

#[tokio::test]
async fn a_pod_refused_by_a_quota_is_retried_not_failed() {
    let message =
        "pods \"game\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=10, limited: pods=10";
    let cluster = shared(Cluster { refuse_pods: Some((403, "Forbidden", message)), ..Cluster::default() });
    let error = reconcile_in(&cluster, SessionLivedBackend::test().auth_none(), 1001).await.unwrap_err();
    assert!(error.to_string().contains("exceeded quota"), "{error}");
    assert!(cluster.lock().unwrap().status.is_none(), "no status written: the backend is not Failed");
}

#[tokio::test]
async fn a_repeated_warning_becomes_a_series_and_a_backends_milestones_are_not_kept() {
    let cluster = shared(Cluster::default());
    let (ctx, server) = context(cluster.clone(), 1001);
    let backend = SessionLivedBackend::test();
    for _ in 0..2 {
        ctx.publish(&backend, EventType::Warning, "NotReady", "flapping".to_string()).await;
        ctx.publish(&backend, EventType::Normal, "Ready", "back".to_string()).await;
    }
    server.abort();
    let c = cluster.lock().unwrap();
    let writes: Vec<&str> = c.writes().into_iter().map(|w| w.split('/').next().unwrap()).collect();
    assert_eq!(
        writes,
        ["POST events", "POST events", "PATCH events", "POST events"],
        "the second NotReady counts on the first; each Ready is its own, from no cache"
    );
}

#[tokio::test]
async fn a_started_backend_without_its_template_reconciles_as_the_whole_backend() {
    let mut started = SessionLivedBackend::test().ready_at(1003);
    started.status_mut().started_at = Some(super::status::time(at(1002)));
    let mut trimmed = started.clone();
    super::reconcile::trim_backend(&mut trimmed);
    assert!(trimmed.spec.template.is_none(), "the cache drops the template once the start is recorded");
    let pods = [
        Some(Pod::test().scheduled_to("node-a").running().ready()),
        Some(Pod::test().scheduled_to("node-a").running().app_terminated(1, "Error").phase("Failed")),
        None,
    ];
    for pod in pods {
        let outcome = async |backend: &SessionLivedBackend| {
            let cluster = match &pod {
                Some(pod) => Cluster::default().with("pods/game", owned_pod(pod.clone())),
                None => Cluster::default(),
            };
            let cluster = shared(cluster.with("services/game", owned_service()));
            let action = reconcile_in(&cluster, backend.clone(), 1010).await.unwrap();
            let c = cluster.lock().unwrap();
            (action, c.calls.clone(), c.status.clone(), c.event_reasons().join(","))
        };
        assert_eq!(outcome(&trimmed).await, outcome(&started).await, "{pod:?}");
    }

    let mut new = SessionLivedBackend::test().phase(Phase::Scheduled);
    super::reconcile::trim_backend(&mut new);
    assert!(new.spec.template.is_some(), "a backend whose application has not started keeps it");
}
