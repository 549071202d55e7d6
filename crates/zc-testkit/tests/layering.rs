//! The architecture's dependency directions (house style §3.2), enforced: every workspace
//! package's normal dependencies on zc crates must be in the table below.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Every zc library crate that may appear as a dependency.
const LIBRARIES: [&str; 11] = [
    "zc-types",
    "zc-pg-embed",
    "zc-wal",
    "zc-replica",
    "zc-protocol",
    "zc-query",
    "zc-cvr",
    "zc-sync",
    "zc-transport",
    "zc-server",
    "zc-testkit",
];

/// Whether `package` may have `dependency` (a zc crate) as a normal dependency; `None` for
/// a package that is not in the table.
fn allowed(package: &str, dependency: &str) -> Option<bool> {
    let listed = |deps: &[&str]| deps.contains(&dependency);
    Some(match package {
        "zc-types" | "zc-pg-embed" => false,
        "zc-wal" => listed(&["zc-types"]),
        "zc-replica" => listed(&["zc-types", "zc-wal"]),
        "zc-protocol" => listed(&["zc-types"]),
        "zc-query" => listed(&["zc-types", "zc-protocol"]),
        "zc-cvr" => listed(&["zc-types", "zc-protocol"]),
        "zc-sync" => listed(&[
            "zc-types",
            "zc-protocol",
            "zc-query",
            "zc-replica",
            "zc-cvr",
        ]),
        "zc-transport" => listed(&["zc-types", "zc-protocol", "zc-sync"]),
        "zc-server" => LIBRARIES.contains(&dependency) && dependency != "zc-testkit",
        "zc" => listed(&["zc-server"]),
        "zc-testkit" => listed(&["zc-types", "zc-protocol", "zc-pg-embed"]),
        "zc-examples" | "zc-benches" => LIBRARIES.contains(&dependency),
        _ => return None,
    })
}

/// True for a dependency this test governs: the `zc` binary crate and every `zc-*` crate.
fn is_zc(name: &str) -> bool {
    name == "zc" || name.starts_with("zc-")
}

/// The problems in `cargo metadata` output, one line each (empty when all is well).
fn violations(metadata: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let packages = metadata["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if packages.is_empty() {
        problems.push("cargo metadata lists no packages".to_owned());
    }
    for package in packages {
        let name = package["name"].as_str().unwrap_or("<unnamed>");
        if allowed(name, "").is_none() {
            problems.push(format!(
                "{name}: package is not in the layering table of \
                 crates/zc-testkit/tests/layering.rs; add it"
            ));
            continue;
        }
        let dependencies = package["dependencies"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Only normal dependencies: `kind` is null (dev and build dependencies are free).
        let normal = dependencies.iter().filter(|d| d["kind"].is_null());
        for dependency in normal
            .filter_map(|d| d["name"].as_str())
            .filter(|d| is_zc(d))
        {
            if allowed(name, dependency) != Some(true) {
                problems.push(format!("{name} -> {dependency}: not allowed"));
            }
            if dependency == "zc-testkit" && !matches!(name, "zc-examples" | "zc-benches") {
                problems.push(format!(
                    "{name} -> zc-testkit: the test kit may only be a dev-dependency here"
                ));
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn workspace_metadata() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn zc_crates_depend_only_downward() {
    let metadata = workspace_metadata();
    let problems = violations(&metadata);
    assert!(
        problems.is_empty(),
        "forbidden dependencies between zc crates (house style §3.2):\n  {}",
        problems.join("\n  ")
    );
    let names: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"zc-testkit"), "{names:?}");
}

#[test]
fn the_check_reports_forbidden_edges_and_unknown_packages() {
    let metadata = serde_json::json!({
        "packages": [
            { "name": "zc-wal", "dependencies": [
                { "name": "zc-types", "kind": null },
                { "name": "zc-replica", "kind": null },
                { "name": "zc-testkit", "kind": "dev" },
                { "name": "serde", "kind": null },
            ]},
            { "name": "zc-replica", "dependencies": [
                { "name": "zc-testkit", "kind": null },
            ]},
            { "name": "zc-benches", "dependencies": [
                { "name": "zc-testkit", "kind": null },
                { "name": "zc-examples", "kind": null },
            ]},
            { "name": "zc-new", "dependencies": [] },
            { "name": "zc", "dependencies": [
                { "name": "zc-server", "kind": null },
                { "name": "zc-wal", "kind": "build" },
            ]},
        ]
    });
    let problems = violations(&metadata);
    assert_eq!(
        problems,
        [
            "zc-benches -> zc-examples: not allowed",
            "zc-new: package is not in the layering table of crates/zc-testkit/tests/layering.rs; \
             add it",
            "zc-replica -> zc-testkit: not allowed",
            "zc-replica -> zc-testkit: the test kit may only be a dev-dependency here",
            "zc-wal -> zc-replica: not allowed",
        ],
    );
}
