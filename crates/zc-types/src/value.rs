use serde::{Deserialize, Serialize};

/// One replicated value, in Zero's value model plus what the replica must keep beside it.
///
/// How PostgreSQL types map here follows zero-cache (see `PgType`): integers stay exact
/// (`Int`), floating point and numeric become `Float`, timestamps and dates become epoch
/// milliseconds (`Float`), `time` becomes milliseconds since midnight, json/jsonb and arrays
/// become JSON text (`Json`), enums, uuid and other text-like types become `Text`, bytea
/// becomes `Bytes` (replicated but not synced to clients). Types Zero does not support keep
/// their PostgreSQL text form in `Text` and their column is flagged unsupported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// An exact integer (int2, int4, int8).
    Int(i64),
    /// A floating point number (float4/8, numeric, timestamps as epoch ms, dates, times).
    Float(f64),
    /// A string (text, varchar, char, uuid, enum labels, and unsupported types' text).
    Text(String),
    /// JSON text (json, jsonb, and arrays as JSON arrays).
    Json(String),
    /// Raw bytes (bytea).
    Bytes(Vec<u8>),
}

/// A row: one value per column, in the table's column order.
pub type Row = Vec<Value>;

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as Zero's JSON wire value: numbers, booleans, strings, parsed JSON, null.
    ///
    /// Bytes (unsupported in Zero) become null; non-finite floats (infinite timestamps) become
    /// null, because JSON has no representation for them.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null | Value::Bytes(_) => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Json(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}
