//! The drop-four demo backend that `cargo xtask deploy` ends with.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use spawner::client::{BackendRequest, Backends, Naming};
use xshell::{Shell, cmd};

/// Applies the demo's pool (`config/samples/pool.yaml`), waits until its warm pods are Ready,
/// then takes one through Spawner's client library (as `spawner create --pool drop-four --wait`
/// does), waits until the backend is Ready, checks its page is served through the reverse proxy,
/// and returns its URL (with the token).
pub fn create(kubeconfig: &Path) -> Result<String> {
    let pool = crate::manifests::DEMO_POOL;
    println!("==> demo pool {pool} (config/samples/pool.yaml), and a backend from it");
    crate::deploy::kubectl(&kubeconfig.to_path_buf(), &["apply", "-n", "default", "-f", "config/samples/pool.yaml"])?;
    let started = Instant::now();
    let slabpool = format!("slabpool/{pool}");
    crate::deploy::kubectl(
        &kubeconfig.to_path_buf(),
        &["wait", "-n", "default", "--for=condition=Ready", &slabpool, "--timeout=180s"],
    )?;
    println!("    warm pods Ready after {:.1?}", started.elapsed());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let backends = Backends::new(kube::Client::try_from(config)?, "default");
        let naming = Naming::GenerateName(spawner::client::names::generate_name_for_pool(pool));
        let created = backends.create(&BackendRequest::from_pool(naming, pool)).await?;
        let started = Instant::now();
        let ready = backends.wait_ready(&created.name_any(), Duration::from_secs(180)).await?;
        println!("    {} Ready {:.1?} after its creation was answered", ready.name_any(), started.elapsed());
        anyhow::Ok(backends.access_url(&ready).await?)
    })?;
    check_served(&url)?;
    Ok(url)
}

/// Ready means routable (the proxy connects to the address in the backend's status), so the
/// page is fetched once: the URL printed must work when opened, and a failure here is a bug.
fn check_served(url: &str) -> Result<()> {
    let sh = Shell::new()?;
    let write_out = "%{http_code}";
    let out = cmd!(sh, "curl -s -o /dev/null -w {write_out} --max-time 30 {url}").quiet().ignore_status().output();
    let status = String::from_utf8_lossy(&out.context("running curl")?.stdout).trim().to_string();
    if status != "200" {
        bail!(
            "the demo backend is Ready but the proxy answers {status} for it: see `kubectl -n spawner-system logs deploy/spawner-proxy --all-containers`"
        );
    }
    Ok(())
}
