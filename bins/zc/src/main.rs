//! `zc`: parse configuration, set up logging, run the server, report errors for humans.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zc_server::Config;

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// Caps glibc's malloc arenas at one per core (its default is eight per core) before any
/// thread starts, unless `MALLOC_ARENA_MAX` says otherwise. Every tokio worker and blocking
/// thread otherwise gets an arena of its own, and freed memory stays resident in each: with
/// fifty client groups on two cores, resident memory per group fell by about a tenth and the
/// initial copy's peak by about a fifth with the cap (benches/side-by-side, 100k issues).
/// The one `unsafe` of the binary (the workspace denies it): glibc has no safe interface
/// for this, and the only alternative is re-executing the process with the variable set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
