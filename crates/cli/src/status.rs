//! `lego status`: the cluster as the manager sees it.

use std::fmt::Write as _;

use anyhow::Result;
use clap::Args;
use lego_wire::control::ClusterState;
use lego_wire::Op;

use crate::cluster::ClusterArgs;
use crate::size::human;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the raw cluster state as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let target = a.cluster.resolve()?;
    let st: ClusterState = target.connect()?.call_json(Op::ClusterState, &())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render(&st));
    }
    Ok(())
}

fn secs(ms: u64) -> String {
    match ms {
        0..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// The human-readable status report.
pub fn render(st: &ClusterState) -> String {
    let mut o = String::new();
    let m = &st.manager;
    let _ = writeln!(
        o,
        "manager   {}  up {}  heartbeat {} ms, dead after {} ms, vRegion {}",
        m.addr,
        secs(m.uptime_ms),
        m.heartbeat_ms,
        m.dead_after_ms,
        human(m.vregion_bytes)
    );
    if let Some(h) = &m.http {
        let _ = writeln!(o, "          http://{h}/state  http://{h}/metrics");
    }
    let alive = st.components.iter().filter(|c| c.health == "alive").count();
    let _ = writeln!(o, "\ncomponents: {} ({alive} alive)", st.components.len());
    let _ = writeln!(
        o,
        "  {:>3}  {:<9} {:<7} {:<21} {:>10} {:>10} {:>5} {:>12} {:>12} {:>10}",
        "ID",
        "ROLE",
        "HEALTH",
        "ADDRESS",
        "CAPACITY",
        "USED",
        "USE%",
        "BYTES IN",
        "BYTES OUT",
        "HEARD"
    );
    for c in &st.components {
        let pct = if c.capacity > 0 {
            100.0 * c.used as f64 / c.capacity as f64
        } else {
            0.0
        };
        let counter = |k: &str| {
            c.counters
                .get(k)
                .map_or_else(|| "-".to_string(), |v| human(*v))
        };
        let _ = writeln!(
            o,
            "  {:>3}  {:<9} {:<7} {:<21} {:>10} {:>10} {:>4.1}% {:>12} {:>12} {:>9} ago",
            c.id,
            c.role,
            c.health,
            c.addr,
            human(c.capacity),
            human(c.used),
            pct,
            counter("bytes_in_total"),
            counter("bytes_out_total"),
            secs(c.last_heard_ms_ago)
        );
    }
    let _ = writeln!(o, "\nvnodes: {}", st.vnodes.len());
    for v in &st.vnodes {
        let spaces: std::collections::BTreeSet<u64> = st
            .vregions
            .iter()
            .filter(|r| (r.asid >> 32) as u32 == v.id)
            .map(|r| r.asid)
            .collect();
        let _ = writeln!(
            o,
            "  {:>3}  {:<24} {} address spaces with vRegions",
            v.id,
            v.name,
            spaces.len()
        );
    }
    let _ = writeln!(o, "\nvRegions: {}", st.vregions.len());
    for r in st.vregions.iter().take(20) {
        let _ = writeln!(
            o,
            "  space {}.{} vRegion {:<6} primary {:<3} backup {}",
            r.asid >> 32,
            r.asid & 0xffff_ffff,
            r.index,
            r.primary,
            r.backup
        );
    }
    if st.vregions.len() > 20 {
        let _ = writeln!(
            o,
            "  ... {} more (lego status --json shows all)",
            st.vregions.len() - 20
        );
    }
    o
}
