//! `cargo xtask bench pool`: a backend from a warm pool against a cold one, measured as a user
//! sees it, from the create request to the first byte of a 200 through the reverse proxy.
//!
//! Needs Spawner deployed (`cargo xtask deploy --no-demo`, on the local cluster unless
//! `--kubeconfig` says otherwise). In one run, in a namespace of its own: sequential claims
//! (each backend deleted once measured), bursts of concurrent claims, and cold backends of the
//! same image. For each backend it records: create → Ready (the controller's part) and create →
//! first 200 through the proxy, plus how many requests failed between Ready and that 200 (none
//! should: the proxy routes to the pod's address the moment the status says Ready). Last, "held":
//! claims from a pool without auth whose one request goes out right after the create, before
//! Ready, and is held by the router until the backend is Ready — create → first byte as a web
//! app that does not wait for Ready sees it. Targets (issue #12): claim → first byte p99 ≤ 50 ms;
//! no request fails once Ready, none while starting.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use spawner::client::{BackendRequest, Backends, Naming};
use spawner::crd::SessionLivedBackendPool;

const NAMESPACE: &str = "spawner-bench-pool";
const POOL: &str = "bench";
/// The held phase's pool: no auth, so a request needs no token and can go out with the create.
const OPEN_POOL: &str = "bench-open";

/// Settings of `cargo xtask bench pool`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Warm pods in the pool.
    #[arg(long, default_value_t = 20)]
    pub size: i32,
    /// Backends claimed one after the other.
    #[arg(long, default_value_t = 200)]
    pub sequential: usize,
    /// Backends claimed at once, per burst.
    #[arg(long, default_value_t = 50)]
    pub burst: usize,
    /// Bursts.
    #[arg(long, default_value_t = 2)]
    pub bursts: usize,
    /// Cold backends (no pool), one after the other.
    #[arg(long, default_value_t = 20)]
    pub cold: usize,
    /// Claims whose request is sent with the create (held until Ready), one after the other.
    #[arg(long, default_value_t = 50)]
    pub held: usize,
    /// Kubeconfig of the cluster Spawner is deployed on [default: the local cluster's].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The reverse proxy's address (host:port).
    #[arg(long, default_value = "127.0.0.1:30080")]
    pub proxy: String,
    /// Pools whose backends get no ClusterIP Service (`spec.service.enabled: false`): the claim
    /// then waits for no Service creation.
    #[arg(long)]
    pub no_service: bool,
}

/// One backend, measured.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ready: Duration,
    first_byte: Duration,
    failed_after_ready: usize,
}

pub fn run(args: Args) -> Result<()> {
    let kubeconfig = args.kubeconfig.clone().unwrap_or_else(crate::cluster::kubeconfig_path);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(&kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config)?;
        fresh_namespace(&client).await?;
        let result = measure(&client, &args).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let _ = namespaces.delete(NAMESPACE, &DeleteParams::background()).await;
        result
    })
}

async fn measure(client: &Client, args: &Args) -> Result<()> {
    let backends = Backends::new(client.clone(), NAMESPACE);
    let pools: Api<SessionLivedBackendPool> = Api::namespaced(client.clone(), NAMESPACE);
    pools
        .create(&PostParams::default(), &pool(POOL, args, "Token")?)
        .await
        .context("creating the pool (is Spawner deployed?)")?;
    wait_full(&pools, POOL, args.size).await?;
    println!("pool of {} warm pods Ready", args.size);

    let mut sequential = Vec::new();
    for i in 0..args.sequential {
        let request = BackendRequest::from_pool(Naming::Name(format!("seq-{i}")), POOL);
        sequential.push(one(&backends, &request, &args.proxy).await?);
        backends.delete(&format!("seq-{i}")).await?;
    }
    report("warm, sequential", &sequential);

    let mut bursts = Vec::new();
    for b in 0..args.bursts {
        wait_full(&pools, POOL, args.size).await?;
        let requests: Vec<BackendRequest> =
            (0..args.burst).map(|i| BackendRequest::from_pool(Naming::Name(format!("burst-{b}-{i}")), POOL)).collect();
        let samples = futures::future::try_join_all(requests.iter().map(|r| one(&backends, r, &args.proxy))).await?;
        bursts.extend(samples);
        for i in 0..args.burst {
            backends.delete(&format!("burst-{b}-{i}")).await?;
        }
    }
    report(&format!("bursts of {} on a pool of {} (the rest start cold)", args.burst, args.size), &bursts);

    let mut cold = Vec::new();
    for i in 0..args.cold {
        let mut request = BackendRequest::new(Naming::Name(format!("cold-{i}")), image());
        request.grace_period_seconds = 300;
        cold.push(one(&backends, &request, &args.proxy).await?);
        backends.delete(&format!("cold-{i}")).await?;
    }
    report("cold (no pool), sequential", &cold);

    write_floor(client).await?;

    pools.delete(POOL, &DeleteParams::default()).await?;
    pools.create(&PostParams::default(), &pool(OPEN_POOL, args, "None")?).await?;
    wait_full(&pools, OPEN_POOL, args.size).await?;
    let (mut held, mut held_failed) = (Vec::new(), Vec::new());
    for i in 0..args.held {
        let name = format!("held-{i}");
        let started = Instant::now();
        backends.create(&BackendRequest::from_pool(Naming::Name(name.clone()), OPEN_POOL)).await?;
        let (proxy, path) = (args.proxy.clone(), format!("/p/{NAMESPACE}/{name}/"));
        match tokio::task::spawn_blocking(move || get_status(&proxy, &path)).await? {
            Ok(200) => {}
            other => held_failed.push(format!("{name}: {other:?}")),
        }
        held.push(started.elapsed());
        backends.delete(&name).await?;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("held: warm, the request sent with the create ({} backends):", held.len());
    println!(
        "    create → first byte     p50 {:7.1} ms   p99 {:7.1} ms",
        ms(percentile(&held, 0.5)),
        ms(percentile(&held, 0.99))
    );
    println!("    held requests that failed: {} {held_failed:?}", held_failed.len());
    let ratio = |a: &[Sample], b: &[Sample]| {
        let p = |s: &[Sample]| percentile(&s.iter().map(|s| s.first_byte).collect::<Vec<_>>(), 0.5);
        p(a).as_secs_f64() / p(b).as_secs_f64().max(1e-9)
    };
    if !sequential.is_empty() && !cold.is_empty() {
        println!("first byte p50, warm / cold: {:.2}", ratio(&sequential, &cold));
    }
    Ok(())
}

/// The reference: one API write by a raw client on the same cluster, 50 times in a row. A claim
/// cannot beat two of them in sequence (the pod taken, then the status that says Ready).
async fn write_floor(client: &Client) -> Result<()> {
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let map = serde_json::from_value(serde_json::json!({"metadata": {"name": "write-floor"}}))?;
    maps.create(&PostParams::default(), &map).await?;
    let mut writes = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let patch = serde_json::json!({"data": {"n": i.to_string()}});
        maps.patch("write-floor", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        writes.push(started.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("raw client, one API write (ConfigMap patch), 50 in a row:");
    println!(
        "    write                   p50 {:7.1} ms   p99 {:7.1} ms   (a claim needs at least two in sequence)",
        ms(percentile(&writes, 0.5)),
        ms(percentile(&writes, 0.99))
    );
    Ok(())
}

fn pool(name: &str, args: &Args, auth: &str) -> Result<SessionLivedBackendPool> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackendPool", "metadata": {"name": name},
        "spec": {
            "size": args.size,
            "auth": {"mode": auth},
            "service": {"enabled": !args.no_service},
            "template": {"containers": [{"name": "application", "image": image()}]},
        },
    }))?)
}

fn image() -> String {
    spawner::names::image("demo-drop-four")
}

/// Creates one backend and times it to Ready and to the first 200 through the proxy.
async fn one(backends: &Backends, request: &BackendRequest, proxy: &str) -> Result<Sample> {
    let started = Instant::now();
    let created = backends.create(request).await?;
    let ready = backends.wait_ready(&created.name_any(), Duration::from_secs(180)).await?;
    let ready_after = started.elapsed();
    let url = backends.access_url(&ready).await?;
    let path = url.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map(|(_, p)| format!("/{p}"));
    let path = path.context("a URL with a path")?;
    let proxy = proxy.to_string();
    let (first_byte, failed_after_ready) =
        tokio::task::spawn_blocking(move || first_200(&proxy, &path, started)).await??;
    Ok(Sample { ready: ready_after, first_byte, failed_after_ready })
}

/// GETs `path` until a 200 (the status line is the first byte the browser sees), counting the
/// other answers.
fn first_200(proxy: &str, path: &str, started: Instant) -> Result<(Duration, usize)> {
    let mut failed = 0;
    while started.elapsed() < Duration::from_secs(60) {
        if get_status(proxy, path).unwrap_or(0) == 200 {
            return Ok((started.elapsed(), failed));
        }
        failed += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("no 200 for {path} within 60 s")
}

fn get_status(proxy: &str, path: &str) -> std::io::Result<u16> {
    let mut tcp = TcpStream::connect(proxy)?;
    // Long enough for a request the router holds while its backend starts.
    tcp.set_read_timeout(Some(Duration::from_secs(70)))?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head)?;
    Ok(std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0))
}

async fn wait_full(pools: &Api<SessionLivedBackendPool>, name: &str, size: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pool = pools.get(name).await?;
        if pool.status.is_some_and(|s| s.ready == size && s.starting == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool did not fill within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fresh_namespace(client: &Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(NAMESPACE, &DeleteParams::background()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while namespaces.get_opt(NAMESPACE).await?.is_some() {
        if Instant::now() > deadline {
            bail!("namespace {NAMESPACE} from an earlier run is still being deleted");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    namespaces.patch(NAMESPACE, &PatchParams::apply("spawner-bench"), &Patch::Apply(&ns)).await?;
    Ok(())
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(what: &str, samples: &[Sample]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ready: Vec<Duration> = samples.iter().map(|s| s.ready).collect();
    let first: Vec<Duration> = samples.iter().map(|s| s.first_byte).collect();
    let failed: usize = samples.iter().map(|s| s.failed_after_ready).sum();
    let with_failures = samples.iter().filter(|s| s.failed_after_ready > 0).count();
    println!("{what} ({} backends):", samples.len());
    println!(
        "    create → Ready          p50 {:7.1} ms   p99 {:7.1} ms",
        ms(percentile(&ready, 0.5)),
        ms(percentile(&ready, 0.99))
    );
    println!(
        "    create → first 200      p50 {:7.1} ms   p99 {:7.1} ms",
        ms(percentile(&first, 0.5)),
        ms(percentile(&first, 0.99))
    );
    println!("    requests failed after Ready: {failed} (on {with_failures} backends)");
}
