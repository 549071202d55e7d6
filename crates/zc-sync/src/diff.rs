//! The row changes between two replica snapshots, read from the change log.

use zc_query::pipeline::RowChange;
use zc_replica::{ChangeOp, Snapshot};
use zc_types::{Lsn, TableName};

use crate::Error;

/// How to bring pipelines from one snapshot to the next.
#[derive(Debug, Clone, PartialEq)]
pub enum Advance {
    /// Push these changes, in order (each with the table's name as queries use it).
    Rows(Vec<(TableName, RowChange)>),
    /// A table was truncated, created, dropped or replaced: rebuild from the new snapshot.
    Reset,
}

/// The changes from `old` (at version `from`) to `new` (at version `to`): for every row the
/// change log names in `(from, to]`, its value in each snapshot.
pub fn diff(old: &Snapshot, new: &Snapshot, from: Lsn, to: Lsn) -> Result<Advance, Error> {
    let mut out = Vec::new();
    for entry in new.changes(from, to)? {
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
