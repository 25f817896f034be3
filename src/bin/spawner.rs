//! `spawner`: the command-line tool (see `spawner --help` and [`spawner::cli`]).
#![forbid(unsafe_code)]

use clap::Parser;
use spawner::cli::{Cli, LogFormat, run};

fn main() {
    let cli = Cli::parse();
    // Diagnostics go to stderr and stay quiet unless asked for: stdout is for results.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.global.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut stdout = std::io::stdout().lock();
        tokio::select! {
            result = run(cli, &mut stdout) => result.map_err(|e| (e.to_string(), e.exit_code())),
            // A wait interrupted by a person or a supervisor: say so and leave with the usual code.
            _ = tokio::signal::ctrl_c() => Err(("interrupted".to_owned(), 130)),
            _ = terminate.recv() => Err(("terminated".to_owned(), 143)),
        }
    });
    if let Err((message, code)) = result {
        eprintln!("error: {message}");
        std::process::exit(code);
    }
}
