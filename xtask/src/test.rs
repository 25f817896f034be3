//! `cargo xtask test`: every check and every test, on a real cluster, from a fresh machine.
//!
//! Order matters for a fast failure: the cheap static checks first, then the cluster and the
//! images. Tests that run their own controller or sweeper processes go first, with no Spawner
//! deployed in the cluster (two controllers would fight over the same backends); then
//! config/default is deployed and the end-to-end tests (names starting `e2e_`) run against it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub struct Options {
    /// Skip the images, the deployment and the end-to-end tests.
    pub no_deploy: bool,
    /// Extra arguments for `cargo test` (a filter, `--test NAME`...).
    pub cargo_test_args: Vec<String>,
}

/// Tests counted over every `cargo test` run.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

pub fn run(opts: Options) -> Result<()> {
    let started = Instant::now();
    let kubeconfig = crate::cluster::kubeconfig_path();
    step("Debian packages", crate::deps::ensure)?;
    step("cargo fmt --check", || cargo(&["fmt", "--all", "--check"]))?;
    step("cargo clippy", || cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    step("generated manifests are fresh", || crate::manifests::generate(crate::manifests::Mode::Check))?;
    step("local cluster", || crate::cluster::up(&crate::cluster::UpOptions::default()))?;
    let mut images = Vec::new();
    if !opts.no_deploy {
        step("images", || crate::images::build_and_load().map(|pinned| images = pinned))?;
    }
    step("remove a deployed Spawner (tests run their own)", || crate::deploy::remove(&kubeconfig))?;

    let mut tally = Tally::default();
    let extra: Vec<&str> = opts.cargo_test_args.iter().map(String::as_str).collect();
    let mut result = step("cargo test (unit and integration)", || {
        let mut args = vec!["test", "--workspace"];
        args.extend(&extra);
        args.extend(["--", "--skip", "e2e_"]);
        cargo_test(&args, &mut tally)
    });
    if result.is_ok() && !opts.no_deploy {
        result = step("deploy config/default", || crate::deploy::apply_default(&kubeconfig, &images)).and_then(|()| {
            step("cargo test (end to end)", || {
                let mut args = vec!["test", "--workspace"];
                args.extend(&extra);
                args.push("e2e_");
                cargo_test(&args, &mut tally)
            })
        });
    }
    // The plain closing line CI reads, summed over both runs.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    result?;
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

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(crate::project_root()).env("KUBECONFIG", crate::cluster::kubeconfig_path());
    cmd
}

fn cargo(args: &[&str]) -> Result<()> {
    let status = command(args).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output and adding its `test result:` lines to `tally`.
fn cargo_test(args: &[&str], tally: &mut Tally) -> Result<()> {
    let mut child = command(args).stdout(Stdio::piped()).spawn().context("running cargo test")?;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            tally.passed += count(rest, "passed");
            tally.failed += count(rest, "failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The number before `word` in "ok. 3 passed; 0 failed; ...".
fn count(summary: &str, word: &str) -> u64 {
    let words: Vec<&str> = summary.split([' ', ';', '.']).filter(|w| !w.is_empty()).collect();
    words.windows(2).find(|w| w[1] == word).and_then(|w| w[0].parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_read_from_cargo_test_summaries() {
        let line = "ok. 12 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 0.01s";
        assert_eq!(super::count(line, "passed"), 12);
        assert_eq!(super::count(line, "failed"), 1);
    }
}
