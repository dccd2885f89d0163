//! The runtime counters of a job: which names are kept (the runtime's own,
//! [`lego_wire::jobs::RT_COUNTERS`], and its histogram's buckets; a job's
//! process may send anything), kept per address space (each process of a
//! job, and each image after an exec, reports its own, from zero), and
//! what each means summed ([`RtCounter`]).

use std::collections::BTreeMap;

use lego_wire::jobs::{RT_COUNTERS, RT_HIST_PREFIX};

/// Address spaces of one job whose counters are kept; the reports of more
/// (a job forking without end) are dropped.
pub const MAX_SPACES: usize = 64;

/// Whether `name` is a counter of the runtime's.
pub fn accepted(name: &str) -> bool {
    RT_COUNTERS.contains(&name)
        || name
            .strip_prefix(RT_HIST_PREFIX)
            .and_then(|us| us.parse::<u32>().ok())
            .is_some_and(|us| us < 1 << 25)
}

/// What a runtime counter is, summed over a job's processes or a monitor's
/// jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtCounter {
    /// Only ever grows in a process (faults, bytes, a histogram bucket):
    /// summed over processes, and over running and finished jobs, a `_total`.
    Total,
    /// A level (resident pages): summed over what runs now.
    Level,
    /// Means nothing summed (an address space id, a percentile, a peak):
    /// the latest report's.
    Skip,
}

impl RtCounter {
    pub fn of(name: &str) -> RtCounter {
        match name {
            "resident_pages" | "excache_pages" => RtCounter::Level,
            "asid" | "resident_peak_pages" => RtCounter::Skip,
            n if n.contains("_p50") || n.contains("_p99") => RtCounter::Skip,
            _ => RtCounter::Total,
        }
    }

    /// Its name among the monitor's counters: `rt_NAME`, with `_total` for
    /// a total (histogram buckets keep their names: the manager turns them
    /// into one Prometheus histogram).
    pub fn exported(name: &str) -> String {
        match RtCounter::of(name) {
            RtCounter::Total if !name.ends_with("_total") && !name.starts_with(RT_HIST_PREFIX) => {
                format!("rt_{name}_total")
            }
            _ => format!("rt_{name}"),
        }
    }
}

/// A job's counters, by address space.
#[derive(Clone, Debug, Default)]
pub struct JobCounters {
    by_space: BTreeMap<u64, BTreeMap<String, u64>>,
    /// The space that reported last.
    latest: u64,
}

impl JobCounters {
    /// A report of the runtime in one process (its `asid` says which).
    pub fn report(&mut self, counters: BTreeMap<String, u64>) {
        let asid = counters.get("asid").copied().unwrap_or(0);
        if !self.by_space.contains_key(&asid) && self.by_space.len() >= MAX_SPACES {
            return;
        }
        let kept = counters.into_iter().filter(|(k, _)| accepted(k)).collect();
        self.by_space.insert(asid, kept);
        self.latest = asid;
    }

    /// Space `asid` is gone: its levels drop to nothing, its totals stay.
    pub fn gone(&mut self, asid: u64) {
        if let Some(c) = self.by_space.get_mut(&asid) {
            c.retain(|k, _| RtCounter::of(k) != RtCounter::Level);
        }
    }

    /// The job's counters: totals and levels summed over its spaces, the
    /// rest as its latest report says.
    pub fn merged(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = self
            .by_space
            .get(&self.latest)
            .into_iter()
            .flatten()
            .filter(|(k, _)| RtCounter::of(k) == RtCounter::Skip)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for c in self.by_space.values() {
            for (k, v) in c
                .iter()
                .filter(|(k, _)| RtCounter::of(k) != RtCounter::Skip)
            {
                let e = m.entry(k.clone()).or_default();
                *e = e.saturating_add(*v);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn an_exec_or_a_fork_adds_to_the_totals_instead_of_resetting_them() {
        let mut j = JobCounters::default();
        j.report(report(&[
            ("asid", 1),
            ("faults_fetched", 100),
            ("resident_pages", 10),
        ]));
        // The image after an exec: a new space, counting from zero.
        j.report(report(&[
            ("asid", 2),
            ("faults_fetched", 5),
            ("resident_pages", 3),
        ]));
        j.report(report(&[
            ("asid", 2),
            ("faults_fetched", 7),
            ("resident_pages", 3),
            ("remote_fault_p50_us", 9),
        ]));
        let m = j.merged();
        assert_eq!(m["faults_fetched"], 107);
        assert_eq!(m["resident_pages"], 13);
        // The first image's space is released: its pages are no longer resident.
        j.gone(1);
        let m = j.merged();
        assert_eq!(m["faults_fetched"], 107);
        assert_eq!(m["resident_pages"], 3);
        assert_eq!(m["asid"], 2);
        assert_eq!(m["remote_fault_p50_us"], 9);
    }

    #[test]
    fn only_the_runtimes_names_are_kept_and_sums_saturate() {
        let mut j = JobCounters::default();
        j.report(report(&[
            ("asid", 1),
            ("made_up", 5),
            ("remote_fault_hist_us_16", u64::MAX),
            ("remote_fault_hist_us_x", 1),
        ]));
        j.report(report(&[("asid", 2), ("remote_fault_hist_us_16", 3)]));
        let m = j.merged();
        assert!(!m.contains_key("made_up") && !m.contains_key("remote_fault_hist_us_x"));
        assert_eq!(m["remote_fault_hist_us_16"], u64::MAX);
    }

    #[test]
    fn a_job_forking_without_end_keeps_a_bounded_record() {
        let mut j = JobCounters::default();
        for asid in 0..1000 {
            j.report(report(&[("asid", asid), ("forks", 1)]));
        }
        assert_eq!(j.merged()["forks"], MAX_SPACES as u64);
    }
}
