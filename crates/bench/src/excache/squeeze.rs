//! The swap rows of `lego bench excache`: the workload in a cgroup v1
//! memory cgroup limited to 25% of its working set, with swap of one kind
//! set up for it and torn down after (one kind at a time).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use lego_cluster::size::human;

use super::report::{commas, outcome_of, Outcome, Row};
use super::{Bench, Config, ExcacheBenchArgs};
use crate::child::run_child;
use crate::swap::{self, MemCgroup, SwapKind, Undo};
use crate::{BenchError, IoContext, Result};

/// The rows of every swap configuration.
pub(super) fn rows(
    b: &Bench,
    a: &ExcacheBenchArgs,
    selected: &dyn Fn(Config) -> bool,
) -> Result<Vec<Row>> {
    let swap_size = b.size + (64 << 20);
    let swap_dir_base = a.swap_dir.clone().unwrap_or_else(std::env::temp_dir);
    let common = swap::preflight_common();
    let mut rows = Vec::new();
    for c in Config::ALL {
        let Some(kind) = c.swap() else { continue };
        b.check_stop()?;
        if !selected(c) {
            rows.push(b.not_run(c));
            continue;
        }
        let limit = b.quota(c);
        let sdir = swap_dir_base.join(format!("lego-bench-excache-{}-swap", std::process::id()));
        let ran = match &common {
            Err(why) => Err(Outcome::Skipped(why.clone())),
            Ok(parent) => match swap::preflight(kind, swap_size, limit, &swap_dir_base) {
                Err(why) => Err(Outcome::Skipped(why)),
                Ok(()) => {
                    b.progress.step(format!("{} ({})", c.label(), human(limit)));
                    run_squeezed(b, kind, swap_size, limit, parent, &sdir)
                }
            },
        };
        let mut row = Row::new(Some(c), Some(limit), Outcome::NotSelected);
        match ran {
            // Interrupted, or a process that cannot be ended: stop here
            // (the guards of that configuration have run).
            Ok(Err(fatal)) => return Err(fatal),
            Ok(Ok((outcome, note))) => {
                row.outcome = outcome;
                row.note = Some(note);
            }
            Err(o) => row.outcome = o,
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The workload in a memory cgroup, with swap of one kind set up for it
/// and torn down after. The outer error is the row's outcome when the
/// setup failed; the inner one stops the bench.
fn run_squeezed(
    b: &Bench,
    kind: SwapKind,
    swap_size: u64,
    limit: u64,
    parent: &Path,
    sdir: &Path,
) -> Result<Result<(Outcome, String)>, Outcome> {
    // Order matters for teardown: the cgroup goes first, then the swap, then the directory.
    let mut undo_dir = Undo::default();
    std::fs::create_dir(sdir)
        .map_err(|e| Outcome::Failed(format!("cannot create {}: {e}", sdir.display())))?;
    let d = sdir.to_path_buf();
    undo_dir.push(
        format!("the directory {}", sdir.display()),
        format!("rmdir {}", sdir.display()),
        move || std::fs::remove_dir(&d).io(|| "rmdir".into()),
    );
    let failed = |what: String| {
        move |e: BenchError| Outcome::Failed(format!("{what}{}", lego_wire::error::chain(&e)))
    };
    let active = swap::setup(kind, swap_size, sdir, &b.stop)
        .map_err(failed(format!("cannot set up {}: ", kind.label())))?;
    let cg = MemCgroup::create(
        parent,
        &format!("lego-bench-excache-{}", std::process::id()),
        limit,
    )
    .map_err(failed(String::new()))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(cg.procs_file())
        .arg(&b.workload)
        .args(&b.args)
        .current_dir(&b.dir.0);
    let f = match run_child(cmd, &b.stop, b.timeout) {
        Ok(f) => f,
        Err(e @ BenchError::Stuck(_)) => return Ok(Err(e)),
        Err(e) if b.stop.load(Ordering::Relaxed) => return Ok(Err(e)),
        Err(e) => return Err(failed(String::new())(e)),
    };
    let st = cg.stat();
    let ooms = cg.oom_kills();
    let note = format!(
        "{}; major faults {}; peak usage {}, with swap {}; OOM kills {}; wall {:.1} s",
        active.detail,
        st.get("pgmajfault").map_or("?".into(), |v| commas(*v)),
        cg.read_u64("memory.max_usage_in_bytes")
            .map_or("?".into(), human),
        cg.read_u64("memory.memsw.max_usage_in_bytes")
            .map_or("?".into(), human),
        ooms.map_or("?".into(), |v| v.to_string()),
        f.wall.as_secs_f64()
    );
    let mut outcome = outcome_of(&f);
    if let (Outcome::Failed(why), Some(n)) = (&mut outcome, ooms) {
        if n > 0 {
            *why = format!("OOM-killed in the cgroup ({why})");
        }
    }
    drop(cg);
    drop(active);
    drop(undo_dir);
    Ok(Ok((outcome, note)))
}
