//! `drivers`: parse, run, and turn an error into one line and an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use drivers_host::cli::{Cli, run};

fn init_logging(cli: &Cli) {
    let filter = match &cli.log_level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if cli.json && !std::io::stderr().is_terminal() {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}

/// `error: a: b: c`, on one line, whatever the sources say.
fn error_line(e: &drivers_host::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        // Transparent wrappers repeat their source's text: say it once.
        if !parts.last().is_some_and(|p| p.ends_with(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(drivers_host::bench::bench_json_alias(
        std::env::args_os().collect(),
    ));
    init_logging(&cli);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            if let Some(h) = e.hint() {
                eprintln!("hint: {}", h.replace('\n', " "));
            }
            ExitCode::from(1)
        }
    }
}
