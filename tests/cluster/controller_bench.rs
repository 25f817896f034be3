//! The controller's benchmark (`cargo xtask bench controller`, which runs this file's ignored
//! test in release mode and passes its settings through `SPAWNER_BENCH_*` variables).
//!
//! 1. Burst: N backends (default 500) with an unmatchable nodeSelector, created as fast as a
//!    client with C requests in flight can (default 32), against the same client creating the
//!    same Pods and Services directly. Both timed from the first request until a watch has seen
//!    all N Pods and N Services (only Pods with `--no-service`). Target: controller throughput
//!    >= 80% of the raw client's.
//! 2. Ready latency: 20 backends one after the other (app + sidecar) against 20 bare Pods of the
//!    same app image; create-to-Ready as seen by a watch on the client side. Target: p50
//!    overhead <= 100 ms. Needs the images (`cargo xtask images`); skipped with a message if the
//!    sidecar image is not on the node.
//!
//! The API server's `apiserver_request_total` gives the writes each side's burst costs, per
//! backend (its own and the cluster components', e.g. the scheduler's).
//!
//! Not a test: it asserts nothing about time; it prints a report, and fails only when
//! something breaks (a backend never gets its pod, a watch fails).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use spawner::controllers::pod::SidecarConfig;
use spawner::crd::SessionLivedBackend;

use crate::support::controller::*;
use crate::support::writes::{api_writes, writes_per};
use crate::support::{self, TestEnv};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resolves once a watch on `api` has seen every name in `names`; `listed` fires once the
/// watch's initial list is done (so the clock starts on a live watch).
async fn all_seen<K>(api: Api<K>, names: HashSet<String>, listed: tokio::sync::oneshot::Sender<()>) -> Instant
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut missing = names;
    let mut listed = Some(listed);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    while !missing.is_empty() {
        match events.try_next().await.expect("watch failed").expect("watch ended") {
            watcher::Event::InitDone => {
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
            }
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                missing.remove(&object.name_any());
            }
            watcher::Event::Init | watcher::Event::Delete(_) => {}
        }
    }
    Instant::now()
}

/// Waits for the pods (and services, when the burst makes them) named `names` in `env`, watched
/// from *before* `create` runs; returns the time from the start of `create` until all are there.
async fn time_until_children_exist<F: std::future::Future<Output = ()>>(
    env: &TestEnv,
    names: &HashSet<String>,
    services: bool,
    create: F,
) -> Duration {
    let (pods_listed, pods_ready) = tokio::sync::oneshot::channel();
    let pods = tokio::spawn(all_seen(env.api::<Pod>(), names.clone(), pods_listed));
    pods_ready.await.expect("pod watch listed");
    let services = match services {
        true => {
            let (listed, ready) = tokio::sync::oneshot::channel();
            let watch = tokio::spawn(all_seen(env.api::<Service>(), names.clone(), listed));
            ready.await.expect("service watch listed");
            Some(watch)
        }
        false => None,
    };
    let start = Instant::now();
    create.await;
    let mut done = pods.await.unwrap();
    if let Some(services) = services {
        done = done.max(services.await.unwrap());
    }
    done - start
}

/// What the burst makes: token auth or not, a Service or not.
#[derive(Clone, Copy)]
struct Shape {
    auth: &'static str,
    services: bool,
}

fn bench_backend(name: &str, shape: Shape) -> SessionLivedBackend {
    backend(
        name,
        json!({"template": unschedulable_template(), "auth": {"mode": shape.auth},
               "service": {"enabled": shape.services}}),
    )
}

/// One side of the burst: the time until every child exists, and the API writes made meanwhile
/// (everyone's: the side's own and the cluster's components'), per backend.
struct Side {
    elapsed: Duration,
    writes: f64,
    detail: String,
}

async fn burst(n: usize, concurrency: usize, shape: Shape) -> (Side, Side) {
    let names: HashSet<String> = (0..n).map(|i| format!("b{i:04}")).collect();

    // The raw client: the very Pods and Services the controller builds, without owner
    // references (there is no backend to own them).
    let raw = TestEnv::new("bench-raw").await;
    prepare(&raw).await;
    let before = api_writes(&raw.client).await;
    let raw_elapsed = time_until_children_exist(&raw, &names, shape.services, async {
        stream::iter(names.iter().cloned())
            .for_each_concurrent(concurrency, |name| {
                let (pods, services) = (raw.api::<Pod>(), raw.api::<Service>());
                let mut backend = bench_backend(&name, shape);
                backend.metadata.namespace = Some(raw.namespace.clone());
                async move { create_without_controller(&pods, &services, &backend).await }
            })
            .await;
    })
    .await;
    let (writes, detail) = writes_per(&before, &api_writes(&raw.client).await, n);
    let raw_side = Side { elapsed: raw_elapsed, writes, detail };
    // The namespace's 500 Pods and Services are deleted before the controller's turn, not
    // during it.
    raw.delete_and_wait(Duration::from_secs(300)).await;

    let env = TestEnv::new("bench-controller").await;
    prepare(&env).await;
    let controller = ControllerProcess::start(&env, &["--log-format=json"]);
    controller.wait_for_metric("spawner_controller_reconciles_total", Duration::from_secs(60)).await;
    let before = api_writes(&env.client).await;
    let controller_elapsed = time_until_children_exist(&env, &names, shape.services, async {
        stream::iter(names.iter().cloned())
            .for_each_concurrent(concurrency, |name| {
                let api = env.api::<SessionLivedBackend>();
                async move {
                    api.create(&PostParams::default(), &bench_backend(&name, shape)).await.expect("backend");
                }
            })
            .await;
    })
    .await;
    let (writes, detail) = writes_per(&before, &api_writes(&env.client).await, n);
    drop(controller);
    (raw_side, Side { elapsed: controller_elapsed, writes, detail })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Create-to-Ready of `count` objects made one after the other by `create`, watched by `ready`.
async fn ready_latencies<F, Fut>(count: usize, mut create_and_wait: F) -> Vec<Duration>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(create_and_wait(format!("r{i:02}")).await);
    }
    out.sort();
    out
}

async fn sidecar_image_present(env: &TestEnv) -> bool {
    // A pod that only pulls the sidecar image, never from a registry.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "image-check"},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "sidecar", "image": SidecarConfig::default().image, "imagePullPolicy": "Never", "args": ["--help"]},
            {"name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never", "args": ["exit", "0", "0"]}
        ]}
    }))
    .unwrap();
    let pods = env.api::<Pod>();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let decided = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| {
            cs.iter().all(|c| {
                let state = c.state.as_ref();
                state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                        == Some("ErrImageNeverPull")
            })
        })
    };
    let pod = support::wait_for(&pods, "image-check", decided, Duration::from_secs(60)).await.unwrap();
    let ok =
        pod.status.unwrap().container_statuses.unwrap().iter().all(|c| c.state.as_ref().unwrap().waiting.is_none());
    let _ = pods.delete("image-check", &Default::default()).await;
    ok
}

async fn ready(count: usize) -> Option<(Vec<Duration>, Vec<Duration>)> {
    let env = TestEnv::new("bench-ready").await;
    prepare(&env).await;
    if !sidecar_image_present(&env).await {
        return None;
    }
    let pods = env.api::<Pod>();
    let bare = ready_latencies(count, |name| {
        let pods = pods.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("bare-{name}")},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "app", "image": APP_IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"],
                    "env": [{"name": "PORT", "value": "8080"}]
                }]}
            }))
            .unwrap();
            let start = Instant::now();
            pods.create(&PostParams::default(), &pod).await.unwrap();
            support::wait_for(
                &pods,
                &pod.name_any(),
                kube::runtime::wait::conditions::is_pod_running(),
                Duration::from_secs(120),
            )
            .await;
            let ready = |p: Option<&Pod>| {
                p.and_then(|p| p.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            };
            support::wait_for(&pods, &pod.name_any(), ready, Duration::from_secs(120)).await;
            start.elapsed()
        }
    })
    .await;

    let _controller = ControllerProcess::start(&env, &[]);
    let backends = env.api::<SessionLivedBackend>();
    let with_sidecar = ready_latencies(count, |name| {
        let backends = backends.clone();
        async move {
            let start = Instant::now();
            backends.create(&PostParams::default(), &backend(&name, json!({}))).await.unwrap();
            support::wait_for(&backends, &name, has_condition("Ready", "True"), Duration::from_secs(120)).await;
            start.elapsed()
        }
    })
    .await;
    Some((bare, with_sidecar))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `cargo xtask bench controller`"]
async fn bench_controller() {
    let n = setting("SPAWNER_BENCH_BACKENDS", 500);
    let concurrency = setting("SPAWNER_BENCH_CONCURRENCY", 32);
    let ready_count = setting("SPAWNER_BENCH_READY", 20);
    let auth = if std::env::var("SPAWNER_BENCH_AUTH").is_ok_and(|v| v == "Token") { "Token" } else { "None" };
    let services = std::env::var("SPAWNER_BENCH_SERVICES").as_deref() != Ok("false");
    let shape = Shape { auth, services };

    let made = if services { "pods+services" } else { "pods" };
    println!("burst: {n} backends (auth {auth}, {made}), {concurrency} requests in flight");
    let (raw, controller) = burst(n, concurrency, shape).await;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let ratio = rate(controller.elapsed) / rate(raw.elapsed);
    println!("  raw client:  {:>8.2?}  {:>7.1} {made}/s", raw.elapsed, rate(raw.elapsed));
    println!("  controller:  {:>8.2?}  {:>7.1} backends/s", controller.elapsed, rate(controller.elapsed));
    println!("  ratio: {:.0}% of the raw client's throughput (target >= 80%)", ratio * 100.0);
    println!("  API writes per backend until every child exists (apiserver_request_total, everyone's):");
    println!("    raw client: {:.2} ({})", raw.writes, raw.detail);
    println!("    controller: {:.2} ({})", controller.writes, controller.detail);
    println!(
        "    writes ratio: {:.0}% (the throughput ratio if each write costs the API server the same)",
        raw.writes / controller.writes * 100.0
    );

    if ready_count == 0 {
        return;
    }
    match ready(ready_count).await {
        None => println!("ready: skipped, the sidecar or app image is not on the node (`cargo xtask images`)"),
        Some((bare, sidecar)) => {
            let (b50, b99) = (percentile(&bare, 0.5), percentile(&bare, 0.99));
            let (s50, s99) = (percentile(&sidecar, 0.5), percentile(&sidecar, 0.99));
            println!("ready: {ready_count} sequentially, create-to-Ready seen by a client watch");
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!("  bare pod:             p50 {:>6.0} ms  p99 {:>6.0} ms", ms(b50), ms(b99));
            println!("  backend with sidecar: p50 {:>6.0} ms  p99 {:>6.0} ms", ms(s50), ms(s99));
            println!(
                "  overhead p50: {:.0} ms (target <= 100 ms)",
                s50.as_secs_f64() * 1000.0 - b50.as_secs_f64() * 1000.0
            );
        }
    }
}
