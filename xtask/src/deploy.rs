//! `cargo xtask deploy`: Spawner on a cluster, ending with a demo backend's URL.
//!
//! With Docker and kind on the machine it uses kind (cluster `spawner`, the proxy's NodePort
//! mapped to the host); otherwise the local cluster of `cargo xtask cluster`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Where to deploy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// kind if Docker and kind are available, else the local cluster.
    Auto,
    Kind,
    Local,
}

pub fn run(target: Target, demo: bool) -> Result<()> {
    let started = Instant::now();
    let target = match target {
        Target::Auto if kind_available() => Target::Kind,
        Target::Auto => Target::Local,
        t => t,
    };
    let kubeconfig = match target {
        Target::Kind => {
            if !kind_available() {
                bail!("--kind needs `kind` and a running Docker daemon; without them use --local");
            }
            kind_up()?
        }
        Target::Auto | Target::Local => {
            crate::cluster::up(&crate::cluster::UpOptions::default())?;
            println!("==> images");
            crate::images::build_and_load()?;
            crate::cluster::kubeconfig_path()
        }
    };
    apply_default(&kubeconfig)?;
    println!("Spawner is up in {:.1?}; reverse proxy: {}", started.elapsed(), crate::manifests::PROXY_BASE_URL);
    if demo {
        let url = crate::demo::create(&kubeconfig)?;
        println!();
        println!("Play drop four: open this URL in two browser windows:");
        println!("    {url}");
    }
    Ok(())
}

/// Creates the kind cluster `spawner` (the proxy's NodePort mapped to the host), builds the images
/// with Docker and loads them; returns the kubeconfig.
fn kind_up() -> Result<PathBuf> {
    let run = |program: &str, args: &[&str]| -> Result<String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(crate::project_root())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let kubeconfig = crate::cluster::cache_root()?.join("kind-spawner.kubeconfig");
    if !run("kind", &["get", "clusters"])?.lines().any(|l| l == "spawner") {
        println!("==> kind create cluster --name spawner");
        let config = crate::cluster::cache_root()?.join("kind-spawner.yaml");
        std::fs::write(
            &config,
            format!(
                "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n  extraPortMappings:\n  - containerPort: {port}\n    hostPort: {port}\n",
                port = crate::manifests::PROXY_NODE_PORT
            ),
        )?;
        run("kind", &["create", "cluster", "--name", "spawner", "--config", config.to_str().unwrap()])?;
    }
    std::fs::write(&kubeconfig, run("kind", &["get", "kubeconfig", "--name", "spawner"])?)?;
    for (component, _) in crate::images::RUST_IMAGES.iter().chain(&[("nginx", "nginx")]) {
        let image = spawner::names::image(component);
        println!("==> docker build --target {component} -t {image}");
        run("docker", &["build", "-f", "images/Dockerfile", "--target", component, "-t", &image, "."])?;
        run("kind", &["load", "docker-image", "--name", "spawner", &image])?;
    }
    Ok(kubeconfig)
}

fn kind_available() -> bool {
    let ok = |cmd: &str, args: &[&str]| Command::new(cmd).args(args).output().is_ok_and(|o| o.status.success());
    ok("kind", &["version"]) && ok("docker", &["info"])
}

/// `kubectl apply -k config/default` and waits for every rollout.
pub fn apply_default(kubeconfig: &PathBuf) -> Result<()> {
    let t = Instant::now();
    println!("==> kubectl apply -k config/default");
    kubectl(
        kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f", "config/crd/sessionlivedbackends.spawner.dev.yaml"],
    )?;
    kubectl(
        kubeconfig,
        &["wait", "--for=condition=Established", "--timeout=60s", "crd/sessionlivedbackends.spawner.dev"],
    )?;
    kubectl(kubeconfig, &["apply", "-k", "config/default"])?;
    // A rollout restart picks up images re-imported under the same tag.
    for workload in ["deployment/spawner-controller", "daemonset/spawner-sweeper", "deployment/spawner-proxy"] {
        kubectl(kubeconfig, &["-n", spawner::names::SYSTEM_NAMESPACE, "rollout", "restart", workload])?;
    }
    for workload in ["deployment/spawner-controller", "daemonset/spawner-sweeper", "deployment/spawner-proxy"] {
        println!("    waiting for {workload}");
        kubectl(kubeconfig, &["-n", spawner::names::SYSTEM_NAMESPACE, "rollout", "status", "--timeout=180s", workload])
            .with_context(|| format!("{workload} did not become available; see `kubectl -n spawner-system describe {workload}` and its pods' logs"))?;
    }
    println!("    config/default is available ({:.1?})", t.elapsed());
    Ok(())
}

/// Removes a deployed Spawner's workloads (the namespace `spawner-system`), keeping the CRD.
pub fn remove(kubeconfig: &PathBuf) -> Result<()> {
    kubectl(
        kubeconfig,
        &[
            "delete",
            "namespace",
            spawner::names::SYSTEM_NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ],
    )?;
    Ok(())
}

pub fn kubectl(kubeconfig: &PathBuf, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(crate::project_root())
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
