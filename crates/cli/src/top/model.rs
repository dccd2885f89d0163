//! What `lego top` shows, computed from two snapshots of the cluster (the
//! manager's state and every processor monitor's jobs) taken some time
//! apart: rows of components and jobs with rates (differences of the
//! totals over the time between the snapshots), the vRegions that are not
//! healthy or are moving, the last journal lines. Pure: no I/O, so the
//! terminal view and the plain text draw the same rows.

use std::collections::BTreeMap;
use std::time::Instant;

use lego_wire::control::ClusterState;
use lego_wire::{Health, VRegionState};

use crate::status::ProcessorJobs;

/// The cluster at one moment.
pub struct Snapshot {
    pub at: Instant,
    pub state: ClusterState,
    pub jobs: Vec<ProcessorJobs>,
}

/// One component.
pub struct CompRow {
    pub id: u64,
    pub role: String,
    pub addr: String,
    pub health: Health,
    pub used: u64,
    pub capacity: u64,
    pub in_bps: f64,
    pub out_bps: f64,
}

/// One running job.
#[derive(Clone, Debug, Default)]
pub struct JobRow {
    pub id: u64,
    pub vnode: String,
    pub cmd: String,
    pub resident: u64,
    pub zero_s: f64,
    pub remote_s: f64,
    pub wp_s: f64,
    /// Prefetched pages used, of those prefetched (None: none yet).
    pub prefetch_hit: Option<f64>,
    pub evict_s: f64,
    pub fetch_bps: f64,
    pub writeback_bps: f64,
    /// Its remote fault latency histogram: (bucket midpoint µs, faults).
    pub hist: Vec<(u64, u64)>,
}

/// How the jobs are ordered (the `s` key cycles through them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    #[default]
    Remote,
    Resident,
    Evictions,
    Fetch,
    Job,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Remote => SortBy::Resident,
            SortBy::Resident => SortBy::Evictions,
            SortBy::Evictions => SortBy::Fetch,
            SortBy::Fetch => SortBy::Job,
            SortBy::Job => SortBy::Remote,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Remote => "remote faults/s",
            SortBy::Resident => "resident",
            SortBy::Evictions => "evictions/s",
            SortBy::Fetch => "fetch MB/s",
            SortBy::Job => "job id",
        }
    }

    pub fn sort(self, jobs: &mut [JobRow]) {
        let by = |f: fn(&JobRow) -> f64| {
            move |a: &JobRow, b: &JobRow| f(b).total_cmp(&f(a)).then(a.id.cmp(&b.id))
        };
        match self {
            SortBy::Remote => jobs.sort_by(by(|j| j.remote_s)),
            SortBy::Resident => jobs.sort_by(by(|j| j.resident as f64)),
            SortBy::Evictions => jobs.sort_by(by(|j| j.evict_s)),
            SortBy::Fetch => jobs.sort_by(by(|j| j.fetch_bps)),
            SortBy::Job => jobs.sort_by_key(|j| j.id),
        }
    }
}

/// Everything on the screen.
pub struct View {
    pub header: String,
    pub comps: Vec<CompRow>,
    pub jobs: Vec<JobRow>,
    pub vnodes: Vec<String>,
    /// vRegions not healthy, and drains under way.
    pub troubles: Vec<String>,
    /// The newest journal lines, newest last.
    pub journal: Vec<String>,
    /// Processor monitors that did not answer.
    pub errors: Vec<String>,
}

fn get(c: &BTreeMap<String, u64>, k: &str) -> u64 {
    c.get(k).copied().unwrap_or(0)
}

fn sum_prefix(c: &BTreeMap<String, u64>, p: &str) -> u64 {
    c.iter()
        .filter(|(k, _)| k.starts_with(p))
        .map(|(_, v)| v)
        .sum()
}

/// The rows of `cur`, with rates over the time since `prev` (0 without one).
pub fn view(prev: Option<&Snapshot>, cur: &Snapshot, sort: SortBy) -> View {
    let secs = prev
        .map(|p| cur.at.duration_since(p.at).as_secs_f64())
        .filter(|s| *s > 0.0);
    let per_s = |now: u64, before: Option<u64>| -> f64 {
        match (secs, before) {
            (Some(s), Some(b)) => now.saturating_sub(b) as f64 / s,
            _ => 0.0,
        }
    };
    let st = &cur.state;
    // A component's rates are taken between the two heartbeats seen (not
    // the two snapshots): its counters change once a heartbeat.
    let heard = |at: std::time::Instant, c: &lego_wire::control::ComponentInfo| {
        at.checked_sub(std::time::Duration::from_millis(c.last_heard_ms_ago))
    };
    let mut comps = Vec::new();
    for c in &st.components {
        let (i, o) = lego_manager::history::bytes_in_out(c);
        let before = prev.and_then(|p| {
            let b = p.state.components.iter().find(|b| b.id == c.id)?;
            Some((p.at, b))
        });
        let secs = before.and_then(|(at, b)| {
            let d = heard(cur.at, c)?.checked_duration_since(heard(at, b)?)?;
            Some(d.as_secs_f64()).filter(|s| *s > 0.1)
        });
        let rate = |now: u64, then: u64| secs.map_or(0.0, |s| now.saturating_sub(then) as f64 / s);
        let (bi, bo) = before
            .map(|(_, b)| lego_manager::history::bytes_in_out(b))
            .unwrap_or((i, o));
        comps.push(CompRow {
            id: c.id,
            role: c.role.to_string(),
            addr: c.addr.clone(),
            health: c.health,
            used: c.used,
            capacity: c.capacity,
            in_bps: rate(i, bi),
            out_bps: rate(o, bo),
        });
    }
    let old_jobs: BTreeMap<u64, &BTreeMap<String, u64>> = prev
        .map(|p| {
            p.jobs
                .iter()
                .flat_map(|pj| pj.jobs.iter().map(|j| (j.job, &j.counters)))
                .collect()
        })
        .unwrap_or_default();
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for p in &cur.jobs {
        if let Some(e) = &p.error {
            errors.push(format!("processor {} ({}): {e}", p.processor, p.addr));
        }
        for j in p.jobs.iter().filter(|j| j.running) {
            let c = &j.counters;
            let b = old_jobs.get(&j.job).copied();
            let rate = |f: &dyn Fn(&BTreeMap<String, u64>) -> u64| per_s(f(c), b.map(f));
            let prefetched = get(c, "prefetched_pages");
            jobs.push(JobRow {
                id: j.job,
                vnode: j.vnode.clone(),
                cmd: j.argv.join(" "),
                resident: get(c, "resident_pages") * lego_wire::PAGE_SIZE as u64,
                zero_s: rate(&|c| get(c, "faults_zero_filled")),
                remote_s: rate(&|c| get(c, "faults_fetched")),
                wp_s: rate(&|c| get(c, "faults_write_protect")),
                prefetch_hit: (prefetched > 0)
                    .then(|| get(c, "prefetch_used") as f64 / prefetched as f64),
                evict_s: rate(&|c| sum_prefix(c, "evictions_")),
                fetch_bps: rate(&|c| get(c, "bytes_fetched")),
                writeback_bps: rate(&|c| get(c, "bytes_written_back")),
                hist: lego_wire::jobs::rt_histogram(c, ""),
            });
        }
    }
    sort.sort(&mut jobs);
    let mut troubles: Vec<String> = st
        .vregions
        .iter()
        .filter(|v| v.state != VRegionState::Healthy)
        .map(|v| format!("vRegion {:x}:{} {}", v.asid.0, v.index, v.state))
        .collect();
    for c in &st.components {
        if let Some(d) = &c.drain {
            troubles.push(format!("memory {}: {}", c.id, crate::status::drain_line(d)));
        }
    }
    let alive = st
        .components
        .iter()
        .filter(|c| c.health == Health::Alive)
        .count();
    let header = format!(
        "lego top: {} {} | {}/{} alive | {} vNodes | {} vRegions | {} jobs",
        st.manager.addr,
        st.manager.store.as_deref().unwrap_or("redb"),
        alive,
        st.components.len(),
        st.vnodes.len(),
        st.vregions.len(),
        jobs.len()
    );
    View {
        header,
        comps,
        jobs,
        vnodes: st
            .vnodes
            .iter()
            .map(|v| {
                format!(
                    "{} ({}, {} leased)",
                    v.name,
                    v.vip,
                    compact(v.memory_leased)
                )
            })
            .collect(),
        troubles,
        journal: st
            .events
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|e| format!("{:>5}s ago {}: {}", e.ago_ms / 1000, e.kind, e.text))
            .collect(),
        errors,
    }
}

/// A size with no space in it (one token in a column): 512B, 12K, 3.4M, 1.2G.
pub fn compact(n: u64) -> String {
    let units = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    match (i, v < 10.0) {
        (0, _) => format!("{n}B"),
        (_, true) => format!("{v:.1}{}", units[i]),
        _ => format!("{v:.0}{}", units[i]),
    }
}

/// A rate as one token: 0, 3.5, 120, 45k.
pub fn rate(v: f64) -> String {
    if v <= 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else if v < 100_000.0 {
        format!("{v:.0}")
    } else {
        format!("{:.0}k", v / 1000.0)
    }
}

/// Bytes a second as MB/s, one token.
pub fn mbs(bps: f64) -> String {
    let v = bps / 1e6;
    if v <= 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// The histogram grouped by power of two: (low µs, high µs, faults).
pub fn octaves(hist: &[(u64, u64)]) -> Vec<(u64, u64, u64)> {
    let mut by: BTreeMap<u32, u64> = BTreeMap::new();
    for (mid, n) in hist {
        *by.entry(63 - mid.max(&1).leading_zeros()).or_default() += n;
    }
    by.into_iter()
        .map(|(e, n)| (1u64 << e, 1u64.checked_shl(e + 1).unwrap_or(u64::MAX), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_are_one_token() {
        assert_eq!(compact(512), "512B");
        assert_eq!(compact(3 << 20), "3.0M");
        assert_eq!(compact(64 << 20), "64M");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(rate(250_000.0), "250k");
        assert_eq!(mbs(1_500_000.0), "1.50");
    }

    #[test]
    fn octaves_group_buckets_by_power_of_two() {
        let o = octaves(&[(18, 2), (23, 3), (40, 1), (300, 4)]);
        assert_eq!(o, vec![(16, 32, 5), (32, 64, 1), (256, 512, 4)]);
    }

    #[test]
    fn sorting_puts_the_busiest_first_and_cycles() {
        let mut jobs = vec![
            JobRow {
                id: 1,
                remote_s: 5.0,
                resident: 9,
                ..JobRow::default()
            },
            JobRow {
                id: 2,
                remote_s: 50.0,
                resident: 1,
                ..JobRow::default()
            },
        ];
        SortBy::Remote.sort(&mut jobs);
        assert_eq!(jobs[0].id, 2);
        SortBy::Resident.sort(&mut jobs);
        assert_eq!(jobs[0].id, 1);
        let mut s = SortBy::default();
        for _ in 0..5 {
            s = s.next();
        }
        assert_eq!(s, SortBy::default());
    }
}
