//! Row permissions of the legacy path, as `zero-deploy-permissions` writes them into the
//! upstream `{app}.permissions` table: per table, `row.select` / `insert` / `update`
//! (`preMutation`, `postMutation`) / `delete` policies, each a list of `["allow", condition]`
//! rules that are OR-ed. Conditions may read `authData` (the verified token's claims) and
//! may contain EXISTS subqueries.
//!
//! Reads: a table's select rules are AND-ed into an ad-hoc query's `where`, recursively into
//! its `related` subqueries and into the subqueries of its EXISTS conditions (so that
//! existence cannot leak rows). A table without select rules yields no rows, as in
//! zero-cache.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use zc_protocol::ast::{Anchor, Ast, Condition, Field, ValuePosition};

/// A policy: OR-ed conditions; `None` means the table declares no rule for it.
pub type Policy = Option<Vec<Condition>>;

/// One table's rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRules {
    /// `row.select`.
    pub select: Policy,
    /// `row.insert`.
    pub insert: Policy,
    /// `row.update.preMutation`.
    pub update_pre: Policy,
    /// `row.update.postMutation`.
    pub update_post: Policy,
    /// `row.delete`.
    pub delete: Policy,
}

/// Deployed permissions (empty: none deployed, nothing is allowed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    /// Rules by table name.
    pub tables: BTreeMap<String, TableRules>,
}

fn policy(v: Option<&Json>) -> Result<Policy, String> {
    let Some(v) = v else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    let rules = v.as_array().ok_or("a policy must be an array of rules")?;
    let mut out = Vec::new();
    for rule in rules {
        let pair = rule
            .as_array()
            .ok_or("a rule must be [\"allow\", condition]")?;
        match pair.as_slice() {
            [Json::String(kind), cond] if kind == "allow" => {
                let c: Condition = serde_json::from_value(cond.clone())
                    .map_err(|e| format!("invalid rule condition: {e}"))?;
                out.push(c);
            }
            _ => return Err("a rule must be [\"allow\", condition]".into()),
        }
    }
    Ok(Some(out))
}

impl Permissions {
    /// Parses the `permissions` column (`null`: none deployed).
    pub fn parse(json: &Json) -> Result<Permissions, String> {
        let mut out = Permissions::default();
        let Some(tables) = json.get("tables").and_then(Json::as_object) else {
            return Ok(out);
        };
        for (name, t) in tables {
            let row = t.get("row");
            let get = |k: &str| row.and_then(|r| r.get(k));
            let update = get("update");
            out.tables.insert(
                name.clone(),
                TableRules {
                    select: policy(get("select"))?,
                    insert: policy(get("insert"))?,
                    update_pre: policy(update.and_then(|u| u.get("preMutation")))?,
                    update_post: policy(update.and_then(|u| u.get("postMutation")))?,
                    delete: policy(get("delete"))?,
                },
            );
        }
        Ok(out)
    }

    /// The rules of a table.
    pub fn table(&self, name: &str) -> Option<&TableRules> {
        self.tables.get(name)
    }

    /// An ad-hoc query restricted to what the user may read, with `authData` bound.
    pub fn transform_query(&self, ast: &Ast, auth_data: &Json) -> Ast {
        let mut out = self.restrict(ast);
        bind_ast(&mut out, auth_data, None);
        out
    }

    fn restrict(&self, ast: &Ast) -> Ast {
        let rules: Vec<Condition> = self
            .tables
            .get(&ast.table)
            .and_then(|t| t.select.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| vec![Condition::Or { conditions: vec![] }]);
        let mut conds = Vec::new();
        if let Some(w) = &ast.where_ {
            conds.push(self.restrict_condition(w));
        }
        conds.push(Condition::Or { conditions: rules });
        let mut out = ast.clone();
        out.where_ = Some(simplify(Condition::And { conditions: conds }));
        out.related = ast.related.as_ref().map(|rs| {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.subquery = Box::new(self.restrict(&r.subquery));
                    r
                })
                .collect()
        });
        out
    }

    fn restrict_condition(&self, c: &Condition) -> Condition {
        match c {
            Condition::Simple { .. } => c.clone(),
            Condition::And { conditions } => Condition::And {
                conditions: conditions
                    .iter()
                    .map(|c| self.restrict_condition(c))
                    .collect(),
            },
            Condition::Or { conditions } => Condition::Or {
                conditions: conditions
                    .iter()
                    .map(|c| self.restrict_condition(c))
                    .collect(),
            },
            Condition::CorrelatedSubquery {
                related,
                op,
                flip,
                scalar,
            } => {
                let mut related = related.clone();
                related.subquery = Box::new(self.restrict(&related.subquery));
                Condition::CorrelatedSubquery {
                    related,
                    op: *op,
                    flip: *flip,
                    scalar: *scalar,
                }
            }
        }
    }
}

/// Flattens nested and/or and drops single-element wrappers, as zero-cache does.
pub fn simplify(c: Condition) -> Condition {
    match c {
        Condition::And { conditions } | Condition::Or { conditions } if conditions.len() == 1 => {
            simplify(
                conditions
                    .into_iter()
                    .next()
                    .unwrap_or(Condition::And { conditions: vec![] }),
            )
        }
        Condition::And { conditions } => {
            let mut flat = Vec::new();
            for c in conditions.into_iter().map(simplify) {
                match c {
                    Condition::And { conditions } => flat.extend(conditions),
                    other => flat.push(other),
                }
            }
            if flat
                .iter()
                .any(|c| matches!(c, Condition::Or { conditions } if conditions.is_empty()))
            {
                return Condition::Or { conditions: vec![] };
            }
            Condition::And { conditions: flat }
        }
        Condition::Or { conditions } => {
            let mut flat = Vec::new();
            for c in conditions.into_iter().map(simplify) {
                match c {
                    Condition::Or { conditions } => flat.extend(conditions),
                    other => flat.push(other),
                }
            }
            if flat
                .iter()
                .any(|c| matches!(c, Condition::And { conditions } if conditions.is_empty()))
            {
                return Condition::And { conditions: vec![] };
            }
            Condition::Or { conditions: flat }
        }
        other => other,
    }
}

fn resolve(anchor: Option<&Json>, field: &Field) -> Json {
    let Some(anchor) = anchor else {
        return Json::Null;
    };
    let found = match field {
        Field::One(f) => anchor.get(f),
        Field::Path(path) => path.iter().try_fold(anchor, |acc, f| acc.get(f)),
    };
    found.cloned().unwrap_or(Json::Null)
}

fn bind_value(v: &mut ValuePosition, auth: &Json, pre: Option<&Json>) {
    if let ValuePosition::Static { anchor, field } = v {
        let value = match anchor {
            Anchor::AuthData => resolve(Some(auth), field),
            Anchor::PreMutationRow => resolve(pre, field),
        };
        *v = ValuePosition::Literal { value };
    }
}

/// Replaces `authData` / `preMutationRow` parameters in a condition with literals.
pub fn bind_condition(c: &mut Condition, auth: &Json, pre: Option<&Json>) {
    match c {
        Condition::Simple { left, right, .. } => {
            bind_value(left, auth, pre);
            bind_value(right, auth, pre);
        }
        Condition::And { conditions } | Condition::Or { conditions } => {
            for c in conditions {
                bind_condition(c, auth, pre);
            }
        }
        Condition::CorrelatedSubquery { related, .. } => bind_ast(&mut related.subquery, auth, pre),
    }
}

/// Replaces parameters everywhere in a query.
pub fn bind_ast(ast: &mut Ast, auth: &Json, pre: Option<&Json>) {
    if let Some(w) = &mut ast.where_ {
        bind_condition(w, auth, pre);
    }
    for r in ast.related.iter_mut().flatten() {
        bind_ast(&mut r.subquery, auth, pre);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn select_rules_restrict_every_level_and_bind_auth_data() {
        let perms = Permissions::parse(&json!({"tables": {
            "issue": {"row": {"select": [["allow", {"type": "simple", "op": "=",
                "left": {"type": "column", "name": "ownerID"},
                "right": {"type": "static", "anchor": "authData", "field": "sub"}}]]}}
        }}))
        .expect("permissions");
        let ast = zc_protocol::ast::parse(
            r#"{"table":"issue","related":[{"correlation":{"parentField":["id"],"childField":["issueID"]},"subquery":{"table":"comment"}}]}"#,
        )
        .expect("ast");
        let out = perms.transform_query(&ast, &json!({"sub": "u1"}));
        let text = serde_json::to_string(&out).expect("json");
        assert!(
            text.contains(r#""right":{"type":"literal","value":"u1"}"#),
            "{text}"
        );
        // comment has no rules: its subquery gets an always-false condition.
        let related = &out.related.as_ref().expect("related")[0].subquery;
        assert_eq!(related.where_, Some(Condition::Or { conditions: vec![] }));
        // No permissions at all: nothing is readable.
        let none = Permissions::default().transform_query(&ast, &json!({}));
        assert_eq!(none.where_, Some(Condition::Or { conditions: vec![] }));
    }

    #[test]
    fn malformed_rules_are_errors() {
        assert!(
            Permissions::parse(&json!({"tables": {"t": {"row": {"select": [["deny", {}]]}}}}))
                .is_err()
        );
        assert!(Permissions::parse(&json!({"tables": {"t": {"row": {"select": 3}}}})).is_err());
        assert_eq!(Permissions::parse(&Json::Null), Ok(Permissions::default()));
    }
}
