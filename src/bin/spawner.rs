//! `spawner`: the command-line tool (see `spawner --help` and [`spawner::cli`]).
#![forbid(unsafe_code)]

use clap::Parser;
use spawner::cli::{Cli, run};
use spawner::process::{LogFilter, Stop, init_logging, stop_signal};

fn main() {
    let cli = Cli::parse();
    // Diagnostics go to stderr and stay quiet unless asked for: stdout is for results.
    init_logging(cli.global.log_format, LogFilter::Directives("warn"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        let mut stdout = std::io::stdout().lock();
        tokio::select! {
            result = run(cli, &mut stdout) => result.map_err(|e| (e.to_string(), e.exit_code())),
            // A wait interrupted by a person or a supervisor: say so and leave with the usual code.
            stop = stop_signal() => Err((
                if stop == Stop::Interrupt { "interrupted" } else { "terminated" }.to_owned(),
                stop.exit_code(),
            )),
        }
    });
    if let Err((message, code)) = result {
        eprintln!("error: {message}");
        std::process::exit(code);
    }
}
