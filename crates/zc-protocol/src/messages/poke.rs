//! Pokes: `pokeStart` → 0..n `pokePart` → `pokeEnd` (`poke.ts`, `row-patch.ts`,
//! `mutations-patch.ts`).
//!
//! The client applies each part's members in a fixed order: `lastMutationIDChanges`,
//! `desiredQueriesPatches`, `gotQueriesPatch`, `rowsPatch`, `mutationsPatch`. A `clear` row
//! op wipes the client's whole store (rows, desired and got queries, mutation results) and
//! everything merged before it, so it belongs in its own, earlier part.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::json::{WireRow, primary_key_record};
use crate::messages::mutation::{MutationId, MutationResponse};
use crate::messages::query::QueriesPatchOp;

/// Body of `pokeStart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PokeStartBody {
    /// Unique within the connection (zero-cache uses the target cookie).
    #[serde(rename = "pokeID")]
    pub poke_id: String,
    /// The cookie the poke starts from: exactly the client's current cookie (`null` for a new
    /// client group). The member is required.
    #[serde(deserialize_with = "Option::deserialize")]
    pub base_cookie: Option<String>,
    /// Legacy; not sent by zero-cache, ignored by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_versions: Option<SchemaVersions>,
    /// Legacy; not sent by zero-cache, ignored by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

impl PokeStartBody {
    /// A `pokeStart` with only the required members.
    pub fn new(poke_id: impl Into<String>, base_cookie: Option<String>) -> Self {
        PokeStartBody {
            poke_id: poke_id.into(),
            base_cookie,
            schema_versions: None,
            timestamp: None,
        }
    }
}

/// Legacy `schemaVersions` of `pokeStart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaVersions {
    /// Lowest supported schema version.
    pub min_supported_version: u64,
    /// Highest supported schema version.
    pub max_supported_version: u64,
}

/// Body of `pokePart`. Absent members are omitted on the wire.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PokePartBody {
    /// Must equal the open poke's id.
    #[serde(rename = "pokeID")]
    pub poke_id: String,
    /// New last mutation ids, for every client of the group; never decreasing.
    #[serde(
        default,
        rename = "lastMutationIDChanges",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_mutation_id_changes: Option<BTreeMap<String, u64>>,
    /// Desired queries by client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_queries_patches: Option<BTreeMap<String, Vec<QueriesPatchOp>>>,
    /// Queries whose rows are complete on the client (group-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub got_queries_patch: Option<Vec<QueriesPatchOp>>,
    /// Row changes (server table and column names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_patch: Option<Vec<RowPatchOp>>,
    /// Custom mutation results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutations_patch: Option<Vec<MutationPatchOp>>,
}

impl PokePartBody {
    /// An empty part of poke `poke_id`.
    pub fn new(poke_id: impl Into<String>) -> Self {
        PokePartBody {
            poke_id: poke_id.into(),
            ..Default::default()
        }
    }

    /// True when the part carries no changes.
    pub fn is_empty(&self) -> bool {
        self.last_mutation_id_changes.is_none()
            && self.desired_queries_patches.is_none()
            && self.got_queries_patch.is_none()
            && self.rows_patch.is_none()
            && self.mutations_patch.is_none()
    }
}

/// Body of `pokeEnd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PokeEndBody {
    /// Must equal the open poke's id.
    #[serde(rename = "pokeID")]
    pub poke_id: String,
    /// The cookie after the poke; required even with `cancel` (zero-cache then sends `""`).
    pub cookie: String,
    /// Discard the poke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
}

impl PokeEndBody {
    /// A `pokeEnd` that moves the client to `cookie`.
    pub fn new(poke_id: impl Into<String>, cookie: impl Into<String>) -> Self {
        PokeEndBody {
            poke_id: poke_id.into(),
            cookie: cookie.into(),
            cancel: None,
        }
    }
}

/// A row operation of `rowsPatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum RowPatchOp {
    /// Replace the whole row (it must contain the primary key columns).
    Put {
        /// The table.
        table_name: String,
        /// The full row.
        value: WireRow,
    },
    /// Merge columns into the row (creating it from `merge` if missing); when `constrain` is
    /// non-empty only the listed columns are kept. zero-cache never sends it.
    Update {
        /// The table.
        table_name: String,
        /// The primary key values.
        #[serde(deserialize_with = "primary_key_record")]
        id: WireRow,
        /// Columns to overwrite.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        merge: Option<WireRow>,
        /// Columns to keep.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        constrain: Option<Vec<String>>,
    },
    /// Delete the row (a no-op if missing).
    Del {
        /// The table.
        table_name: String,
        /// The primary key values (exactly the key columns).
        #[serde(deserialize_with = "primary_key_record")]
        id: WireRow,
    },
    /// Delete the client's entire store.
    Clear,
}

/// An operation of `mutationsPatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum MutationPatchOp {
    /// A mutation's result: settles its `.server` promise.
    Put {
        /// The result.
        mutation: MutationResponse,
    },
    /// The result was cleaned up.
    Del {
        /// Which mutation.
        id: MutationId,
    },
}
