//! The query AST (`packages/zero-protocol/src/ast.ts` of Zero 1.9.0).
//!
//! Serialisation writes members in the order the 1.9.0 client and zero-cache write them
//! (checked against captured traffic), so a parsed AST serialises back to the same bytes:
//! `schema, table, alias, where, related, start, limit, orderBy` for a query;
//! `type, left, right, op` for a simple condition; a relationship under `related` as
//! `correlation, hidden, subquery, system` and inside an EXISTS condition as
//! `system, correlation, subquery, hidden`. Parsing accepts any member order.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A malformed AST: what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("invalid query AST: {0}")]
pub struct AstError(#[source] pub serde_json::Error);

/// Parses an AST from JSON text.
pub fn parse(json: &str) -> Result<Ast, AstError> {
    serde_json::from_str(json).map_err(AstError)
}

/// Parses an AST from a JSON value.
pub fn from_value(value: serde_json::Value) -> Result<Ast, AstError> {
    serde_json::from_value(value).map_err(AstError)
}

/// A query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ast {
    /// Unused by clients.
    #[serde(default)]
    pub schema: Option<String>,
    /// The table (server name; `schema.table` outside `public`).
    pub table: String,
    /// The alias of a subquery.
    #[serde(default)]
    pub alias: Option<String>,
    /// The filter.
    #[serde(default, rename = "where")]
    pub where_: Option<Condition>,
    /// Related subqueries whose rows belong to the result tree.
    #[serde(default)]
    pub related: Option<Vec<CorrelatedSubquery>>,
    /// Start after (or at) this row, in `order_by` order.
    #[serde(default)]
    pub start: Option<Bound>,
    /// At most this many rows.
    #[serde(default)]
    pub limit: Option<u64>,
    /// The ordering (completed with the primary key by the engine).
    #[serde(default)]
    pub order_by: Option<Vec<OrderPart>>,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// One ordering term: `[column, "asc" | "desc"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPart(pub String, pub Direction);

/// A cursor: start after (`exclusive`) or at this row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// The row's values by column, in the order given.
    #[serde(deserialize_with = "ordered_row")]
    pub row: Vec<(String, serde_json::Value)>,
    /// True to start after the row.
    pub exclusive: bool,
}

/// Which part of the system added a relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Permission rules.
    Permissions,
    /// The client's query builder.
    Client,
    /// Tests.
    Test,
}

/// Equality correlation between a parent and a child (compound keys of equal length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Correlation {
    /// Parent columns.
    pub parent_field: Vec<String>,
    /// Child columns.
    pub child_field: Vec<String>,
}

/// A subquery correlated with its parent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelatedSubquery {
    /// How child rows join to the parent row.
    pub correlation: Correlation,
    /// The child query.
    pub subquery: Box<Ast>,
    /// Who added it.
    #[serde(default)]
    pub system: Option<System>,
    /// A junction hop that is synced but flattened away in the client's view.
    #[serde(default)]
    pub hidden: Option<bool>,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimpleOp {
    /// `=`
    #[serde(rename = "=")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
    /// `IS`
    #[serde(rename = "IS")]
    Is,
    /// `IS NOT`
    #[serde(rename = "IS NOT")]
    IsNot,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `LIKE`
    #[serde(rename = "LIKE")]
    Like,
    /// `NOT LIKE`
    #[serde(rename = "NOT LIKE")]
    NotLike,
    /// `ILIKE`
    #[serde(rename = "ILIKE")]
    ILike,
    /// `NOT ILIKE`
    #[serde(rename = "NOT ILIKE")]
    NotILike,
    /// `IN`
    #[serde(rename = "IN")]
    In,
    /// `NOT IN`
    #[serde(rename = "NOT IN")]
    NotIn,
}

impl SimpleOp {
    /// The operator as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SimpleOp::Eq => "=",
            SimpleOp::Ne => "!=",
            SimpleOp::Is => "IS",
            SimpleOp::IsNot => "IS NOT",
            SimpleOp::Lt => "<",
            SimpleOp::Gt => ">",
            SimpleOp::Le => "<=",
            SimpleOp::Ge => ">=",
            SimpleOp::Like => "LIKE",
            SimpleOp::NotLike => "NOT LIKE",
            SimpleOp::ILike => "ILIKE",
            SimpleOp::NotILike => "NOT ILIKE",
            SimpleOp::In => "IN",
            SimpleOp::NotIn => "NOT IN",
        }
    }
}

/// EXISTS or NOT EXISTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExistsOp {
    /// `EXISTS`
    #[serde(rename = "EXISTS")]
    Exists,
    /// `NOT EXISTS`
    #[serde(rename = "NOT EXISTS")]
    NotExists,
}

/// Where a parameter's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Anchor {
    /// The verified token's claims.
    AuthData,
    /// The row before a mutation.
    PreMutationRow,
}

/// A parameter field: one name or a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Field {
    /// One field.
    One(String),
    /// A path.
    Path(Vec<String>),
}

/// An operand of a simple condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ValuePosition {
    /// A literal value (string, number, boolean, null, or an array of scalars).
    Literal {
        /// The value.
        value: serde_json::Value,
    },
    /// A column of the row.
    Column {
        /// The column name.
        name: String,
    },
    /// A value bound when the pipeline is built.
    Static {
        /// Where it comes from.
        anchor: Anchor,
        /// Which field.
        field: Field,
    },
}

/// A filter condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Condition {
    /// `left op right`.
    Simple {
        /// The operator.
        op: SimpleOp,
        /// Left operand.
        left: ValuePosition,
        /// Right operand (a literal or a parameter).
        right: ValuePosition,
    },
    /// All of the conditions.
    And {
        /// The conditions.
        conditions: Vec<Condition>,
    },
    /// Any of the conditions.
    Or {
        /// The conditions.
        conditions: Vec<Condition>,
    },
    /// EXISTS / NOT EXISTS over a correlated subquery.
    CorrelatedSubquery {
        /// The subquery.
        related: Box<CorrelatedSubquery>,
        /// EXISTS or NOT EXISTS.
        op: ExistsOp,
        /// Join-order hint (does not change results).
        #[serde(default)]
        flip: Option<bool>,
        /// The subquery yields at most one row (does not change results).
        #[serde(default)]
        scalar: Option<bool>,
    },
}

fn ordered_row<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, serde_json::Value)>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a row object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

struct Row<'a>(&'a [(String, serde_json::Value)]);

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Bound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("row", &Row(&self.row))?;
        m.serialize_entry("exclusive", &self.exclusive)?;
        m.end()
    }
}

impl Serialize for Ast {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(v) = &self.schema {
            m.serialize_entry("schema", v)?;
        }
        m.serialize_entry("table", &self.table)?;
        if let Some(v) = &self.alias {
            m.serialize_entry("alias", v)?;
        }
        if let Some(v) = &self.where_ {
            m.serialize_entry("where", v)?;
        }
        if let Some(v) = &self.related {
            m.serialize_entry("related", &RelatedList(v))?;
        }
        if let Some(v) = &self.start {
            m.serialize_entry("start", v)?;
        }
        if let Some(v) = &self.limit {
            m.serialize_entry("limit", v)?;
        }
        if let Some(v) = &self.order_by {
            m.serialize_entry("orderBy", v)?;
        }
        m.end()
    }
}

/// `related` entries: `correlation, hidden, subquery, system`.
struct RelatedList<'a>(&'a [CorrelatedSubquery]);

impl Serialize for RelatedList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for r in self.0 {
            seq.serialize_element(&RelatedEntry(r))?;
        }
        seq.end()
    }
}

struct RelatedEntry<'a>(&'a CorrelatedSubquery);

impl Serialize for RelatedEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("correlation", &r.correlation)?;
        if let Some(h) = r.hidden {
            m.serialize_entry("hidden", &h)?;
        }
        m.serialize_entry("subquery", &r.subquery)?;
        if let Some(sys) = r.system {
            m.serialize_entry("system", &sys)?;
        }
        m.end()
    }
}

/// A subquery inside an EXISTS condition: `system, correlation, subquery, hidden`.
struct ExistsRelated<'a>(&'a CorrelatedSubquery);

impl Serialize for ExistsRelated<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        if let Some(sys) = r.system {
            m.serialize_entry("system", &sys)?;
        }
        m.serialize_entry("correlation", &r.correlation)?;
        m.serialize_entry("subquery", &r.subquery)?;
        if let Some(h) = r.hidden {
            m.serialize_entry("hidden", &h)?;
        }
        m.end()
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            Condition::Simple { op, left, right } => {
                m.serialize_entry("type", "simple")?;
                m.serialize_entry("left", left)?;
                m.serialize_entry("right", right)?;
                m.serialize_entry("op", op)?;
            }
            Condition::And { conditions } | Condition::Or { conditions } => {
                let t = if matches!(self, Condition::And { .. }) {
                    "and"
                } else {
                    "or"
                };
                m.serialize_entry("type", t)?;
                m.serialize_entry("conditions", conditions)?;
            }
            Condition::CorrelatedSubquery {
                related,
                op,
                flip,
                scalar,
            } => {
                m.serialize_entry("type", "correlatedSubquery")?;
                m.serialize_entry("related", &ExistsRelated(related))?;
                m.serialize_entry("op", op)?;
                if let Some(f) = flip {
                    m.serialize_entry("flip", f)?;
                }
                if let Some(sc) = scalar {
                    m.serialize_entry("scalar", sc)?;
                }
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(json: &str) {
        let ast = parse(json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(serde_json::to_string(&ast).unwrap(), json);
    }

    /// ASTs sent by the real 1.9.0 client and returned by `@rocicorp/zero/server`, as
    /// captured on the wire with zero-cache 1.9.0 (one per line, original bytes).
    const CAPTURED: &str = include_str!("../fixtures/captured-asts.txt");

    #[test]
    fn captured_asts_round_trip_byte_for_byte() {
        let mut seen = 0;
        for ast in CAPTURED.lines().filter(|l| !l.is_empty()) {
            round_trip(ast);
            seen += 1;
        }
        assert!(seen >= 5);
    }

    #[test]
    fn every_shape_round_trips() {
        round_trip(
            r#"{"table":"issue","where":{"type":"simple","left":{"type":"column","name":"done"},"right":{"type":"literal","value":false},"op":"="},"orderBy":[["title","asc"]]}"#,
        );
        round_trip(
            r#"{"schema":"","table":"issue","alias":"x","where":{"type":"or","conditions":[{"type":"simple","left":{"type":"column","name":"n"},"right":{"type":"literal","value":[1,2]},"op":"IN"},{"type":"and","conditions":[{"type":"simple","left":{"type":"column","name":"t"},"right":{"type":"static","anchor":"authData","field":"sub"},"op":"ILIKE"}]}]},"related":[{"correlation":{"parentField":["id"],"childField":["issueID"]},"hidden":true,"subquery":{"table":"issueLabel","alias":"labels","related":[{"correlation":{"parentField":["labelID"],"childField":["id"]},"subquery":{"table":"label","alias":"labels"},"system":"client"}]},"system":"client"}],"start":{"row":{"modified":5,"id":"a"},"exclusive":true},"limit":100,"orderBy":[["modified","desc"],["id","asc"]]}"#,
        );
        round_trip(
            r#"{"table":"issue","where":{"type":"correlatedSubquery","related":{"system":"permissions","correlation":{"parentField":["creatorID"],"childField":["id"]},"subquery":{"table":"user","alias":"zsubq_creator","where":{"type":"simple","left":{"type":"column","name":"id"},"right":{"type":"static","anchor":"authData","field":["sub"]},"op":"="},"limit":1}},"op":"NOT EXISTS","flip":true,"scalar":false}}"#,
        );
    }

    #[test]
    fn malformed_asts_are_errors_that_name_the_problem() {
        for (json, needle) in [
            (r#"{"alias":"x"}"#, "table"),
            (
                r#"{"table":"t","where":{"type":"simple","left":{"type":"column","name":"a"},"right":{"type":"literal","value":1},"op":"=="}}"#,
                "==",
            ),
            (r#"{"table":"t","orderBy":[["a","up"]]}"#, "up"),
            (r#"{"table":"t","limit":-1}"#, "-1"),
            (r#"{"table":"t","bogus":1}"#, "bogus"),
            (r#"{"table":"t","where":{"type":"nope"}}"#, "nope"),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
