//! imagePullPolicy semantics (sans-IO), as the kubelet applies them.

use crate::reference::Reference;

/// The pod's `imagePullPolicy` is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported imagePullPolicy {0:?}: want Always, IfNotPresent or Never")]
pub struct UnsupportedPullPolicy(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The pod field's value; `None`/empty means "apply the default for this image".
    pub fn from_field(
        field: Option<&str>,
        image: &Reference,
    ) -> Result<PullPolicy, UnsupportedPullPolicy> {
        match field {
            None | Some("") => Ok(default_policy(image)),
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => Err(UnsupportedPullPolicy(other.to_string())),
        }
    }
}

/// Kubernetes' defaulting rule: `Always` when the tag is `latest` or omitted (and no digest
/// pins the content), otherwise `IfNotPresent`.
pub fn default_policy(image: &Reference) -> PullPolicy {
    if image.digest.is_some() {
        return PullPolicy::IfNotPresent;
    }
    match image.tag.as_deref() {
        None | Some("latest") => PullPolicy::Always,
        Some(_) => PullPolicy::IfNotPresent,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullDecision {
    Pull,
    UseLocal,
    /// The kubelet's `ErrImageNeverPull` state.
    NeverPull,
}

pub fn decide(policy: PullPolicy, present_locally: bool) -> PullDecision {
    match (policy, present_locally) {
        (PullPolicy::Always, _) => PullDecision::Pull,
        (PullPolicy::IfNotPresent, true) | (PullPolicy::Never, true) => PullDecision::UseLocal,
        (PullPolicy::IfNotPresent, false) => PullDecision::Pull,
        (PullPolicy::Never, false) => PullDecision::NeverPull,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn defaulting_rule() {
        assert_eq!(default_policy(&r("busybox")), PullPolicy::Always);
        assert_eq!(default_policy(&r("busybox:latest")), PullPolicy::Always);
        assert_eq!(default_policy(&r("busybox:1.36")), PullPolicy::IfNotPresent);
        let pinned = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(default_policy(&r(&pinned)), PullPolicy::IfNotPresent);
        assert_eq!(
            PullPolicy::from_field(Some("Never"), &r("busybox")),
            Ok(PullPolicy::Never)
        );
        assert_eq!(
            PullPolicy::from_field(Some(""), &r("busybox:1")),
            Ok(PullPolicy::IfNotPresent)
        );
        assert!(PullPolicy::from_field(Some("always"), &r("busybox")).is_err());
    }

    #[test]
    fn decisions() {
        use PullDecision::*;
        use PullPolicy::*;
        assert_eq!(decide(Always, true), Pull);
        assert_eq!(decide(Always, false), Pull);
        assert_eq!(decide(IfNotPresent, true), UseLocal);
        assert_eq!(decide(IfNotPresent, false), Pull);
        assert_eq!(decide(Never, true), UseLocal);
        assert_eq!(decide(Never, false), NeverPull);
    }
}
