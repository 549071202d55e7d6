//! `SnapshotSources` against a brute-force model: random tables (ties and NULLs on
//! purpose) in a real redb replica with several indexes (ascending and descending
//! columns), random requests (orderings in both directions, constraints, filter hints,
//! start bounds) with and without an overlay of pending changes. Every scan must return
//! exactly the rows the model says, in the model's order, whichever key or index (read
//! forwards or backwards, fully or partly ordered) the source picked.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zc_query::compare::compare_rows;
use zc_query::pipeline::RowChange;
use zc_query::{ScanRequest, Sources, after_start, complete_ordering, satisfies};
use zc_replica::Replica;
use zc_sync::SnapshotSources;
use zc_types::{ColumnSpec, IndexSpec, Lsn, Row, TableName, TableSpec, TypeKind, Value};
use zc_wal::Destination;

mod common;

fn spec() -> TableSpec {
    let mut spec = TableSpec::new(
        TableName::new("public", "t"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("a", TypeKind::Bool),
            ColumnSpec::new("b", TypeKind::Text),
            ColumnSpec::new("c", TypeKind::Int),
            ColumnSpec::new("d", TypeKind::Float),
        ],
        vec![0],
    );
    for (name, columns) in [
        ("t_a_d", vec![(1, false), (4, false)]),
        ("t_c_b", vec![(3, false), (2, true)]),
        ("t_d", vec![(4, true)]),
        ("t_b_a_c", vec![(2, false), (1, false), (3, false)]),
    ] {
        spec.indexes.push(IndexSpec {
            name: name.into(),
            columns,
            unique: false,
        });
    }
    spec
}

fn value(rng: &mut StdRng, col: usize) -> Value {
    if col > 1 && rng.random_bool(0.15) {
        return Value::Null;
    }
    match col {
        1 => Value::Bool(rng.random_bool(0.5)),
        2 => Value::Text(["x", "y", "z", ""][rng.random_range(0..4)].into()),
        3 => Value::Int(rng.random_range(-2..3)),
        _ => Value::Float(f64::from(rng.random_range(0..6)) / 2.0),
    }
}

fn row(rng: &mut StdRng, id: i64) -> Row {
    let mut r = vec![Value::Int(id)];
    for c in 1..5 {
        r.push(value(rng, c));
    }
    r
}

async fn load(replica: &Replica, spec: &TableSpec, rows: Vec<Row>) {
    replica
        .begin_initial_sync(Lsn(1), vec![Arc::new(spec.clone())])
        .await
        .expect("begin");
    replica
        .copy_rows(&spec.name, rows.try_into().expect("rows of one width"))
        .await
        .expect("copy");
    replica
        .finish_initial_sync(common::synced_at(Lsn(1)))
        .await
        .expect("finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_match_a_model() {
    let spec = spec();
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("sources.db")).expect("replica");
    let mut checked = 0;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(0..120);
        let mut model: BTreeMap<i64, Row> = (0..n).map(|id| (id, row(&mut rng, id))).collect();
        load(&replica, &spec, model.values().cloned().collect()).await;
        let mut sources =
            SnapshotSources::new(replica.snapshot().expect("snapshot")).expect("sources");
        if rng.random_bool(0.5) {
            // Pending changes on top of the snapshot, as during a push.
            for _ in 0..rng.random_range(1..15) {
                let id = rng.random_range(0..n + 10);
                let change = match model.get(&id) {
                    Some(old) if rng.random_bool(0.4) => {
                        let old = old.clone();
                        model.remove(&id);
                        RowChange::Remove(old)
                    }
                    Some(old) => {
                        let new = row(&mut rng, id);
                        let old = old.clone();
                        model.insert(id, new.clone());
                        RowChange::Edit { old, new }
                    }
                    None => {
                        let new = row(&mut rng, id);
                        model.insert(id, new.clone());
                        RowChange::Add(new)
                    }
                };
                sources.apply(&spec.name, &change);
            }
        }
        let source = sources.source("t").expect("table t");
        for _ in 0..60 {
            let mut ordering = Vec::new();
            for _ in 0..rng.random_range(0..4) {
                let c = rng.random_range(1..5);
                if !ordering.iter().any(|&(x, _)| x == c) {
                    ordering.push((c, rng.random_bool(0.5)));
                }
            }
            let pick = |rng: &mut StdRng| -> Vec<(usize, Value)> {
                let mut out: Vec<(usize, Value)> = Vec::new();
                for _ in 0..rng.random_range(0..3) {
                    let c = rng.random_range(1..5);
                    let v = value(rng, c);
                    if !v.is_null() && !out.iter().any(|(x, _)| *x == c) {
                        out.push((c, v));
                    }
                }
                out
            };
            let constraint = pick(&mut rng);
            let mut hints = pick(&mut rng);
            if rng.random_bool(0.2) {
                // A hint whose value is not of the column's kind must not narrow the read.
                hints.push((4, Value::Int(1)));
            }
            let start_row: Option<Row> = if rng.random_bool(0.3) {
                let id = rng.random_range(0..n + 10);
                Some(row(&mut rng, id))
            } else {
                None
            };
            let exclusive = rng.random_bool(0.5);
            let request = ScanRequest {
                ordering: &ordering,
                start: start_row.as_deref().map(|r| (r, exclusive)),
                constraint: &constraint,
                hints: &hints,
            };
            let full = complete_ordering(&spec, &ordering);
            // The caller filters by the hints (their meaning: SQL equality).
            let meets_hints = |r: &Row| {
                hints.iter().all(|(c, v)| match (&r[*c], v) {
                    (Value::Float(x), Value::Int(y)) => *x == *y as f64,
                    (x, y) => !x.is_null() && x == y,
                })
            };
            let got: Vec<Row> = source
                .scan(&request)
                .expect("scan")
                .map(|r| r.expect("row"))
                .filter(|r| meets_hints(r))
                .collect();
            let mut want: Vec<Row> = model
                .values()
                .filter(|r| satisfies(r, &constraint) && meets_hints(r))
                .filter(|r| after_start(r, request.start, &full))
                .cloned()
                .collect();
            want.sort_by(|a, b| compare_rows(a, b, &full));
            assert_eq!(
                got, want,
                "seed {seed}: ordering {ordering:?}, constraint {constraint:?}, hints {hints:?}, start {start_row:?} ({exclusive})"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 40 * 60);
}
