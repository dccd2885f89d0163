//! What `lego sim` prints (the two designs side by side, the state
//! machine's decision times) and the SVG plots it writes: CPU and memory
//! use over time, and jobs running, for both designs.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::engine::{Outcome, Sample};
use crate::{Results, SimError};

const GIB: f64 = (1u64 << 30) as f64;

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// Time-weighted mean of `f` over the samples (they are evenly spaced).
fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(f).sum::<f64>() / samples.len() as f64
}

fn wait_pct(o: &Outcome, p: f64) -> f64 {
    if o.waits_ms.is_empty() {
        return 0.0;
    }
    let mut w = o.waits_ms.clone();
    w.sort_unstable();
    let i = (((p / 100.0) * (w.len() - 1) as f64).round() as usize).min(w.len() - 1);
    w[i] as f64 / 1000.0
}

/// One cell of the table: from a design's outcome and its capacity.
type Cell = Box<dyn Fn(&Outcome, (u64, u64)) -> String>;

/// One line of a chart: its label, colour and (x, y) points.
type Series = (String, &'static str, Vec<(f64, f64)>);

/// A cell: the mean of a sample field as a share of the installed CPU
/// (`of` 0) or memory (`of` 1).
fn share(field: fn(&Sample) -> u64, of: usize) -> Cell {
    Box::new(move |o: &Outcome, c: (u64, u64)| {
        let whole = if of == 0 { c.0 } else { c.1 };
        format!(
            "{:.1}%",
            pct(mean(&o.samples, |s| field(s) as f64), whole as f64)
        )
    })
}

/// The report.
pub fn text(r: &Results) -> String {
    let a = &r.args;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "lego sim: {} components, {} h, workload {} ({}), offered load {:.0}% of the scarcer resource, seed {}",
        r.components, a.hours, r.shape.name, r.shape.description, a.load * 100.0, a.seed
    );
    let _ = writeln!(
        o,
        "jobs arrive at {:.0}/h; a unit fails every {} days on average and is back after {} h; a job gives up after waiting {} min",
        r.per_hour, a.mtbf_days, a.repair_hours, a.max_wait_min
    );
    for (name, _, _, took) in [&r.mono, &r.disagg] {
        let _ = writeln!(o, "  {name}  (simulated in {:.1} s)", took.as_secs_f64());
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<34} {:>14} {:>14}", "", "monolithic", "disaggregated");
    let rows: Vec<(&str, Cell)> = vec![
        (
            "jobs arrived",
            Box::new(|o: &Outcome, _| o.arrived.to_string()),
        ),
        (
            "jobs admitted",
            Box::new(|o: &Outcome, _| o.admitted.to_string()),
        ),
        (
            "  of those arrived",
            Box::new(|o: &Outcome, _| format!("{:.2}%", pct(o.admitted as f64, o.arrived as f64))),
        ),
        (
            "jobs gave up waiting",
            Box::new(|o: &Outcome, _| o.dropped.to_string()),
        ),
        (
            "jobs completed",
            Box::new(|o: &Outcome, _| o.completed.to_string()),
        ),
        (
            "unit failures",
            Box::new(|o: &Outcome, _| o.failures.to_string()),
        ),
        (
            "jobs killed by failures",
            Box::new(|o: &Outcome, _| o.killed.to_string()),
        ),
        (
            "queueing delay p50",
            Box::new(|o: &Outcome, _| format!("{:.1} s", wait_pct(o, 50.0))),
        ),
        (
            "queueing delay p99",
            Box::new(|o: &Outcome, _| format!("{:.1} s", wait_pct(o, 99.0))),
        ),
        ("CPU in use (mean)", share(|s| s.cpu_used, 0)),
        ("memory in use (mean)", share(|s| s.mem_used, 1)),
        ("stranded memory (mean)", share(|s| s.stranded_mem, 1)),
        (
            "stranded memory (mean), TiB",
            Box::new(|o: &Outcome, _| {
                format!(
                    "{:.1}",
                    mean(&o.samples, |s| s.stranded_mem as f64) / GIB / 1024.0
                )
            }),
        ),
        ("stranded CPU (mean)", share(|s| s.stranded_cpu, 0)),
        (
            "jobs running (mean)",
            Box::new(|o: &Outcome, _| format!("{:.0}", mean(&o.samples, |s| s.running as f64))),
        ),
    ];
    for (label, f) in rows {
        let _ = writeln!(
            o,
            "{label:<34} {:>14} {:>14}",
            f(&r.mono.2, r.mono.1),
            f(&r.disagg.2, r.disagg.1)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "stranded: free memory on units without the CPU a median job asks (see docs/scale.md), and free CPU on units without its memory; pooled memory is stranded only when no processor monitor has that CPU"
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "lego-placement decisions in this run (one thread; wall time of each call)"
    );
    let _ = writeln!(
        o,
        "{:<36} {:>10} {:>9} {:>9} {:>9}",
        "decision", "calls", "p50 µs", "p99 µs", "max µs"
    );
    for (label, s) in [
        ("place a process (GPM)", &r.lat.process),
        ("place a vRegion (GMM)", &r.lat.vregion),
        ("fail over a memory monitor", &r.lat.failover),
        ("plan a vRegion's recovery", &r.lat.recovery),
        ("place a vNode's storage (GSM)", &r.lat.storage),
    ] {
        let _ = writeln!(
            o,
            "{label:<36} {:>10} {:>9.1} {:>9.1} {:>9.1}",
            s.calls,
            s.percentile_us(50.0),
            s.percentile_us(99.0),
            s.percentile_us(100.0)
        );
    }
    o
}

/// A line chart over the simulated hours: `series` of (label, colour,
/// points), y from 0 to `y_max` ([`lego_plot`]).
fn chart(title: &str, y_label: &str, x_max: f64, y_max: f64, series: &[Series]) -> String {
    lego_plot::Chart {
        title: title.into(),
        x_label: "hours".into(),
        y_label: y_label.into(),
        x_range: Some((0.0, x_max)),
        y_max: Some(y_max),
        series: series
            .iter()
            .map(|(label, colour, pts)| {
                lego_plot::Series::new(label.clone(), pts.clone()).coloured(colour)
            })
            .collect(),
        ..lego_plot::Chart::default()
    }
    .render()
}

/// Writes `admitted.svg`, `utilisation.svg`, `stranded.svg` and
/// `running.svg` into `dir`.
pub fn plots(r: &Results, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let hours = r.args.hours;
    let h = |s: &Sample| s.at_ms as f64 / 3_600_000.0;
    let line = |o: &Outcome, f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        o.samples.iter().map(|s| (h(s), f(s))).collect()
    };
    let (mc, mm) = (r.mono.1 .0 as f64, r.mono.1 .1 as f64);
    let (dc, dm) = (r.disagg.1 .0 as f64, r.disagg.1 .1 as f64);
    let util = chart(
        "CPU and memory in use",
        "% of installed",
        hours,
        100.0,
        &[
            (
                "monolithic CPU".into(),
                "#d62728",
                line(&r.mono.2, &|s| pct(s.cpu_used as f64, mc)),
            ),
            (
                "monolithic memory".into(),
                "#ff9896",
                line(&r.mono.2, &|s| pct(s.mem_used as f64, mm)),
            ),
            (
                "disaggregated CPU".into(),
                "#1f77b4",
                line(&r.disagg.2, &|s| pct(s.cpu_used as f64, dc)),
            ),
            (
                "disaggregated memory".into(),
                "#aec7e8",
                line(&r.disagg.2, &|s| pct(s.mem_used as f64, dm)),
            ),
        ],
    );
    let stranded = chart(
        "Stranded memory (free, but no CPU beside it for a median job)",
        "% of installed memory",
        hours,
        100.0,
        &[
            (
                "monolithic".into(),
                "#d62728",
                line(&r.mono.2, &|s| pct(s.stranded_mem as f64, mm)),
            ),
            (
                "disaggregated".into(),
                "#1f77b4",
                line(&r.disagg.2, &|s| pct(s.stranded_mem as f64, dm)),
            ),
        ],
    );
    let peak = r
        .mono
        .2
        .samples
        .iter()
        .chain(&r.disagg.2.samples)
        .map(|s| s.running.max(s.queued))
        .max()
        .unwrap_or(1) as f64;
    let running = chart(
        "Jobs running and waiting",
        "jobs",
        hours,
        peak * 1.1,
        &[
            (
                "monolithic running".into(),
                "#d62728",
                line(&r.mono.2, &|s| s.running as f64),
            ),
            (
                "disaggregated running".into(),
                "#1f77b4",
                line(&r.disagg.2, &|s| s.running as f64),
            ),
            (
                "monolithic waiting".into(),
                "#ff9896",
                line(&r.mono.2, &|s| s.queued as f64),
            ),
            (
                "disaggregated waiting".into(),
                "#aec7e8",
                line(&r.disagg.2, &|s| s.queued as f64),
            ),
        ],
    );
    let most = r
        .mono
        .2
        .samples
        .iter()
        .chain(&r.disagg.2.samples)
        .map(|s| s.admitted)
        .max()
        .unwrap_or(1) as f64;
    let admitted = chart(
        "Jobs admitted so far",
        "jobs",
        hours,
        most * 1.05,
        &[
            (
                "monolithic".into(),
                "#d62728",
                line(&r.mono.2, &|s| s.admitted as f64),
            ),
            (
                "disaggregated".into(),
                "#1f77b4",
                line(&r.disagg.2, &|s| s.admitted as f64),
            ),
        ],
    );
    let mut out = Vec::new();
    for (name, svg) in [
        ("admitted.svg", admitted),
        ("utilisation.svg", util),
        ("stranded.svg", stranded),
        ("running.svg", running),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, svg).map_err(|source| SimError::Write {
            path: path.clone(),
            source,
        })?;
        out.push(path);
    }
    Ok(out)
}
