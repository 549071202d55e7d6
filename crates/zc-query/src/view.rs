//! Consumers of a [`TreeQuery`](crate::tree::TreeQuery)'s flat output: [`FlatView`] folds it
//! into the set of rows the query holds (a row is held while some partition holds it), and
//! [`MemorySources`] is a set of in-memory tables to run trees on.

use std::collections::BTreeMap;

use zc_types::Row;

use crate::pipeline::RowChange;
use crate::source::{MemorySource, Source, Sources};
use crate::tree::TreeOutput;

/// Output that does not fit the view (a bug in whoever produced it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// A table without a source.
    #[error("no source for table \"{0}\"")]
    UnknownTable(String),
    /// A remove or edit of a row the view does not hold.
    #[error("{op} of a row the view does not hold: {table} {key}")]
    Absent {
        /// `remove` or `edit`.
        op: &'static str,
        /// The table.
        table: String,
        /// The row's key.
        key: String,
    },
}

/// The rows a query tree holds, with how many partitions hold each, by table and key (the
/// key's values in `Debug` form).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatView {
    rows: BTreeMap<(String, String), (usize, Row)>,
}

impl FlatView {
    /// An empty view.
    pub fn new() -> FlatView {
        FlatView::default()
    }

    /// Applies a tree's output; `sources` give each table's key.
    pub fn apply(&mut self, outs: &[TreeOutput], sources: &dyn Sources) -> Result<(), ViewError> {
        for (table, change) in outs {
            let spec = sources
                .source(table)
                .ok_or_else(|| ViewError::UnknownTable(table.clone()))?
                .spec();
            let key =
                |r: &Row| format!("{:?}", spec.key.iter().map(|&k| &r[k]).collect::<Vec<_>>());
            match change {
                RowChange::Add(r) => {
                    let e = self
                        .rows
                        .entry((table.clone(), key(r)))
                        .or_insert((0, r.clone()));
                    e.0 += 1;
                    e.1 = r.clone();
                }
                RowChange::Remove(r) => {
                    let k = (table.clone(), key(r));
                    let e = self.rows.get_mut(&k).ok_or_else(|| ViewError::Absent {
                        op: "remove",
                        table: k.0.clone(),
                        key: k.1.clone(),
                    })?;
                    e.0 -= 1;
                    if e.0 == 0 {
                        self.rows.remove(&k);
                    }
                }
                RowChange::Edit { new, .. } => {
                    let k = (table.clone(), key(new));
                    self.rows
                        .get_mut(&k)
                        .ok_or_else(|| ViewError::Absent {
                            op: "edit",
                            table: k.0.clone(),
                            key: k.1.clone(),
                        })?
                        .1 = new.clone();
                }
            }
        }
        Ok(())
    }

    /// The rows held, by table and key.
    pub fn rows(&self) -> BTreeMap<(String, String), Row> {
        self.rows
            .iter()
            .map(|(k, (_, r))| (k.clone(), r.clone()))
            .collect()
    }

    /// The number of rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// In-memory tables by the names queries use.
#[derive(Debug, Clone, Default)]
pub struct MemorySources {
    tables: BTreeMap<String, MemorySource>,
}

impl MemorySources {
    /// No tables.
    pub fn new() -> MemorySources {
        MemorySources::default()
    }

    /// Adds a table under its name (`schema.name` outside `public`).
    pub fn add(&mut self, source: MemorySource) {
        self.tables.insert(source.spec().name.zero_name(), source);
    }

    /// A table, to change its rows.
    pub fn table_mut(&mut self, name: &str) -> Option<&mut MemorySource> {
        self.tables.get_mut(name)
    }
}

impl Sources for MemorySources {
    fn source(&self, table: &str) -> Option<&dyn Source> {
        self.tables.get(table).map(|t| t as &dyn Source)
    }
}
