//! `zc`: parse configuration, set up logging, run the server, report errors for humans.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zc_server::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},zc=debug", config.log_level))
    });
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.num_sync_workers > 0 {
        builder.worker_threads(config.num_sync_workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        let signal = shutdown.clone();
        let _ctrl_c = zc_server::spawn_signal_handler(signal);
        zc_server::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(if err.is_config() { 2 } else { 1 })
        }
    }
}
