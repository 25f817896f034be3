//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Every long operation prints what it does and how long it took; every failure exits non-zero
//! with one line that says what failed and where to look.

mod bench;
mod cluster;
mod demo;
mod deploy;
mod deps;
mod images;
mod manifests;
mod oci;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Spawner's project automation", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate config/ (CRD, RBAC, workloads, kustomization, samples) from the Rust types.
    Manifests {
        /// Do not write; fail if a generated file is stale.
        #[arg(long)]
        check: bool,
    },
    /// The local Kubernetes cluster (upstream binaries as processes on this machine).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Build the container images and load them into the local cluster.
    Images {
        /// Only write the OCI tars (under ~/.cache/spawner/images); do not import them.
        #[arg(long)]
        no_load: bool,
    },
    /// Deploy Spawner (config/default) and a drop-four demo backend; prints the demo's URL.
    Deploy {
        /// Use kind (needs Docker and kind).
        #[arg(long, conflicts_with = "local")]
        kind: bool,
        /// Use the local cluster of `cargo xtask cluster`.
        #[arg(long)]
        local: bool,
        /// Do not create the demo backend.
        #[arg(long)]
        no_demo: bool,
    },
    /// Benchmarks, each side by side with its reference.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Every check and test: fmt, clippy, manifest drift, then unit and integration tests on the
    /// local cluster (installed and started as needed).
    Test {
        /// Skip building images and deploying config/default.
        #[arg(long)]
        no_deploy: bool,
        /// Passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Build (first time) and start etcd, the control plane and the node; waits until healthy.
    Up {
        /// Only the control plane (no kubelet, kube-proxy, CNI or DNS).
        #[arg(long)]
        control_plane_only: bool,
    },
    /// Stop every process `up` started and remove what it created.
    Down,
    /// Say which components run.
    Status,
    /// Print the path of the admin kubeconfig.
    Kubeconfig,
}

/// The repository root (xtask lives one level below it).
pub fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Manifests { check } => {
            manifests::generate(if check { manifests::Mode::Check } else { manifests::Mode::Write })
        }
        Command::Cluster { action } => match action {
            ClusterAction::Up { control_plane_only } => cluster::up(&cluster::UpOptions { node: !control_plane_only }),
            ClusterAction::Down => cluster::down(),
            ClusterAction::Status => cluster::status(),
            ClusterAction::Kubeconfig => cluster::kubeconfig(),
        },
        Command::Images { no_load } => {
            if no_load {
                images::build().map(|_| ())
            } else {
                cluster::up(&cluster::UpOptions::default()).and_then(|()| images::build_and_load()).map(drop)
            }
        }
        Command::Deploy { kind, local, no_demo } => {
            let target = if kind {
                deploy::Target::Kind
            } else if local {
                deploy::Target::Local
            } else {
                deploy::Target::Auto
            };
            deploy::run(target, !no_demo)
        }
        Command::Bench { bench } => bench::run(bench),
        Command::Test { no_deploy, cargo_test_args } => test::run(test::Options { no_deploy, cargo_test_args }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
