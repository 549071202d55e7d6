//! The query oracle: Zero's query AST translated to SQL that PostgreSQL runs with Zero's
//! semantics (NULLs first in ascending order, byte order for text under the C collation the
//! test cluster uses, the ordering completed with the primary key, SQL NULL semantics in
//! conditions). Deliberately naive: one table, no subqueries yet.

use zc_protocol::ast::{Ast, Condition, Direction, SimpleOp, ValuePosition};

/// SQL for an AST over a table with these key columns.
pub fn ast_to_sql(ast: &Ast, key: &[&str]) -> String {
    let mut order: Vec<(String, bool)> = ast
        .order_by
        .iter()
        .flatten()
        .map(|p| (p.0.clone(), p.1 == Direction::Desc))
        .collect();
    for k in key {
        if !order.iter().any(|(c, _)| c == k) {
            order.push(((*k).to_owned(), false));
        }
    }
    let mut conds = Vec::new();
    if let Some(w) = &ast.where_ {
        conds.push(condition(w));
    }
    if let Some(start) = &ast.start {
        let bound = |col: &str| -> String {
            start
                .row
                .iter()
                .find(|(c, _)| c == col)
                .map(|(_, v)| literal(v))
                .unwrap_or_else(|| "NULL".into())
        };
        // Lexicographic "after the bound" over the ordering, NULL-aware.
        let mut alts = Vec::new();
        for i in 0..order.len() {
            let mut parts: Vec<String> = order[..i]
                .iter()
                .map(|(c, _)| format!("{} IS NOT DISTINCT FROM {}", ident(c), bound(c)))
                .collect();
            let (c, desc) = &order[i];
            let (x, y) = (ident(c), bound(c));
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
                .map(|(c, _)| format!("{} IS NOT DISTINCT FROM {}", ident(c), bound(c)))
                .collect();
            alts.push(format!("({})", eq.join(" AND ")));
        }
        conds.push(format!("({})", alts.join(" OR ")));
    }
    let mut sql = format!("SELECT * FROM {}", ident(&ast.table));
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    let order_sql: Vec<String> = order
        .iter()
        .map(|(c, desc)| {
            if *desc {
                format!("{} DESC NULLS LAST", ident(c))
            } else {
                format!("{} ASC NULLS FIRST", ident(c))
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

fn operand(p: &ValuePosition) -> String {
    match p {
        ValuePosition::Column { name } => ident(name),
        ValuePosition::Literal { value } => literal(value),
        ValuePosition::Static { .. } => "NULL".into(),
    }
}

fn condition(c: &Condition) -> String {
    match c {
        Condition::And { conditions } if conditions.is_empty() => "TRUE".into(),
        Condition::Or { conditions } if conditions.is_empty() => "FALSE".into(),
        Condition::And { conditions } => {
            format!(
                "({})",
                conditions
                    .iter()
                    .map(condition)
                    .collect::<Vec<_>>()
                    .join(" AND ")
            )
        }
        Condition::Or { conditions } => {
            format!(
                "({})",
                conditions
                    .iter()
                    .map(condition)
                    .collect::<Vec<_>>()
                    .join(" OR ")
            )
        }
        Condition::CorrelatedSubquery { .. } => "FALSE /* subqueries: not yet */".into(),
        Condition::Simple { op, left, right } => {
            let l = operand(left);
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
                SimpleOp::Is => format!("{l} IS NOT DISTINCT FROM {}", operand(right)),
                SimpleOp::IsNot => format!("{l} IS DISTINCT FROM {}", operand(right)),
                SimpleOp::Ne => format!("{l} <> {}", operand(right)),
                other => format!("{l} {} {}", other.as_str(), operand(right)),
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
        assert!(sql.starts_with("SELECT * FROM \"issue\" WHERE (\"a\" IS NOT NULL AND NOT COALESCE(\"a\" IN (1, 2), FALSE))"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY \"a\" DESC NULLS LAST, \"id\" ASC NULLS FIRST LIMIT 2"),
            "{sql}"
        );
    }
}
