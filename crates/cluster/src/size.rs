//! Sizes on the command line: `64MiB`, `1G`, `512k`, `4096` (bytes).
//! K/M/G/T are powers of 1024 with or without `iB`; `B` alone is bytes.

/// Parses a size; the error says what was expected.
/// A rate such as `200MiB/s` (or `200MiB`): bytes a second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    parse_size(s.trim().trim_end_matches("/s"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("'{s}' is not a size: expected a number and a unit such as 64MiB or 1G")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}': use K, M, G or T"
            ))
        }
    };
    let v = n * mult as f64;
    if !(0.0..1.8e19).contains(&v) {
        return Err(format!("size '{s}' is out of range"));
    }
    Ok(v as u64)
}

/// Parses a duration: `10m`, `90s`, `1h`, `500ms`, `1m30s`, or seconds alone.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return (0.0..1e9)
            .contains(&secs)
            .then(|| std::time::Duration::from_secs_f64(secs))
            .ok_or_else(|| format!("duration '{s}' is out of range"));
    }
    let mut total = 0f64;
    let mut rest = t;
    if rest.is_empty() {
        return Err("an empty duration: expected e.g. 10m, 90s or 1h".into());
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration: expected e.g. 10m, 90s or 1h"))?;
        let mult = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "unknown duration unit '{other}' in '{s}': use ms, s, m or h"
                ))
            }
        };
        total += n * mult;
        rest = next;
    }
    if total >= 1e9 {
        return Err(format!("duration '{s}' is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Formats bytes for people: `1.5 GiB` (one definition, shared with the processor monitor).
pub use lego_wire::types::human;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sizes() {
        for (s, v) in [
            ("4096", 4096),
            ("64MiB", 64 << 20),
            ("1G", 1 << 30),
            ("512k", 512 << 10),
            ("1.5GiB", 3 << 29),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
