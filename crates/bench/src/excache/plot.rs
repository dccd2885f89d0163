//! `lego bench excache --plot DIR`: the run as SVG charts ([`lego_plot`]):
//!
//! - `slowdown.svg`: total time over the local run's against the ExCache
//!   quota (or cgroup limit) as a share of the working set, one series per
//!   configuration (lego, lego with one copy, each kind of swap);
//! - `fault-latency.svg`: the distribution of remote fault latency of every
//!   lego row (the runtime's histogram), one series per row;
//! - `throughput.svg`: 8-byte words read or written a second over the run,
//!   phase by phase, one series per row (the local run included);
//! - `programs.svg` (when programs ran): each program's slowdown against
//!   its local run at 50% and 25% of its working set, one series per
//!   program and configuration (lego, each kind of swap).

use std::path::{Path, PathBuf};

use lego_plot::{Chart, Series};

use super::programs::ProgramRun;
use super::report::Row;
use super::Config;
use crate::{IoContext, Result};

/// What the workload did, to turn phase times into rates.
pub struct Work {
    /// 8-byte words in the array.
    pub words: u64,
    pub forward_passes: u32,
    pub backward_passes: u32,
    pub reads: u64,
}

/// The series a configuration's point belongs to in `slowdown.svg`.
fn family(c: Config) -> &'static str {
    match c {
        Config::Lego100 | Config::Lego50 | Config::Lego25 => "lego",
        Config::Lego25Single => "lego, 1 copy",
        Config::SwapFile | Config::SwapFile50 => "cgroup + swap file on disk",
        Config::Zram | Config::Zram50 => "cgroup + swap on zram",
        Config::Loop | Config::Loop50 => "cgroup + swap on loop/tmpfs",
    }
}

/// Adds `point` to the series `label`, made if new (kept in first-seen order).
fn push(series: &mut Vec<Series>, label: String, point: (f64, f64)) {
    match series.iter_mut().find(|s| s.label == label) {
        Some(s) => s.points.push(point),
        None => series.push(Series::new(label, vec![point])),
    }
}

pub fn slowdown(rows: &[Row]) -> Chart {
    let local = rows.first().and_then(Row::phases).map(|p| p.total());
    let mut series = Vec::new();
    for r in rows {
        let (Some(c), Some(p), Some(local)) = (r.config, r.phases(), local) else {
            continue;
        };
        let label = match &r.variant {
            Some(v) => format!("{} | {v}", family(c)),
            None => family(c).to_string(),
        };
        push(&mut series, label, (c.percent() as f64, p.total() / local));
    }
    slowdown_chart(
        "Slowdown against the local cache's share of the working set",
        "the working set",
        105.0,
        series,
    )
}

/// Slowdown (y) against a share of a working set (x, %), points sorted.
fn slowdown_chart(title: &str, of: &str, x_max: f64, mut series: Vec<Series>) -> Chart {
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Chart {
        title: title.into(),
        x_label: format!("ExCache quota or cgroup limit, % of {of}"),
        y_label: "time / local run's".into(),
        x_range: Some((0.0, x_max)),
        markers: true,
        series,
        ..Chart::default()
    }
}

pub fn fault_latency(rows: &[Row]) -> Chart {
    let mut series = Vec::new();
    for r in rows {
        let mut hist: Vec<(f64, f64)> = lego_wire::jobs::rt_histogram(&r.counters, "")
            .into_iter()
            .map(|(us, n)| (us as f64, n as f64))
            .collect();
        let total: f64 = hist.iter().map(|p| p.1).sum();
        if total == 0.0 {
            continue;
        }
        hist.sort_by(|a, b| a.0.total_cmp(&b.0));
        let points = hist.iter().map(|(m, n)| (*m, 100.0 * n / total)).collect();
        series.push(Series::new(r.name(), points));
    }
    Chart {
        title: "Remote fault latency (the runtime's histogram)".into(),
        x_label: "µs from fault to page in place (log scale)".into(),
        y_label: "% of remote faults".into(),
        x_log2: true,
        markers: true,
        series,
        ..Chart::default()
    }
}

pub fn throughput(rows: &[Row], w: &Work) -> Chart {
    let mut series = Vec::new();
    for r in rows {
        let Some(p) = r.phases() else { continue };
        let phases = [
            (p.fill, w.words),
            (p.seq_fwd, w.words * u64::from(w.forward_passes)),
            (p.seq_bwd, w.words * u64::from(w.backward_passes)),
            (p.random, w.reads),
        ];
        let mut t = 0.0;
        let mut points = Vec::new();
        for (secs, words) in phases.into_iter().filter(|(s, _)| *s > 0.0) {
            let rate = words as f64 / secs / 1e6;
            points.push((t, rate));
            t += secs;
            points.push((t, rate));
        }
        series.push(Series::new(r.name(), points));
    }
    Chart {
        title: "Throughput over the run: fill, forward, backward, random reads".into(),
        x_label: "seconds since the workload started".into(),
        y_label: "million 8-byte words a second".into(),
        series,
        ..Chart::default()
    }
}

pub fn programs(progs: &[ProgramRun]) -> Chart {
    let mut series = Vec::new();
    for p in progs {
        for (kind, percent, x) in p.slowdowns() {
            push(
                &mut series,
                format!("{}: {kind}", p.program.name()),
                (percent as f64, x),
            );
        }
    }
    slowdown_chart(
        "Programs: slowdown against the local cache's share of their working set",
        "the program's working set",
        60.0,
        series,
    )
}

/// Writes the charts into `dir` (made if missing).
pub fn write(dir: &Path, rows: &[Row], progs: &[ProgramRun], w: &Work) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).io(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    let mut charts = vec![
        ("slowdown.svg", slowdown(rows)),
        ("fault-latency.svg", fault_latency(rows)),
        ("throughput.svg", throughput(rows, w)),
    ];
    if !progs.is_empty() {
        charts.push(("programs.svg", programs(progs)));
    }
    for (name, chart) in charts {
        let path = dir.join(name);
        std::fs::write(&path, chart.render()).io(|| format!("cannot write {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}
