//! Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as integers: one parser for
//! the API server's validation, the scheduler's fit and the agent's limits.
//!
//! Written here because no well-kept crate parses the full Kubernetes quantity grammar into
//! exact integers (the few that exist go through f64, which rounds "0.1" + "0.2" wrongly in
//! sums of many pods). CPU is counted in millicores and everything else in units, rounding
//! up like Kubernetes' `MilliValue()` / `Value()`.

/// Parse errors name the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {why}")]
pub struct QuantityError {
    pub text: String,
    pub why: &'static str,
}

/// A parsed quantity as an exact rational `mantissa * 10^exp10 * 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

fn parse(text: &str) -> Result<Parsed, QuantityError> {
    let err = |why| QuantityError {
        text: text.to_string(),
        why,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "." {
        return Err(err("no digits"));
    }
    let mut digits: u128 = 0;
    let mut exp10: i32 = 0;
    let mut seen_dot = false;
    for c in num.chars() {
        if c == '.' {
            if seen_dot {
                return Err(err("two decimal points"));
            }
            seen_dot = true;
            continue;
        }
        let d = u128::from(c as u8 - b'0');
        digits = digits
            .checked_mul(10)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| err("too many digits"))?;
        if seen_dot {
            exp10 -= 1;
        }
    }
    let (e10, e2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&exp) {
                return Err(err("exponent out of range"));
            }
            (exp, 0)
        }
        _ => return Err(err("unknown suffix")),
    };
    Ok(Parsed {
        negative,
        digits,
        exp10: exp10 + e10,
        exp2: e2,
    })
}

/// `value * 10^scale`, rounded up (away from zero for positives), saturating.
fn scaled(p: Parsed, scale: i32) -> i64 {
    let mut num: u128 = p.digits;
    let mut den: u128 = 1;
    let e = p.exp10 + scale;
    for _ in 0..e.max(0) {
        num = num.saturating_mul(10);
    }
    for _ in 0..(-e).max(0) {
        den = den.saturating_mul(10);
    }
    num = num.saturating_mul(1u128 << p.exp2.min(100));
    let v = num.div_ceil(den);
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    if p.negative { -v } else { v }
}

/// Whether a quantity is negative (requests, limits and sizes must not be).
pub fn is_negative(text: &str) -> Result<bool, QuantityError> {
    parse(text).map(|p| p.negative && p.digits != 0)
}

/// Millicores (or milli-units) of a quantity, rounded up: "100m" → 100, "1" → 1000.
pub fn milli_value(text: &str) -> Result<i64, QuantityError> {
    parse(text).map(|p| scaled(p, 3))
}

/// Units of a quantity, rounded up: "1Ki" → 1024, "500m" → 1.
pub fn value(text: &str) -> Result<i64, QuantityError> {
    parse(text).map(|p| scaled(p, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(milli_value("100m"), Ok(100));
        assert_eq!(milli_value("1"), Ok(1000));
        assert_eq!(milli_value("0.5"), Ok(500));
        assert_eq!(milli_value("1.5"), Ok(1500));
        assert_eq!(milli_value("2e3"), Ok(2_000_000));
        assert_eq!(milli_value("250u"), Ok(1), "sub-milli rounds up");
    }

    #[test]
    fn memory_forms() {
        assert_eq!(value("1Ki"), Ok(1024));
        assert_eq!(value("128Mi"), Ok(128 << 20));
        assert_eq!(value("1G"), Ok(1_000_000_000));
        assert_eq!(value("1.5Gi"), Ok(3 << 29));
        assert_eq!(value("500m"), Ok(1));
        assert_eq!(value("-1Ki"), Ok(-1024));
    }

    #[test]
    fn negatives_parse_and_are_reported() {
        assert_eq!(is_negative("-1"), Ok(true));
        assert_eq!(is_negative("-0"), Ok(false));
        assert_eq!(is_negative("1Gi"), Ok(false));
        assert!(is_negative("x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "1x", "1..2", "Gi", "1e99", "abc"] {
            assert!(value(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    proptest::proptest! {
        #[test]
        fn integer_millis_round_trip(n in 0i64..1_000_000_000) {
            proptest::prop_assert_eq!(milli_value(&format!("{n}m")), Ok(n));
            proptest::prop_assert_eq!(value(&format!("{n}")), Ok(n));
            proptest::prop_assert_eq!(value(&format!("{n}Ki")), Ok(n * 1024));
        }
    }
}
