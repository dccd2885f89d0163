//! `lego top` as plain text (`--once`, or stdout not a terminal): the
//! same rows as the live view, one table each, every cell one token so
//! that scripts can split the lines.

use std::fmt::Write as _;

use super::model::{compact, mbs, rate, View};

/// The components' table.
pub fn components(v: &View) -> Vec<String> {
    let mut o = vec![format!(
        "{:>4} {:<9} {:<20} {:<7} {:>6} {:>6} {:>9} {:>9}",
        "ID", "ROLE", "ADDR", "HEALTH", "USED", "OF", "IN/MBs", "OUT/MBs"
    )];
    for c in &v.comps {
        o.push(format!(
            "{:>4} {:<9} {:<20} {:<7} {:>6} {:>6} {:>9} {:>9}",
            c.id,
            c.role,
            c.addr,
            c.health.to_string(),
            compact(c.used),
            compact(c.capacity),
            mbs(c.in_bps),
            mbs(c.out_bps)
        ));
    }
    o
}

/// The jobs' table: the header, then a line per job (the command last).
pub fn jobs(v: &View) -> Vec<String> {
    let mut o = vec![format!(
        "{:<6} {:>6} {:>6} {:>8} {:>5} {:>4} {:>7} {:>6} {:>7}  COMMAND",
        "JOB", "RES", "ZERO/s", "REMOTE/s", "WP/s", "PF%", "EVICT/s", "IN/MBs", "OUT/MBs"
    )];
    for j in &v.jobs {
        o.push(format!(
            "{:<6} {:>6} {:>6} {:>8} {:>5} {:>4} {:>7} {:>6} {:>7}  {}",
            short_id(j.id),
            compact(j.resident),
            rate(j.zero_s),
            rate(j.remote_s),
            rate(j.wp_s),
            j.prefetch_hit
                .map_or("-".to_string(), |h| format!("{:.0}", h * 100.0)),
            rate(j.evict_s),
            mbs(j.fetch_bps),
            mbs(j.writeback_bps),
            j.cmd
        ));
    }
    o
}

/// A job's id as shown: its last 6 hex digits.
pub fn short_id(id: u64) -> String {
    format!("{:06x}", id & 0xff_ffff)
}

/// Everything, as `lego top --once` prints it.
pub fn render(v: &View) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}\n", v.header);
    for l in components(v) {
        let _ = writeln!(o, "{l}");
    }
    let _ = writeln!(o, "\njobs: {} running", v.jobs.len());
    if !v.jobs.is_empty() {
        for l in jobs(v) {
            let _ = writeln!(o, "{l}");
        }
    }
    for e in &v.errors {
        let _ = writeln!(o, "  {e}");
    }
    let _ = writeln!(o, "\nvNodes: {}", v.vnodes.join(", "));
    match v.troubles.is_empty() {
        true => {
            let _ = writeln!(o, "vRegions: all healthy, none moving");
        }
        false => {
            let _ = writeln!(o, "vRegions:");
            for t in &v.troubles {
                let _ = writeln!(o, "  {t}");
            }
        }
    }
    let _ = writeln!(o, "journal:");
    if v.journal.is_empty() {
        let _ = writeln!(o, "  nothing has failed");
    }
    for l in &v.journal {
        let _ = writeln!(o, "  {l}");
    }
    o
}
