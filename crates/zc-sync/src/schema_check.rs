//! The client schema check zero-cache does for a new client group: every table the client
//! declares must be replicated, with its columns, of compatible types, and with a primary
//! key the replica can key rows by. All problems are reported together, as one
//! `SchemaVersionNotSupported` error.

use zc_protocol::messages::{ClientSchema, ValueType};
use zc_types::{TableSpec, TypeKind};

fn client_type(kind: &TypeKind) -> Option<ValueType> {
    Some(match kind {
        TypeKind::Bool => ValueType::Boolean,
        TypeKind::Int
        | TypeKind::Float
        | TypeKind::Numeric
        | TypeKind::Timestamp
        | TypeKind::TimestampTz
        | TypeKind::Date
        | TypeKind::Time
        | TypeKind::TimeTz => ValueType::Number,
        TypeKind::Text | TypeKind::Uuid | TypeKind::Enum => ValueType::String,
        TypeKind::Json | TypeKind::Jsonb | TypeKind::Array(_) => ValueType::Json,
        TypeKind::Bytea | TypeKind::Unsupported => return None,
    })
}

fn type_name(t: &ValueType) -> &'static str {
    match t {
        ValueType::String => "string",
        ValueType::Number => "number",
        ValueType::Boolean => "boolean",
        ValueType::Null => "null",
        ValueType::Json => "json",
    }
}

/// The problems of `schema` against the replicated `tables` (empty: it fits).
pub(crate) fn check(schema: &ClientSchema, tables: &[&TableSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    let names: Vec<String> = tables.iter().map(|t| t.name.zero_name()).collect();
    for (name, table) in &schema.tables {
        let Some(spec) = tables.iter().find(|t| &t.name.zero_name() == name) else {
            problems.push(format!(
                "The \"{name}\" table does not exist or is not one of the replicated tables: {}.",
                names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        };
        for (column, declared) in &table.columns {
            let Some(c) = spec.columns.iter().find(|c| &c.name == column) else {
                problems.push(format!(
                    "The \"{name}\".\"{column}\" column does not exist or is not one of the replicated columns."
                ));
                continue;
            };
            match client_type(&c.pg_type.kind) {
                None => problems.push(format!(
                    "The \"{name}\".\"{column}\" column has an upstream type that is not supported."
                )),
                Some(upstream)
                    if declared.value_type != ValueType::Null
                        && upstream != declared.value_type =>
                {
                    problems.push(format!(
                        "The \"{name}\".\"{column}\" column's upstream type \"{}\" does not match the client type \"{}\"",
                        type_name(&upstream),
                        type_name(&declared.value_type)
                    ));
                }
                Some(_) => {}
            }
        }
        let mut declared_key = table.primary_key.clone();
        declared_key.sort();
        let mut key: Vec<String> = spec
            .key
            .iter()
            .filter_map(|&k| spec.columns.get(k).map(|c| c.name.clone()))
            .collect();
        key.sort();
        let unique_ok = spec.indexes.iter().filter(|i| i.unique).any(|i| {
            let mut cols: Vec<String> = i
                .columns
                .iter()
                .filter_map(|&(c, _)| spec.columns.get(c).map(|c| c.name.clone()))
                .collect();
            cols.sort();
            cols == declared_key
        });
        if declared_key != key && !unique_ok {
            problems.push(format!(
                "The \"{name}\" table's primary key {declared_key:?} is not its upstream primary key {key:?} or a unique index."
            ));
        }
    }
    problems
}
