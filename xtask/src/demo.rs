//! The drop-four demo backend that `cargo xtask deploy` ends with.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Creates a drop-four backend with the `spawner` CLI, waits until it is Ready and returns its
/// URL (with the token).
pub fn create(kubeconfig: &Path) -> Result<String> {
    let cli = crate::project_root().join("target/release/spawner");
    println!("==> spawner create --image {} --wait", spawner::names::image("demo-drop-four"));
    let out = Command::new(&cli)
        .args(["--namespace", "default", "create", "--generate-name", "drop-four-"])
        .args(["--image", &spawner::names::image("demo-drop-four"), "--wait", "--timeout", "180s"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .with_context(|| format!("running {}", cli.display()))?;
    if !out.status.success() {
        bail!("creating the demo backend failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("http"))
        .map(|l| l.trim().to_string())
        .context("the CLI printed no URL")
}
