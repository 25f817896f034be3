//! `cargo xtask test`: every check and every test, on a real cluster, from a fresh machine.
//!
//! Order matters for a fast failure: the cheap static checks first, then the cluster, the
//! images and the deployment that the integration tests use, then all tests.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub struct Options {
    /// Skip `cargo xtask deploy` steps (images, config/default); tests that need them fail.
    pub no_deploy: bool,
    /// Extra arguments for `cargo test` (a filter, `--test NAME`...).
    pub cargo_test_args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let started = Instant::now();
    step("Debian packages", crate::deps::ensure)?;
    step("cargo fmt --check", || cargo(&["fmt", "--all", "--check"]))?;
    step("cargo clippy", || cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    step("generated manifests are fresh", || crate::manifests::generate(crate::manifests::Mode::Check))?;
    step("local cluster", || crate::cluster::up(&crate::cluster::UpOptions::default()))?;
    if !opts.no_deploy {
        step("images", crate::images::build_and_load)?;
        step("deploy config/default", || crate::deploy::apply_default(&crate::cluster::kubeconfig_path()))?;
    }
    step("cargo test", || {
        let mut args = vec!["test", "--workspace"];
        args.extend(opts.cargo_test_args.iter().map(String::as_str));
        cargo(&args)
    })?;
    println!("all checks and tests passed in {:.1?}", started.elapsed());
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    println!("==> {name}");
    f().with_context(|| format!("step `{name}` failed"))?;
    println!("    {name}: ok ({:.1?})", t.elapsed());
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(crate::project_root())
        .env("KUBECONFIG", crate::cluster::kubeconfig_path())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
