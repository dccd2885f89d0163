//! The program rows of `lego bench excache`: programs of the paper's kind
//! and of the kinds that hurt a far-memory pager most, each run locally (the
//! reference, which also measures its working set W as its peak RSS), then
//! under lego and under swap in a memory cgroup at a share of W, and
//! reported as one small table per program with the targets.
//!
//! | program | what | at |
//! |---|---|---|
//! | word count | map-reduce over a generated corpus (`programs.c`) | 50%, 25% |
//! | training loop | a two-layer perceptron by minibatch SGD (`train.py`, numpy) | 50%, 25% |
//! | random writes | read-modify-writes of random words (`programs.c`) | 25% |
//! | threads | 4 threads of random reads (`programs.c`) | 25% |
//!
//! Every run's deterministic output must equal the local run's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;
use lego_cluster::size::human;

use super::lego::{lego_note, run_job};
use super::report::{commas, outcome_with, Outcome};
use super::squeeze::{Squeeze, Unusable};
use super::{Bench, Job, PAGE};
use crate::child::run_child;
use crate::cprog::compile_programs;
use crate::swap::SwapKind;
use crate::{IoContext, Result, TempCluster};

/// The training loop's source, written next to the programs.
const TRAIN_PY: &str = include_str!("../train.py");

/// The vNode the lego runs use (two copies of each vRegion).
const VNODE: &str = "bench-excache";

/// A program of the program rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Program {
    /// map-reduce word count over a generated corpus (C)
    Wordcount,
    /// a numpy training loop (skipped if numpy is missing)
    Train,
    /// random read-modify-writes over an array (C)
    Randwrite,
    /// 4 threads of random reads (C)
    Threads,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::Wordcount,
        Program::Train,
        Program::Randwrite,
        Program::Threads,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Program::Wordcount => "word count: map-reduce over a generated corpus (C)",
            Program::Train => {
                "training loop: a two-layer perceptron by minibatch SGD (Python, numpy, 1 BLAS thread)"
            }
            Program::Randwrite => "random writes: read-modify-writes of random 8-byte words (C)",
            Program::Threads => "4 threads of random 8-byte reads over one array (C)",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Program::Wordcount => "word count",
            Program::Train => "training loop",
            Program::Randwrite => "random writes",
            Program::Threads => "4 threads",
        }
    }

    /// The ExCache quotas and cgroup limits it runs at, in percent of W.
    fn percents(self) -> &'static [u64] {
        match self {
            Program::Wordcount | Program::Train => &[50, 25],
            Program::Randwrite | Program::Threads => &[25],
        }
    }
}

/// Where a program runs besides locally, at a percentage of W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Lego(u64),
    Swap(SwapKind, u64),
}

/// The kinds of swap the programs run beside.
const SWAPS: [SwapKind; 2] = [SwapKind::Zram, SwapKind::File];

impl Setting {
    fn percent(self) -> u64 {
        match self {
            Setting::Lego(p) | Setting::Swap(_, p) => p,
        }
    }

    fn label(self) -> String {
        match self {
            Setting::Lego(p) => format!("lego, ExCache {p}%"),
            Setting::Swap(k, p) => format!("cgroup {p}%, {}", k.label()),
        }
    }

    /// A program's settings, in the order of its table.
    fn all(p: Program) -> Vec<Setting> {
        let lego = p.percents().iter().map(|&pc| Setting::Lego(pc));
        let swap = SWAPS
            .into_iter()
            .flat_map(|k| p.percents().iter().map(move |&pc| Setting::Swap(k, pc)));
        lego.chain(swap).collect()
    }
}

/// What a program printed: its own time, its deterministic output, its peak RSS.
#[derive(Clone, Debug, PartialEq)]
pub struct Ran {
    pub elapsed: f64,
    pub output: String,
    pub peak_rss: u64,
}

/// Parses a program's output: `elapsed SECONDS` and `peak_rss_kb KB` lines;
/// every other line is its result.
pub fn parse(out: &str) -> Result<Ran, String> {
    let mut elapsed = None;
    let mut peak_rss = 0;
    let mut output = String::new();
    for l in out.lines() {
        if let Some(v) = l.strip_prefix("elapsed ") {
            elapsed = Some(v.parse().map_err(|_| format!("bad line {l:?}"))?);
        } else if let Some(v) = l.strip_prefix("peak_rss_kb ") {
            peak_rss = v.parse::<u64>().map_err(|_| format!("bad line {l:?}"))? * 1024;
        } else {
            output.push_str(l);
            output.push('\n');
        }
    }
    match (elapsed, output.is_empty()) {
        (None, _) => Err("the program printed no elapsed time".into()),
        (_, true) => Err("the program printed no result".into()),
        (Some(elapsed), false) => Ok(Ran {
            elapsed,
            output,
            peak_rss,
        }),
    }
}

/// One run of a program away from home.
struct ProgRow {
    setting: Setting,
    limit: u64,
    outcome: Outcome<Ran>,
    note: String,
    counters: BTreeMap<String, u64>,
}

impl ProgRow {
    fn new(setting: Setting, limit: u64) -> ProgRow {
        ProgRow {
            setting,
            limit,
            outcome: Outcome::NotSelected,
            note: String::new(),
            counters: BTreeMap::new(),
        }
    }

    /// Says on the progress line that this row runs now.
    fn step(&self, b: &Bench, p: Program) {
        b.progress.step(format!(
            "{}: {} ({})",
            p.name(),
            self.setting.label(),
            human(self.limit)
        ));
    }
}

/// A program, its local reference and its rows.
pub struct ProgramRun {
    pub program: Program,
    job: Job,
    /// Its working set: its peak RSS when run locally.
    pub ws: u64,
    local: Outcome<Ran>,
    rows: Vec<ProgRow>,
}

impl ProgramRun {
    fn limit(&self, percent: u64) -> u64 {
        (self.ws * percent / 100).div_ceil(PAGE) * PAGE
    }

    fn local(&self) -> Option<&Ran> {
        match &self.local {
            Outcome::Ran(r) => Some(r),
            _ => None,
        }
    }

    /// The cgroup limits it runs at on swap of `kind` (none if it did not
    /// run locally).
    pub fn swap_limits(&self, kind: SwapKind) -> Vec<u64> {
        match self.local() {
            None => Vec::new(),
            Some(_) => Setting::all(self.program)
                .into_iter()
                .filter(|s| matches!(s, Setting::Swap(k, _) if *k == kind))
                .map(|s| self.limit(s.percent()))
                .collect(),
        }
    }

    /// Its slowdowns against its local run: (configuration, % of its
    /// working set, time / local time), for every setting that ran.
    pub fn slowdowns(&self) -> Vec<(String, u64, f64)> {
        let Some(local) = self.local().map(|r| r.elapsed).filter(|t| *t > 0.0) else {
            return Vec::new();
        };
        Setting::all(self.program)
            .into_iter()
            .filter_map(|s| {
                let kind = match s {
                    Setting::Lego(_) => "lego".to_string(),
                    Setting::Swap(k, _) => k.label().to_string(),
                };
                Some((kind, s.percent(), self.elapsed(s)? / local))
            })
            .collect()
    }

    fn row(&self, s: Setting) -> Option<&ProgRow> {
        self.rows.iter().find(|r| r.setting == s)
    }

    fn elapsed(&self, s: Setting) -> Option<f64> {
        match &self.row(s)?.outcome {
            Outcome::Ran(r) => Some(r.elapsed),
            _ => None,
        }
    }
}

/// The programs' jobs at the bench's size, each run locally (twice, the
/// faster kept) to learn its working set.
pub(super) fn prepare(b: &Bench, list: &[Program]) -> Result<Vec<ProgramRun>> {
    let bin = compile_programs(&b.dir.0)?;
    let train = b.dir.0.join("train.py");
    std::fs::write(&train, TRAIN_PY).io(|| format!("cannot write {}", train.display()))?;
    let mut runs = Vec::new();
    for &program in Program::ALL.iter().filter(|p| list.contains(p)) {
        b.check_stop()?;
        let job = job(b, program, &bin, &train);
        let local = match &job {
            Err(why) => Outcome::Skipped(why.clone()),
            Ok(job) => run_local(b, program, job)?,
        };
        let ws = match &local {
            Outcome::Ran(r) => r.peak_rss.div_ceil(PAGE) * PAGE,
            _ => 0,
        };
        let job = job.unwrap_or(Job {
            program: bin.clone(),
            args: Vec::new(),
            env: Vec::new(),
        });
        runs.push(ProgramRun {
            program,
            job,
            ws,
            local,
            rows: Vec::new(),
        });
    }
    Ok(runs)
}

/// A program's job at the bench's size, or why it cannot run here.
fn job(b: &Bench, p: Program, bin: &Path, train: &Path) -> Result<Job, String> {
    let mib = |m: u64| (m << 20).to_string();
    let q = b.quick;
    let c = |args: &[String]| Job {
        program: bin.to_path_buf(),
        args: args.to_vec(),
        env: Vec::new(),
    };
    Ok(match p {
        Program::Wordcount => c(&["wordcount".into(), mib(if q { 24 } else { 128 })]),
        Program::Randwrite => c(&[
            "randwrite".into(),
            mib(if q { 64 } else { 128 }),
            (if q { 300_000u64 } else { 1_000_000 }).to_string(),
        ]),
        Program::Threads => c(&[
            "threads".into(),
            mib(if q { 96 } else { 384 }),
            b.reads.to_string(),
            "4".into(),
        ]),
        Program::Train => {
            let python = numpy_python()?;
            let samples: u64 = if q { 49_152 } else { 196_608 };
            let epochs = if q { 2 } else { 3 };
            Job {
                program: python,
                args: vec![
                    train.display().to_string(),
                    samples.to_string(),
                    "256".into(),
                    "64".into(),
                    epochs.to_string(),
                ],
                // One BLAS thread: the same sums in the same order in every
                // configuration, so the weights' hash is a checksum.
                env: ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"]
                    .into_iter()
                    .map(|k| (k, "1".to_string()))
                    .collect(),
            }
        }
    })
}

/// The distribution's python3 with numpy, or why there is none.
fn numpy_python() -> Result<PathBuf, String> {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(PathBuf::from(py));
        }
    }
    Err("numpy is not installed for /usr/bin/python3 (apt install python3-numpy)".into())
}

/// The program with no lego and no limit, twice; the faster run is kept and
/// both must print the same result.
fn run_local(b: &Bench, p: Program, job: &Job) -> Result<Outcome<Ran>> {
    let mut best: Option<Ran> = None;
    for i in 1..=2 {
        b.progress.step(format!(
            "{}: local, no lego, no limit (run {i} of 2)",
            p.name()
        ));
        let mut cmd = job.command();
        cmd.current_dir(&b.dir.0);
        let f = run_child(cmd, &b.stop, b.timeout)?;
        let r = match outcome_with(&f, parse) {
            Outcome::Ran(r) => r,
            o => return Ok(o),
        };
        match &best {
            Some(b) if b.output != r.output => {
                return Ok(Outcome::Failed(format!(
                    "not deterministic: two local runs printed {:?} and {:?}",
                    b.output, r.output
                )))
            }
            Some(b) if b.elapsed <= r.elapsed => {}
            _ => best = Some(r),
        }
    }
    Ok(Outcome::Ran(best.expect("two local runs")))
}

/// Every program's lego settings on the embedded cluster.
pub(super) fn run_lego(
    b: &Bench,
    cluster: &Result<TempCluster, String>,
    runs: &mut [ProgramRun],
) -> Result<()> {
    for run in runs.iter_mut().filter(|r| r.local().is_some()) {
        for &pc in run.program.percents() {
            let mut row = ProgRow::new(Setting::Lego(pc), run.limit(pc));
            match cluster {
                Err(why) => row.outcome = Outcome::Skipped(why.clone()),
                Ok(c) => {
                    row.step(b, run.program);
                    let (f, counters) = run_job(b, c, VNODE, row.limit, &run.job)?;
                    row.outcome = outcome_with(&f, parse);
                    row.note = format!(
                        "{}; wall {:.1} s",
                        lego_note(&counters),
                        f.wall.as_secs_f64()
                    );
                    row.counters = counters;
                }
            }
            run.rows.push(row);
        }
    }
    Ok(())
}

/// Every program's settings on swap of `kind`.
pub(super) fn run_swap(
    b: &Bench,
    kind: SwapKind,
    squeeze: &Result<Squeeze, Unusable>,
    runs: &mut [ProgramRun],
) -> Result<()> {
    for run in runs.iter_mut() {
        for limit in run.swap_limits(kind) {
            let pc = run
                .program
                .percents()
                .iter()
                .copied()
                .find(|&pc| run.limit(pc) == limit)
                .unwrap_or(0);
            let mut row = ProgRow::new(Setting::Swap(kind, pc), limit);
            match squeeze {
                Err(u) => row.outcome = u.outcome(),
                Ok(sq) => {
                    row.step(b, run.program);
                    match sq.run(b, limit, &run.job)? {
                        Err(why) => row.outcome = Outcome::Failed(why),
                        Ok(s) => {
                            row.outcome = s.outcome(outcome_with(&s.finished, parse));
                            row.note = s.note;
                        }
                    }
                }
            }
            run.rows.push(row);
        }
    }
    Ok(())
}

/// Whether a program's zram row set zram up.
pub(super) fn used_zram(runs: &[ProgramRun]) -> bool {
    runs.iter().flat_map(|r| &r.rows).any(|r| {
        matches!(r.setting, Setting::Swap(SwapKind::Zram, _))
            && !matches!(r.outcome, Outcome::Skipped(_) | Outcome::NotSelected)
    })
}

/// Prints a table per program, its notes and targets; returns the runs
/// whose output differs from the local run's.
pub(super) fn print(runs: &[ProgramRun]) -> Vec<String> {
    if runs.is_empty() {
        return Vec::new();
    }
    println!(
        "\nprograms: each locally (the faster of 2 runs), then under lego and under swap in a memory cgroup, \
         at a share of its working set W = its peak RSS when run locally; times are the program's own, \
         from its start to its end"
    );
    let mut wrong = Vec::new();
    for run in runs {
        println!(
            "\n{}; W = {}; {}",
            run.program.label(),
            human(run.ws),
            run.job.args.join(" ")
        );
        let local = match &run.local {
            Outcome::Ran(r) => r,
            Outcome::Skipped(why) => {
                println!("  skipped: {why}");
                continue;
            }
            Outcome::Failed(why) => {
                println!("  FAILED locally: {why}");
                continue;
            }
            Outcome::NotSelected => continue,
        };
        println!(
            "  {:<34} {:>9}  {:>14}  output",
            "configuration", "limit", "time"
        );
        println!(
            "  {:<34} {:>9}  {:>14}  {} (reference)",
            "local, no limit",
            "-",
            format!("{:.2} s", local.elapsed),
            local.output.lines().next().unwrap_or("")
        );
        let mut rows: Vec<&ProgRow> = run.rows.iter().collect();
        let order = Setting::all(run.program);
        rows.sort_by_key(|r| order.iter().position(|s| *s == r.setting));
        for r in &rows {
            let label = r.setting.label();
            let what = match &r.outcome {
                Outcome::Ran(ran) => {
                    let same = if ran.output == local.output {
                        "same".to_string()
                    } else {
                        wrong.push(format!("{}, {label}", run.program.name()));
                        format!("DIFFERENT: {}", ran.output.lines().next().unwrap_or(""))
                    };
                    format!(
                        "{:>14}  {same}",
                        format!("{:.2} s {:>5.2}x", ran.elapsed, ran.elapsed / local.elapsed)
                    )
                }
                Outcome::Skipped(why) => format!("skipped: {why}"),
                Outcome::Failed(why) => format!("FAILED: {why}"),
                Outcome::NotSelected => "not run".into(),
            };
            println!("  {label:<34} {:>9}  {what}", human(r.limit));
        }
        for r in rows.iter().filter(|r| !r.note.is_empty()) {
            println!("  {:<34} {}", r.setting.label(), r.note);
        }
        for t in targets(run, local) {
            println!("  {t}");
        }
    }
    wrong
}

/// The targets for a program, as MET/MISSED lines.
fn targets(run: &ProgramRun, local: &Ran) -> Vec<String> {
    let verdict = |what: String, ok: Option<bool>| match ok {
        Some(true) => format!("target: {what}: MET"),
        Some(false) => format!("target: {what}: MISSED"),
        None => format!("target: {what}: NOT MEASURED"),
    };
    let lego = |pc| run.elapsed(Setting::Lego(pc));
    let zram = |pc| run.elapsed(Setting::Swap(SwapKind::Zram, pc));
    let l = local.elapsed;
    match run.program {
        Program::Wordcount | Program::Train => {
            let mut t = Vec::new();
            let at25 = lego(25);
            t.push(verdict(
                format!(
                    "at 25%, lego no slower than swap on zram ({} against {})",
                    secs(at25),
                    secs(zram(25))
                ),
                at25.zip(zram(25)).map(|(a, z)| a <= z),
            ));
            t.push(verdict(
                format!("at 25%, lego within 1.3x of local ({})", ratio(at25, l)),
                at25.map(|a| a <= 1.3 * l),
            ));
            t.push(verdict(
                format!("at 50%, lego within 1.1x of local ({})", ratio(lego(50), l)),
                lego(50).map(|a| a <= 1.1 * l),
            ));
            t
        }
        Program::Randwrite => {
            let row = run.row(Setting::Lego(25));
            let c = |k: &str| row.and_then(|r| r.counters.get(k).copied());
            let bound = c("remote_fault_p50_us")
                .zip(c("faults_fetched"))
                .map(|(p50, n)| 1.6 * (l + p50 as f64 * n as f64 / 1e6));
            vec![verdict(
                format!(
                    "at 25%, lego within 1.6x of (local + one remote-fault p50 per fetched page): {} against {} ({} fetches)",
                    secs(lego(25)),
                    secs(bound),
                    c("faults_fetched").map_or("?".into(), commas)
                ),
                lego(25).zip(bound).map(|(a, b)| a <= b),
            )]
        }
        Program::Threads => vec![format!(
            "4 threads at 25%: lego {} against swap on zram {} ({})",
            secs(lego(25)),
            secs(zram(25)),
            ratio(lego(25), zram(25).unwrap_or(0.0))
        )],
    }
}

fn secs(t: Option<f64>) -> String {
    t.map_or("?".into(), |t| format!("{t:.2} s"))
}

fn ratio(t: Option<f64>, reference: f64) -> String {
    match t {
        Some(t) if reference > 0.0 => format!("{:.2}x", t / reference),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_programs_output() {
        let r = parse("checksum 00ff\nelapsed 1.5\npeak_rss_kb 2\n").unwrap();
        assert_eq!(r.output, "checksum 00ff\n");
        assert_eq!(r.elapsed, 1.5);
        assert_eq!(r.peak_rss, 2048);
        assert!(parse("checksum 00\n").is_err(), "no elapsed time");
        assert!(parse("elapsed 1.0\n").is_err(), "no result");
        assert!(parse("elapsed x\nresult\n").is_err());
    }

    #[test]
    fn settings_come_in_table_order() {
        let s = Setting::all(Program::Train);
        assert_eq!(
            s,
            vec![
                Setting::Lego(50),
                Setting::Lego(25),
                Setting::Swap(SwapKind::Zram, 50),
                Setting::Swap(SwapKind::Zram, 25),
                Setting::Swap(SwapKind::File, 50),
                Setting::Swap(SwapKind::File, 25),
            ]
        );
        assert_eq!(Setting::all(Program::Threads).len(), 3);
    }
}
