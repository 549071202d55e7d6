//! JSON shapes shared by several messages: rows as ordered JSON objects, JavaScript-style
//! numbers, and the serde helpers that keep "present but `null`" apart from "absent".

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A JSON object whose members keep their order: a row (`{column: value}`), a primary key
/// record (`{pkColumn: value}`) or a partial row (`merge`).
///
/// The order is the one the producer chose (zero-cache writes a table's columns in table
/// order); it does not matter to the client but keeps output deterministic and
/// byte-comparable. When parsing, a repeated member keeps its first position and its last
/// value, like `JSON.parse`. Equality ignores the order, as for JSON objects.
#[derive(Debug, Clone, Default)]
pub struct WireRow(pub Vec<(String, Value)>);

impl PartialEq for WireRow {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl WireRow {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a member (no check for an existing member of the same name).
    pub fn push(&mut self, column: impl Into<String>, value: impl Into<Value>) {
        self.0.push((column.into(), value.into()));
    }

    /// Builder form of [`WireRow::push`].
    pub fn with(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.push(column, value);
        self
    }

    /// The value of a member.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    /// The members in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(c, v)| (c.as_str(), v))
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every value is a string, number or boolean, as primary key values must be.
    pub fn is_primary_key_record(&self) -> bool {
        self.0
            .iter()
            .all(|(_, v)| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for WireRow {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        WireRow(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl From<Vec<(String, Value)>> for WireRow {
    fn from(members: Vec<(String, Value)>) -> Self {
        WireRow(members)
    }
}

impl Serialize for WireRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for WireRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireRow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<WireRow, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                let mut index: HashMap<String, usize> = HashMap::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    match index.get(&k) {
                        Some(&i) => out[i].1 = v,
                        None => {
                            index.insert(k.clone(), out.len());
                            out.push((k, v));
                        }
                    }
                }
                Ok(WireRow(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Deserializes a member that may be `null` as `Some(Value::Null)`; with
/// `#[serde(default)]` an absent member stays `None`.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A primary key record: every value a string, number or boolean.
pub(crate) fn primary_key_record<'de, D: Deserializer<'de>>(d: D) -> Result<WireRow, D::Error> {
    let row = WireRow::deserialize(d)?;
    match row
        .0
        .iter()
        .find(|(_, v)| !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
    {
        Some((column, _)) => Err(de::Error::custom(format_args!(
            "primary key value of \"{column}\" must be a string, number or boolean"
        ))),
        None => Ok(row),
    }
}

/// A list of column names with at least one entry.
pub(crate) fn non_empty_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::invalid_length(0, &"at least one column"));
    }
    Ok(v)
}

/// Numbers that JavaScript may send with a fraction but usually sends as integers (TTLs):
/// written as an integer when the value is integral, as `JSON.stringify` does.
pub(crate) mod js_number {
    use serde::Serializer;

    /// Largest magnitude written as an integer (2^53, JavaScript's safe integer range).
    const SAFE: f64 = 9_007_199_254_740_992.0;

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.fract() == 0.0 && v.abs() <= SAFE {
            // Exact: integral and within ±2^53.
            s.serialize_i64(*v as i64)
        } else {
            s.serialize_f64(*v)
        }
    }

    pub(crate) fn serialize_opt<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// The empty object `{}` (the body of `ping` and `pong`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}
