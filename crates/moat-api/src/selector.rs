//! Label selectors, one implementation for every component: the string form of
//! `?labelSelector=` (`a=b,c!=d,e in (x,y),f notin (z),g,!h`), metav1 `LabelSelector`
//! objects (`matchLabels` + `matchExpressions` with `In`/`NotIn`/`Exists`/`DoesNotExist`),
//! and matching either against an object's labels.
//!
//! Both forms become the same [`Selector`] (a conjunction of [`Requirement`]s), so the API
//! server's list filter, the controllers, validation and NetworkPolicy agree on what
//! matches. Node selector terms (`Gt`/`Lt`, `matchFields`) are a different type with
//! different rules and stay in the scheduler.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// `k=v`, `k==v`, or a `matchLabels` entry.
    Eq(String, String),
    /// `k!=v`: also true when the key is absent.
    NotEq(String, String),
    /// `k in (a,b)`: the key is present with one of the values.
    In(String, Vec<String>),
    /// `k notin (a,b)`: absent, or present with none of the values.
    NotIn(String, Vec<String>),
    /// `k`: the key is present.
    Exists(String),
    /// `!k`: the key is absent.
    DoesNotExist(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Eq(k, _)
            | Requirement::NotEq(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether the labels `get` looks up satisfy this requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let have = get(self.key());
        match self {
            Requirement::Eq(_, v) => have == Some(v.as_str()),
            Requirement::NotEq(_, v) => have != Some(v.as_str()),
            Requirement::In(_, vs) => have.is_some_and(|h| vs.iter().any(|v| v == h)),
            Requirement::NotIn(_, vs) => have.is_none_or(|h| !vs.iter().any(|v| v == h)),
            Requirement::Exists(_) => have.is_some(),
            Requirement::DoesNotExist(_) => have.is_none(),
        }
    }

    /// A `matchExpressions` entry, validated as the API server validates it: `In`/`NotIn`
    /// need values, `Exists`/`DoesNotExist` take none, no other operator exists.
    pub fn from_expression(e: &LabelSelectorRequirement) -> Result<Requirement, ExpressionError> {
        let vals = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" | "NotIn" if vals.is_empty() => Err(ExpressionError::ValuesRequired),
            "Exists" | "DoesNotExist" if !vals.is_empty() => Err(ExpressionError::ValuesForbidden),
            _ => Self::lenient(e).ok_or_else(|| ExpressionError::Operator(e.operator.clone())),
        }
    }

    /// A `matchExpressions` entry without the value-count checks (None: unknown operator).
    fn lenient(e: &LabelSelectorRequirement) -> Option<Requirement> {
        let vals = || e.values.clone().unwrap_or_default();
        let k = e.key.clone();
        Some(match e.operator.as_str() {
            "In" => Requirement::In(k, vals()),
            "NotIn" => Requirement::NotIn(k, vals()),
            "Exists" => Requirement::Exists(k),
            "DoesNotExist" => Requirement::DoesNotExist(k),
            _ => return None,
        })
    }
}

/// Why a `matchExpressions` entry is invalid, worded as the API server words it (the
/// caller names the field, `...matchExpressions[i]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpressionError {
    #[error("values: must be specified when `operator` is 'In' or 'NotIn'")]
    ValuesRequired,
    #[error("values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'")]
    ValuesForbidden,
    #[error("operator: not a valid selector operator: {0:?}")]
    Operator(String),
}

/// Why a string selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unable to parse requirement: {0:?}")]
    Requirement(String),
}

/// Why a `LabelSelector` object is invalid: the first bad expression and its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("matchExpressions[{index}].{error}")]
pub struct LabelSelectorError {
    pub index: usize,
    #[source]
    pub error: ExpressionError,
}

/// A conjunction of requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses the `?labelSelector=` form. Empty parts are skipped, so "" is the empty
    /// selector. Keys are checked for the characters a label key may hold.
    pub fn parse(s: &str) -> Result<Selector, ParseError> {
        let mut requirements = Vec::new();
        for part in split_top(s)
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = || ParseError::Requirement(part.to_string());
            let r = if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest).ok_or_else(bad)?)
            } else {
                Requirement::Exists(part.to_string())
            };
            if !valid_key(r.key()) {
                return Err(bad());
            }
            requirements.push(r);
        }
        Ok(Selector { requirements })
    }

    /// A validated `LabelSelector`: `matchLabels` as `Eq` requirements (in key order), then
    /// the expressions in their order.
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Selector, LabelSelectorError> {
        let mut requirements = match_labels(sel);
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            requirements.push(
                Requirement::from_expression(e)
                    .map_err(|error| LabelSelectorError { index, error })?,
            );
        }
        Ok(Selector { requirements })
    }

    /// A `LabelSelector` the API server already accepted, without the value-count checks;
    /// None when an expression has an unknown operator (such a selector matches nothing,
    /// never everything).
    pub fn lenient(sel: &LabelSelector) -> Option<Selector> {
        let mut requirements = match_labels(sel);
        for e in sel.match_expressions.iter().flatten() {
            requirements.push(Requirement::lenient(e)?);
        }
        Some(Selector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the labels `get` looks up satisfy every requirement.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str> + Copy) -> bool {
        self.requirements.iter().all(|r| r.matches(get))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether a JSON labels object (`metadata.labels`, possibly null) satisfies every
    /// requirement; non-string values count as absent.
    pub fn matches_json(&self, labels: &serde_json::Value) -> bool {
        self.matches_with(|k| labels.get(k).and_then(serde_json::Value::as_str))
    }
}

/// The `?labelSelector=` form (`app=web,tier in (be,fe),!canary`), which [`Selector::parse`]
/// reads back: what `kubectl get -o wide` shows and a Scale's `status.selector` carries.
impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Eq(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEq(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => f.write_str(k),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

fn match_labels(sel: &LabelSelector) -> Vec<Requirement> {
    sel.match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement::Eq(k.clone(), v.clone()))
        .collect()
}

/// Whether `labels` satisfy `sel`, for objects the API server already validated: an empty
/// selector matches everything, an expression with an unknown operator matches nothing
/// (never everything), and value counts are not checked.
pub fn label_selector_matches(
    sel: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    match_labels(sel).iter().all(|r| r.matches(get))
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|e| Requirement::lenient(e).is_some_and(|r| r.matches(get)))
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Characters of a qualified label key (`prefix/name`), bounded like upstream (253 + 1 +
/// 63); the finer DNS rules are the validator's job, not the query parser's.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ls(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).expect("selector")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn string_forms() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let m = |s: &str| Selector::parse(s).expect("parse").matches(&l);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"));
        assert!(m("tier in (fe, be)"));
        assert!(!m("tier in (be)"));
        assert!(!m("tier notin (fe)"));
        assert!(m("missing notin (fe)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(!m("missing"));
        assert!(m(""));
        assert!(m(" app = web , tier in (fe,be) "));
    }

    #[test]
    fn string_errors_name_the_requirement() {
        assert_eq!(
            Selector::parse("a b c"),
            Err(ParseError::Requirement("a b c".into()))
        );
        assert_eq!(
            Selector::parse("app=web,tier in fe")
                .map_err(|e| e.to_string())
                .unwrap_err(),
            "unable to parse requirement: \"tier in fe\""
        );
        assert!(Selector::parse("=x").is_err());
        assert!(Selector::parse("a$=x").is_err());
    }

    #[test]
    fn object_forms() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let both = |v: serde_json::Value| {
            let sel = ls(v);
            let strict = Selector::from_label_selector(&sel)
                .expect("valid")
                .matches(&l);
            assert_eq!(strict, label_selector_matches(&sel, Some(&l)));
            assert_eq!(Selector::lenient(&sel).map(|s| s.matches(&l)), Some(strict));
            strict
        };
        assert!(both(json!({"matchLabels": {"app": "web"}})));
        assert!(!both(json!({"matchLabels": {"app": "db"}})));
        assert!(both(json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["fe", "be"]},
            {"key": "x", "operator": "DoesNotExist"}]})));
        assert!(!both(
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]})
        ));
        assert!(both(
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
        ));
        assert!(both(json!({})));
        assert!(!label_selector_matches(
            &ls(json!({"matchLabels": {"app": "web"}})),
            None
        ));
        assert!(label_selector_matches(&ls(json!({})), None));
    }

    #[test]
    fn invalid_expressions() {
        let err = |v| {
            Selector::from_label_selector(&ls(v))
                .map(|_| ())
                .unwrap_err()
        };
        let e = err(json!({"matchExpressions": [
            {"key": "a", "operator": "Exists"},
            {"key": "a", "operator": "In"}]}));
        assert_eq!(e.index, 1);
        assert_eq!(e.error, ExpressionError::ValuesRequired);
        let e =
            err(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}));
        assert_eq!(e.error, ExpressionError::ValuesForbidden);
        let e =
            err(json!({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}));
        assert_eq!(
            e.to_string(),
            "matchExpressions[0].operator: not a valid selector operator: \"Near\""
        );
        // Lenient matching never lets an unknown operator match everything.
        let near =
            ls(json!({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}));
        assert!(!label_selector_matches(&near, Some(&labels(&[("a", "x")]))));
        assert_eq!(Selector::lenient(&near), None);
    }

    #[test]
    fn display_is_the_string_form() {
        let sel = ls(json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["be", "fe"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "Exists"}]}));
        let s = Selector::from_label_selector(&sel).expect("valid");
        assert_eq!(s.to_string(), "app=web,tier in (be,fe),!canary,zone");
        assert_eq!(Selector::parse(&s.to_string()), Ok(s));
        assert_eq!(Selector::default().to_string(), "");
    }

    #[test]
    fn json_labels() {
        let s = Selector::parse("app=web,!gone").expect("parse");
        assert!(s.matches_json(&json!({"app": "web"})));
        assert!(!s.matches_json(&json!({"app": "web", "gone": "1"})));
        assert!(!s.matches_json(&json!(null)));
        assert!(!s.matches_json(&json!({"app": 1})));
    }

    fn arb_labels() -> impl proptest::strategy::Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map("[abc]", "[xyz]", 0..3)
    }

    proptest::proptest! {
        /// The string form and the object form of the same selector agree on every label
        /// set, and `NotIn` is exactly the negation of `In`.
        #[test]
        fn forms_agree(
            eq in proptest::collection::btree_map("[abc]", "[xyz]", 0..2),
            key in "[abc]",
            vals in proptest::collection::btree_set("[xyz]", 1..3),
            l in arb_labels(),
        ) {
            let vals: Vec<String> = vals.into_iter().collect();
            let mut text: Vec<String> = eq.iter().map(|(k, v)| format!("{k}={v}")).collect();
            text.push(format!("{key} in ({})", vals.join(",")));
            let parsed = Selector::parse(&text.join(",")).expect("parse");
            let obj = ls(json!({"matchLabels": eq,
                "matchExpressions": [{"key": key, "operator": "In", "values": vals}]}));
            proptest::prop_assert_eq!(parsed.matches(&l), label_selector_matches(&obj, Some(&l)));
            proptest::prop_assert_eq!(Selector::parse(&parsed.to_string()), Ok(parsed.clone()));
            let not_in = Selector::parse(&format!("{key} notin ({})", vals.join(","))).expect("parse");
            let is_in = Selector::parse(&format!("{key} in ({})", vals.join(","))).expect("parse");
            proptest::prop_assert_eq!(not_in.matches(&l), !is_in.matches(&l));
        }
    }
}
