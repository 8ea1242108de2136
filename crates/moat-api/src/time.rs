//! Time as Kubernetes writes it: durations as components take them on their command line
//! (Go's `time.ParseDuration` subset: `300ms`, `30s`, `5m`, `1h`, `0`), and instants as
//! `metav1.Time` text (RFC 3339 in UTC with whole seconds and `Z`). Nothing here reads the
//! clock: callers pass the instant, so this crate stays sans-IO.

use std::time::Duration;

/// The instant type of k8s-openapi's `Time`, re-exported so callers need no jiff of their own.
pub use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::Offset;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} needs a unit (ms, s, m or h)")]
    NoUnit(String),
    #[error("{0:?} is not a duration like 30s or 5m")]
    Number(String),
    #[error("{input:?}: unknown unit {unit:?} (use ms, s, m or h)")]
    Unit { input: String, unit: String },
}

/// Parses `300ms`, `30s`, `5m`, `1h` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit(s.into()))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| DurationError::Number(s.into()))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(DurationError::Unit {
                input: s.into(),
                unit: unit.into(),
            });
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| DurationError::Number(s.into()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 time like 2026-01-01T00:00:00Z")]
pub struct TimeError {
    pub input: String,
}

/// `t` as `metav1.Time` writes it: `2026-01-01T00:00:00Z` (UTC, fraction truncated, as
/// k8s-openapi's `Time` serializes and Go's `time.RFC3339` formats).
pub fn rfc3339(t: Timestamp) -> String {
    let d = Offset::UTC.to_datetime(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// Unix milliseconds as [`rfc3339`]; an instant outside years -9999..=9999 is the epoch.
pub fn rfc3339_from_millis(ms: i64) -> String {
    rfc3339(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Unix seconds as [`rfc3339`]; an instant outside years -9999..=9999 is the epoch.
pub fn rfc3339_from_secs(secs: i64) -> String {
    rfc3339(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Parses an RFC 3339 time with any offset (`Z`, `+02:00`) and optional fraction.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, TimeError> {
    s.trim()
        .parse::<Timestamp>()
        .map_err(|_| TimeError { input: s.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn instants_format_as_metav1_time() {
        assert_eq!(rfc3339_from_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_secs(1_767_225_600), "2026-01-01T00:00:00Z");
        // The fraction is cut, not rounded, as Go and chrono's `SecondsFormat::Secs` do.
        assert_eq!(
            rfc3339_from_millis(1_767_225_600_999),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339_from_millis(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_from_secs(i64::MAX), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn formatting_matches_k8s_openapi_time() {
        let t = Timestamp::from_millisecond(1_764_780_000_123).unwrap();
        let json =
            serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)).unwrap();
        assert_eq!(json, serde_json::Value::String(rfc3339(t)));
    }

    #[test]
    fn parsing_takes_offsets_and_fractions() {
        let at = |s| parse_rfc3339(s).map(|t| t.as_millisecond());
        assert_eq!(at("2026-01-01T00:00:00Z"), Ok(1_767_225_600_000));
        assert_eq!(at("2026-01-01T01:00:00+01:00"), Ok(1_767_225_600_000));
        assert_eq!(at("2026-01-01T00:00:00.250Z"), Ok(1_767_225_600_250));
        assert!(
            parse_rfc3339("2026-01-01").is_err(),
            "a date is not an instant"
        );
        assert!(parse_rfc3339("2026-01-01T00:00:00").is_err(), "no offset");
        assert!(parse_rfc3339("T").is_err());
    }

    proptest! {
        #[test]
        fn whole_seconds_round_trip(secs in -62_135_596_800i64..=253_402_300_799) {
            let s = rfc3339_from_secs(secs);
            prop_assert_eq!(s.len(), 20);
            prop_assert_eq!(parse_rfc3339(&s).map(|t| t.as_second()), Ok(secs));
        }

        #[test]
        fn millis_format_as_their_whole_second(ms in -62_135_596_800_000i64..=253_402_300_799_999) {
            prop_assert_eq!(rfc3339_from_millis(ms), rfc3339_from_secs(ms.div_euclid(1000)));
        }
    }

    #[test]
    fn durations_parse_like_go_flags() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(
            parse_duration("99999999999999999h").is_err(),
            "overflow is an error"
        );
    }
}
