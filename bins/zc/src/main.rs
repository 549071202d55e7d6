//! `zc`: parse configuration, set up logging, run the server, report errors for humans.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zc_server::Config;

/// Logs to stderr at `ZERO_LOG_LEVEL` (zc's own crates at debug), or as `RUST_LOG` says.
///
/// Without `RUST_LOG` the filter is by target and level only: `EnvFilter` takes a lock on every
/// span enter and exit (it tracks spans for its field directives), and every poll of a task
/// enters the task's span, which cost a few percent of an initial copy's CPU.
fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).init();
        return;
    }
    let level = level
        .parse::<tracing::level_filters::LevelFilter>()
        .unwrap_or_else(|e| {
            eprintln!("warning: log level {level:?} not understood ({e}); logging at info");
            tracing::level_filters::LevelFilter::INFO
        });
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("zc", tracing::Level::DEBUG);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(targets)
        .init();
}

fn main() -> ExitCode {
    tune_malloc();
    spawn_malloc_trimmer();
    let config = Config::parse();
    init_logging(&config.log_level);
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

/// Tunes glibc's malloc before any thread starts; each setting yields to its `MALLOC_*`
/// environment variable.
///
/// - Arenas: one per two cores, at least one (glibc's default is eight per core). Every
///   tokio worker and blocking thread otherwise gets an arena of its own, and freed memory
///   stays resident in each. One per core instead of eight cut memory per group by about a
///   tenth and the initial copy's peak by about a fifth; on two cores, one arena instead of
///   two cut the whole run's peak from 138 to 93 MiB (benches/side-by-side, zc alone, 100k
///   issues: the peak is in the write ramp's step over the limit; at it, the two arenas'
///   heaps held 61 and 34 MiB), memory per group from 133 to 95 KiB, and the 1M copy's
///   peak from 110–117 to 91–94 MiB while the copy got no slower (8.4–9.0 s against
///   9.6–10.6 s, interleaved), with CPU per write and latencies the same. glibc's per-thread
///   caches take most small blocks without the arena's lock. Larger machines were not
///   measured; `MALLOC_ARENA_MAX` overrides.
/// - Trim threshold: fixed at 128 KiB, glibc's starting value, so that the heap's free top is
///   given back. By default glibc raises it after a large block is freed (up to 64 MiB).
/// - mmap threshold: fixed at 4 MiB. By default glibc raises it after a large block is freed
///   (up to 32 MiB), after which every buffer below that comes from the heap and, before the
///   trimming thread below existed, stayed resident: fixing both at 128 KiB took memory per
///   client group from 2.2 to 1.5 MiB and the whole-run peak from 183 to 109 MiB (same
///   benchmark). But a mapped buffer is zeroed and faulted in page by page each time: the
///   initial copy's per-batch buffers (decoded rows, encoded rows, index entries, redb's
///   cursor buffers, merge chunks; 0.2–3 MiB each) cost 12–25 % of its CPU in page faults at
///   128 KiB. At 4 MiB they are reused from the heap (1M issues, interleaved runs: zc's copy
///   CPU 9.0–12.1 s against 10.3–14.6 s, its peak 134 against 113 MiB), and the trimming
///   thread gives freed heap pages back; memory per client group and idle memory stayed as
///   they were (10k issues: 297 against 311 KiB, 21.2 against 21.4 MiB).
///
/// One of the binary's two `unsafe` blocks (the workspace denies `unsafe`): glibc has no
/// safe interface for this, and the only alternative is re-executing the process with the
/// variables set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    const TRIM_THRESHOLD: libc::c_int = 128 << 10;
    const MMAP_THRESHOLD: libc::c_int = 4 << 20;
    let unset = |name: &str| std::env::var_os(name).is_none();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arenas = libc::c_int::try_from((cores / 2).max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        if unset("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
        if unset("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
        if unset("MALLOC_TRIM_THRESHOLD_") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Gives glibc's free heap pages back to the system once a second (`malloc_trim`), from a
/// thread of its own.
///
/// The trim threshold above returns only the free top of each heap. Memory freed in the
/// middle of a heap (a burst of hydrations: pokes, CVR statements, row streams, freed
/// around the groups' long-lived records) otherwise stays resident until it is reused:
/// glibc has no decay of its own, as jemalloc and mimalloc have. With twenty client groups
/// (benches/side-by-side, zc alone, 10k issues, together with the smaller WebSocket read
/// buffer) memory per group fell from ~0.6 to ~0.38 MiB; CPU per write at 150–300 writes/s
/// (100k issues) was the same with and without the thread. `MALLOC_TRIM_THRESHOLD_` set in
/// the environment turns the thread off, so that glibc's own policy can be chosen.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn spawn_malloc_trimmer() {
    if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("zc-malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // SAFETY: malloc_trim only returns free pages to the system; it takes the
                // arenas' locks itself and may be called from any thread at any time.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("warning: could not start the malloc trimming thread: {e}");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn_malloc_trimmer() {}
