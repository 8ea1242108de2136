//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `1e3`) as the agent needs them:
//! CPU in millicores and memory in bytes. Written here because k8s-openapi's `Quantity` is
//! only the string; the grammar is small.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// The value scaled by 1000 (millis), rounded up as Kubernetes does for CPU.
pub fn parse_milli(q: &str) -> Result<i128, QuantityError> {
    let bad = || QuantityError(q.to_string());
    let s = q.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num.starts_with('-') {
        return Err(bad());
    }
    let num = num.strip_prefix('+').unwrap_or(num);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Value as an integer numerator over 10^frac.len().
    let digits = format!("{int}{frac}");
    if digits.len() > 30 {
        return Err(bad());
    }
    let n: i128 = digits.parse().map_err(|_| bad())?;
    let scale_down = frac.len() as u32;
    // Multiplier as (numerator, power of ten) applied to millis.
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 3),
        "n" => (1, -6),
        "u" => (1, -3),
        "m" => (1, 0),
        "k" => (1, 6),
        "M" => (1, 9),
        "G" => (1, 12),
        "T" => (1, 15),
        "P" => (1, 18),
        "E" => (1, 21),
        "Ki" => (1 << 10, 3),
        "Mi" => (1 << 20, 3),
        "Gi" => (1 << 30, 3),
        "Ti" => (1 << 40, 3),
        "Pi" => (1 << 50, 3),
        "Ei" => (1 << 60, 3),
        e if e.starts_with(['e', 'E']) => {
            let x: i32 = e[1..].parse().map_err(|_| bad())?;
            if !(-30..=30).contains(&x) {
                return Err(bad());
            }
            (1, x + 3)
        }
        _ => return Err(bad()),
    };
    let exp = exp10 - scale_down as i32;
    let v = n.checked_mul(mul).ok_or_else(bad)?;
    if exp >= 0 {
        v.checked_mul(10i128.checked_pow(exp as u32).ok_or_else(bad)?)
            .ok_or_else(bad)
    } else {
        let d = 10i128.checked_pow((-exp) as u32).ok_or_else(bad)?;
        Ok((v + d - 1) / d)
    }
}

/// CPU in millicores.
pub fn cpu_millis(q: &str) -> Result<i64, QuantityError> {
    i64::try_from(parse_milli(q)?).map_err(|_| QuantityError(q.into()))
}

/// Memory in bytes (fractions round up).
pub fn bytes(q: &str) -> Result<i64, QuantityError> {
    let m = parse_milli(q)?;
    i64::try_from((m + 999) / 1000).map_err(|_| QuantityError(q.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(cpu_millis("100m"), Ok(100));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("1.0005"), Ok(1001));
        assert_eq!(cpu_millis("1e3"), Ok(1_000_000));
    }

    #[test]
    fn memory_forms() {
        assert_eq!(bytes("128Mi"), Ok(128 << 20));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1.5Ki"), Ok(1536));
        assert_eq!(bytes("64"), Ok(64));
    }

    #[test]
    fn garbage_is_rejected() {
        for q in ["", "-1", "1x", "Mi", "1..2", "1e99"] {
            assert!(parse_milli(q).is_err(), "{q}");
        }
    }
}
