//! End to end with the real `@rocicorp/zero` 1.9.0 client: the Node project in `tests/e2e`
//! (installed here with `npm ci` when needed), a real app API server built on
//! `@rocicorp/zero/server`, a throwaway PostgreSQL, and the `zc` binary. The scenarios
//! (`tests/e2e/scenarios.mjs`) compare the client's view with PostgreSQL after each step.

// The Node output is what a failing run shows.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zc_testkit::TestDb;

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `npm ci` unless `node_modules` is already installed from the current lock file.
fn install(dir: &Path) {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
        (Ok(l), Ok(i)) => match (l.modified(), i.modified()) {
            (Ok(l), Ok(i)) => i >= l,
            _ => false,
        },
        _ => false,
    };
    if fresh {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm is installed");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_zero_client_end_to_end() {
    let dir = e2e_dir();
    tokio::task::block_in_place(|| install(&dir));
    let db = TestDb::new().await;
    let seed = std::fs::read_to_string(dir.join("seed.sql")).expect("seed.sql");
    db.exec(&seed).await;
    let tmp = tempfile::tempdir().expect("tempdir");

    let api_port = free_port();
    let mut api = Guard(
        Command::new("node")
            .arg("api-server.mjs")
            .current_dir(&dir)
            .env("ZC_E2E_PG_URL", db.url())
            .env("ZC_E2E_API_PORT", api_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node is installed"),
    );
    tokio::task::block_in_place(|| wait_port(api_port, "the API server", &mut api.0));

    let zc_port = free_port();
    let mut zc = Guard(
        Command::new(env!("CARGO_BIN_EXE_zc"))
            .env("ZERO_UPSTREAM_DB", db.url())
            .env("ZERO_REPLICA_FILE", tmp.path().join("replica.db"))
            .env("ZERO_PORT", zc_port.to_string())
            .env(
                "ZERO_QUERY_URL",
                format!("http://127.0.0.1:{api_port}/query"),
            )
            .env(
                "ZERO_MUTATE_URL",
                format!("http://127.0.0.1:{api_port}/mutate"),
            )
            .env("ZERO_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the zc binary"),
    );
    tokio::task::block_in_place(|| wait_port(zc_port, "zc", &mut zc.0));

    let mut scenarios = Command::new("node")
        .arg("scenarios.mjs")
        .current_dir(&dir)
        .env("ZC_E2E_CACHE_URL", format!("http://127.0.0.1:{zc_port}"))
        .env("ZC_E2E_PG_URL", db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node is installed");
    let stdout = scenarios.stdout.take().expect("stdout");
    let mut passed = 0;
    let mut failed = Vec::new();
    tokio::task::block_in_place(|| {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.starts_with("SCENARIO ") {
                if line.ends_with(" ok") {
                    passed += 1;
                } else {
                    failed.push(line);
                }
            }
        }
    });
    let status = tokio::task::block_in_place(|| scenarios.wait()).expect("scenarios");
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
    assert!(status.success(), "scenarios exited with {status}");
    assert!(passed >= 9, "only {passed} scenarios reported ok");
    drop(zc);
    drop(api);
}
