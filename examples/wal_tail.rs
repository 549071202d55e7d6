//! Embeds zc-wal in a tiny service that prints every decoded change.
//!
//! ```text
//! cargo run -p zc-examples --example wal_tail -- postgres://postgres@127.0.0.1:5432/app
//! ```
//!
//! The destination keeps its state in memory, so each start makes a fresh initial sync
//! (printed as row counts) and then prints transactions as they commit upstream.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use zc_types::{Lsn, RowBatch, TableName, TableSpec};
use zc_wal::{Change, Destination, Replicator, SyncState, Transaction, WalConfig};

#[derive(Default)]
struct Printer {
    state: Mutex<Option<SyncState>>,
    tables: Mutex<Vec<Arc<TableSpec>>>,
}

impl Destination for Printer {
    type Error = Infallible;

    async fn sync_state(&self) -> Result<Option<SyncState>, Infallible> {
        Ok(self.state.lock().map(|s| s.clone()).unwrap_or_default())
    }

    async fn tables(&self) -> Result<Vec<Arc<TableSpec>>, Infallible> {
        Ok(self.tables.lock().map(|t| t.clone()).unwrap_or_default())
    }

    async fn begin_initial_sync(
        &self,
        version: Lsn,
        tables: Vec<Arc<TableSpec>>,
    ) -> Result<(), Infallible> {
        println!("initial sync at {version}: {} tables", tables.len());
        if let Ok(mut t) = self.tables.lock() {
            *t = tables;
        }
        Ok(())
    }

    async fn copy_rows(&self, table: &TableName, rows: RowBatch) -> Result<(), Infallible> {
        println!("  copied {} rows of {table}", rows.len());
        Ok(())
    }

    async fn finish_initial_sync(&self, state: SyncState) -> Result<(), Infallible> {
        println!(
            "initial sync done; streaming from {}",
            state.watermark.commit_lsn
        );
        if let Ok(mut s) = self.state.lock() {
            *s = Some(state);
        }
        Ok(())
    }

    async fn begin_table_resync(&self, spec: Arc<TableSpec>) -> Result<(), Infallible> {
        println!("copying {} again after a schema change", spec.name);
        Ok(())
    }

    async fn finish_table_resync(&self, table: &TableName) -> Result<(), Infallible> {
        println!("copy of {table} done");
        Ok(())
    }

    async fn apply(&self, txn: Transaction) -> Result<(), Infallible> {
        println!(
            "transaction {} ({} changes)",
            txn.commit_lsn,
            txn.changes.len()
        );
        for change in &txn.changes {
            match change {
                Change::Insert { table, row } => println!("  insert {table} {row:?}"),
                Change::Update {
                    table,
                    old_key,
                    new,
                } => println!("  update {table} {old_key:?} -> {new:?}"),
                Change::Delete { table, key } => println!("  delete {table} {key:?}"),
                Change::Truncate { tables } => println!("  truncate {tables:?}"),
                Change::CreateTable(spec) => println!("  new table {}", spec.name),
                other => println!("  {other:?}"),
            }
        }
        if let Ok(mut guard) = self.state.lock()
            && let Some(s) = guard.as_mut()
        {
            s.watermark = zc_wal::Watermark {
                commit_lsn: txn.commit_lsn,
                ack_lsn: txn.end_lsn,
            };
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let Some(url) = std::env::args().nth(1) else {
        println!("usage: wal_tail postgres://user:password@host:port/database");
        return;
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let replicator = Replicator::new(
        WalConfig::new(url).with_app_id("wal_tail"),
        Printer::default(),
    );
    let run = replicator.run(cancel);
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        _ = tokio::signal::ctrl_c() => { stop.cancel(); run.await }
    };
    if let Err(e) = result {
        println!("error: {e}");
    }
}
