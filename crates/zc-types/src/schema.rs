use std::fmt;

use serde::{Deserialize, Serialize};

/// A schema-qualified table name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName {
    /// The PostgreSQL schema (`public` for most app tables).
    pub schema: String,
    /// The table name within the schema.
    pub name: String,
}

impl TableName {
    /// Builds a name from its parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name Zero uses for this table: the bare name in schema `public`, otherwise
    /// `schema.name` (zero-cache's `liteTableName`).
    pub fn zero_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }

    /// The name quoted for SQL: `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Quotes an SQL identifier, doubling embedded quotes.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// How a PostgreSQL type's values are represented in zc (and so in Zero's value model).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeKind {
    /// int2, int4, int8 → exact integers.
    Int,
    /// float4, float8 → numbers.
    Float,
    /// numeric/decimal → numbers (as zero-cache: parsed to a double, precision may be lost).
    Numeric,
    /// bool.
    Bool,
    /// text, varchar, char, name, citext and other string-like types.
    Text,
    /// uuid, shown as its canonical text.
    Uuid,
    /// json.
    Json,
    /// jsonb.
    Jsonb,
    /// timestamp without time zone → epoch milliseconds (the value read as UTC).
    Timestamp,
    /// timestamptz → epoch milliseconds.
    TimestampTz,
    /// date → epoch milliseconds at UTC midnight.
    Date,
    /// time → milliseconds since midnight.
    Time,
    /// timetz → milliseconds since midnight, normalised to UTC.
    TimeTz,
    /// An enum type: its label as text.
    Enum,
    /// bytea: replicated, not synced to clients.
    Bytea,
    /// An array of the element kind → a JSON array.
    Array(Box<TypeKind>),
    /// Any other type: kept as PostgreSQL's text form, not synced to clients.
    Unsupported,
}

impl TypeKind {
    /// The kind of a built-in type, by its `pg_type.typname`; `None` for names that need the
    /// catalog to resolve (enums, domains, arrays of those) or are unsupported.
    pub fn from_builtin_name(name: &str) -> Option<TypeKind> {
        Some(match name {
            "int2" | "int4" | "int8" | "oid" => TypeKind::Int,
            "float4" | "float8" => TypeKind::Float,
            "numeric" => TypeKind::Numeric,
            "bool" => TypeKind::Bool,
            "text" | "varchar" | "bpchar" | "char" | "name" | "citext" | "inet" | "cidr"
            | "macaddr" | "macaddr8" | "pg_lsn" => TypeKind::Text,
            "uuid" => TypeKind::Uuid,
            "json" => TypeKind::Json,
            "jsonb" => TypeKind::Jsonb,
            "timestamp" => TypeKind::Timestamp,
            "timestamptz" => TypeKind::TimestampTz,
            "date" => TypeKind::Date,
            "time" => TypeKind::Time,
            "timetz" => TypeKind::TimeTz,
            "bytea" => TypeKind::Bytea,
            _ => return None,
        })
    }

    /// True when Zero can sync values of this kind to clients.
    pub fn is_supported(&self) -> bool {
        match self {
            TypeKind::Bytea | TypeKind::Unsupported => false,
            TypeKind::Array(elem) => elem.is_supported(),
            _ => true,
        }
    }
}

/// A PostgreSQL type as zc knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgType {
    /// The type's OID upstream.
    pub oid: u32,
    /// The type's name (`format_type` output, e.g. `integer`, `mood[]`).
    pub name: String,
    /// How values of the type are represented.
    pub kind: TypeKind,
}

/// A replicated column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Its type.
    pub pg_type: PgType,
    /// True when the column is declared NOT NULL upstream.
    pub not_null: bool,
}

impl ColumnSpec {
    /// A nullable column of the given kind, for schemas built in code (in-memory sources,
    /// examples, tests); its type name is the kind's.
    pub fn new(name: impl Into<String>, kind: TypeKind) -> Self {
        let type_name = format!("{kind:?}").to_lowercase();
        ColumnSpec {
            name: name.into(),
            pg_type: PgType {
                oid: 0,
                name: type_name,
                kind,
            },
            not_null: false,
        }
    }
}

/// A secondary index mirrored from upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    /// The index name upstream.
    pub name: String,
    /// Indexed columns, by position in the table's column list, with `true` for descending.
    pub columns: Vec<(usize, bool)>,
    /// True for unique indexes.
    pub unique: bool,
}

/// A replicated table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    /// The table's name.
    pub name: TableName,
    /// The table's OID upstream (pgoutput relation id).
    pub oid: u32,
    /// Published columns, in upstream order.
    pub columns: Vec<ColumnSpec>,
    /// The row key: positions in `columns` of the primary key (or the chosen unique index
    /// over NOT NULL columns), in key order.
    pub key: Vec<usize>,
    /// Secondary indexes.
    pub indexes: Vec<IndexSpec>,
    /// The LSN of the snapshot the table's rows were last copied at (the initial sync, or a
    /// resync of this table after a schema change). Changes to the table in transactions
    /// that commit before it are already in the copy. Zero for tables born in the stream.
    #[serde(default)]
    pub copied_at: crate::Lsn,
}

impl TableSpec {
    /// A table keyed by the columns at `key`, without secondary indexes, for schemas built
    /// in code (in-memory sources, examples, tests).
    pub fn new(name: TableName, columns: Vec<ColumnSpec>, key: Vec<usize>) -> Self {
        TableSpec {
            name,
            oid: 0,
            columns,
            key,
            indexes: Vec::new(),
            copied_at: crate::Lsn::ZERO,
        }
    }

    /// The position of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key's column names, in key order.
    pub fn key_names(&self) -> Vec<&str> {
        self.key
            .iter()
            .filter_map(|&i| self.columns.get(i).map(|c| c.name.as_str()))
            .collect()
    }
}
