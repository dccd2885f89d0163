//! Sizes on the command line: `64MiB`, `1G`, `512k`, `4096` (bytes).
//! K/M/G/T are powers of 1024 with or without `iB`; `B` alone is bytes.

/// Parses a size; the error says what was expected.
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

/// Formats bytes for people: `1.5 GiB` (one definition, shared with the processor monitor).
pub use lego_processor::human;

#[cfg(test)]
mod tests {
    use super::*;

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
