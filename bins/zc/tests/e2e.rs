//! End to end with the real `@rocicorp/zero` 1.9.0 client: the Node project in `tests/e2e`
//! (installed here with `npm ci` when needed), a real app API server built on
//! `@rocicorp/zero/server`, a throwaway PostgreSQL, and the `zc` binary. The scenarios
//! (`tests/e2e/scenarios.mjs`) compare the client's view with PostgreSQL after each step.

// The Node output is what a failing run shows.
#![allow(clippy::print_stderr)]

#[path = "node_support.rs"]
mod node_support;

use std::process::{Command, Stdio};

use node_support::{Guard, free_port, install, project, run_scenarios, start_zc, wait_port};
use zc_testkit::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_zero_client_end_to_end() {
    let dir = project("e2e");
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
    let _zc = tokio::task::block_in_place(|| {
        start_zc(
            &[
                ("ZERO_UPSTREAM_DB", db.url().to_owned()),
                (
                    "ZERO_REPLICA_FILE",
                    tmp.path().join("replica.db").display().to_string(),
                ),
                (
                    "ZERO_QUERY_URL",
                    format!("http://127.0.0.1:{api_port}/query"),
                ),
                (
                    "ZERO_MUTATE_URL",
                    format!("http://127.0.0.1:{api_port}/mutate"),
                ),
            ],
            zc_port,
        )
    });
    let (passed, failed) = tokio::task::block_in_place(|| {
        run_scenarios(
            &dir,
            &[
                ("ZC_E2E_CACHE_URL", format!("http://127.0.0.1:{zc_port}")),
                ("ZC_E2E_PG_URL", db.url().to_owned()),
            ],
        )
    });
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
    assert!(passed >= 9, "only {passed} scenarios reported ok");
}
