//! Safe, deterministic nft identifiers.
//!
//! nft identifiers must start with a letter and may hold letters, digits, `_`, `-`, `.`, `/`
//! (the last two complicate parsing, so we never emit them). Names are limited to
//! `NFT_NAME_MAXLEN` (256) bytes in the kernel; we keep them far shorter so scripts stay small.

use sha2::{Digest, Sha256};

/// Longest identifier [`ident`] returns.
pub const MAX_IDENT: usize = 63;

/// Lower-case base32 (RFC 4648 alphabet, lower-cased): letters and digits only.
const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// 16 base32 characters (80 bits) of SHA-256 of `s`.
pub fn hash16(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    let mut bits: u128 = 0;
    for b in &d[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16)
        .rev()
        .map(|i| char::from(B32[((bits >> (i * 5)) & 31) as usize]))
        .collect()
}

/// An identifier `<prefix>-<readable>` built from `readable`: characters outside
/// `[A-Za-z0-9_-]` become `_`. When that changed anything or the name would exceed
/// [`MAX_IDENT`], the readable part is truncated and a hash of the *original* text appended,
/// so two different inputs never collide by sanitising to the same string. `prefix` must
/// already be a safe identifier starting with a letter (it is a fixed keyword in callers).
pub fn ident(prefix: &str, readable: &str) -> String {
    let clean: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let plain = format!("{prefix}-{clean}");
    if clean == readable && plain.len() <= MAX_IDENT {
        return plain;
    }
    let h = hash16(readable);
    // prefix + '-' + kept + '-' + 16 hash chars
    let room = MAX_IDENT.saturating_sub(prefix.len() + 2 + h.len());
    let kept: String = clean.chars().take(room).collect();
    format!("{prefix}-{kept}-{h}")
}

/// Like [`ident`] but the hash of `readable` is always present, right after the prefix:
/// `<prefix>-<13 base32 chars>-<sanitised readable, truncated>`. For names built from
/// several user-controlled fields, where a readable-but-ambiguous join must never collide
/// (kube-proxy's `service-HASH-ns/name/proto/port` chains follow the same idea).
pub fn hashed_ident(prefix: &str, readable: &str) -> String {
    let h = hash16(readable);
    let h = &h[..13];
    let room = MAX_IDENT.saturating_sub(prefix.len() + 2 + h.len());
    let kept: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    if kept.is_empty() {
        format!("{prefix}-{h}")
    } else {
        format!("{prefix}-{h}-{kept}")
    }
}

/// True for what [`ident`] may return: a letter first, then `[A-Za-z0-9_-]`, bounded length.
pub fn is_safe_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && s.len() <= MAX_IDENT
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_clean_names_stay_readable() {
        assert_eq!(ident("svc", "default_web_http"), "svc-default_web_http");
    }

    #[test]
    fn unsafe_characters_get_a_hash_so_they_cannot_collide() {
        let a = ident("svc", "ns/web:80");
        let b = ident("svc", "ns_web_80");
        assert!(is_safe_ident(&a), "{a}");
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains(':'));
    }

    #[test]
    fn long_names_are_truncated_with_a_stable_hash() {
        let long = "x".repeat(300);
        let a = ident("endpoint", &long);
        assert!(a.len() <= MAX_IDENT && is_safe_ident(&a), "{a}");
        assert_eq!(a, ident("endpoint", &long));
        assert_ne!(a, ident("endpoint", &format!("{long}y")));
    }

    #[test]
    fn hashed_names_differ_when_only_separators_differ() {
        let a = hashed_ident("svc", "a-b/c");
        let b = hashed_ident("svc", "a/b-c");
        assert!(is_safe_ident(&a) && is_safe_ident(&b));
        assert_ne!(a, b);
        assert!(hashed_ident("ep", &"z".repeat(200)).len() <= MAX_IDENT);
    }

    #[test]
    fn injection_attempts_are_neutralised() {
        let a = ident("svc", "a; flush ruleset }");
        assert!(is_safe_ident(&a), "{a}");
    }
}
