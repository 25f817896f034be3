//! The scale benchmark (`cargo xtask bench scale`, #18), which sets up kwok's simulated nodes,
//! runs this file's ignored test in release mode with its settings in `SPAWNER_SCALE_*`
//! variables, and removes the nodes afterwards.
//!
//! In one run, first the reference and then Spawner, each in a namespace of its own:
//! 1. create: half the objects at a fixed rate, the other half as fast as the API server takes
//!    them (C requests in flight). The raw client makes bare Pods with a Service each (the very
//!    objects the controller builds, without owners); Spawner gets backends. Create → Ready is
//!    timed per object from the create request to a watch seeing it Ready (pod Ready, backend
//!    phase Ready); the API server's `apiserver_request_total` gives the writes per object.
//! 2. Spawner only: the controller's RSS and CPU as 1,000, 5,000 and N backends are Ready; then
//!    SIGKILL, a new controller, and the time until it has re-listed and made a new backend Ready
//!    (and until it has reconciled every backend once), followed by a check that every child
//!    belongs to a backend that exists and every backend has exactly its children.
//! 3. delete: a request per object, timed until every child is gone.
//!
//! Not a test: nothing here asserts a time. It fails only when something breaks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use spawner::crd::{Phase, SessionLivedBackend};
use spawner::names;
use tokio::sync::Notify;

use crate::support::TestEnv;
use crate::support::controller::*;
use crate::support::writes::{api_writes, writes_per};

struct Settings {
    backends: usize,
    rate: usize,
    reference: usize,
    concurrency: usize,
    /// Whether backends (and the raw client's pods) get a Service each (`--no-service` clears it).
    services: bool,
    node_label: String,
    taint: String,
}

impl Settings {
    fn from_env() -> Self {
        let number =
            |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let text = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `cargo xtask bench scale`"))
        };
        Self {
            backends: number("SPAWNER_SCALE_BACKENDS", 10_000),
            rate: number("SPAWNER_SCALE_RATE", 50),
            reference: number("SPAWNER_SCALE_REFERENCE", 2_000),
            concurrency: number("SPAWNER_SCALE_CONCURRENCY", 32),
            services: std::env::var("SPAWNER_SCALE_SERVICES").as_deref() != Ok("false"),
            node_label: text("SPAWNER_SCALE_NODE_LABEL"),
            taint: text("SPAWNER_SCALE_TAINT"),
        }
    }

    /// A backend spec whose pod lands only on the simulated nodes.
    fn spec(&self) -> serde_json::Value {
        let template = json!({
            "containers": [{"name": "app", "image": APP_IMAGE, "args": ["serve"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
            "nodeSelector": {&self.node_label: "true"},
            "tolerations": [{"key": &self.taint, "operator": "Exists", "effect": "NoSchedule"}],
        });
        json!({"template": template, "startupTimeoutSeconds": STARTUP_TIMEOUT, "service": {"enabled": self.services}})
    }

    /// What the raw client makes per object, for the table.
    fn raw_objects(&self) -> &'static str {
        if self.services { "pods + services" } else { "pods" }
    }
}

/// What a watch has seen of one kind: the objects present now, when each was first Ready, and
/// when the set last changed.
struct Seen {
    present: HashSet<String>,
    ready_at: HashMap<String, Instant>,
    last_change: Instant,
}

/// A watch kept in the background, and a way to wait for what it has seen.
struct Tracker {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    /// Follows `events`; returns once the initial list is done.
    async fn start<K, S>(events: S, ready: fn(&K) -> bool) -> Self
    where
        K: Resource + Send + 'static,
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let seen = Arc::new(Mutex::new(Seen {
            present: HashSet::new(),
            ready_at: HashMap::new(),
            last_change: Instant::now(),
        }));
        let changed = Arc::new(Notify::new());
        let (listed, is_listed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (seen, changed) = (seen.clone(), changed.clone());
            async move {
                let mut listed = Some(listed);
                let mut relisted = HashSet::new();
                let mut events = std::pin::pin!(events.default_backoff());
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(e) => {
                            eprintln!("watch error (retrying): {e}");
                            continue;
                        }
                    };
                    let now = Instant::now();
                    let mut s = seen.lock().unwrap();
                    let note = |s: &mut Seen, object: &K| {
                        if ready(object) {
                            s.ready_at.entry(object.name_any()).or_insert(now);
                        }
                    };
                    match event {
                        watcher::Event::Init => relisted.clear(),
                        watcher::Event::InitApply(object) => {
                            note(&mut s, &object);
                            relisted.insert(object.name_any());
                        }
                        watcher::Event::InitDone => {
                            s.present = std::mem::take(&mut relisted);
                            if let Some(listed) = listed.take() {
                                let _ = listed.send(());
                            }
                        }
                        watcher::Event::Apply(object) => {
                            note(&mut s, &object);
                            s.present.insert(object.name_any());
                        }
                        watcher::Event::Delete(object) => {
                            s.present.remove(&object.name_any());
                        }
                    }
                    s.last_change = now;
                    drop(s);
                    changed.notify_waiters();
                }
            }
        });
        is_listed.await.expect("the watch listed");
        Self { seen, changed, task }
    }

    /// Full objects (for readiness).
    async fn full<K>(api: Api<K>, config: watcher::Config, ready: fn(&K) -> bool) -> Self
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        Self::start(watcher(api, config), ready).await
    }

    /// Metadata only (for presence), of the kind `K` in the namespace of `env`.
    async fn names<K>(env: &TestEnv, config: watcher::Config) -> Self
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api = Api::<PartialObjectMeta<K>>::namespaced(env.client.clone(), &env.namespace);
        Self::start(watcher(api, config), |_| false).await
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().present.len()
    }

    /// Waits until `done` holds for what the watch has seen; returns the instant of the change
    /// that made it hold.
    async fn wait(&self, what: &str, timeout: Duration, done: impl Fn(&Seen) -> bool) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.seen.lock().unwrap();
                if done(&s) {
                    return s.last_change;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: not done within {timeout:?}");
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), notified).await;
        }
    }

    /// Create → Ready of each name in `started`, sorted.
    fn latencies(&self, started: &HashMap<String, Instant>) -> Vec<Duration> {
        let s = self.seen.lock().unwrap();
        let mut out: Vec<Duration> = started
            .iter()
            .filter_map(|(name, t)| s.ready_at.get(name).map(|r| r.saturating_duration_since(*t)))
            .collect();
        out.sort();
        out
    }

    fn last_ready(&self) -> Option<Instant> {
        self.seen.lock().unwrap().ready_at.values().max().copied()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn backend_ready(backend: &SessionLivedBackend) -> bool {
    backend.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

/// Creates `names` with `create`: the first half at `rate` per second (each request sent on its
/// tick, whatever the ones before it are doing), the rest with `concurrency` in flight. Returns
/// when each create started, and the second half's throughput (objects per second).
async fn create_all<F, Fut>(
    names: &[String],
    rate: usize,
    concurrency: usize,
    create: F,
) -> (HashMap<String, Instant>, f64)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let started = Arc::new(Mutex::new(HashMap::new()));
    let (paced, burst) = names.split_at(names.len() / 2);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut in_flight = tokio::task::JoinSet::new();
    for name in paced {
        ticks.tick().await;
        started.lock().unwrap().insert(name.clone(), Instant::now());
        in_flight.spawn(create.clone()(name.clone()));
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("a create task");
    }
    let t = Instant::now();
    stream::iter(burst.iter().cloned())
        .for_each_concurrent(concurrency, |name| {
            started.lock().unwrap().insert(name.clone(), Instant::now());
            create.clone()(name)
        })
        .await;
    let throughput = burst.len() as f64 / t.elapsed().as_secs_f64();
    let started = std::mem::take(&mut *started.lock().unwrap());
    (started, throughput)
}

/// What /proc says of a process.
struct Usage {
    /// Resident set now, MiB.
    rss: f64,
    /// The largest resident set the process has had (`VmHWM`), MiB: a peak between two samples
    /// is not missed.
    peak: f64,
    /// CPU time, user and system, s.
    cpu: f64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is the 1st, utime the 12th, stime
    // the 13th; in clock ticks of 1/100 s.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Usage { rss: mib("VmRSS:"), peak: mib("VmHWM:"), cpu: (ticks(11) + ticks(12)) / 100.0 }
}

/// The processes that share the machine during a run, by a part of their executable's path
/// (etcd's is `etcd/<version>/server`): what bounds a step is whichever of them runs out of CPU.
const PARTS: &[(&str, &str)] = &[
    ("/kube-apiserver", "apiserver"),
    ("/etcd/", "etcd"),
    ("/kube-controller-manager", "kcm"),
    ("/kube-scheduler", "scheduler"),
    ("/kube-proxy", "kube-proxy"),
    // kube-proxy's iptables-restore runs: their cost grows with the number of Services.
    ("/xtables-", "iptables"),
    ("/kwok", "kwok"),
    ("/spawner-controller", "controller"),
    ("/deps/cluster-", "bench"),
];

/// CPU time (s) so far of each of [`PARTS`] (every process of that executable, summed).
fn parts_cpu() -> Vec<f64> {
    let mut out = vec![0.0; PARTS.len()];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { continue };
        let exe = exe.to_string_lossy();
        if let Some(i) = PARTS.iter().position(|(part, _)| exe.contains(part)) {
            out[i] += usage(pid).cpu;
        }
    }
    out
}

/// CPU cores each of [`PARTS`] used since `before` (from [`parts_cpu`]), `elapsed` ago; the
/// ones under 0.05 left out.
fn parts_cores(before: &[f64], elapsed: Duration) -> String {
    let after = parts_cpu();
    PARTS
        .iter()
        .zip(before.iter().zip(after))
        .map(|((_, label), (b, a))| (label, (a - b) / elapsed.as_secs_f64()))
        .filter(|(_, cores)| *cores >= 0.05)
        .map(|(label, cores)| format!("{label} {cores:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Row {
    step: String,
    spawner: String,
    reference: String,
}

/// A row of the table, also printed at once: a long run cut short still shows what it measured.
fn row(step: impl Into<String>, spawner: impl Into<String>, reference: impl Into<String>) -> Row {
    let r = Row { step: step.into(), spawner: spawner.into(), reference: reference.into() };
    println!("so far: {} | {} | {}", r.step, r.spawner, r.reference);
    r
}

const DELETE_ALL: &str = "delete all (a request per object) → every child gone, s";
const CREATE_CPU: &str = "create: CPU cores per process, first request → all Ready";

const LONG: Duration = Duration::from_secs(1800);
/// The backends' startup timeout: longer than the run. At the default 300 s, a 10,000-backend
/// run on 2 cores, where the API server fell behind, failed thousands of them (StartupTimeout)
/// and the bench then waited for a count of Ready backends that could never come.
const STARTUP_TIMEOUT: u64 = 3600;

/// The raw client's side: bare Pods and Services, created and deleted the same way.
async fn reference(s: &Settings, rows: &mut Vec<Row>) {
    let env = TestEnv::new("scale-raw").await;
    let n = s.reference;
    let names: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    let pods = Tracker::full(env.api::<Pod>(), watcher::Config::default(), pod_ready).await;
    let services = Tracker::names::<Service>(&env, watcher::Config::default()).await;
    let before = api_writes(&env.client).await;
    let spec = s.spec();
    let (pod_api, service_api) = (env.api::<Pod>(), env.api::<Service>());
    let namespace = env.namespace.clone();
    let cpu = parts_cpu();
    let t = Instant::now();
    let (started, throughput) = create_all(&names, s.rate, s.concurrency, move |name| {
        let (pods, services) = (pod_api.clone(), service_api.clone());
        let mut backend = backend(&name, spec.clone());
        backend.metadata.namespace = Some(namespace.clone());
        async move { create_without_controller(&pods, &services, &backend).await }
    })
    .await;
    pods.wait("raw pods Ready", LONG, |seen| seen.ready_at.len() >= n).await;
    let all_ready = pods.last_ready().unwrap() - t;
    let cores = parts_cores(&cpu, t.elapsed());
    let after = api_writes(&env.client).await;
    let (writes, detail) = writes_per(&before, &after, n);
    let paced = paced_latencies(&pods, &started, &names);
    println!("raw client: {n} {}; writes per pod: {writes:.1} ({detail})", s.raw_objects());

    let t = Instant::now();
    delete_all(env.api::<Pod>(), &names, s.concurrency).await;
    if s.services {
        delete_all(env.api::<Service>(), &names, s.concurrency).await;
    }
    let gone = pods
        .wait("raw pods gone", LONG, |seen| seen.present.is_empty())
        .await
        .max(services.wait("raw services gone", LONG, |seen| seen.present.is_empty()).await);
    let deleted = gone - t;
    drop((pods, services));
    env.delete_and_wait(Duration::from_secs(600)).await;

    rows.push(row("", "", format!("(raw client: {n} {})", s.raw_objects())));
    rows.push(row(
        format!("create, first half at {}/s: create → Ready p50 / p99 ms", s.rate),
        "",
        format!("{} / {}", ms(percentile(&paced, 0.5)), ms(percentile(&paced, 0.99))),
    ));
    rows.push(row("create, second half as fast as taken: objects/s", "", format!("{throughput:.0}")));
    rows.push(row("create: first request → all Ready, s", "", format!("{:.1}", all_ready.as_secs_f64())));
    rows.push(row("API writes per object", "", format!("{writes:.1}")));
    let rate = writes * n as f64 / all_ready.as_secs_f64();
    rows.push(row("API writes/s served, first request → all Ready", "", format!("{rate:.0}")));
    rows.push(row(CREATE_CPU, "", cores));
    rows.push(row(DELETE_ALL, "", format!("{:.1}", deleted.as_secs_f64())));
}

/// Create → Ready of the first half (the paced one), sorted.
fn paced_latencies(tracker: &Tracker, started: &HashMap<String, Instant>, names: &[String]) -> Vec<Duration> {
    let paced: HashMap<String, Instant> =
        names[..names.len() / 2].iter().filter_map(|n| started.get(n).map(|t| (n.clone(), *t))).collect();
    tracker.latencies(&paced)
}

/// Deletes the objects `names` of `api`, `concurrency` requests in flight. One request per
/// object, as a client deleting sessions would: a single delete-collection of 10,000 backends
/// outlived the API server's 60 s request timeout, twice (the server deletes a collection's
/// items one at a time).
async fn delete_all<K>(api: Api<K>, names: &[String], concurrency: usize)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    stream::iter(names)
        .for_each_concurrent(concurrency, |name| {
            let api = api.clone();
            async move {
                // A second try for a broken connection (a pooled one the server had closed).
                for attempt in 1..=2 {
                    match api.delete(name, &DeleteParams::background()).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(s)) if s.is_not_found() => return,
                        Err(e) if attempt == 2 => panic!("deleting {name}: {e}"),
                        Err(e) => eprintln!("deleting {name} failed ({e}); once more"),
                    }
                }
            }
        })
        .await;
}

/// Fills in the reference column of a row of Spawner's by matching its step.
fn merge(spawner: Vec<Row>, reference: Vec<Row>) -> Vec<Row> {
    let mut reference: HashMap<String, String> = reference.into_iter().map(|r| (r.step, r.reference)).collect();
    spawner
        .into_iter()
        .map(|mut r| {
            if let Some(v) = reference.remove(&r.step) {
                r.reference = v;
            }
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by `cargo xtask bench scale`"]
async fn bench_scale() {
    let s = Settings::from_env();
    let mut reference_rows = Vec::new();
    reference(&s, &mut reference_rows).await;

    let env = TestEnv::new("scale").await;
    prepare(&env).await;
    let n = s.backends;
    let names: Vec<String> = (0..n).map(|i| format!("b{i:05}")).collect();
    let mine = watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE));
    let backends = Tracker::full(env.api::<SessionLivedBackend>(), watcher::Config::default(), backend_ready).await;
    let pods = Tracker::names::<Pod>(&env, mine.clone()).await;
    let services = Tracker::names::<Service>(&env, mine.clone()).await;
    let secrets = Tracker::names::<Secret>(&env, mine.clone()).await;

    let controller_args = [format!("--namespace={}", env.namespace), "--no-leader-election".to_string()];
    let mut controller = ControllerProcess::start_logging(&controller_args, "info");
    controller.wait_for_metric("spawner_controller_reconciles_total", Duration::from_secs(60)).await;
    let mut rows = Vec::new();
    rows.push(row("", format!("(Spawner: {n} backends)"), ""));
    let rss = usage(controller.pid()).rss;
    rows.push(row("controller started, no backend: RSS MiB", format!("{rss:.0}"), "–"));

    // Create, sampling the controller as the count of Ready backends passes each mark.
    let before = api_writes(&env.client).await;
    let api = env.api::<SessionLivedBackend>();
    let spec = s.spec();
    let cpu = parts_cpu();
    let t = Instant::now();
    let creating = tokio::spawn({
        let names = names.clone();
        let (rate, concurrency) = (s.rate, s.concurrency);
        async move {
            create_all(&names, rate, concurrency, move |name| {
                let api = api.clone();
                let backend = backend(&name, spec.clone());
                async move {
                    api.create(&PostParams::default(), &backend).await.expect("backend");
                }
            })
            .await
        }
    });
    let mut marks: Vec<usize> = [1_000, 5_000].into_iter().filter(|m| *m < n).collect();
    marks.push(n);
    let (mut last_cpu, mut last_t) = (usage(controller.pid()).cpu, Instant::now());
    let mut usage_rows = Vec::new();
    for mark in marks {
        backends.wait(&format!("{mark} backends Ready"), LONG, |seen| seen.ready_at.len() >= mark).await;
        let Usage { rss, cpu, .. } = usage(controller.pid());
        let cores = (cpu - last_cpu) / last_t.elapsed().as_secs_f64();
        (last_cpu, last_t) = (cpu, Instant::now());
        usage_rows.push(row(
            format!("controller at {mark} Ready: RSS MiB / CPU cores (since the last mark)"),
            format!("{rss:.0} / {cores:.2}"),
            "–",
        ));
    }
    let (started, throughput) = creating.await.expect("creating backends");
    let all_ready = backends.last_ready().unwrap() - t;
    let cores = parts_cores(&cpu, t.elapsed());
    let after = api_writes(&env.client).await;
    let (writes, detail) = writes_per(&before, &after, n);
    println!("Spawner: {n} backends; writes per backend: {writes:.1} ({detail})");
    let paced = paced_latencies(&backends, &started, &names);
    rows.push(row(
        format!("create, first half at {}/s: create → Ready p50 / p99 ms", s.rate),
        format!("{} / {}", ms(percentile(&paced, 0.5)), ms(percentile(&paced, 0.99))),
        "",
    ));
    rows.push(row("create, second half as fast as taken: objects/s", format!("{throughput:.0}"), ""));
    rows.push(row("create: first request → all Ready, s", format!("{:.1}", all_ready.as_secs_f64()), ""));
    rows.push(row("API writes per object", format!("{writes:.1}"), ""));
    let rate = writes * n as f64 / all_ready.as_secs_f64();
    rows.push(row("API writes/s served, first request → all Ready", format!("{rate:.0}"), ""));
    rows.push(row(CREATE_CPU, cores, ""));
    rows.extend(usage_rows);
    tokio::time::sleep(Duration::from_secs(10)).await; // a quiet moment: the idle RSS at N
    let Usage { rss, peak, .. } = usage(controller.pid());
    rows.push(row(
        format!("controller at {n}, 10 s quiet: RSS / peak so far, MiB"),
        format!("{rss:.0} / {peak:.0}"),
        "–",
    ));

    // Restart: SIGKILL, a new process, a new backend.
    controller.kill();
    let before = api_writes(&env.client).await;
    let t = Instant::now();
    let controller = ControllerProcess::start_logging(&controller_args, "info");
    env.api::<SessionLivedBackend>()
        .create(&PostParams::default(), &backend("after-restart", s.spec()))
        .await
        .expect("the backend after the restart");
    backends
        .wait("the backend after the restart Ready", LONG, |seen| seen.ready_at.contains_key("after-restart"))
        .await;
    let probe_ready = t.elapsed();
    let all = n + 1;
    let deadline = Instant::now() + LONG;
    let reconciled_all = loop {
        let done = controller.get("/metrics").is_some_and(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix("spawner_controller_reconciles_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v >= all as f64)
        });
        if done {
            break t.elapsed();
        }
        assert!(Instant::now() < deadline, "the restarted controller never reconciled every backend");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = api_writes(&env.client).await;
    let (restart_writes, restart_detail) = writes_per(&before, &after, all);
    println!("restart: writes per backend {restart_writes:.2} ({restart_detail})");
    let Usage { rss, peak, .. } = usage(controller.pid());
    rows.push(row(
        "restart (SIGKILL at N): new process → a new backend Ready, s",
        format!("{:.1}", probe_ready.as_secs_f64()),
        "–",
    ));
    rows.push(row(
        "restart: new process → every backend reconciled once, s",
        format!("{:.1}", reconciled_all.as_secs_f64()),
        "–",
    ));
    rows.push(row(
        "restart: API writes per backend / RSS MiB after / its peak",
        format!("{restart_writes:.2} / {rss:.0} / {peak:.0}"),
        "–",
    ));
    let (duplicates, orphans) = check_children(&env, s.services).await;
    rows.push(row("after the restart: children missing or extra / orphaned", format!("{duplicates} / {orphans}"), "–"));

    // Delete everything, one request per object.
    let t = Instant::now();
    delete_all(env.api::<SessionLivedBackend>(), &names, s.concurrency).await;
    delete_all(env.api::<SessionLivedBackend>(), &["after-restart".to_string()], 1).await;
    let mut gone = backends.wait("backends gone", LONG, |seen| seen.present.is_empty()).await;
    for (kind, tracker) in [("pods", &pods), ("services", &services), ("secrets", &secrets)] {
        gone = gone.max(tracker.wait(&format!("{kind} gone"), LONG, |seen| seen.present.is_empty()).await);
    }
    rows.push(row(DELETE_ALL, format!("{:.1}", (gone - t).as_secs_f64()), ""));
    drop(controller);
    assert_eq!(pods.count() + services.count() + secrets.count(), 0);
    drop((backends, pods, services, secrets));
    env.delete_and_wait(Duration::from_secs(600)).await;

    let rows = merge(rows, reference_rows);
    println!("\n| step | Spawner | raw client |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.step, r.spawner, r.reference);
    }
    assert_eq!(duplicates + orphans, 0, "the restarted controller left children missing, extra or orphaned");
}

/// After the restart: for every backend, its Pod, Service and Secret exist and are its own
/// (missing or extra children are counted together), and no child belongs to a backend that does
/// not exist (orphans).
fn metadata<K>(items: Vec<PartialObjectMeta<K>>) -> Vec<ObjectMeta> {
    items.into_iter().map(|c| c.metadata).collect()
}

async fn check_children(env: &TestEnv, with_services: bool) -> (usize, usize) {
    let backends = env.api::<SessionLivedBackend>().list(&ListParams::default()).await.expect("list backends").items;
    let uids: HashMap<String, String> =
        backends.iter().map(|b| (b.metadata.uid.clone().unwrap_or_default(), b.name_any())).collect();
    let mine = ListParams::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE));
    let mut wrong = 0;
    let mut orphans = 0;
    let mut tally = |children: Vec<ObjectMeta>| {
        let mut owned = HashSet::new();
        for child in children {
            let owner = child.owner_references.iter().flatten().find(|r| r.controller == Some(true));
            match owner.and_then(|o| uids.get(&o.uid)) {
                Some(backend) if Some(backend) == child.name.as_ref() => {
                    if !owned.insert(backend.clone()) {
                        wrong += 1;
                    }
                }
                Some(_) => wrong += 1,
                None => orphans += 1,
            }
        }
        wrong += backends.len() - owned.len();
    };
    tally(metadata(env.api::<Pod>().list_metadata(&mine).await.expect("list pods").items));
    let services = env.api::<Service>().list_metadata(&mine).await.expect("list services").items;
    // Without Services, none should exist: each one is extra.
    let extra = if with_services { 0 } else { services.len() };
    if with_services {
        tally(metadata(services));
    }
    tally(metadata(env.api::<Secret>().list_metadata(&mine).await.expect("list secrets").items));
    (wrong + extra, orphans)
}
