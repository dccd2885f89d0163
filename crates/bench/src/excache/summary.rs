//! What `lego bench excache` prints after running every configuration: the
//! table, the notes under it, the remote-fault latency beside the bare round
//! trip, the cost of replication, the targets, the userfaultfd floor, the
//! checksums and what was left behind.

use super::report::{phases_of, render_table, Outcome, Row};
use super::Config;
use crate::cprog::Floor;
use crate::rtt::Rtt;
use crate::swap::{self, SwapKind};

pub(super) struct Summary<'a> {
    pub rows: &'a [Row],
    pub reads: u64,
    pub rtt: &'a Rtt,
    pub rtt_polled: &'a Rtt,
    pub floor: &'a Result<Floor, String>,
}

impl Summary<'_> {
    pub fn print(&self) {
        println!("\n{}", render_table(self.rows, self.reads));
        for r in self.rows {
            if let Some(n) = &r.note {
                println!("{:<46} {n}", r.name());
            }
        }
        self.print_latency();
        println!();
        self.print_replication();
        self.print_targets();
    }

    /// The remote-fault latency at 25%, beside the bare round trips.
    fn print_latency(&self) {
        let counters = self
            .rows
            .iter()
            .find(|r| r.config == Some(Config::Lego25))
            .map(|r| &r.counters);
        let p50 = counters.and_then(|c| c.get("remote_fault_p50_us").copied());
        let p99 = counters.and_then(|c| c.get("remote_fault_p99_us").copied());
        let mean = counters.and_then(|c| {
            let (ns, n) = (
                c.get("remote_fault_ns_total")?,
                c.get("remote_faults_timed")?,
            );
            (*n > 0).then(|| *ns as f64 / *n as f64 / 1000.0)
        });
        println!(
            "\nremote fault, lego at 25% (runtime's histogram, quarter octaves: each percentile is its bucket's midpoint): p50 {} µs, p99 {} µs, mean {} µs",
            p50.map_or("?".into(), |v| v.to_string()),
            p99.map_or("?".into(), |v| v.to_string()),
            mean.map_or("?".into(), |v| format!("{v:.1}"))
        );
        let ratio = |r: &Rtt| {
            p50.map_or(String::new(), |p| {
                format!(
                    "; remote fault p50 / round trip = {:.2}x",
                    p as f64 / r.p50_us
                )
            })
        };
        println!(
            "bare 4 KiB TCP round trip on loopback, same run: blocking p50 {:.1} µs, p99 {:.1} µs{}",
            self.rtt.p50_us,
            self.rtt.p99_us,
            ratio(self.rtt)
        );
        println!(
            "  same, both ends polling (as lego's runtime and memory monitor do): p50 {:.1} µs, p99 {:.1} µs{}",
            self.rtt_polled.p50_us,
            self.rtt_polled.p99_us,
            ratio(self.rtt_polled)
        );
    }

    fn print_replication(&self) {
        let two = phases_of(self.rows, Some(Config::Lego25));
        if let (Some(two), Some(one)) = (two, phases_of(self.rows, Some(Config::Lego25Single))) {
            println!(
                "replication at 25%: two copies against one: total {:.2} s against {:.2} s ({:.2}x); fill {:.2}x, sequential {:.2}x, random {:.2}x",
                two.total(),
                one.total(),
                two.total() / one.total(),
                two.fill / one.fill,
                two.seq() / one.seq(),
                two.random / one.random
            );
        }
    }

    fn print_targets(&self) {
        let lego25 = phases_of(self.rows, Some(Config::Lego25));
        for c in [Config::SwapFile, Config::Loop] {
            let other = phases_of(self.rows, Some(c));
            let what = format!(
                "at 25%, lego faster than {} on the random phase",
                c.swap().map_or("swap", SwapKind::label)
            );
            println!(
                "{}",
                verdict(
                    &what,
                    lego25.map(|p| p.random),
                    other.map(|p| p.random),
                    |l, o| l < o
                )
            );
        }
        let local = phases_of(self.rows, None);
        let what = "at 25%, lego's sequential passes (forward + backward) within 2x of local";
        println!(
            "{}",
            match (lego25, local) {
                (Some(l), Some(o)) => format!(
                    "target: {what}: {:.2} s vs 2 x {:.2} s = {:.2} s ({:.1}x): {}",
                    l.seq(),
                    o.seq(),
                    2.0 * o.seq(),
                    l.seq() / o.seq(),
                    if l.seq() <= 2.0 * o.seq() {
                        "MET"
                    } else {
                        "MISSED"
                    }
                ),
                _ => verdict(what, None, None, |_, _| false),
            }
        );
        match self.floor {
            Ok(f) => println!(
                "  floor: the kernel alone takes {:.2} µs to install a page with UFFDIO_COPY, read it and drop it, \
                 against {:.3} µs to read it resident; a pass that fetches 75% of its pages cannot run faster than \
                 {:.1}x local through userfaultfd, whatever the network",
                f.install_us,
                f.local_us,
                f.least_slowdown(0.75)
            ),
            Err(why) => println!("  floor: not measured: {why}"),
        }
    }

    /// Every configuration must have computed the same thing; returns the
    /// names of those that did not.
    pub fn check_checksums(&self) -> Vec<String> {
        let reference = phases_of(self.rows, None)
            .map(|p| p.checksum.clone())
            .unwrap_or_default();
        let ran: Vec<&Row> = self.rows.iter().filter(|r| r.phases().is_some()).collect();
        let wrong: Vec<String> = ran
            .iter()
            .filter(|r| r.phases().is_some_and(|p| p.checksum != reference))
            .map(|r| r.name())
            .collect();
        if wrong.is_empty() {
            println!(
                "checksums: all {} configurations that ran print {reference}, the local run's: identical",
                ran.len()
            );
        } else {
            println!(
                "checksums: DIFFERENT from the local run's {reference}: {}",
                wrong.join(", ")
            );
        }
        wrong
    }

    /// Whether a zram row set zram up (ran, or failed after trying).
    pub fn used_zram(&self) -> bool {
        self.rows.iter().any(|r| {
            r.config.and_then(Config::swap) == Some(SwapKind::Zram)
                && !matches!(r.outcome, Outcome::Skipped(_) | Outcome::NotSelected)
        })
    }
}

/// Says whether anything of the bench's remains.
pub(super) fn print_cleanup(swaps_before: &[String], zram_used: bool) {
    let mut left = Vec::new();
    let swaps_after = swap::active_swaps();
    if swaps_after != swaps_before {
        left.push(format!("swap is now [{}]", swaps_after.join(", ")));
    }
    if zram_used
        && std::fs::read_to_string("/sys/block/zram0/disksize").is_ok_and(|s| s.trim() != "0")
    {
        left.push("zram0 still has a disksize".into());
    }
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&format!("lego-bench-excache-{}-swap", std::process::id()))
    {
        left.push("the bench's tmpfs is still mounted".into());
    }
    if left.is_empty() {
        println!(
            "cleanup: swap as before ({}); the bench's cgroups, zram setup, loop device and tmpfs are gone",
            if swaps_before.is_empty() {
                "none".to_string()
            } else {
                swaps_before.join(", ")
            }
        );
    } else {
        println!("cleanup: LEFT BEHIND: {}", left.join("; "));
    }
    println!("load average at the end: {}", super::loadavg());
}

/// `MET`/`MISSED` with both numbers, or why it could not be judged.
fn verdict(
    what: &str,
    ours: Option<f64>,
    theirs: Option<f64>,
    ok: impl Fn(f64, f64) -> bool,
) -> String {
    match (ours, theirs) {
        (Some(l), Some(o)) => format!(
            "target: {what}: {l:.2} s vs {o:.2} s ({:.2}x): {}",
            l / o,
            if ok(l, o) { "MET" } else { "MISSED" }
        ),
        _ => format!("target: {what}: NOT MEASURED (a configuration did not run)"),
    }
}
