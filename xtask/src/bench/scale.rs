//! `cargo xtask bench scale`: the controller at 10,000 backends on 100 simulated nodes (#18).
//!
//! The nodes are kwok's (`sigs.k8s.io/kwok`, built from `hack/kwok` like the other Kubernetes
//! binaries): Node objects on the local cluster's control plane whose pods kwok's stages move to
//! Running and Ready without running anything. This sets them up — kwok with its stock "fast"
//! stages (read from the kwok module in the Go module cache), the nodes, tainted so that only
//! pods that ask land there — runs the measurement (the ignored test `scale_bench::bench_scale` in
//! tests/cluster/scale_bench.rs, in release mode) and removes the nodes and kwok afterwards,
//! whatever the outcome.
//!
//! Nothing sends traffic to the simulated pods: their addresses (10.250.0.0/16) are kwok's
//! inventions, and the bench runs its own controller with no sweeper or proxy deployed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use xshell::{Shell, cmd};

use crate::cluster;
use crate::cluster::build;

const KWOK_VERSION: &str = "v0.8.0";
/// The label and taint of the simulated nodes; the bench's pods select and tolerate them.
const NODE_LABEL: &str = "spawner.dev/kwok";
const TAINT: &str = "kwok.x-k8s.io/node";
/// kwok's stock stages: nodes become Ready and keep a heartbeat; pods become Ready at once and
/// are removed when deleted.
const STAGES: &[&str] = &[
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat/node-heartbeat.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
];

/// Settings of `cargo xtask bench scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Backends in all: the first half created at `--rate`, the second as fast as the API server
    /// takes them.
    #[arg(long, default_value_t = 10_000)]
    pub backends: usize,
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Creations per second of the fixed-rate half.
    #[arg(long, default_value_t = 50)]
    pub rate: usize,
    /// Bare Pods (with a Service each) the raw client makes the same way, as the reference.
    #[arg(long, default_value_t = 2_000)]
    pub reference: usize,
    /// Requests in flight in the as-fast-as-possible half (the same for both sides).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Backends without a Service (`spec.service.enabled: false`), and the raw client's pods
    /// without one either.
    #[arg(long)]
    pub no_service: bool,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(cluster::running(), "the local cluster is not running: start it with `cargo xtask cluster up`");
    ensure!(args.backends >= 2 && args.rate > 0, "--backends must be at least 2 and --rate positive");
    let kubeconfig = cluster::kubeconfig_path();
    let kwok = build::hack_binary("kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok", "kwok")?;
    let stages = stages_config()?;

    println!("starting kwok {KWOK_VERSION} and {} simulated nodes", args.nodes);
    let log = cluster::cache_root()?.join("kwok").join("kwok.log");
    let kwok = KwokProcess::start(&kwok, &kubeconfig, &stages, &log)?;
    let result = add_nodes(&kubeconfig, args.nodes).and_then(|()| measure(&args));
    // Pods left on the nodes (a failed run) are removed by the pod garbage collector once
    // their node is gone.
    let sh = Shell::new()?;
    let selector = format!("{NODE_LABEL}=true");
    let removed =
        cmd!(sh, "kubectl delete nodes -l {selector} --wait=false").env("KUBECONFIG", &kubeconfig).quiet().run();
    drop(kwok);
    result.and(removed.context("removing the simulated nodes"))
}

/// kwok's stages, as one config file beside the binary.
fn stages_config() -> Result<PathBuf> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root().join("hack/kwok"));
    let (go, format) = (build::go(), "{{.Dir}}");
    let module = cmd!(sh, "{go} list -m -f {format} sigs.k8s.io/kwok")
        .env("GOFLAGS", "-mod=readonly")
        .quiet()
        .read()
        .context("finding the kwok module in the Go module cache")?;
    let mut config = String::new();
    for stage in STAGES {
        let path = Path::new(module.trim()).join(stage);
        config += &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        config += "\n---\n";
    }
    let out = cluster::cache_root()?.join("kwok").join(KWOK_VERSION).join("stages.yaml");
    std::fs::write(&out, config).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// The kwok process; stopped on drop.
struct KwokProcess(Child);

impl KwokProcess {
    fn start(binary: &Path, kubeconfig: &Path, stages: &Path, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--config={}", stages.display()))
            .arg(format!("--manage-nodes-with-label-selector={NODE_LABEL}=true"))
            .arg("--cidr=10.250.0.0/16")
            .arg("--node-ip=10.250.255.254")
            // kwok's client-go asks for streamed lists, which this API server (on Debian's
            // etcd 3.4, without watch progress requests) refuses: each refusal restarted the
            // pod watch and held pods back for seconds.
            .env("KUBE_FEATURE_WatchListClient", "false")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self(child))
    }
}

impl Drop for KwokProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates the simulated nodes and waits until kwok has made them Ready.
fn add_nodes(kubeconfig: &Path, count: usize) -> Result<()> {
    let nodes: Vec<serde_json::Value> = (0..count).map(node).collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": nodes});
    let sh = Shell::new()?;
    let manifest = list.to_string();
    cmd!(sh, "kubectl apply -f -").env("KUBECONFIG", kubeconfig).stdin(manifest).quiet().ignore_stdout().run()?;
    let selector = format!("{NODE_LABEL}=true");
    cmd!(sh, "kubectl wait --for=condition=Ready node -l {selector} --timeout=180s")
        .env("KUBECONFIG", kubeconfig)
        .quiet()
        .ignore_stdout()
        .run()
        .context("the simulated nodes did not become Ready (kwok's log is in ~/.cache/spawner/kwok/kwok.log)")?;
    Ok(())
}

fn node(i: usize) -> serde_json::Value {
    let name = format!("kwok-node-{i:03}");
    let resources = serde_json::json!({"cpu": "64", "memory": "256Gi", "pods": "250"});
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {NODE_LABEL: "true", "kubernetes.io/hostname": name, "type": "kwok"},
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [{"key": TAINT, "value": "fake", "effect": "NoSchedule"}]},
        "status": {"allocatable": resources, "capacity": resources},
    })
}

/// Runs the measurement (release build of the ignored test).
fn measure(args: &Args) -> Result<()> {
    println!("building and running the scale benchmark (release)");
    let status = crate::cargo()
        .args(["test", "--release", "-p", "spawner", "--test", "cluster", "--"])
        .args(["--ignored", "--nocapture", "--exact", "scale_bench::bench_scale"])
        .env("SPAWNER_SCALE_BACKENDS", args.backends.to_string())
        .env("SPAWNER_SCALE_RATE", args.rate.to_string())
        .env("SPAWNER_SCALE_REFERENCE", args.reference.to_string())
        .env("SPAWNER_SCALE_CONCURRENCY", args.concurrency.to_string())
        .env("SPAWNER_SCALE_SERVICES", (!args.no_service).to_string())
        .env("SPAWNER_SCALE_NODE_LABEL", NODE_LABEL)
        .env("SPAWNER_SCALE_TAINT", TAINT)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the scale benchmark failed ({status}); its output above says where");
    }
    Ok(())
}
