//! The drop-four demo backend that `cargo xtask deploy` ends with.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use spawner::client::{BackendRequest, Backends, Naming};
use xshell::{Shell, cmd};

/// Creates a drop-four backend through Spawner's client library (as `spawner create --wait`
/// does), waits until it is Ready and its page is served through the reverse proxy, and returns
/// its URL (with the token).
pub fn create(kubeconfig: &Path) -> Result<String> {
    let image = spawner::names::image("demo-drop-four");
    println!("==> demo backend from {image}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let backends = Backends::new(kube::Client::try_from(config)?, "default");
        let request = BackendRequest::new(Naming::GenerateName("drop-four-".into()), image);
        let created = backends.create(&request).await?;
        let ready = backends.wait_ready(&created.name_any(), Duration::from_secs(180)).await?;
        anyhow::Ok(backends.access_url(&ready).await?)
    })?;
    wait_until_served(&url)?;
    Ok(url)
}

/// Ready means the pod answers; the Service's forwarding rules (kube-proxy) can trail it by a
/// moment, during which the proxy answers 502 or 504. The URL printed must work when opened, so
/// wait (bounded) until the page comes back.
fn wait_until_served(url: &str) -> Result<()> {
    let sh = Shell::new()?;
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        let write_out = "%{http_code}";
        let out = cmd!(sh, "curl -s -o /dev/null -w {write_out} --max-time 5 {url}").quiet().ignore_status().output();
        last = String::from_utf8_lossy(&out.context("running curl")?.stdout).trim().to_string();
        if last == "200" {
            if started.elapsed() > Duration::from_secs(1) {
                println!("    served through the proxy after {:.1?}", started.elapsed());
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "the demo backend is Ready but the proxy still answers {last} for it after 30 s: see `kubectl -n spawner-system logs deploy/spawner-proxy`"
    )
}
