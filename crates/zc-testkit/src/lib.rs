//! The test harness of zc: one real PostgreSQL per test process ([`cluster`]) and a fresh
//! database per test ([`TestDb`]). Dev-only: never a normal dependency of a library crate
//! (`tests/layering.rs` checks it).
//!
//! The cluster comes from [`zc_pg_embed`]: `initdb` into a temporary directory (as the
//! `postgres` user when we run as root), `wal_level=logical`, a free 127.0.0.1 port, trust
//! authentication for user `postgres`. It starts on first use and lives as long as the test
//! process; statics are never dropped, so `zc-pg-embed`'s sentinel stops it and removes its
//! directory when the process exits, however it exits.
//!
//! ```no_run
//! # async fn demo() {
//! let db = zc_testkit::TestDb::new().await;
//! db.exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)").await;
//! let pool = db.pool().await;
//! # drop(pool);
//! # }
//! ```

pub mod client;
pub mod oracle;
pub mod regressions;
pub mod trees;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use zc_pg_embed::PgOptions;

pub use zc_pg_embed::EmbeddedPostgres;

/// The shared cluster of a test process (the house style's name for it).
pub type PgCluster = EmbeddedPostgres;

static CLUSTER: OnceLock<EmbeddedPostgres> = OnceLock::new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The one PostgreSQL cluster of this test process, started synchronously on first use
/// (≈1–2 s); later calls return at once. Panics with the reason when it cannot start.
pub fn cluster() -> &'static EmbeddedPostgres {
    CLUSTER.get_or_init(|| {
        EmbeddedPostgres::start(PgOptions::default())
            .unwrap_or_else(|err| panic!("could not start the test PostgreSQL cluster: {err}"))
    })
}

/// A database of its own on the shared [`cluster`], for one test.
///
/// The database is not dropped afterwards: the cluster and everything in it disappears with
/// the test process.
#[derive(Debug)]
pub struct TestDb {
    /// The database name, `t_<counter>_<pid>`; use it to prefix replication slot and
    /// publication names, which are cluster-wide.
    pub name: String,
    url: String,
}

impl TestDb {
    /// Creates database `t_<counter>_<pid>` on the shared cluster (starting the cluster on
    /// first use, off the async runtime's threads).
    pub async fn new() -> TestDb {
        let pg = match CLUSTER.get() {
            Some(pg) => pg,
            None => tokio::task::spawn_blocking(cluster)
                .await
                .unwrap_or_else(|err| panic!("the test PostgreSQL cluster did not start: {err}")),
        };
        let name = format!(
            "t_{}_{}",
            DB_COUNTER.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        let admin_url = pg.url("postgres");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("could not connect to {admin_url}: {err}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("could not create database {name}: {err}"));
        admin.close().await.ok();
        TestDb {
            url: pg.url(&name),
            name,
        }
    }

    /// The database's URL, `postgres://postgres@127.0.0.1:<port>/<name>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the database; panics when it cannot connect.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("could not connect to {}: {err}", self.url))
    }

    /// A small pool (at most 5 connections) on the database; panics when it cannot connect.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("could not open a pool on {}: {err}", self.url))
    }

    /// Runs one or more `;`-separated SQL statements on a fresh connection; panics with the
    /// SQL and the error when they fail.
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.connect().await;
        if let Err(err) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            panic!("SQL failed on {}: {err}\n--- SQL ---\n{sql}", self.name);
        }
        conn.close().await.ok();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[tokio::test]
    async fn test_databases_are_isolated() {
        let a = TestDb::new().await;
        let b = TestDb::new().await;
        assert_ne!(a.name, b.name);
        assert_ne!(a.url(), b.url());
        a.exec(
            "CREATE TABLE only_in_a (id int PRIMARY KEY); INSERT INTO only_in_a VALUES (1), (2)",
        )
        .await;
        b.exec("CREATE TABLE only_in_b (id int PRIMARY KEY)").await;

        let mut conn_a = a.connect().await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM only_in_a")
            .fetch_one(&mut conn_a)
            .await
            .unwrap();
        assert_eq!(rows, 2);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&mut conn_a)
        .await
        .unwrap();
        assert_eq!(tables, ["only_in_a"]);

        let pool_b = b.pool().await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&pool_b)
        .await
        .unwrap();
        assert_eq!(tables, ["only_in_b"]);
        let db: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&pool_b)
            .await
            .unwrap();
        assert_eq!(db, b.name);
        pool_b.close().await;
    }

    #[tokio::test]
    async fn the_cluster_is_ready_for_logical_replication() {
        let db = TestDb::new().await;
        let mut conn = db.connect().await;
        let wal_level: String = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(wal_level, "logical");
        let collation: String = sqlx::query_scalar("SHOW lc_collate")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(collation, "C");
        // A slot named after the database, as tests are meant to name them.
        let slot = format!("{}_slot", db.name);
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&slot)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&slot)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_cluster_runs_as_the_postgres_user_when_we_are_root() {
        let db = TestDb::new().await;
        let we_are_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let data_owner = std::fs::metadata(cluster().data_dir()).unwrap().uid();
        if we_are_root {
            assert_ne!(
                data_owner, 0,
                "initdb refuses root, so the data belongs to postgres"
            );
        }
        let mut conn = db.connect().await;
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(user, "postgres");
        let sum: i32 = sqlx::query_scalar("SELECT 40 + 2")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(sum, 42);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "SQL failed")]
    async fn exec_panics_with_the_sql() {
        TestDb::new()
            .await
            .exec("SELECT * FROM no_such_table")
            .await;
    }
}
