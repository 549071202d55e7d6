//! Query engine benchmarks over a real replica (redb), release build:
//!
//! - `hydrate_window_1m`: a 100-row window (`orderBy modified desc limit 100`) over 1,000,000
//!   issues, served by the mirrored index on `modified` (the replica streams the first rows
//!   of the index; nothing else is read);
//! - `hydrate_related_10`: the same window with each issue's 10 comments (`related`,
//!   partitioned per issue, read through the index on `comment.issue`);
//! - `push_5_operators`: one upstream row change pushed through a five-operator query
//!   (filter, EXISTS, start, limit window, related join): an edit that moves a row inside
//!   the window, alternating between two values.
//!
//! Rows: `ZC_BENCH_QUERY_ROWS` (default 1,000,000 issues).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use zc_query::pipeline::RowChange;
use zc_query::tree::TreeQuery;
use zc_replica::Replica;
use zc_sync::SnapshotSources;
use zc_types::{ColumnSpec, IndexSpec, Lsn, Row, TableName, TableSpec, TypeKind, Value};
use zc_wal::{Destination, SyncState, Watermark};

fn rows() -> i64 {
    std::env::var("ZC_BENCH_QUERY_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn issue_spec() -> TableSpec {
    let mut spec = TableSpec::new(
        TableName::new("public", "issue"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("title", TypeKind::Text),
            ColumnSpec::new("open", TypeKind::Bool),
            ColumnSpec::new("modified", TypeKind::Float),
            ColumnSpec::new("creator", TypeKind::Int),
        ],
        vec![0],
    );
    spec.indexes.push(IndexSpec {
        name: "issue_modified".into(),
        columns: vec![(3, true)],
        unique: false,
    });
    spec
}

fn comment_spec() -> TableSpec {
    let mut spec = TableSpec::new(
        TableName::new("public", "comment"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("issue", TypeKind::Int),
            ColumnSpec::new("body", TypeKind::Text),
        ],
        vec![0],
    );
    spec.indexes.push(IndexSpec {
        name: "comment_issue".into(),
        columns: vec![(1, false)],
        unique: false,
    });
    spec
}

fn user_spec() -> TableSpec {
    TableSpec::new(
        TableName::new("public", "user"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("name", TypeKind::Text),
        ],
        vec![0],
    )
}

fn issue(id: i64, modified: f64) -> Row {
    vec![
        Value::Int(id),
        Value::Text(format!("issue number {id}")),
        Value::Bool(id % 3 != 0),
        Value::Float(modified),
        Value::Int(id % 100),
    ]
}

/// A replica with `n` issues (modified = id), 10 comments on each of the 1,000 most recently
/// modified issues, and 100 users.
fn build(n: i64) -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("bench.db")).expect("replica");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let specs = vec![
            Arc::new(issue_spec()),
            Arc::new(comment_spec()),
            Arc::new(user_spec()),
        ];
        replica
            .begin_initial_sync(Lsn(1), specs)
            .await
            .expect("begin");
        let mut id = 0;
        while id < n {
            let batch: Vec<Row> = (id..(id + 50_000).min(n))
                .map(|i| issue(i, i as f64))
                .collect();
            id += batch.len() as i64;
            replica
                .copy_rows(
                    &TableName::new("public", "issue"),
                    batch.try_into().expect("rows of one width"),
                )
                .await
                .expect("copy");
        }
        let comments: Vec<Row> = ((n - 1000).max(0)..n)
            .flat_map(|i| {
                (0..10).map(move |j| {
                    vec![
                        Value::Int(i * 10 + j),
                        Value::Int(i),
                        Value::Text(format!("comment {j} on {i}")),
                    ]
                })
            })
            .collect();
        replica
            .copy_rows(
                &TableName::new("public", "comment"),
                comments.try_into().expect("rows of one width"),
            )
            .await
            .expect("copy");
        let users: Vec<Row> = (0..100)
            .map(|i| vec![Value::Int(i), Value::Text(format!("user {i}"))])
            .collect();
        replica
            .copy_rows(
                &TableName::new("public", "user"),
                users.try_into().expect("rows of one width"),
            )
            .await
            .expect("copy");
        replica
            .finish_initial_sync(SyncState {
                slot: "bench".into(),
                publications: vec!["p".into()],
                replica_version: Lsn(1),
                watermark: Watermark {
                    commit_lsn: Lsn(1),
                    ack_lsn: Lsn(1),
                },
            })
            .await
            .expect("finish");
    });
    (dir, replica)
}

const WINDOW: &str = r#"{"table":"issue","orderBy":[["modified","desc"]],"limit":100}"#;
const RELATED: &str = r#"{"table":"issue","related":[{"correlation":{"parentField":["id"],"childField":["issue"]},"subquery":{"table":"comment","alias":"comments","orderBy":[["id","asc"]]}}],"orderBy":[["modified","desc"]],"limit":100}"#;
const FIVE: &str = r#"{"table":"issue","where":{"type":"and","conditions":[{"type":"simple","left":{"type":"column","name":"open"},"right":{"type":"literal","value":true},"op":"="},{"type":"correlatedSubquery","related":{"system":"client","correlation":{"parentField":["id"],"childField":["issue"]},"subquery":{"table":"comment","alias":"zsubq_comments"}},"op":"EXISTS"}]},"related":[{"correlation":{"parentField":["creator"],"childField":["id"]},"subquery":{"table":"user","alias":"creator"}}],"start":{"row":{"id":999999999,"modified":1e300},"exclusive":true},"orderBy":[["modified","desc"]],"limit":100}"#;

fn hydrate_count(ast: &str, sources: &SnapshotSources) -> usize {
    let ast = zc_query::ast::parse(ast).expect("ast");
    let mut tree = TreeQuery::build(&ast, sources).expect("build");
    tree.hydrate(sources).expect("hydrate").len()
}

fn queries(c: &mut Criterion) {
    let n = rows();
    let (_dir, replica) = build(n);
    let mut group = c.benchmark_group("query");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(format!("hydrate_window_{n}"), |b| {
        b.iter(|| {
            let sources = SnapshotSources::new(replica.snapshot().expect("snapshot")).expect("s");
            assert_eq!(hydrate_count(WINDOW, &sources), 100);
        })
    });
    group.bench_function("hydrate_related_10", |b| {
        b.iter(|| {
            let sources = SnapshotSources::new(replica.snapshot().expect("snapshot")).expect("s");
            assert_eq!(hydrate_count(RELATED, &sources), 100 + 100 * 10);
        })
    });
    // One tree, then edits that move a row inside the window, alternating.
    let mut sources = SnapshotSources::new(replica.snapshot().expect("snapshot")).expect("s");
    let ast = zc_query::ast::parse(FIVE).expect("ast");
    let mut tree = TreeQuery::build(&ast, &sources).expect("build");
    let hydrated = tree.hydrate(&sources).expect("hydrate");
    assert!(hydrated.len() > 100, "{}", hydrated.len());
    let table = TableName::new("public", "issue");
    // An open issue in the window, with comments.
    let id = (n - 10..n)
        .rev()
        .find(|i| i % 3 != 0)
        .expect("an open issue");
    let (a, b) = (issue(id, id as f64), issue(id, (n - 50) as f64 + 0.5));
    let mut flip = false;
    group.bench_function("push_5_operators", |bench| {
        bench.iter(|| {
            let (old, new) = if flip { (&b, &a) } else { (&a, &b) };
            flip = !flip;
            let change = RowChange::Edit {
                old: old.clone(),
                new: new.clone(),
            };
            sources.apply(&table, &change);
            let out = tree.push("issue", &change, &sources).expect("push");
            assert!(!out.is_empty());
        })
    });
    group.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
