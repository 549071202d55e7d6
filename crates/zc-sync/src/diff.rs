//! The row changes between two replica snapshots, read from the change log.

use zc_query::pipeline::RowChange;
use zc_replica::{ChangeLogEntry, ChangeOp, Snapshot};
use zc_types::{Lsn, TableName};

use crate::Error;

/// How to bring pipelines from one snapshot to the next.
#[derive(Debug, Clone, PartialEq)]
pub enum Advance {
    /// Push these changes, in order (each with the table's name as queries use it).
    Rows(Vec<(TableName, RowChange)>),
    /// A table was truncated, created, dropped or replaced: rebuild from the new snapshot.
    Reset,
    /// More rows changed than the limit given to [`diff_bounded`]: rebuilding from the new
    /// snapshot costs less than pushing every change (and holds none of them in memory).
    TooMany {
        /// How many rows changed.
        changed: usize,
        /// The changes of the tables the caller still wants row by row, in order; `None`
        /// when one of those tables was truncated, created, dropped or replaced.
        kept: Option<Vec<(TableName, RowChange)>>,
    },
}

/// The changes from `old` (at version `from`) to `new` (at version `to`): for every row the
/// change log names in `(from, to]`, its value in each snapshot.
pub fn diff(old: &Snapshot, new: &Snapshot, from: Lsn, to: Lsn) -> Result<Advance, Error> {
    diff_bounded(old, new, from, to, usize::MAX, |_| false)
}

/// [`diff`], unless more than `limit` rows changed: then [`Advance::TooMany`], with the
/// changes of the tables `keep` names. Reads at most `limit` change-log entries into memory
/// (and, past the limit, the kept tables' entries).
pub fn diff_bounded(
    old: &Snapshot,
    new: &Snapshot,
    from: Lsn,
    to: Lsn,
    limit: usize,
    keep: impl Fn(&TableName) -> bool,
) -> Result<Advance, Error> {
    // One pass: the entries up to the limit; past it, only the kept tables' ones.
    let mut entries = Vec::new();
    let mut changed = 0usize;
    new.scan_changes(from, to, |entry| {
        changed += 1;
        if changed == limit.saturating_add(1) {
            entries.retain(|e: &ChangeLogEntry| keep(&e.table));
            entries.shrink_to_fit();
        }
        if changed <= limit || keep(&entry.table) {
            entries.push(entry);
        }
        true
    })?;
    if changed <= limit {
        return rows_of(old, new, entries);
    }
    let kept = match rows_of(old, new, entries)? {
        Advance::Rows(rows) => Some(rows),
        Advance::Reset | Advance::TooMany { .. } => None,
    };
    Ok(Advance::TooMany { changed, kept })
}

/// Each entry's row in both snapshots, as a change (entries whose row is the same in both
/// are left out).
fn rows_of(old: &Snapshot, new: &Snapshot, entries: Vec<ChangeLogEntry>) -> Result<Advance, Error> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let key = match (entry.op, entry.key) {
            (ChangeOp::Truncate | ChangeOp::Reset, _) | (_, None) => return Ok(Advance::Reset),
            (_, Some(key)) => key,
        };
        // A table the old snapshot lacks (or the new one) was created or dropped.
        let before = match old.get(&entry.table, &key) {
            Ok(r) => r.map(|(row, _)| row),
            Err(zc_replica::Error::UnknownTable(_)) => return Ok(Advance::Reset),
            Err(e) => return Err(e.into()),
        };
        let after = match new.get(&entry.table, &key) {
            Ok(r) => r.map(|(row, _)| row),
            Err(zc_replica::Error::UnknownTable(_)) => return Ok(Advance::Reset),
            Err(e) => return Err(e.into()),
        };
        let change = match (before, after) {
            (None, None) => continue,
            (None, Some(new)) => RowChange::Add(new),
            (Some(old), None) => RowChange::Remove(old),
            (Some(old), Some(new)) if old == new => continue,
            (Some(old), Some(new)) => RowChange::Edit { old, new },
        };
        out.push((entry.table, change));
    }
    Ok(Advance::Rows(out))
}
