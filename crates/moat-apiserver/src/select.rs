//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors
//! (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`,
//! `involvedObject.*`, `type`) as the list and watch query parameters carry them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
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

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

pub fn parse_labels(s: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    for part in split_top(s)
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let bad = || format!("unable to parse requirement: {part:?}");
        let r = if let Some(k) = part.strip_prefix('!') {
            Req::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = part.split_once("!=") {
            Req::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            Req::NotIn(k.trim().into(), set(rest).ok_or_else(bad)?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            Req::In(k.trim().into(), set(rest).ok_or_else(bad)?)
        } else {
            Req::Exists(part.to_string())
        };
        let key = match &r {
            Req::Eq(k, _)
            | Req::NotEq(k, _)
            | Req::In(k, _)
            | Req::NotIn(k, _)
            | Req::Exists(k)
            | Req::NotExists(k) => k,
        };
        if !valid_key(key) {
            return Err(bad());
        }
        out.push(r);
    }
    Ok(out)
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

pub fn labels_match(reqs: &[Req], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v.as_str()),
        Req::NotEq(k, v) => get(k) != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "type",
    "spec.schedulerName",
];

/// Field selectors: only `=`, `==`, `!=` over the supported fields.
pub fn parse_fields(s: &str) -> Result<Vec<Req>, String> {
    let reqs = parse_labels(s)?;
    for r in &reqs {
        let k = match r {
            Req::Eq(k, _) | Req::NotEq(k, _) => k,
            _ => return Err(format!("field selectors support only =, == and !=: {s:?}")),
        };
        if !FIELDS.contains(&k.as_str()) && !k.starts_with("involvedObject.") {
            return Err(format!("field label not supported: {k}"));
        }
    }
    Ok(reqs)
}

pub fn fields_match(reqs: &[Req], obj: &Value) -> bool {
    reqs.iter().all(|r| {
        let (k, v, eq) = match r {
            Req::Eq(k, v) => (k, v, true),
            Req::NotEq(k, v) => (k, v, false),
            _ => return false,
        };
        let mut cur = obj;
        for part in k.split('.') {
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
        assert!(parse_labels("tier in fe").is_err());
    }

    #[test]
    fn field_forms() {
        let o = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"},
                       "involvedObject": {"name": "x"}});
        let m = |s: &str| fields_match(&parse_fields(s).expect("parse"), &o);
        assert!(m("metadata.name=p,spec.nodeName=n1"));
        assert!(m("status.phase!=Pending"));
        assert!(m("involvedObject.name=x"));
        assert!(!m("spec.nodeName="));
        assert!(parse_fields("spec.foo=1").is_err());
        assert!(parse_fields("metadata.name in (a)").is_err());
    }
}
