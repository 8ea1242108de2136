//! Durations as Kubernetes components take them on their command line (Go's
//! `time.ParseDuration` subset: `300ms`, `30s`, `5m`, `1h`, `0`).

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
