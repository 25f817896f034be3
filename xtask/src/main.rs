//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Every long operation prints what it does and how long it took; every failure exits non-zero
//! with one line that says what failed and where to look.

mod api_suites;
mod bench;
mod cluster;
mod demo;
mod deploy;
mod deps;
mod disk;
mod docker;
mod images;
mod kind;
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
        /// Deploy to the cluster of this kubeconfig as it is: build the images but load them
        /// nowhere (the caller has loaded `~/.cache/spawner/images/*.tar` into its nodes).
        #[arg(long, conflicts_with_all = ["kind", "local"])]
        kubeconfig: Option<std::path::PathBuf>,
        /// Where the reverse proxy answers for that cluster (backends' status URLs start with it).
        #[arg(long, requires = "kubeconfig")]
        base_url: Option<String>,
    },
    /// A Docker engine for kind: the machine's own if one answers, else Debian's dockerd started
    /// with its own data root and socket.
    Docker {
        #[command(subcommand)]
        action: DockerAction,
    },
    /// kind clusters built from a node image assembled on this machine.
    Kind {
        #[command(subcommand)]
        action: KindAction,
    },
    /// Benchmarks, each side by side with its reference.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// The API's outside suites (the TypeScript client's tests, schemathesis) against the API
    /// deployed on the local cluster (`cargo xtask deploy --local` first; `test` runs them too).
    ApiSuites,
    /// Every check and test: fmt, clippy, manifest drift, then unit and integration tests on the
    /// local cluster (installed and started as needed).
    Test {
        /// Skip building images and deploying config/default.
        #[arg(long)]
        no_deploy: bool,
        /// Skip the end-to-end tests on the two-node kind cluster.
        #[arg(long)]
        no_kind: bool,
        /// Passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DockerAction {
    /// Use the running engine, or install and start one; prints its DOCKER_HOST.
    Up,
    /// Stop the engine `up` started (and its containers); an engine we did not start is left alone.
    Down {
        /// Also remove its data root (cached images, such as the kind node image).
        #[arg(long)]
        purge: bool,
    },
    /// Say which engine is in use.
    Status,
}

#[derive(Subcommand)]
enum KindAction {
    /// Create (or reuse) a kind cluster: one control-plane node and WORKERS worker nodes.
    Up {
        #[arg(long, default_value = "spawner")]
        name: String,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Port on 127.0.0.1 mapped to the reverse proxy's NodePort.
        #[arg(long, default_value_t = 30080)]
        host_port: u16,
    },
    /// Delete a kind cluster.
    Down {
        #[arg(long, default_value = "spawner")]
        name: String,
    },
    /// Build the kind node image (Kubernetes v1.34.4, offline) unless Docker has it.
    NodeImage,
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

impl Command {
    /// Which of Debian's packages the command needs (the cluster, Docker, nginx; for the tests
    /// and benchmarks also their references and the browser), installed first when missing.
    fn needs_packages(&self) -> Option<deps::Need> {
        use deps::Need;
        match self {
            Command::Manifests { .. } => None,
            Command::Cluster { action } => matches!(action, ClusterAction::Up { .. }).then_some(Need::Cluster),
            Command::Docker { action } => matches!(action, DockerAction::Up).then_some(Need::Cluster),
            Command::Kind { action } => (!matches!(action, KindAction::Down { .. })).then_some(Need::Cluster),
            Command::Images { .. } | Command::Deploy { .. } => Some(Need::Cluster),
            Command::Bench { .. } | Command::ApiSuites | Command::Test { .. } => Some(Need::Tests),
        }
    }
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` of the repository).
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| project_root().join("target"))
}

/// `cargo`, in the repository's root, for the builds and tests the xtask runs. Without the
/// variables `cargo run` set for the xtask itself (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`,
/// ...): build scripts that watch them (ring's does) would see them changed, and the nested
/// build would compile them again with everything above them (rustls, kube, the library) — and
/// the next `cargo xtask` would compile them back.
pub fn cargo() -> std::process::Command {
    const SET_BY_CARGO_RUN: [&str; 5] =
        ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"];
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        if SET_BY_CARGO_RUN.iter().any(|prefix| key.to_string_lossy().starts_with(prefix)) {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(project_root());
    cmd
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one preparation step every entry point shares: Debian's packages, installed once when
    // missing. Binaries (Kubernetes, kind, the images) are built, and cached, by what uses them.
    let prepared = cli.command.needs_packages().map_or(Ok(()), deps::ensure);
    let result = prepared.and_then(|()| match cli.command {
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
                images::build(true).map(|_| ())
            } else {
                cluster::up(&cluster::UpOptions::default()).and_then(|()| images::build_and_load(true)).map(drop)
            }
        }
        Command::Deploy { no_demo, kubeconfig: Some(kubeconfig), base_url, .. } => {
            let base_url = base_url.unwrap_or_else(|| manifests::PROXY_BASE_URL.to_string());
            deploy::existing(&kubeconfig, &base_url, !no_demo)
        }
        Command::Deploy { kind, local, no_demo, kubeconfig: None, .. } => {
            let target = if kind {
                deploy::Target::Kind
            } else if local {
                deploy::Target::Local
            } else {
                deploy::Target::Auto
            };
            deploy::run(target, !no_demo)
        }
        Command::Docker { action } => match action {
            DockerAction::Up => docker::up().map(|engine| {
                // Last line, for scripts and the test harness: the engine's address, if not the default.
                if let Some(host) = engine.host {
                    println!("DOCKER_HOST={host}");
                }
            }),
            DockerAction::Down { purge } => docker::down(purge),
            DockerAction::Status => docker::status(),
        },
        Command::Kind { action } => match action {
            KindAction::Up { name, workers, host_port } => {
                kind::up(&kind::Options { name, workers, host_port }).map(drop)
            }
            KindAction::Down { name } => kind::down(&name),
            KindAction::NodeImage => docker::up().and_then(|engine| kind::node_image::ensure(&engine)).map(|image| {
                // Last line, for scripts and the test harness: the image reference.
                println!("{image}");
            }),
        },
        Command::Bench { bench } => bench::run(bench),
        Command::ApiSuites => {
            api_suites::run(&cluster::kubeconfig_path(), manifests::PROXY_BASE_URL).map(|(passed, _)| {
                println!("API suites: {passed} passed");
            })
        }
        Command::Test { no_deploy, no_kind, cargo_test_args } => {
            test::run(test::Options { no_deploy, no_kind, cargo_test_args })
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
