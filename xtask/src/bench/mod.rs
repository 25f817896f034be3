//! `cargo xtask bench ...`: benchmarks run side by side with their reference in one run, printing
//! ratios. They are measurements, not tests: nothing here asserts a time.

pub mod controller;
pub mod sidecar;
pub mod sweeper;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// The sidecar against direct access, nginx and HAProxy (HTTP load, WebSocket echo, memory).
    Sidecar(sidecar::Args),
    /// The controller against a raw API client (burst creation) and bare Pods (time to Ready).
    Controller(controller::Args),
    /// The sweeper following 110 real sidecars: memory, CPU and sweep lateness.
    Sweeper,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Sidecar(args) => sidecar::run(&args),
        Bench::Controller(args) => controller::run(args),
        Bench::Sweeper => sweeper::run(),
    }
}
