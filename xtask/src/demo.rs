//! The drop-four demo backend that `cargo xtask deploy` ends with.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// Creates a drop-four backend with the `spawner` CLI, waits until it is Ready and its page is
/// served through the reverse proxy, and returns its URL (with the token).
pub fn create(kubeconfig: &Path) -> Result<String> {
    let cli = crate::target_dir().join("release/spawner");
    println!("==> spawner create --image {} --wait", spawner::names::image("demo-drop-four"));
    let sh = Shell::new()?;
    let image = spawner::names::image("demo-drop-four");
    let out =
        cmd!(sh, "{cli} --namespace default create --generate-name drop-four- --image {image} --wait --timeout 180s")
            .env("KUBECONFIG", kubeconfig)
            .quiet()
            .ignore_status()
            .output()
            .with_context(|| format!("running {}", cli.display()))?;
    if !out.status.success() {
        bail!("creating the demo backend failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let url = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("http"))
        .map(|l| l.trim().to_string())
        .context("the CLI printed no URL")?;
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
