//! `cargo xtask bench controller`: the controller's burst throughput against a raw client and
//! its create-to-Ready overhead against a bare Pod, on the local cluster.
//!
//! The measurement itself is the ignored test `bench_controller` in tests/cluster/controller_bench.rs
//! (it needs an async Kubernetes client, which the xtask crate keeps out of its dependencies);
//! this runs it in release mode with the settings below and lets it print its report.
//! Targets: throughput >= 80% of the raw client's; Ready overhead p50 <= 100 ms.

use anyhow::{Context, Result, ensure};

/// Settings of `cargo xtask bench controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Backends created in the burst.
    #[arg(long, default_value_t = 500)]
    pub backends: usize,
    /// Requests in flight while creating (the same for the raw client and for backends).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Backends (and bare pods) created one after the other for the Ready latency.
    #[arg(long, default_value_t = 20)]
    pub ready: usize,
    /// Give burst backends token auth (the controller then also creates a Secret each).
    #[arg(long)]
    pub token_auth: bool,
    /// Burst backends without a Service (`spec.service.enabled: false`); the raw client then
    /// makes bare Pods only.
    #[arg(long)]
    pub no_service: bool,
}

pub fn run(args: Args) -> Result<()> {
    println!("building and running the controller benchmark (release)");
    let status = crate::cargo()
        .args(["test", "--release", "-p", "spawner", "--test", "cluster", "--"])
        .args(["--ignored", "--nocapture", "--exact", "controller_bench::bench_controller"])
        .env("SPAWNER_BENCH_BACKENDS", args.backends.to_string())
        .env("SPAWNER_BENCH_CONCURRENCY", args.concurrency.to_string())
        .env("SPAWNER_BENCH_READY", args.ready.to_string())
        .env("SPAWNER_BENCH_AUTH", if args.token_auth { "Token" } else { "None" })
        .env("SPAWNER_BENCH_SERVICES", (!args.no_service).to_string())
        .status()
        .context("running cargo test")?;
    ensure!(status.success(), "the controller benchmark failed ({status}); its output above says where");
    Ok(())
}
