//! The report of `lego bench excache`: what a run came to (parsing what the
//! workload and the runtime printed), and the side-by-side table of times
//! and slowdowns.

use std::collections::BTreeMap;

use lego_cluster::size::human;

use super::Config;
use crate::child::Finished;

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
pub fn parse_workload(out: &str) -> Result<Phases, String> {
    let mut times = BTreeMap::new();
    let mut checksum = None;
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["phase", name, secs, _sum] => {
                let s: f64 = secs
                    .parse()
                    .map_err(|_| format!("bad time in workload line {l:?}"))?;
                times.insert(name.to_string(), s);
            }
            ["checksum", hex] if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                checksum = Some(hex.to_string());
            }
            _ => return Err(format!("unexpected line from the workload: {l:?}")),
        }
    }
    let get = |n: &str| {
        times
            .get(n)
            .copied()
            .ok_or_else(|| format!("the workload printed no '{n}' phase"))
    };
    Ok(Phases {
        fill: get("fill")?,
        seq_fwd: get("seq_fwd")?,
        seq_bwd: get("seq_bwd")?,
        random: get("random")?,
        checksum: checksum.ok_or("the workload printed no checksum")?,
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

/// How one configuration went: what it measured (`T`), or why not.
#[derive(Clone, Debug)]
pub enum Outcome<T = Phases> {
    Ran(T),
    Skipped(String),
    Failed(String),
    NotSelected,
}

/// One row of the table: a configuration (`None`: the local reference).
#[derive(Clone, Debug)]
pub struct Row {
    pub config: Option<Config>,
    /// The ExCache quota or cgroup limit.
    pub limit: Option<u64>,
    pub outcome: Outcome,
    /// One line of counters for the notes under the table.
    pub note: Option<String>,
    /// What the lego runtime counted (lego rows).
    pub counters: BTreeMap<String, u64>,
    /// The link and sealing it ran with, when a run compares several.
    pub variant: Option<String>,
}

impl Row {
    pub fn new(config: Option<Config>, limit: Option<u64>, outcome: Outcome) -> Row {
        Row {
            config,
            limit,
            outcome,
            note: None,
            counters: BTreeMap::new(),
            variant: None,
        }
    }

    /// Its name in the table.
    pub fn name(&self) -> String {
        let label = self.config.map_or(LOCAL, Config::label);
        match &self.variant {
            Some(v) => format!("{label} | {v}"),
            None => label.to_string(),
        }
    }

    /// What it measured, if it ran.
    pub fn phases(&self) -> Option<&Phases> {
        match &self.outcome {
            Outcome::Ran(p) => Some(p),
            _ => None,
        }
    }
}

/// The reference row's name.
pub const LOCAL: &str = "local, no limit";

/// The phases of a configuration's row (`None`: the local reference), if it ran.
pub fn phases_of(rows: &[Row], config: Option<Config>) -> Option<&Phases> {
    rows.iter()
        .find(|r| r.config == config)
        .and_then(Row::phases)
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
        "{:<46} {:>9}  {:>14}  {:>14}  {:>14}  {:>14}  {:>9}  {:>14}  checksum",
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
                    "{:<46} {:>9}  {:>14}  {:>14}  {:>14}  {:>14}  {:>9.2}  {:>14}  {}",
                    r.name(),
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
                let _ = writeln!(s, "{:<46} {:>9}  (no reference)", r.name(), limit);
            }
            (Outcome::Skipped(why), _) => {
                let _ = writeln!(s, "{:<46} {:>9}  skipped: {why}", r.name(), limit);
            }
            (Outcome::Failed(why), _) => {
                let _ = writeln!(s, "{:<46} {:>9}  FAILED: {why}", r.name(), limit);
            }
            (Outcome::NotSelected, _) => {
                let _ = writeln!(
                    s,
                    "{:<46} {:>9}  not run (not in --configs)",
                    r.name(),
                    limit
                );
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

/// The workload's phases, or why there are none.
pub fn outcome_of(f: &Finished) -> Outcome {
    outcome_with(f, parse_workload)
}

/// What a finished program measured, read from its output by `parse`, or
/// how it failed (its exit status or signal and its last line of errors).
pub fn outcome_with<T>(f: &Finished, parse: impl Fn(&str) -> Result<T, String>) -> Outcome<T> {
    if !f.status.success() {
        let last = f
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("  "))
            .unwrap_or("");
        let how = match (
            f.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&f.status),
        ) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(9)) => "killed by SIGKILL".into(),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => f.status.to_string(),
        };
        return Outcome::Failed(if last.is_empty() {
            how
        } else {
            format!("{how}: {last}")
        });
    }
    match parse(&f.stdout) {
        Ok(p) => Outcome::Ran(p),
        Err(e) => Outcome::Failed(e),
    }
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
        let slow_random = slow.random;
        let mut wrong = local.clone();
        wrong.checksum = "0000000000000000".into();
        let rows = vec![
            Row::new(None, None, Outcome::Ran(local)),
            Row::new(Some(Config::Lego25), Some(1 << 29), Outcome::Ran(slow)),
            Row::new(Some(Config::SwapFile), None, Outcome::Ran(wrong)),
            Row::new(
                Some(Config::Zram),
                Some(1 << 29),
                Outcome::Skipped("no zram".into()),
            ),
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
        assert!(lines[4].starts_with("cgroup 25%, swap on zram"), "{t}");
        assert_eq!(
            phases_of(&rows, Some(Config::Lego25)).unwrap().random,
            slow_random
        );
        assert!(phases_of(&rows, Some(Config::Zram)).is_none());
    }

    #[test]
    fn thousands() {
        assert_eq!(commas(0), "0");
        assert_eq!(commas(1234), "1,234");
        assert_eq!(commas(2_000_000), "2,000,000");
    }
}
