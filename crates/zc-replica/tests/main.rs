//! Replication end to end: a real PostgreSQL (started by zc-testkit) → zc-wal → the redb
//! replica, compared row by row with PostgreSQL itself.

mod support;

mod crash;
mod group_commit;
mod lifecycle;
mod random;
