//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`; parsed and matched by
//! `moat_api::selector`) and field selectors (`metadata.name`, `metadata.namespace`,
//! `spec.nodeName`, `status.phase`, `involvedObject.*`, `type`, events' `reason`,
//! `reportingComponent`, `source`) as the list and watch query
//! parameters carry them.

use moat_api::selector::{ParseError, Requirement, Selector};
use serde_json::Value;

/// Why a `?labelSelector=` or `?fieldSelector=` does not parse (a 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("field selectors support only =, == and !=: {0:?}")]
    FieldOperator(String),
    #[error("field label not supported: {0}")]
    FieldLabel(String),
}

/// Label selectors are moat-api's, shared with the controllers and NetworkPolicy.
pub fn parse_labels(s: &str) -> Result<Selector, SelectorError> {
    Ok(Selector::parse(s)?)
}

pub fn labels_match(sel: &Selector, obj: &Value) -> bool {
    sel.matches_json(&obj["metadata"]["labels"])
}

const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "type",
    "spec.schedulerName",
    // Events, as upstream's registry selects them (`source` is `source.component`).
    "reason",
    "reportingComponent",
    "source",
];

/// Field selectors: only `=`, `==`, `!=` over the supported fields (the label syntax,
/// restricted).
pub fn parse_fields(s: &str) -> Result<Vec<Requirement>, SelectorError> {
    let reqs = Selector::parse(s)?.requirements;
    for r in &reqs {
        let k = match r {
            Requirement::Eq(k, _) | Requirement::NotEq(k, _) => k,
            _ => return Err(SelectorError::FieldOperator(s.to_string())),
        };
        if !FIELDS.contains(&k.as_str()) && !k.starts_with("involvedObject.") {
            return Err(SelectorError::FieldLabel(k.clone()));
        }
    }
    Ok(reqs)
}

pub fn fields_match(reqs: &[Requirement], obj: &Value) -> bool {
    reqs.iter().all(|r| {
        let (k, v, eq) = match r {
            Requirement::Eq(k, v) => (k, v, true),
            Requirement::NotEq(k, v) => (k, v, false),
            _ => return false,
        };
        let path = if k == "source" {
            "source.component"
        } else {
            k.as_str()
        };
        let mut cur = obj;
        for part in path.split('.') {
            cur = &cur[part];
        }
        let have = cur.as_str().unwrap_or("");
        (have == v) == eq
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_forms() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
        let m = |s: &str| labels_match(&parse_labels(s).expect("parse"), &o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(m("app!=db"));
        assert!(m("tier in (fe, be)"));
        assert!(!m("tier notin (fe)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m(""));
        assert!(parse_labels("a b c").is_err());
        assert_eq!(
            parse_labels("tier in fe")
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err("unable to parse requirement: \"tier in fe\"".to_string())
        );
    }

    #[test]
    fn field_forms() {
        let o = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"},
                       "involvedObject": {"name": "x"}});
        let m = |s: &str| fields_match(&parse_fields(s).expect("parse"), &o);
        assert!(m("metadata.name=p,spec.nodeName=n1"));
        assert!(m("status.phase!=Pending"));
        assert!(m("involvedObject.name=x"));
        let ev = json!({"reason": "Programmed", "source": {"component": "moat-netpol-status"}});
        let f = |s: &str| fields_match(&parse_fields(s).expect("parse"), &ev);
        assert!(f("reason=Programmed"));
        assert!(f("source=moat-netpol-status"));
        assert!(!f("reason=Other"));
        assert!(!m("spec.nodeName="));
        assert_eq!(
            parse_fields("spec.foo=1"),
            Err(SelectorError::FieldLabel("spec.foo".into()))
        );
        assert!(matches!(
            parse_fields("metadata.name in (a)"),
            Err(SelectorError::FieldOperator(_))
        ));
    }
}
