//! Randomised workloads: random schemas with mixed types, random changes in random
//! transaction sizes, then the replica equals PostgreSQL.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zc_testkit::TestDb;

use crate::support::*;

/// A column type the generator knows how to fill.
#[derive(Clone, Copy, Debug)]
pub enum ColType {
    Int8,
    Text,
    Varchar,
    Bool,
    Float8,
    Numeric,
    Jsonb,
    Json,
    Timestamptz,
    Timestamp,
    Date,
    Time,
    Uuid,
    Mood,
    IntArray,
    TextArray,
    Bytea,
    LongText,
}

const ALL: [ColType; 18] = [
    ColType::Int8,
    ColType::Text,
    ColType::Varchar,
    ColType::Bool,
    ColType::Float8,
    ColType::Numeric,
    ColType::Jsonb,
    ColType::Json,
    ColType::Timestamptz,
    ColType::Timestamp,
    ColType::Date,
    ColType::Time,
    ColType::Uuid,
    ColType::Mood,
    ColType::IntArray,
    ColType::TextArray,
    ColType::Bytea,
    ColType::LongText,
];

impl ColType {
    fn sql(self) -> &'static str {
        match self {
            ColType::Int8 => "int8",
            ColType::Text | ColType::LongText => "text",
            ColType::Varchar => "varchar(40)",
            ColType::Bool => "bool",
            ColType::Float8 => "float8",
            ColType::Numeric => "numeric(12,3)",
            ColType::Jsonb => "jsonb",
            ColType::Json => "json",
            ColType::Timestamptz => "timestamptz",
            ColType::Timestamp => "timestamp",
            ColType::Date => "date",
            ColType::Time => "time",
            ColType::Uuid => "uuid",
            ColType::Mood => "mood",
            ColType::IntArray => "int4[]",
            ColType::TextArray => "text[]",
            ColType::Bytea => "bytea",
        }
    }
}

const TEXTS: [&str; 10] = [
    "a",
    "b'c",
    "x,y",
    "{z}",
    "back\\slash",
    "é ü 日本",
    "",
    " sp ",
    "NULL",
    "q\"uote",
];

fn text_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A random SQL literal of the type (NULL one time in ten).
pub fn literal(t: ColType, rng: &mut StdRng) -> String {
    if rng.random_range(0..10) == 0 {
        return "NULL".into();
    }
    match t {
        ColType::Int8 => rng
            .random_range(-5_000_000_000i64..5_000_000_000)
            .to_string(),
        ColType::Text | ColType::Varchar => text_lit(TEXTS[rng.random_range(0..TEXTS.len())]),
        ColType::LongText => {
            // Large and incompressible enough to be TOASTed out of line.
            let n = rng.random_range(2500..4000);
            let s: String = (0..n)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            text_lit(&s)
        }
        ColType::Bool => (if rng.random() { "true" } else { "false" }).into(),
        ColType::Float8 => format!("{}", rng.random_range(-1e6f64..1e6)),
        ColType::Numeric => format!("{:.3}", rng.random_range(-1e6f64..1e6)),
        ColType::Jsonb | ColType::Json => {
            let n = rng.random_range(0..100);
            let s = TEXTS[rng.random_range(0..TEXTS.len())]
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            text_lit(&format!(
                r#"{{"n": {n}, "s": "{s}", "l": [1, 2.5, null, true]}}"#
            ))
        }
        ColType::Timestamptz => {
            let secs = rng.random_range(-2_000_000_000i64..4_000_000_000);
            let micros = rng.random_range(0..1_000_000);
            format!("to_timestamp({secs}) + interval '{micros} microseconds'")
        }
        ColType::Timestamp => {
            let secs = rng.random_range(-2_000_000_000i64..4_000_000_000);
            format!(
                "(to_timestamp({secs}) AT TIME ZONE 'UTC') + interval '{} microseconds'",
                rng.random_range(0..1_000_000)
            )
        }
        ColType::Date => format!(
            "date '2000-01-01' + {}",
            rng.random_range(-800_000..800_000)
        ),
        ColType::Time => format!(
            "time '00:00' + interval '{} microseconds'",
            rng.random_range(0i64..86_399_999_999)
        ),
        ColType::Uuid => format!(
            "'{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}'",
            rng.random::<u32>(),
            rng.random::<u16>(),
            rng.random_range(0..4096),
            rng.random_range(0..4096),
            rng.random_range(0u64..1 << 48)
        ),
        ColType::Mood => text_lit(["sad", "ok", "happy", "très bien"][rng.random_range(0..4)]),
        ColType::IntArray => {
            let n = rng.random_range(0..4);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    if rng.random_range(0..5) == 0 {
                        "NULL".into()
                    } else {
                        rng.random_range(-100..100).to_string()
                    }
                })
                .collect();
            format!("ARRAY[{}]::int4[]", items.join(","))
        }
        ColType::TextArray => {
            let n = rng.random_range(0..4);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    if rng.random_range(0..5) == 0 {
                        "NULL".into()
                    } else {
                        text_lit(TEXTS[rng.random_range(0..TEXTS.len())])
                    }
                })
                .collect();
            format!("ARRAY[{}]::text[]", items.join(","))
        }
        ColType::Bytea => format!("'\\x{:08x}'::bytea", rng.random::<u32>()),
    }
}

/// A random table: a key of one or two columns, and some random columns.
pub struct Table {
    pub name: String,
    pub composite: bool,
    pub cols: Vec<(String, ColType)>,
}

impl Table {
    pub fn random(name: &str, rng: &mut StdRng) -> Table {
        let n = rng.random_range(2..7);
        let cols = (0..n)
            .map(|i| (format!("c{i}"), ALL[rng.random_range(0..ALL.len())]))
            .collect();
        Table {
            name: name.into(),
            composite: rng.random(),
            cols,
        }
    }

    pub fn ddl(&self) -> String {
        let mut parts = vec!["id int4 NOT NULL".to_string()];
        if self.composite {
            parts.push("k text NOT NULL".into());
        }
        for (c, t) in &self.cols {
            parts.push(format!("{c} {}", t.sql()));
        }
        let pk = if self.composite { "id, k" } else { "id" };
        let index = self
            .cols
            .iter()
            .find(|(_, t)| matches!(t, ColType::Int8 | ColType::Text | ColType::Date));
        let mut sql = format!(
            "CREATE TABLE {} ({}, PRIMARY KEY ({pk}));",
            self.name,
            parts.join(", ")
        );
        if let Some((c, _)) = index {
            sql.push_str(&format!(
                "CREATE INDEX {0}_{c}_idx ON {0} ({c} DESC, id);",
                self.name
            ));
        }
        sql
    }

    fn key_lit(&self, rng: &mut StdRng) -> (String, String) {
        let id = rng.random_range(0..40).to_string();
        let k = text_lit(["a", "b", "c"][rng.random_range(0..3)]);
        let cond = if self.composite {
            format!("id = {id} AND k = {k}")
        } else {
            format!("id = {id}")
        };
        let vals = if self.composite {
            format!("{id}, {k}")
        } else {
            id
        };
        (cond, vals)
    }

    /// One random change statement.
    pub fn change(&self, rng: &mut StdRng) -> String {
        let (cond, key_vals) = self.key_lit(rng);
        match rng.random_range(0..100) {
            0..=44 => {
                let cols: Vec<&str> = self.cols.iter().map(|(c, _)| c.as_str()).collect();
                let vals: Vec<String> = self.cols.iter().map(|(_, t)| literal(*t, rng)).collect();
                let key_cols = if self.composite { "id, k" } else { "id" };
                let sep = if cols.is_empty() { "" } else { ", " };
                format!(
                    "INSERT INTO {} ({key_cols}{sep}{}) VALUES ({key_vals}{sep}{}) ON CONFLICT DO NOTHING",
                    self.name,
                    cols.join(", "),
                    vals.join(", ")
                )
            }
            45..=74 => {
                // Update a random subset of columns (leaving TOASTed ones untouched often).
                let mut sets = Vec::new();
                for (c, t) in &self.cols {
                    if rng.random_range(0..3) == 0 {
                        sets.push(format!("{c} = {}", literal(*t, rng)));
                    }
                }
                let sets = if sets.is_empty() {
                    "id = id".to_string()
                } else {
                    sets.join(", ")
                };
                format!("UPDATE {} SET {sets} WHERE {cond}", self.name)
            }
            75..=82 => {
                // Change the key.
                let new_id = rng.random_range(0..40);
                format!("UPDATE {} SET id = {new_id} WHERE {cond}", self.name)
            }
            83..=97 => format!("DELETE FROM {} WHERE {cond}", self.name),
            _ => format!("TRUNCATE {}", self.name),
        }
    }
}

pub async fn create_schema(db: &TestDb, tables: &[Table]) {
    db.exec("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très bien');")
        .await;
    db.exec(MARKER_DDL).await;
    for t in tables {
        db.exec(&t.ddl()).await;
    }
}

/// Runs `txns` random transactions of random sizes; statements that fail (key conflicts)
/// are rolled back to a savepoint, so each transaction commits what succeeded.
pub async fn random_transactions(db: &TestDb, tables: &[Table], rng: &mut StdRng, txns: usize) {
    let mut conn = db.connect().await;
    for _ in 0..txns {
        let size = match rng.random_range(0..10) {
            0 => rng.random_range(20..80),
            _ => rng.random_range(1..6),
        };
        sqlx::raw_sql("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        for _ in 0..size {
            let t = &tables[rng.random_range(0..tables.len())];
            let stmt = t.change(rng);
            sqlx::raw_sql("SAVEPOINT s")
                .execute(&mut conn)
                .await
                .expect("savepoint");
            if sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
                .execute(&mut conn)
                .await
                .is_err()
            {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT s")
                    .execute(&mut conn)
                    .await
                    .expect("rollback to savepoint");
            }
        }
        let end = if rng.random_range(0..20) == 0 {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(end.to_string()))
            .execute(&mut conn)
            .await
            .expect("end");
    }
}

fn seed() -> u64 {
    std::env::var("ZC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_converges() {
    init_tracing();
    let seed = seed();
    eprintln!("random_workload_converges seed={seed} (replay with ZC_PROPTEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    let tables: Vec<Table> = (0..3)
        .map(|i| Table::random(&format!("t{i}"), &mut rng))
        .collect();
    create_schema(&db, &tables).await;
    // Some rows before the initial sync, the rest streamed.
    random_transactions(&db, &tables, &mut rng, 40).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(wal_config(&db), &dir.path().join("replica.redb"));
    for round in 0..4 {
        random_transactions(&db, &tables, &mut rng, 60).await;
        let n = bump_marker(&db).await;
        wait_marker(&running, n).await;
        assert_converged(&db, &running.replica).await;
        eprintln!("round {round} converged");
    }
    running.stop().await;
}
