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
        Target::Kind => bail!("kind deployment needs Docker; this machine has no Docker daemon (use --local)"),
        _ => {
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
