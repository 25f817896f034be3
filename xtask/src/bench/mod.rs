//! `cargo xtask bench ...`: benchmarks run side by side with their reference in one run, printing
//! ratios. They are measurements, not tests: nothing here asserts a time.

pub mod controller;
pub mod instructions;
pub mod pool;
pub mod scale;
pub mod sidecar;
pub mod sweeper;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// The sidecar against direct access, nginx and HAProxy (HTTP load, WebSocket echo, memory).
    Sidecar(sidecar::Args),
    /// Instructions per proxied request (valgrind's callgrind) for the sidecar, nginx and HAProxy:
    /// a count that does not move with the machine's load.
    Instructions(instructions::Args),
    /// The controller against a raw API client (burst creation) and bare Pods (time to Ready).
    Controller(controller::Args),
    /// The sweeper following 110 real sidecars: memory, CPU and sweep lateness.
    Sweeper,
    /// Backends from a warm pool against cold ones: create → Ready → first 200 through the proxy
    /// (needs Spawner deployed).
    Pool(pool::Args),
    /// The controller at 10,000 backends on 100 simulated (kwok) nodes, against a raw client:
    /// creation, memory and CPU, a restart, deletion (needs the local cluster, nothing deployed).
    Scale(scale::Args),
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Sidecar(args) => sidecar::run(&args),
        Bench::Instructions(args) => instructions::run(&args),
        Bench::Controller(args) => controller::run(args),
        Bench::Sweeper => sweeper::run(),
        Bench::Pool(args) => pool::run(args),
        Bench::Scale(args) => scale::run(args),
    }
}
