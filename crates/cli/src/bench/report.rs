//! The report of `lego bench excache`: parsing what the workload and the
//! runtime printed, and the side-by-side table of times and slowdowns.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::size::human;

/// What the workload printed.
#[derive(Clone, Debug, PartialEq)]
pub struct Phases {
    pub fill: f64,
    pub seq_fwd: f64,
    pub seq_bwd: f64,
    pub random: f64,
    /// The final checksum (hex).
    pub checksum: String,
}

impl Phases {
    pub fn seq(&self) -> f64 {
        self.seq_fwd + self.seq_bwd
    }
    pub fn total(&self) -> f64 {
        self.fill + self.seq() + self.random
    }
}

/// Parses the workload's output: `phase NAME SECONDS CHECKSUM` lines and
/// `checksum HEX`; the checksums of every phase are folded into the final one.
pub fn parse_workload(out: &str) -> Result<Phases> {
    let mut times = BTreeMap::new();
    let mut checksum = None;
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["phase", name, secs, _sum] => {
                let s: f64 = secs
                    .parse()
                    .with_context(|| format!("bad time in workload line {l:?}"))?;
                times.insert(name.to_string(), s);
            }
            ["checksum", hex] if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                checksum = Some(hex.to_string());
            }
            _ => bail!("unexpected line from the workload: {l:?}"),
        }
    }
    let get = |n: &str| {
        times
            .get(n)
            .copied()
            .with_context(|| format!("the workload printed no '{n}' phase"))
    };
    Ok(Phases {
        fill: get("fill")?,
        seq_fwd: get("seq_fwd")?,
        seq_bwd: get("seq_bwd")?,
        random: get("random")?,
        checksum: checksum.context("the workload printed no checksum")?,
    })
}

/// Parses the counters `lego run --stats` prints to stderr: the lines
/// `  name  value` after `lego: job ...:`.
pub fn parse_stats(stderr: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut inside = false;
    for l in stderr.lines() {
        if l.starts_with("lego: job ") && l.ends_with(':') {
            inside = true;
            m.clear();
            continue;
        }
        if !inside {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        match (l.starts_with("  "), f.as_slice()) {
            (true, [k, v])
                if k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()) =>
            {
                if let Ok(v) = v.parse() {
                    m.insert(k.to_string(), v);
                }
            }
            _ => inside = false,
        }
    }
    m
}

/// How one configuration went.
#[derive(Clone, Debug)]
pub enum Outcome {
    Ran(Phases),
    Skipped(String),
    Failed(String),
    NotSelected,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    /// The ExCache quota or cgroup limit.
    pub limit: Option<u64>,
    pub outcome: Outcome,
    /// One line of counters for the notes under the table.
    pub note: Option<String>,
}

pub fn cell(t: f64, reference: f64, is_ref: bool) -> String {
    if is_ref || reference <= 0.0 {
        format!("{t:.2} s")
    } else {
        format!("{t:.2} s {:>5.1}x", t / reference)
    }
}

/// The table: one line per configuration, phase times with slowdowns
/// against the first row (the local run), and whether checksums match it.
pub fn render_table(rows: &[Row], reads: u64) -> String {
    use std::fmt::Write as _;
    let reference = rows.first().and_then(|r| match &r.outcome {
        Outcome::Ran(p) => Some(p.clone()),
        _ => None,
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<34} {:>9}  {:>14}  {:>14}  {:>14}  {:>14}  {:>9}  {:>14}  checksum",
        "configuration", "limit", "fill", "seq fwd", "seq bwd", "random", "µs/read", "total",
    );
    for (i, r) in rows.iter().enumerate() {
        let limit = r.limit.map_or("-".into(), human);
        match (&r.outcome, &reference) {
            (Outcome::Ran(p), Some(rf)) => {
                let is_ref = i == 0;
                let sum = if is_ref {
                    format!("{} (reference)", p.checksum)
                } else if p.checksum == rf.checksum {
                    "same".into()
                } else {
                    format!("DIFFERENT: {}", p.checksum)
                };
                let _ = writeln!(
                    s,
                    "{:<34} {:>9}  {:>14}  {:>14}  {:>14}  {:>14}  {:>9.2}  {:>14}  {}",
                    r.name,
                    limit,
                    cell(p.fill, rf.fill, is_ref),
                    cell(p.seq_fwd, rf.seq_fwd, is_ref),
                    cell(p.seq_bwd, rf.seq_bwd, is_ref),
                    cell(p.random, rf.random, is_ref),
                    p.random * 1e6 / reads.max(1) as f64,
                    cell(p.total(), rf.total(), is_ref),
                    sum
                );
            }
            (Outcome::Ran(_), None) => {
                let _ = writeln!(s, "{:<34} {:>9}  (no reference)", r.name, limit);
            }
            (Outcome::Skipped(why), _) => {
                let _ = writeln!(s, "{:<34} {:>9}  skipped: {why}", r.name, limit);
            }
            (Outcome::Failed(why), _) => {
                let _ = writeln!(s, "{:<34} {:>9}  FAILED: {why}", r.name, limit);
            }
            (Outcome::NotSelected, _) => {
                let _ = writeln!(s, "{:<34} {:>9}  not run (not in --configs)", r.name, limit);
            }
        }
    }
    s
}

pub fn commas(n: u64) -> String {
    let digits = n.to_string().into_bytes();
    let groups: Vec<&str> = digits
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "phase fill 1.239588 b05e5a069678b4e1\n\
                       phase seq_fwd 0.312183 b799306fab8fc7af\n\
                       phase seq_bwd 0.181623 9c0b22ffc0ccb4e0\n\
                       phase random 0.066487 1446349ee985b5d3\n\
                       checksum 7c8a030ea8cad364\n";

    #[test]
    fn parses_the_workload() {
        let p = parse_workload(OUT).unwrap();
        assert_eq!(p.checksum, "7c8a030ea8cad364");
        assert_eq!(p.fill, 1.239588);
        assert!((p.seq() - 0.493806).abs() < 1e-9);
        assert!(
            parse_workload("phase fill 1.0 00\n").is_err(),
            "no checksum"
        );
        assert!(parse_workload(&OUT.replace("phase random", "phase rnd")).is_err());
        assert!(parse_workload(&format!("{OUT}garbage\n")).is_err());
    }

    #[test]
    fn parses_run_stats() {
        let err = "some program noise\n\
                   lego: job 1a2b, ExCache 516.0 MiB:\n\
                   \x20 bytes_fetched            123456\n\
                   \x20 remote_fault_p50_us          48\n\
                   trailing noise 5\n";
        let m = parse_stats(err);
        assert_eq!(m.len(), 2);
        assert_eq!(m["remote_fault_p50_us"], 48);
        assert!(parse_stats("lego: no counters\n").is_empty());
    }

    #[test]
    fn table_shows_slowdowns_skips_and_checksums() {
        let local = parse_workload(OUT).unwrap();
        let mut slow = local.clone();
        slow.random *= 10.0;
        let mut wrong = local.clone();
        wrong.checksum = "0000000000000000".into();
        let rows = vec![
            Row {
                name: "local, no limit".into(),
                limit: None,
                outcome: Outcome::Ran(local),
                note: None,
            },
            Row {
                name: "lego, ExCache 25%".into(),
                limit: Some(1 << 29),
                outcome: Outcome::Ran(slow),
                note: None,
            },
            Row {
                name: "bad".into(),
                limit: None,
                outcome: Outcome::Ran(wrong),
                note: None,
            },
            Row {
                name: "zram".into(),
                limit: Some(1 << 29),
                outcome: Outcome::Skipped("no zram".into()),
                note: None,
            },
        ];
        let t = render_table(&rows, 2_000_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[1].contains("7c8a030ea8cad364 (reference)"), "{t}");
        assert!(
            lines[2].contains("0.66 s  10.0x") && lines[2].contains("same"),
            "{t}"
        );
        assert!(lines[2].contains("512.0 MiB"), "{t}");
        assert!(lines[3].contains("DIFFERENT"), "{t}");
        assert!(lines[4].contains("skipped: no zram"), "{t}");
    }

    #[test]
    fn thousands() {
        assert_eq!(commas(0), "0");
        assert_eq!(commas(1234), "1,234");
        assert_eq!(commas(2_000_000), "2,000,000");
    }
}
