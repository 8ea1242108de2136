//! Escalation prevention, sans-IO: whether the rules a user holds cover the rules they try to
//! grant (upstream's `Covers`: every requested rule is broken down to one verb on one
//! group/resource/name or one URL, and each piece must be allowed by some held rule), and the
//! Forbidden message upstream gives when they do not.

use super::User;
use super::rbac::Rule;

/// One requested rule split into pieces that are each a single permission.
fn breakdown(r: &Rule) -> Vec<Rule> {
    let one = |v: &str| vec![v.to_string()];
    let mut out = Vec::new();
    for verb in &r.verbs {
        for url in &r.non_resource_urls {
            out.push(Rule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Default::default()
            });
        }
        for g in &r.api_groups {
            for res in &r.resources {
                let names: Vec<Option<&String>> = if r.resource_names.is_empty() {
                    vec![None]
                } else {
                    r.resource_names.iter().map(Some).collect()
                };
                for n in names {
                    out.push(Rule {
                        verbs: one(verb),
                        api_groups: one(g),
                        resources: one(res),
                        resource_names: n.map(|n| one(n)).unwrap_or_default(),
                        ..Default::default()
                    });
                }
            }
        }
    }
    out
}

fn has_all(owner: &[String], wanted: &str) -> bool {
    owner.iter().any(|o| o == "*" || o == wanted)
}

/// Whether one held rule covers one broken-down piece (upstream's ruleCovers): the same or a
/// wildcard verb/group; resources equal, `*`, or `*/sub` for a subresource piece, and
/// `res/*` only for a literal `res/*` request; names unrestricted or including the piece's.
fn covers_piece(owner: &Rule, piece: &Rule) -> bool {
    if !piece.verbs.iter().all(|v| has_all(&owner.verbs, v)) {
        return false;
    }
    if !piece.non_resource_urls.is_empty() {
        return piece.non_resource_urls.iter().all(|u| {
            owner.non_resource_urls.iter().any(|o| {
                o == "*" || o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p))
            })
        });
    }
    let groups = piece
        .api_groups
        .iter()
        .all(|g| has_all(&owner.api_groups, g));
    let resources = piece.resources.iter().all(|r| {
        owner.resources.iter().any(|o| {
            o == "*"
                || o == r
                || r.split_once('/')
                    .is_some_and(|(_, sub)| o.strip_prefix("*/").is_some_and(|s| s == sub))
                || (o.ends_with("/*")
                    && r.split_once('/')
                        .is_some_and(|(base, _)| o.strip_suffix("/*") == Some(base)))
        })
    });
    let names = owner.resource_names.is_empty()
        || (!piece.resource_names.is_empty()
            && piece
                .resource_names
                .iter()
                .all(|n| owner.resource_names.contains(n)));
    groups && resources && names
}

/// The pieces of `requested` no rule in `owner` covers (empty: the owner holds them all),
/// compacted as upstream prints them: pieces differing only in their verb are merged.
pub fn missing(owner: &[Rule], requested: &[Rule]) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for r in requested {
        for piece in breakdown(r) {
            if owner.iter().any(|o| covers_piece(o, &piece)) {
                continue;
            }
            let same = out.iter_mut().find(|m| {
                m.api_groups == piece.api_groups
                    && m.resources == piece.resources
                    && m.resource_names == piece.resource_names
                    && m.non_resource_urls == piece.non_resource_urls
            });
            match same {
                Some(m) if !m.verbs.contains(&piece.verbs[0]) => {
                    m.verbs.push(piece.verbs[0].clone())
                }
                Some(_) => {}
                None => out.push(piece),
            }
        }
    }
    out.sort_by_key(compact_string);
    out
}

fn quoted(list: &[String]) -> String {
    let q: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(" "))
}

/// A rule as upstream's `PolicyRule.CompactString` prints it (Go's `%q` of a string slice).
pub fn compact_string(r: &Rule) -> String {
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:{}", quoted(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:{}", quoted(&r.resources)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:{}", quoted(&r.non_resource_urls)));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!("ResourceNames:{}", quoted(&r.resource_names)));
    }
    if !r.verbs.is_empty() {
        parts.push(format!("Verbs:{}", quoted(&r.verbs)));
    }
    format!("{{{}}}", parts.join(", "))
}

/// The reason upstream's ConfirmNoEscalation gives (placed after `<resource> "<name>" is
/// forbidden: `).
pub fn escalation_message(user: &User, missing: &[Rule]) -> String {
    let lines: Vec<String> = missing.iter().map(compact_string).collect();
    format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        quoted(&user.groups),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], res: &[&str], verbs: &[&str]) -> Rule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(res),
            ..Default::default()
        }
    }

    #[test]
    fn wildcards_cover_everything_and_pieces_are_reported() {
        let admin = vec![rule(&["*"], &["*"], &["*"])];
        let want = vec![rule(
            &["", "apps"],
            &["pods", "deployments/scale"],
            &["get", "create"],
        )];
        assert!(missing(&admin, &want).is_empty());
        let view = vec![rule(&[""], &["pods"], &["get", "list", "watch"])];
        let m = missing(
            &view,
            &[rule(&[""], &["pods", "secrets"], &["get", "delete"])],
        );
        let text: Vec<String> = m.iter().map(compact_string).collect();
        assert_eq!(
            text,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}"#,
            ]
        );
    }

    #[test]
    fn subresources_names_and_urls() {
        let star_status = vec![rule(&[""], &["*/status"], &["get"])];
        assert!(missing(&star_status, &[rule(&[""], &["pods/status"], &["get"])]).is_empty());
        assert!(!missing(&star_status, &[rule(&[""], &["pods"], &["get"])]).is_empty());
        let mut named = rule(&[""], &["configmaps"], &["get"]);
        named.resource_names = vec!["one".into()];
        let mut want = named.clone();
        assert!(missing(std::slice::from_ref(&named), &[want.clone()]).is_empty());
        want.resource_names = vec!["one".into(), "two".into()];
        assert_eq!(missing(std::slice::from_ref(&named), &[want]).len(), 1);
        // Holding a named rule never covers the unnamed (all objects) one.
        assert_eq!(
            missing(&[named], &[rule(&[""], &["configmaps"], &["get"])]).len(),
            1
        );
        let urls = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/apis/*".into()],
            ..Default::default()
        };
        let want = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/apis/apps".into()],
            ..Default::default()
        };
        assert!(missing(&[urls], &[want]).is_empty());
    }

    #[test]
    fn message_as_upstream() {
        let u = User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into(), "devs".into()],
        };
        let m = escalation_message(&u, &[rule(&["*"], &["*"], &["*"])]);
        assert_eq!(
            m,
            "user \"alice\" (groups=[\"system:authenticated\" \"devs\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"
        );
    }
}
