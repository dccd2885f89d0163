//! The swap rows of `lego bench excache`: a job in a cgroup v1 memory
//! cgroup limited to a share of its working set, with swap of one kind set
//! up for it and torn down after (one kind at a time, set up once for every
//! job that runs on it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use lego_cluster::size::human;

use super::programs::ProgramRun;
use super::report::{commas, outcome_of, Outcome, Row};
use super::{Bench, Config, ExcacheBenchArgs, Job};
use crate::child::{run_child, Finished};
use crate::swap::{self, ActiveSwap, MemCgroup, SwapKind, Undo};
use crate::{BenchError, IoContext, Result};

/// Swap of one kind, in use until dropped, and the memory cgroups' parent.
pub(super) struct Squeeze {
    // Order matters for teardown: the swap goes first, then its directory.
    active: ActiveSwap,
    _dir: Undo,
    parent: PathBuf,
}

/// How one job went in a cgroup: what it printed and a line of the
/// cgroup's counters; `oom` if the OOM killer struck.
pub(super) struct Squeezed {
    pub finished: Finished,
    pub note: String,
    pub oom: bool,
}

/// Why a kind of swap cannot be used: the machine lacks it (the rows are
/// skipped) or setting it up failed.
pub(super) enum Unusable {
    Skipped(String),
    Failed(String),
}

impl Unusable {
    pub fn outcome<T>(&self) -> Outcome<T> {
        match self {
            Unusable::Skipped(why) => Outcome::Skipped(why.clone()),
            Unusable::Failed(why) => Outcome::Failed(why.clone()),
        }
    }
}

/// The rows of every swap configuration of the workload, and the
/// programs' swap runs: swap of each kind is set up once for both.
pub(super) fn rows(
    b: &Bench,
    a: &ExcacheBenchArgs,
    selected: &dyn Fn(Config) -> bool,
    progs: &mut [ProgramRun],
) -> Result<Vec<Row>> {
    let base = a.swap_dir.clone().unwrap_or_else(std::env::temp_dir);
    let biggest = progs.iter().map(|p| p.ws).fold(b.size, u64::max);
    let size = biggest + (64 << 20);
    let mut rows = Vec::new();
    for kind in [SwapKind::File, SwapKind::Zram, SwapKind::LoopTmpfs] {
        let mains: Vec<Config> = Config::ALL
            .into_iter()
            .filter(|c| c.swap() == Some(kind))
            .collect();
        let wanted: Vec<Config> = mains.iter().copied().filter(|&c| selected(c)).collect();
        let limits: Vec<u64> = progs.iter().flat_map(|p| p.swap_limits(kind)).collect();
        if wanted.is_empty() && limits.is_empty() {
            rows.extend(mains.into_iter().map(|c| b.not_run(c)));
            continue;
        }
        let max_limit = wanted
            .iter()
            .map(|&c| b.quota(c))
            .chain(limits)
            .max()
            .unwrap_or(0);
        let squeeze = set_up(b, kind, size, max_limit, &base)?;
        for c in mains {
            rows.push(match wanted.contains(&c) {
                true => main_row(b, c, &squeeze)?,
                false => b.not_run(c),
            });
        }
        super::programs::run_swap(b, kind, &squeeze, progs)?;
    }
    Ok(rows)
}

/// The workload's row for one kind of swap.
fn main_row(b: &Bench, c: Config, squeeze: &Result<Squeeze, Unusable>) -> Result<Row> {
    let limit = b.quota(c);
    let mut row = Row::new(Some(c), Some(limit), Outcome::NotSelected);
    match squeeze {
        Err(u) => row.outcome = u.outcome(),
        Ok(sq) => {
            b.progress.step(format!("{} ({})", c.label(), human(limit)));
            match sq.run(b, limit, &b.job)? {
                Err(why) => row.outcome = Outcome::Failed(why),
                Ok(s) => {
                    row.outcome = s.outcome(outcome_of(&s.finished));
                    row.note = Some(s.note);
                }
            }
        }
    }
    Ok(row)
}

/// Sets up swap of `kind` and `size` for jobs with limits up to
/// `max_limit`. The outer error stops the bench; the inner one is why this
/// kind cannot be used (a row's "skipped" or "FAILED").
pub(super) fn set_up(
    b: &Bench,
    kind: SwapKind,
    size: u64,
    max_limit: u64,
    base: &Path,
) -> Result<Result<Squeeze, Unusable>> {
    b.check_stop()?;
    let parent = match swap::preflight_common()
        .and_then(|p| swap::preflight(kind, size, max_limit, base).map(|()| p))
    {
        Ok(p) => p,
        Err(why) => return Ok(Err(Unusable::Skipped(why))),
    };
    let sdir = base.join(format!("lego-bench-excache-{}-swap", std::process::id()));
    let mut undo_dir = Undo::default();
    if let Err(e) = std::fs::create_dir(&sdir) {
        return Ok(Err(Unusable::Failed(format!(
            "cannot create {}: {e}",
            sdir.display()
        ))));
    }
    let d = sdir.clone();
    undo_dir.push(
        format!("the directory {}", sdir.display()),
        format!("rmdir {}", sdir.display()),
        move || std::fs::remove_dir(&d).io(|| "rmdir".into()),
    );
    b.progress
        .step(format!("setting up {} ({})", kind.label(), human(size)));
    match swap::setup(kind, size, &sdir, &b.stop) {
        Ok(active) => Ok(Ok(Squeeze {
            active,
            _dir: undo_dir,
            parent,
        })),
        Err(e) if b.stop.load(Ordering::Relaxed) => Err(e),
        Err(e) => Ok(Err(Unusable::Failed(format!(
            "cannot set up {}: {}",
            kind.label(),
            lego_wire::error::chain(&e)
        )))),
    }
}

impl Squeezed {
    /// A job's outcome, saying so when the OOM killer ended it.
    pub fn outcome<T>(&self, o: Outcome<T>) -> Outcome<T> {
        match o {
            Outcome::Failed(why) if self.oom => {
                Outcome::Failed(format!("OOM-killed in the cgroup ({why})"))
            }
            o => o,
        }
    }
}

impl Squeeze {
    /// Runs `job` in a fresh memory cgroup limited to `limit`. The outer
    /// error stops the bench (interrupted, or a process that cannot be
    /// ended); the inner one is a row's failure.
    pub fn run(&self, b: &Bench, limit: u64, job: &Job) -> Result<Result<Squeezed, String>> {
        let cg = match MemCgroup::create(
            &self.parent,
            &format!("lego-bench-excache-{}", std::process::id()),
            limit,
        ) {
            Ok(cg) => cg,
            Err(e) => return Ok(Err(lego_wire::error::chain(&e))),
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$1\" && shift && exec \"$@\"")
            .arg("sh")
            .arg(cg.procs_file());
        job.append_to(&mut cmd);
        cmd.current_dir(&b.dir.0);
        let finished = match run_child(cmd, &b.stop, b.timeout) {
            Ok(f) => f,
            Err(e @ BenchError::Stuck(_)) => return Err(e),
            Err(e) if b.stop.load(Ordering::Relaxed) => return Err(e),
            Err(e) => return Ok(Err(lego_wire::error::chain(&e))),
        };
        let st = cg.stat();
        let ooms = cg.oom_kills();
        let note = format!(
            "{}; major faults {}; peak usage {}, with swap {}; OOM kills {}; wall {:.1} s",
            self.active.detail,
            st.get("pgmajfault").map_or("?".into(), |v| commas(*v)),
            cg.read_u64("memory.max_usage_in_bytes")
                .map_or("?".into(), human),
            cg.read_u64("memory.memsw.max_usage_in_bytes")
                .map_or("?".into(), human),
            ooms.map_or("?".into(), |v| v.to_string()),
            finished.wall.as_secs_f64()
        );
        Ok(Ok(Squeezed {
            finished,
            note,
            oom: ooms.is_some_and(|n| n > 0),
        }))
    }
}
