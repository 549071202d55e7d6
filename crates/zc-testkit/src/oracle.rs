//! The query oracle: Zero's query AST translated to SQL that PostgreSQL runs with Zero's
//! semantics (NULLs first in ascending order, byte order for text under the C collation the
//! test cluster uses, the ordering completed with the primary key, SQL NULL semantics in
//! conditions, correlated subquery conditions as `EXISTS (SELECT …)`). Deliberately naive:
//! one statement per AST level; `related` subqueries are run by the caller, one query per
//! parent row, with the correlation as a constraint ([`level_sql`]).

use zc_protocol::ast::{Ast, Condition, Direction, ExistsOp, SimpleOp, ValuePosition};

/// SQL for an AST's top level over a table with these key columns.
pub fn ast_to_sql(ast: &Ast, key: &[&str]) -> String {
    let key: Vec<String> = key.iter().map(|k| (*k).to_owned()).collect();
    level_sql(ast, &key, &[])
}

/// SQL for one AST level: its rows (all columns) that pass its `where` and `start`, whose
/// `constraint` columns equal the given literals, in its order completed with `key`,
/// limited by its `limit`.
pub fn level_sql(ast: &Ast, key: &[String], constraint: &[(String, serde_json::Value)]) -> String {
    let alias = "t0";
    let mut order: Vec<(String, bool)> = ast
        .order_by
        .iter()
        .flatten()
        .map(|p| (p.0.clone(), p.1 == Direction::Desc))
        .collect();
    for k in key {
        if !order.iter().any(|(c, _)| c == k) {
            order.push((k.clone(), false));
        }
    }
    let col = |c: &str| format!("{alias}.{}", ident(c));
    let mut conds = Vec::new();
    for (c, v) in constraint {
        conds.push(format!("{} = {}", col(c), literal(v)));
    }
    if let Some(w) = &ast.where_ {
        conds.push(condition(w, alias, 0));
    }
    if let Some(start) = &ast.start {
        let bound = |c: &str| -> String {
            start
                .row
                .iter()
                .find(|(name, _)| name == c)
                .map(|(_, v)| literal(v))
                .unwrap_or_else(|| "NULL".into())
        };
        // Lexicographic "after the bound" over the ordering, NULL-aware.
        let mut alts = Vec::new();
        for i in 0..order.len() {
            let mut parts: Vec<String> = order[..i]
                .iter()
                .map(|(c, _)| format!("{} IS NOT DISTINCT FROM {}", col(c), bound(c)))
                .collect();
            let (c, desc) = &order[i];
            let (x, y) = (col(c), bound(c));
            parts.push(if *desc {
                format!("(({x} IS NULL AND {y} IS NOT NULL) OR {x} < {y})")
            } else {
                format!("(({y} IS NULL AND {x} IS NOT NULL) OR {x} > {y})")
            });
            alts.push(format!("({})", parts.join(" AND ")));
        }
        if !start.exclusive {
            let eq: Vec<String> = order
                .iter()
                .map(|(c, _)| format!("{} IS NOT DISTINCT FROM {}", col(c), bound(c)))
                .collect();
            alts.push(format!("({})", eq.join(" AND ")));
        }
        conds.push(format!("({})", alts.join(" OR ")));
    }
    let mut sql = format!("SELECT {alias}.* FROM {} AS {alias}", ident(&ast.table));
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    let order_sql: Vec<String> = order
        .iter()
        .map(|(c, desc)| {
            if *desc {
                format!("{} DESC NULLS LAST", col(c))
            } else {
                format!("{} ASC NULLS FIRST", col(c))
            }
        })
        .collect();
    sql.push_str(&format!(" ORDER BY {}", order_sql.join(", ")));
    if let Some(l) = ast.limit {
        sql.push_str(&format!(" LIMIT {l}"));
    }
    sql
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => format!("'{}'", other.to_string().replace('\'', "''")),
    }
}

fn operand(p: &ValuePosition, alias: &str) -> String {
    match p {
        ValuePosition::Column { name } => format!("{alias}.{}", ident(name)),
        ValuePosition::Literal { value } => literal(value),
        ValuePosition::Static { .. } => "NULL".into(),
    }
}

fn join(conditions: &[Condition], alias: &str, depth: usize, sep: &str) -> String {
    format!(
        "({})",
        conditions
            .iter()
            .map(|c| condition(c, alias, depth))
            .collect::<Vec<_>>()
            .join(sep)
    )
}

fn condition(c: &Condition, alias: &str, depth: usize) -> String {
    match c {
        Condition::And { conditions } if conditions.is_empty() => "TRUE".into(),
        Condition::Or { conditions } if conditions.is_empty() => "FALSE".into(),
        Condition::And { conditions } => join(conditions, alias, depth, " AND "),
        Condition::Or { conditions } => join(conditions, alias, depth, " OR "),
        Condition::CorrelatedSubquery { related, op, .. } => {
            let sub = &related.subquery;
            let not = if *op == ExistsOp::NotExists {
                "NOT "
            } else {
                ""
            };
            if sub.limit == Some(0) {
                return format!("{not}FALSE");
            }
            let inner = format!("t{}", depth + 1);
            let mut conds: Vec<String> = related
                .correlation
                .parent_field
                .iter()
                .zip(&related.correlation.child_field)
                .map(|(p, c)| format!("{inner}.{} = {alias}.{}", ident(c), ident(p)))
                .collect();
            if let Some(w) = &sub.where_ {
                conds.push(condition(w, &inner, depth + 1));
            }
            format!(
                "{not}EXISTS (SELECT 1 FROM {} AS {inner} WHERE {})",
                ident(&sub.table),
                conds.join(" AND ")
            )
        }
        Condition::Simple { op, left, right } => {
            let l = operand(left, alias);
            // SQL WHERE treats NULL as false, which is Zero's rule for these operators.
            match op {
                SimpleOp::In | SimpleOp::NotIn => {
                    let items = match right {
                        ValuePosition::Literal {
                            value: serde_json::Value::Array(a),
                        } => a.iter().map(literal).collect::<Vec<_>>().join(", "),
                        _ => String::new(),
                    };
                    let any = if items.is_empty() {
                        "FALSE".to_string()
                    } else {
                        format!("{l} IN ({items})")
                    };
                    if *op == SimpleOp::In {
                        format!("COALESCE({any}, FALSE)")
                    } else {
                        format!("({l} IS NOT NULL AND NOT COALESCE({any}, FALSE))")
                    }
                }
                SimpleOp::Is => format!("{l} IS NOT DISTINCT FROM {}", operand(right, alias)),
                SimpleOp::IsNot => format!("{l} IS DISTINCT FROM {}", operand(right, alias)),
                SimpleOp::Ne => format!("{l} <> {}", operand(right, alias)),
                other => format!("{l} {} {}", other.as_str(), operand(right, alias)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_filters_order_start_and_limit() {
        let ast = zc_protocol::ast::parse(
            r#"{"table":"issue","where":{"type":"simple","left":{"type":"column","name":"a"},"right":{"type":"literal","value":[1,2]},"op":"NOT IN"},"start":{"row":{"id":3,"a":null},"exclusive":true},"limit":2,"orderBy":[["a","desc"]]}"#,
        )
        .unwrap();
        let sql = ast_to_sql(&ast, &["id"]);
        assert!(sql.starts_with("SELECT t0.* FROM \"issue\" AS t0 WHERE (t0.\"a\" IS NOT NULL AND NOT COALESCE(t0.\"a\" IN (1, 2), FALSE))"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY t0.\"a\" DESC NULLS LAST, t0.\"id\" ASC NULLS FIRST LIMIT 2"),
            "{sql}"
        );
    }

    #[test]
    fn translates_correlated_subqueries() {
        let ast = zc_protocol::ast::parse(
            r#"{"table":"issue","where":{"type":"correlatedSubquery","related":{"correlation":{"parentField":["id"],"childField":["issue"]},"subquery":{"table":"comment","where":{"type":"correlatedSubquery","related":{"correlation":{"parentField":["author"],"childField":["id"]},"subquery":{"table":"user"}},"op":"NOT EXISTS"}}},"op":"EXISTS"}}"#,
        )
        .unwrap();
        let sql = ast_to_sql(&ast, &["id"]);
        assert!(
            sql.contains("EXISTS (SELECT 1 FROM \"comment\" AS t1 WHERE t1.\"issue\" = t0.\"id\" AND NOT EXISTS (SELECT 1 FROM \"user\" AS t2 WHERE t2.\"id\" = t1.\"author\"))"),
            "{sql}"
        );
    }
}
