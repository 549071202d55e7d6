//! Simple conditions, compiled against a table's columns and evaluated on rows, with SQL's
//! NULL semantics as Zero applies them (`zql/src/builder/filter.ts`): comparisons, LIKE and
//! IN are false when either side is NULL; `IS` / `IS NOT` compare NULL too.

use std::cmp::Ordering;

use zc_protocol::ast::{Condition, CorrelatedSubquery, ExistsOp, SimpleOp, ValuePosition};
use zc_types::Value;

use crate::compare::{compare_values, sql_eq};

/// A condition that cannot be evaluated as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The condition names a column the table does not have.
    #[error("unknown column \"{0}\"")]
    UnknownColumn(String),
    /// A parameter (authData / preMutationRow) was not bound before compiling.
    #[error("unbound parameter in condition")]
    UnboundParameter,
    /// An operand that cannot stand where it is (a column on the right, a non-array IN).
    #[error("invalid operand for {op}: {reason}")]
    Operand {
        /// The operator.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A LIKE pattern ending in the escape character.
    #[error("LIKE pattern must not end with the escape character")]
    Pattern,
    /// Subquery conditions are not plain predicates.
    #[error("correlated subqueries are evaluated by the pipeline, not as a predicate")]
    Subquery,
}

/// A compiled row predicate.
#[derive(Debug, Clone)]
pub enum Predicate {
    /// `column op literal`.
    Compare {
        /// The column's position.
        column: usize,
        /// The operator.
        op: SimpleOp,
        /// The literal (for IN, its elements).
        right: Vec<Value>,
        /// The compiled pattern for LIKE family operators.
        pattern: Option<Pattern>,
    },
    /// Constant (literal-vs-literal conditions).
    Const(bool),
    /// All of these.
    And(Vec<Predicate>),
    /// Any of these.
    Or(Vec<Predicate>),
    /// A correlated subquery condition, evaluated by the caller (see [`Predicate::eval_with`]).
    Exists {
        /// The subquery's position in the list the compiler handed out.
        index: usize,
        /// `NOT EXISTS`.
        negated: bool,
    },
}

/// Converts a JSON literal into a value.
pub fn literal_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

impl Predicate {
    /// Compiles a condition without correlated subqueries for rows with these columns.
    pub fn compile(cond: &Condition, columns: &[String]) -> Result<Predicate, FilterError> {
        Self::compile_with(cond, columns, &mut |_, _| Err(FilterError::Subquery))
    }

    /// Compiles a condition; each correlated subquery condition is handed to `subquery`,
    /// which returns the index that [`Predicate::Exists`] then carries.
    pub fn compile_with(
        cond: &Condition,
        columns: &[String],
        subquery: &mut dyn FnMut(&CorrelatedSubquery, ExistsOp) -> Result<usize, FilterError>,
    ) -> Result<Predicate, FilterError> {
        match cond {
            Condition::And { conditions } => Ok(Predicate::And(
                conditions
                    .iter()
                    .map(|c| Self::compile_with(c, columns, subquery))
                    .collect::<Result<_, _>>()?,
            )),
            Condition::Or { conditions } => Ok(Predicate::Or(
                conditions
                    .iter()
                    .map(|c| Self::compile_with(c, columns, subquery))
                    .collect::<Result<_, _>>()?,
            )),
            Condition::CorrelatedSubquery { related, op, .. } => Ok(Predicate::Exists {
                index: subquery(related, *op)?,
                negated: *op == ExistsOp::NotExists,
            }),
            Condition::Simple { op, left, right } => {
                let literal = |p: &ValuePosition| -> Result<serde_json::Value, FilterError> {
                    match p {
                        ValuePosition::Literal { value } => Ok(value.clone()),
                        ValuePosition::Static { .. } => Err(FilterError::UnboundParameter),
                        ValuePosition::Column { .. } => Err(FilterError::Operand {
                            op: op.as_str(),
                            reason: "a column cannot be the right operand".into(),
                        }),
                    }
                };
                let right_json = literal(right)?;
                let right_vals: Vec<Value> = match (op, &right_json) {
                    (SimpleOp::In | SimpleOp::NotIn, serde_json::Value::Array(items)) => {
                        items.iter().map(literal_value).collect()
                    }
                    (SimpleOp::In | SimpleOp::NotIn, _) => {
                        return Err(FilterError::Operand {
                            op: op.as_str(),
                            reason: "expected an array".into(),
                        });
                    }
                    (_, v) => vec![literal_value(v)],
                };
                let pattern = match (op, right_vals.first()) {
                    (SimpleOp::Like | SimpleOp::NotLike, Some(Value::Text(p))) => {
                        Some(Pattern::new(p, false)?)
                    }
                    (SimpleOp::ILike | SimpleOp::NotILike, Some(Value::Text(p))) => {
                        Some(Pattern::new(p, true)?)
                    }
                    _ => None,
                };
                match left {
                    ValuePosition::Column { name } => {
                        let column = columns
                            .iter()
                            .position(|c| c == name)
                            .ok_or_else(|| FilterError::UnknownColumn(name.clone()))?;
                        Ok(Predicate::Compare {
                            column,
                            op: *op,
                            right: right_vals,
                            pattern,
                        })
                    }
                    ValuePosition::Literal { value } => {
                        let lhs = literal_value(value);
                        Ok(Predicate::Const(eval_op(
                            &lhs,
                            *op,
                            &right_vals,
                            pattern.as_ref(),
                        )))
                    }
                    ValuePosition::Static { .. } => Err(FilterError::UnboundParameter),
                }
            }
        }
    }

    /// True when the predicate contains correlated subquery conditions.
    pub fn has_subqueries(&self) -> bool {
        match self {
            Predicate::Exists { .. } => true,
            Predicate::And(ps) | Predicate::Or(ps) => ps.iter().any(Predicate::has_subqueries),
            Predicate::Compare { .. } | Predicate::Const(_) => false,
        }
    }

    /// Evaluates the predicate on a row, asking `exists(index, row)` for subquery
    /// conditions. Simple conditions are evaluated first, so a subquery is only consulted
    /// when it can change the answer.
    pub fn eval_with<E, F>(&self, row: &[Value], exists: &mut F) -> Result<bool, E>
    where
        F: FnMut(usize, &[Value]) -> Result<bool, E> + ?Sized,
    {
        match self {
            Predicate::Exists { index, negated } => Ok(exists(*index, row)? != *negated),
            Predicate::And(ps) => {
                if ps.iter().any(|p| !p.has_subqueries() && !p.eval(row)) {
                    return Ok(false);
                }
                for p in ps.iter().filter(|p| p.has_subqueries()) {
                    if !p.eval_with(row, exists)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Predicate::Or(ps) => {
                if ps.iter().any(|p| !p.has_subqueries() && p.eval(row)) {
                    return Ok(true);
                }
                for p in ps.iter().filter(|p| p.has_subqueries()) {
                    if p.eval_with(row, exists)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            other => Ok(other.eval(row)),
        }
    }

    /// Evaluates the predicate on a row. Subquery conditions count as false here; use
    /// [`Predicate::eval_with`] for predicates that have them.
    pub fn eval(&self, row: &[Value]) -> bool {
        match self {
            Predicate::Exists { .. } => false,
            Predicate::Compare {
                column,
                op,
                right,
                pattern,
            } => eval_op(
                row.get(*column).unwrap_or(&Value::Null),
                *op,
                right,
                pattern.as_ref(),
            ),
            Predicate::Const(b) => *b,
            Predicate::And(ps) => ps.iter().all(|p| p.eval(row)),
            Predicate::Or(ps) => ps.iter().any(|p| p.eval(row)),
        }
    }
}

fn eval_op(lhs: &Value, op: SimpleOp, right: &[Value], pattern: Option<&Pattern>) -> bool {
    let rhs = right.first().unwrap_or(&Value::Null);
    let ordered = |want: fn(Ordering) -> bool| {
        !lhs.is_null() && !rhs.is_null() && want(compare_values(lhs, rhs))
    };
    match op {
        SimpleOp::Eq => sql_eq(lhs, rhs).unwrap_or(false),
        SimpleOp::Ne => sql_eq(lhs, rhs).is_some_and(|e| !e),
        SimpleOp::Is => match (lhs.is_null(), rhs.is_null()) {
            (true, true) => true,
            (false, false) => sql_eq(lhs, rhs).unwrap_or(false),
            _ => false,
        },
        SimpleOp::IsNot => !eval_op(lhs, SimpleOp::Is, right, pattern),
        SimpleOp::Lt => ordered(Ordering::is_lt),
        SimpleOp::Le => ordered(Ordering::is_le),
        SimpleOp::Gt => ordered(Ordering::is_gt),
        SimpleOp::Ge => ordered(Ordering::is_ge),
        SimpleOp::Like | SimpleOp::ILike => match (lhs, pattern) {
            (Value::Text(s), Some(p)) => p.matches(s),
            _ => false,
        },
        SimpleOp::NotLike | SimpleOp::NotILike => match (lhs, pattern) {
            (Value::Text(s), Some(p)) => !p.matches(s),
            _ => false,
        },
        SimpleOp::In => !lhs.is_null() && right.iter().any(|r| sql_eq(lhs, r) == Some(true)),
        SimpleOp::NotIn => !lhs.is_null() && !right.iter().any(|r| sql_eq(lhs, r) == Some(true)),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Any,
    One,
    Lit(char),
}

/// A compiled LIKE / ILIKE pattern: `%` matches any run, `_` one character, `\` escapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    tokens: Vec<Token>,
    fold_case: bool,
}

impl Pattern {
    /// Compiles a pattern; `fold_case` for ILIKE.
    pub fn new(source: &str, fold_case: bool) -> Result<Pattern, FilterError> {
        let mut tokens = Vec::new();
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '%' => {
                    if tokens.last() == Some(&Token::Any) {
                        continue;
                    }
                    Token::Any
                }
                '_' => Token::One,
                '\\' => Token::Lit(chars.next().ok_or(FilterError::Pattern)?),
                c => Token::Lit(if fold_case { fold(c) } else { c }),
            });
        }
        Ok(Pattern { tokens, fold_case })
    }

    /// True when the whole of `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = s
            .chars()
            .map(|c| if self.fold_case { fold(c) } else { c })
            .collect();
        // Iterative wildcard matching with backtracking to the last `%`.
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::One) => {
                    t += 1;
                    p += 1;
                }
                Some(Token::Lit(c)) if *c == text[t] => {
                    t += 1;
                    p += 1;
                }
                Some(Token::Any) => {
                    star = Some((p, t));
                    p += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|tk| *tk == Token::Any)
    }
}

fn fold(c: char) -> char {
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cond(json: &str) -> Condition {
        serde_json::from_str(json).unwrap()
    }

    fn simple(op: &str, right: &str) -> Condition {
        cond(&format!(
            r#"{{"type":"simple","left":{{"type":"column","name":"v"}},"right":{{"type":"literal","value":{right}}},"op":"{op}"}}"#
        ))
    }

    fn eval(op: &str, right: &str, v: Value) -> bool {
        Predicate::compile(&simple(op, right), &["v".into()])
            .unwrap()
            .eval(&[v])
    }

    #[test]
    fn null_semantics() {
        assert!(!eval("=", "null", Value::Null));
        assert!(!eval("!=", "1", Value::Null));
        assert!(eval("IS", "null", Value::Null));
        assert!(!eval("IS NOT", "null", Value::Null));
        assert!(eval("IS NOT", "null", Value::Int(1)));
        assert!(!eval("<", "5", Value::Null));
        assert!(!eval("NOT IN", "[1,2]", Value::Null));
        assert!(!eval("NOT LIKE", "\"a%\"", Value::Null));
        assert!(eval("IN", "[1,2]", Value::Float(2.0)));
        assert!(eval("NOT IN", "[1,2]", Value::Int(3)));
        assert!(eval("!=", "\"a\"", Value::Text("b".into())));
        assert!(eval("<", "\"b\"", Value::Text("a".into())));
    }

    #[test]
    fn like_patterns() {
        let m = |p: &str, s: &str, ci: bool| Pattern::new(p, ci).unwrap().matches(s);
        assert!(m("a%c", "abbbc", false));
        assert!(m("a_c", "abc", false));
        assert!(!m("a_c", "abbc", false));
        assert!(m("%", "", false));
        assert!(m("100\\%", "100%", false));
        assert!(!m("100\\%", "1000", false));
        assert!(!m("ABC", "abc", false));
        assert!(m("ABC", "abc", true));
        assert!(m("%ü%", "MÜNCHEN", true));
        assert!(m("a%b%c", "a-x-b-y-c", false));
        assert!(!m("a%b%c", "a-x-c-y-b", false));
        assert!(Pattern::new("bad\\", false).is_err());
    }

    #[test]
    fn bad_conditions_are_errors() {
        let c = simple("=", "1");
        assert_eq!(
            Predicate::compile(&c, &["w".into()]).unwrap_err(),
            FilterError::UnknownColumn("v".into())
        );
        assert!(Predicate::compile(&simple("IN", "1"), &["v".into()]).is_err());
    }

    /// Reference LIKE: dynamic programming over the pattern.
    fn like_ref(p: &str, s: &str) -> bool {
        let p: Vec<char> = p.chars().collect();
        let s: Vec<char> = s.chars().collect();
        let mut dp = vec![vec![false; s.len() + 1]; p.len() + 1];
        dp[0][0] = true;
        for i in 1..=p.len() {
            dp[i][0] = dp[i - 1][0] && p[i - 1] == '%';
            for j in 1..=s.len() {
                dp[i][j] = match p[i - 1] {
                    '%' => dp[i - 1][j] || dp[i][j - 1],
                    '_' => dp[i - 1][j - 1],
                    c => dp[i - 1][j - 1] && c == s[j - 1],
                };
            }
        }
        dp[p.len()][s.len()]
    }

    proptest! {
        #[test]
        fn like_matches_the_reference(p in "[ab%_]{0,6}", s in "[ab]{0,8}") {
            prop_assert_eq!(Pattern::new(&p, false).unwrap().matches(&s), like_ref(&p, &s));
        }
    }
}
