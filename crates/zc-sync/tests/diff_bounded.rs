//! `diff_bounded` on a real redb replica: under its limit it is `diff`; past it, it says how
//! many rows changed and keeps only the changes of the tables asked for (the shard's
//! `clients` and `mutations`, which groups need row by row), or none of them when one of
//! those tables was truncated.

use std::sync::Arc;

use zc_query::pipeline::RowChange;
use zc_replica::Replica;
use zc_sync::{Advance, diff, diff_bounded};
use zc_types::{ColumnSpec, Lsn, TableName, TableSpec, TypeKind, Value};
use zc_wal::{Change, Destination, Transaction};

mod common;

fn issue() -> TableName {
    TableName::new("public", "issue")
}

fn clients() -> TableName {
    TableName::new("app_0", "clients")
}

fn specs() -> Vec<Arc<TableSpec>> {
    vec![
        Arc::new(TableSpec::new(
            issue(),
            vec![
                ColumnSpec::new("id", TypeKind::Int),
                ColumnSpec::new("title", TypeKind::Text),
            ],
            vec![0],
        )),
        Arc::new(TableSpec::new(
            clients(),
            vec![
                ColumnSpec::new("clientID", TypeKind::Text),
                ColumnSpec::new("lastMutationID", TypeKind::Int),
            ],
            vec![0],
        )),
    ]
}

async fn replica(dir: &tempfile::TempDir) -> Replica {
    let replica = Replica::open(dir.path().join("diff.db")).expect("replica");
    replica
        .begin_initial_sync(Lsn(1), specs())
        .await
        .expect("begin");
    replica
        .finish_initial_sync(common::synced_at(Lsn(1)))
        .await
        .expect("finish");
    replica
}

async fn apply(replica: &Replica, lsn: u64, changes: Vec<Change>) {
    replica
        .apply(Transaction {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 1),
            commit_time_micros: 0,
            changes,
        })
        .await
        .expect("apply");
}

fn insert_issue(id: i64) -> Change {
    Change::Insert {
        table: issue(),
        row: vec![Value::Int(id), Value::Text(format!("issue {id}"))],
    }
}

fn set_lmid(client: &str, lmid: i64) -> Change {
    Change::Insert {
        table: clients(),
        row: vec![Value::Text(client.into()), Value::Int(lmid)],
    }
}

fn is_shard(t: &TableName) -> bool {
    t.schema == "app_0"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limit_a_diff_keeps_only_the_tables_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = replica(&dir).await;
    apply(&replica, 10, vec![insert_issue(1), set_lmid("a", 1)]).await;
    let old = replica.snapshot().expect("snapshot");
    // Two transactions: 40 new issues, an edit, a client's mutation ids (one edited, one new).
    let mut first: Vec<Change> = (2..=41).map(insert_issue).collect();
    first.push(set_lmid("a", 2));
    apply(&replica, 20, first).await;
    apply(
        &replica,
        30,
        vec![
            Change::Update {
                table: issue(),
                old_key: None,
                new: vec![Some(Value::Int(1)), Some(Value::Text("edited".into()))],
            },
            set_lmid("b", 5),
        ],
    )
    .await;
    let new = replica.snapshot().expect("snapshot");
    let full = diff(&old, &new, Lsn(10), Lsn(30)).expect("diff");
    let Advance::Rows(all) = &full else {
        panic!("expected rows, got {full:?}");
    };
    assert_eq!(all.len(), 43);

    // Within the limit (exactly at it, too): the same as `diff`.
    for limit in [43, 44, 1000] {
        let bounded = diff_bounded(&old, &new, Lsn(10), Lsn(30), limit, is_shard).expect("diff");
        assert_eq!(bounded, full, "limit {limit}");
    }

    // Past it: how many rows changed, and the shard table's changes, in order.
    let bounded = diff_bounded(&old, &new, Lsn(10), Lsn(30), 42, is_shard).expect("diff");
    let Advance::TooMany { changed, kept } = bounded else {
        panic!("expected too many, got {bounded:?}");
    };
    assert_eq!(changed, 43);
    let row = |c: &str, n: i64| vec![Value::Text(c.into()), Value::Int(n)];
    assert_eq!(
        kept,
        Some(vec![
            (
                clients(),
                RowChange::Edit {
                    old: row("a", 1),
                    new: row("a", 2)
                }
            ),
            (clients(), RowChange::Add(row("b", 5))),
        ])
    );
    // Nothing kept: no changes, still too many.
    let bounded = diff_bounded(&old, &new, Lsn(10), Lsn(30), 5, |_| false).expect("diff");
    assert_eq!(
        bounded,
        Advance::TooMany {
            changed: 43,
            kept: Some(Vec::new())
        }
    );

    // A truncated shard table: its changes are unknown.
    let mut bulk: Vec<Change> = (100..200).map(insert_issue).collect();
    bulk.push(Change::Truncate {
        tables: vec![clients()],
    });
    apply(&replica, 40, bulk).await;
    let newer = replica.snapshot().expect("snapshot");
    let bounded = diff_bounded(&new, &newer, Lsn(30), Lsn(40), 50, is_shard).expect("diff");
    assert!(
        matches!(bounded, Advance::TooMany { kept: None, .. }),
        "{bounded:?}"
    );
    // Within the limit a truncation is a reset, as before.
    let bounded = diff_bounded(&new, &newer, Lsn(30), Lsn(40), 500, is_shard).expect("diff");
    assert_eq!(bounded, Advance::Reset);
}
