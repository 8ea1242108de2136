//! Image references and digests (sans-IO).

use std::fmt;

/// A `sha256:<64 hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, RefError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| RefError::Digest(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(RefError::Digest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn from_sha256(bytes: &[u8]) -> Digest {
        use std::fmt::Write;
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        Digest(s)
    }

    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(&sha2::Sha256::digest(data))
    }

    /// The 64 hex characters: safe as a file name because `parse` validated them.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("invalid digest {0:?}: want sha256:<64 lowercase hex>")]
    Digest(String),
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, &'static str),
}

pub const DOCKER_HUB: &str = "docker.io";

/// A normalized image reference: `registry/repository[:tag][@digest]`, with Docker's
/// defaults applied (`busybox` is `docker.io/library/busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, RefError> {
        let bad = |why| RefError::Reference(input.to_string(), why);
        if input.is_empty() || input.len() > 4096 {
            return Err(bad("empty or too long"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d)?)),
            None => (input, None),
        };
        // A tag is the part after a ':' in the last path component; an earlier ':' is a port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(name_tag[last_slash + i + 1..].to_string()),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        {
            return Err(bad("invalid registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        for comp in repository.split('/') {
            let ok = !comp.is_empty()
                && comp.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && comp.as_bytes()[0].is_ascii_alphanumeric();
            if !ok {
                return Err(bad(
                    "repository must be lowercase [a-z0-9._-] path components",
                ));
            }
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the REPOSITORY column of `moat image ls`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference asked of the registry's manifest endpoint: the digest wins over the tag.
    pub fn manifest_ref(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2f5dbba5825790a55c4e006e9f80eb5512a03507c76e5edf7f0eb649b014fea6";

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = Reference::parse("bitnami/nginx:1.25").unwrap();
        assert_eq!(r.to_string(), "docker.io/bitnami/nginx:1.25");
        let r = Reference::parse("docker.io/nginx").unwrap();
        assert_eq!(r.repository, "library/nginx");
    }

    #[test]
    fn registry_with_port_and_tag() {
        let r = Reference::parse("localhost:5000/x:tag").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        let r = Reference::parse("localhost:5000/a/b").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.repository, "a/b");
        let r = Reference::parse("localhost/busybox").unwrap();
        assert_eq!(r.registry, "localhost");
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("quay.io/a/b@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(r.manifest_ref(), D);
        let r = Reference::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        assert_eq!(r.manifest_ref(), D);
        assert!(Reference::parse("busybox@sha256:abc").is_err());
        assert!(Digest::parse(&D.to_uppercase()).is_err());
        assert_eq!(Digest::of(b"").hex().len(), 64);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "busybox:",
            "busybox:-x",
            "x/../y",
            "/abs",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
