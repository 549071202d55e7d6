//! End to end on the legacy path with the real `@rocicorp/zero` 1.9.0 client
//! (`tests/e2e-legacy`): an app schema with `enableLegacyQueries` / `enableLegacyMutators`,
//! permissions deployed with the package's own `zero-deploy-permissions` while zc runs,
//! HS256 tokens verified with `ZERO_AUTH_SECRET`. Phase 1 runs with no permissions
//! deployed; phase 2 after the deploy.

// The Node output is what a failing run shows.
#![allow(clippy::print_stderr)]

#[path = "node_support.rs"]
mod node_support;

use std::process::Command;

use node_support::{free_port, install, project, run_scenarios, start_zc};
use zc_testkit::TestDb;

const SECRET: &str = "zc-e2e-legacy-hs256-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_zero_app_end_to_end() {
    let dir = project("e2e-legacy");
    tokio::task::block_in_place(|| install(&dir));
    let db = TestDb::new().await;
    let seed = std::fs::read_to_string(dir.join("seed.sql")).expect("seed.sql");
    db.exec(&seed).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _zc = tokio::task::block_in_place(|| {
        start_zc(
            &[
                ("ZERO_UPSTREAM_DB", db.url().to_owned()),
                (
                    "ZERO_REPLICA_FILE",
                    tmp.path().join("replica.db").display().to_string(),
                ),
                ("ZERO_AUTH_SECRET", SECRET.to_owned()),
            ],
            port,
        )
    });
    let env = |scenario: Option<&str>| {
        let mut env = vec![
            ("ZC_E2E_CACHE_URL", format!("http://127.0.0.1:{port}")),
            ("ZC_E2E_PG_URL", db.url().to_owned()),
            ("ZC_E2E_AUTH_SECRET", SECRET.to_owned()),
        ];
        if let Some(s) = scenario {
            env.push(("ZC_E2E_SCENARIO", s.to_owned()));
        }
        env
    };
    // Phase 1: nothing deployed; nothing readable, CRUD writes skipped.
    let (passed, failed) =
        tokio::task::block_in_place(|| run_scenarios(&dir, &env(Some("noperms"))));
    assert!(failed.is_empty() && passed == 1, "phase 1: {failed:#?}");

    // Deploy with the package's own CLI while zc runs.
    let status = tokio::task::block_in_place(|| {
        Command::new("node_modules/.bin/zero-deploy-permissions")
            .args([
                "--schema-path",
                "schema.mjs",
                "--upstream-db",
                db.url(),
                "--app-id",
                "zero",
            ])
            .current_dir(&dir)
            .status()
            .expect("zero-deploy-permissions")
    });
    assert!(status.success(), "zero-deploy-permissions failed");

    // Phase 2: every scenario under the deployed rules.
    let (passed, failed) = tokio::task::block_in_place(|| run_scenarios(&dir, &env(None)));
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
    assert!(passed >= 5, "only {passed} scenarios reported ok");
}
