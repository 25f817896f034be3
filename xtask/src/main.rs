//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Every long operation prints what it does and how long it took; every failure exits non-zero
//! with one line that says what failed and where to look.

mod manifests;

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
}

/// The repository root (xtask lives one level below it).
pub fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Manifests { check } => manifests::generate(if check { manifests::Mode::Check } else { manifests::Mode::Write }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
