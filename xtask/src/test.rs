//! `cargo xtask test`: every check and every test, on a real cluster, from a fresh machine.
//!
//! Order matters for a fast failure: the cheap static checks first, then the cluster and the
//! images. Tests that run their own controller or sweeper processes go first, with no Spawner
//! deployed in the cluster (two controllers would fight over the same backends); then
//! config/default is deployed and the end-to-end tests (names starting `e2e_`) run against it.
//! Last, the same deployment on a two-node kind cluster (`spawner-e2e`, kept for the next run;
//! `cargo xtask kind down --name spawner-e2e` removes it) and the end-to-end tests that matter
//! there (tests/e2e): the whole lifecycle through the proxy, the two-node and the isolation tests.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub struct Options {
    /// Skip the images, the deployment and the end-to-end tests.
    pub no_deploy: bool,
    /// Skip the end-to-end tests on kind.
    pub no_kind: bool,
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
    // Measured on cold runs: the target dir ended at 5.8 GB (2026-12-01: debug 4.4, release 1.3,
    // the sidecar's profile 0.2); the binaries, images and Docker's data (while the kind clusters
    // run) under ~/.cache/spawner at about 8 GB (2026-11-30).
    crate::disk::warn_if_short(
        "cargo xtask test",
        &[("cargo's target dir", &crate::target_dir(), 6.0), ("~/.cache/spawner", &crate::cluster::cache_root()?, 8.0)],
    );
    step("Debian packages", || crate::deps::ensure(crate::deps::Need::Tests))?;
    step("cargo fmt --check", || cargo(&["fmt", "--all", "--check"]))?;
    step("cargo clippy", || cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The sidecar's image is built without the `kubernetes` feature: the library as it is then.
    step("cargo clippy (the sidecar's build)", || {
        cargo(&[
            "clippy",
            "-p",
            "spawner",
            "--no-default-features",
            "--lib",
            "--bin",
            "spawner-sidecar",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    step("generated manifests are fresh", || crate::manifests::generate(crate::manifests::Mode::Check))?;
    step("local cluster", || crate::cluster::up(&crate::cluster::UpOptions::default()))?;
    let mut built = Vec::new();
    if !opts.no_deploy {
        step("images", || crate::images::build(true).map(|b| built = b))?;
        step("load the images into the local cluster", || crate::images::load_local(&built))?;
    }
    let images: Vec<crate::images::Pinned> = built.iter().map(crate::images::Pinned::of).collect();
    step("remove a deployed Spawner (tests run their own)", || crate::deploy::remove(&kubeconfig))?;

    let mut tally = Tally::default();
    let extra: Vec<&str> = opts.cargo_test_args.iter().map(String::as_str).collect();
    let mut result = step("cargo test (unit and integration)", || {
        let mut args = vec!["test", "--workspace"];
        args.extend(&extra);
        args.extend(["--", "--skip", "e2e_", "--skip", THROWAWAY_KIND_TEST]);
        cargo_test(&args, &mut tally)
    });
    if result.is_ok() && !opts.no_deploy {
        result = step("deploy config/default", || {
            crate::deploy::apply_default(&kubeconfig, &images, crate::manifests::PROXY_BASE_URL)
        })
        .and_then(|()| {
            // What `cargo xtask deploy` ends with: the demo's pool, a backend, and the lobby
            // (which `e2e_lobby` uses).
            step("the demo and its lobby", || {
                crate::demo::create(&kubeconfig)?;
                crate::demo::lobby(&kubeconfig, crate::manifests::PROXY_BASE_URL).map(|_| ())
            })
        })
        .and_then(|()| {
            step("cargo test (end to end)", || {
                let mut args = vec!["test", "--workspace"];
                args.extend(&extra);
                // Two-node and enforced-network tests need the kind cluster.
                args.extend(["e2e_", "--", "--skip", "e2e_on_two_nodes", "--skip", "e2e_enforced"]);
                cargo_test(&args, &mut tally)
            })
        })
        .and_then(|()| {
            step("API suites (TypeScript client, schemathesis) against the deployed API", || {
                let (passed, failed) = crate::api_suites::run(&kubeconfig, crate::manifests::PROXY_BASE_URL)?;
                tally.passed += passed;
                tally.failed += failed;
                Ok(())
            })
        });
    }
    if result.is_ok() && !opts.no_deploy && !opts.no_kind {
        result = kind_phase(&built, &images, &extra, &mut tally);
    }
    // The plain closing line CI reads, summed over both runs.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    result?;
    println!("all checks and tests passed in {:.1?}", started.elapsed());
    Ok(())
}

/// The kind cluster `spawner-e2e` (two nodes, proxy on 127.0.0.1:31080), Spawner deployed on it,
/// and the end-to-end tests that matter there.
fn kind_phase(
    built: &[crate::oci::Built],
    images: &[crate::images::Pinned],
    extra: &[&str],
    tally: &mut Tally,
) -> Result<()> {
    // First the throwaway cluster of tests/e2e/kind.rs (node containers through testcontainers,
    // removed when the test ends), so that two clusters never share the machine's two cores.
    let engine = crate::docker::up()?;
    step("cargo test (kind via testcontainers)", || {
        let mut args = vec!["test", "--workspace", "--test", "e2e"];
        args.extend(extra);
        args.push(THROWAWAY_KIND_TEST);
        cargo_test_with(&args, &engine.env(), tally)
    })?;
    let mut kind = None;
    step("kind cluster spawner-e2e (two nodes)", || {
        let cluster =
            crate::kind::up(&crate::kind::Options { name: KIND_CLUSTER.into(), workers: 1, host_port: 31080 })?;
        cluster.load(&built.iter().map(|b| b.path.clone()).collect::<Vec<_>>())?;
        kind = Some(cluster);
        Ok(())
    })?;
    let kind = kind.expect("set by the step");
    step("deploy config/default on kind", || crate::deploy::apply_default(&kind.kubeconfig, images, &kind.base_url))?;
    step("cargo test (end to end, on kind)", || {
        // The `e2e_` tests of tests/e2e: the lifecycle, the two-node and the isolation tests. (The
        // API server outage and the browser's `e2e_` test are other crates: local cluster only.)
        let mut args = vec!["test", "--workspace", "--test", "e2e"];
        args.extend(extra);
        // The lobby is deployed on the local cluster only.
        args.extend(["e2e_", "--", "--skip", "e2e_lobby"]);
        let mut env = vec![("SPAWNER_TEST_CLUSTER", "kind".to_string())];
        env.extend(kind.engine.env());
        cargo_test_with(&args, &env, tally)
    })
}

/// The kind cluster of the end-to-end phase (the tests' harness names it too).
const KIND_CLUSTER: &str = "spawner-e2e";
/// tests/e2e/kind.rs: builds its own cluster, so it runs in the kind phase only.
const THROWAWAY_KIND_TEST: &str = "kind_a_throwaway_two_node_cluster";

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    println!("==> {name}");
    f().with_context(|| format!("step `{name}` failed"))?;
    println!("    {name}: ok ({:.1?})", t.elapsed());
    Ok(())
}

fn command(args: &[&str]) -> Command {
    let mut cmd = crate::cargo();
    cmd.args(args).env("KUBECONFIG", crate::cluster::kubeconfig_path());
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
    cargo_test_with(args, &[], tally)
}

fn cargo_test_with(args: &[&str], env: &[(&str, String)], tally: &mut Tally) -> Result<()> {
    let mut cmd = command(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("running cargo test")?;
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
