//! Authentication: who a request is from.
//!
//! - The admin bearer token (the generated kubeconfig's) is user `system:admin` in
//!   `system:masters`, as k3s's admin.
//! - An X.509 client certificate that rustls verified against the cluster CA during the TLS
//!   handshake (client auth is optional, so token clients are unaffected; a certificate from
//!   another CA fails the handshake) is the user named by its CN, in the groups named by its
//!   O attributes, as kube-apiserver's x509 authenticator.
//! - Every authenticated user is also in `system:authenticated`. Nothing else is accepted:
//!   `route` answers 401 except for `/healthz`, `/livez`, `/readyz` and `/version`, which
//!   upstream's `system:public-info-viewer` opens to everyone.
//!
//! Impersonation (`Impersonate-User`, `Impersonate-Group`) replaces the user once the real
//! one is allowed the `impersonate` verb on `users`/`groups` (upstream's filter).

use http::{Extensions, HeaderMap, header};

use crate::authz::{AUTHENTICATED, Attributes, MASTERS, User, check, rbac::Snapshot};
use crate::status::ApiError;

pub const ADMIN_USER: &str = "system:admin";

/// The identity of a connection's verified client certificate, attached to each of its
/// requests by the accept loop.
#[derive(Debug, Clone)]
pub struct PeerUser(pub User);

/// The user a verified certificate names: CN is the user, each O a group.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    Some(User { name, groups })
}

/// Token comparison whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin user the bootstrap token stands for.
pub fn admin() -> User {
    User {
        name: ADMIN_USER.into(),
        groups: vec![MASTERS.into(), AUTHENTICATED.into()],
    }
}

/// The request's user: the client certificate's (tried first, as upstream's union of
/// authenticators) or the admin token's; None is a 401.
pub fn authenticate(admin_token: &str, headers: &HeaderMap, ext: &Extensions) -> Option<User> {
    if let Some(PeerUser(u)) = ext.get::<PeerUser>() {
        return Some(u.clone());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    constant_time_eq(bearer.trim().as_bytes(), admin_token.as_bytes()).then(admin)
}

/// Applies impersonation headers: the user they name, after checking the real user may
/// impersonate that user and each group (403 with upstream's message otherwise).
pub fn impersonate(snap: &Snapshot, real: User, headers: &HeaderMap) -> Result<User, ApiError> {
    let name = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    let Some(name) = name else {
        if groups.is_empty() {
            return Ok(real);
        }
        return Err(ApiError::bad_request(format!(
            "requested {groups:?} without impersonating a user"
        )));
    };
    let asks = std::iter::once(("users", name.clone()))
        .chain(groups.iter().map(|g| ("groups", g.clone())));
    for (resource, obj) in asks {
        let a = Attributes {
            verb: "impersonate".into(),
            resource_request: true,
            resource: resource.into(),
            name: obj,
            ..Default::default()
        };
        check(snap, &real, &a)?;
    }
    let mut groups = groups;
    if name != "system:anonymous" && !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    Ok(User { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if let Some(o) = orgs.first() {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        p.self_signed(&kp).unwrap().der().to_vec()
    }

    #[test]
    fn certificate_subject_is_the_user() {
        let u = user_from_cert(&cert("alice", &["devs"])).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["devs", AUTHENTICATED]);
        assert!(user_from_cert(b"not a certificate").is_none());
    }

    #[test]
    fn token_or_certificate() {
        let mut h = HeaderMap::new();
        let ext = Extensions::new();
        assert!(authenticate("tok", &h, &ext).is_none());
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(authenticate("tok", &h, &ext).is_none());
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(authenticate("tok", &h, &ext), Some(admin()));
        let mut ext = Extensions::new();
        let bob = User {
            name: "bob".into(),
            groups: vec![AUTHENTICATED.into()],
        };
        ext.insert(PeerUser(bob.clone()));
        assert_eq!(authenticate("tok", &HeaderMap::new(), &ext), Some(bob));
    }

    #[test]
    fn impersonation_needs_the_verb() {
        let snap = Snapshot::default();
        let mut h = HeaderMap::new();
        h.insert("impersonate-user", "carol".parse().unwrap());
        h.append("impersonate-group", "devs".parse().unwrap());
        let as_carol = impersonate(&snap, admin(), &h).unwrap();
        assert_eq!(as_carol.name, "carol");
        assert_eq!(as_carol.groups, ["devs", AUTHENTICATED]);
        let bob = User {
            name: "bob".into(),
            groups: vec![AUTHENTICATED.into()],
        };
        let e = impersonate(&snap, bob, &h).unwrap_err();
        assert_eq!(
            e.message,
            "users \"carol\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
    }
}
