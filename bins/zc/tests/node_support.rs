//! Shared by the end-to-end tests: the Node projects under `tests/`, child processes that
//! die with the test, and the scenario runner's output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Node project under the workspace's `tests/`.
pub fn project(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Kills a child process when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `npm ci` unless `node_modules` is already installed from the current lock file.
pub fn install(dir: &Path) {
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

pub fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the `zc` binary with these `ZERO_*` settings and waits for its port.
pub fn start_zc(env: &[(&str, String)], port: u16) -> Guard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zc"));
    cmd.env("ZERO_PORT", port.to_string())
        .env("ZERO_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut zc = Guard(cmd.spawn().expect("the zc binary"));
    wait_port(port, "zc", &mut zc.0);
    zc
}

/// Runs `node scenarios.mjs` in `dir` with `env`; returns the scenarios that passed and the
/// lines of those that failed (the output is echoed for a failing test to show).
pub fn run_scenarios(dir: &Path, env: &[(&str, String)]) -> (usize, Vec<String>) {
    let mut cmd = Command::new("node");
    cmd.arg("scenarios.mjs")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("node is installed");
    let stdout = child.stdout.take().expect("stdout");
    let mut passed = 0;
    let mut failed = Vec::new();
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
    let status = child.wait().expect("scenarios");
    if !status.success() && failed.is_empty() {
        failed.push(format!("scenarios exited with {status}"));
    }
    (passed, failed)
}
