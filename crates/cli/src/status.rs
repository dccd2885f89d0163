//! `lego status`: the cluster as the manager sees it, and the jobs each
//! alive processor monitor runs (asked of the processor monitors directly).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use lego_cluster::size::human;
use lego_cluster::ClusterArgs;
use lego_transport::{ClientOptions, Credentials, Redial};
use lego_wire::auth::Secret;
use lego_wire::control::{ClusterState, ClusterStateReq};
use lego_wire::jobs::{JobInfo, JobsReq};
use lego_wire::{Health, Role, VRegionState};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the raw cluster state as JSON
    #[arg(long)]
    pub json: bool,
    /// Then wait until every vRegion is healthy again (re-replications
    /// after a failure done), showing their progress; fails if vRegions are
    /// lost or SECS pass
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "600")]
    pub wait_healthy: Option<u64>,
}

/// The jobs of one processor monitor, or why they could not be read.
#[derive(Debug, Serialize)]
pub struct ProcessorJobs {
    pub processor: u64,
    pub addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub jobs: Vec<JobInfo>,
}

/// Asks every alive processor monitor for its jobs.
pub fn jobs(st: &ClusterState, secret: &Secret) -> Vec<ProcessorJobs> {
    let opts = ClientOptions {
        connect_timeout: std::time::Duration::from_secs(1),
        request_timeout: std::time::Duration::from_secs(3),
        ..ClientOptions::default()
    };
    st.alive(Role::Processor)
        .map(|c| {
            let got = Redial::new(c.addr.clone(), Credentials::component(secret), opts.clone())
                .call(&JobsReq);
            let (jobs, error) = match got {
                Ok(j) => (j, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            ProcessorJobs {
                processor: c.id,
                addr: c.addr.clone(),
                error,
                jobs,
            }
        })
        .collect()
}

pub fn run(a: StatusArgs) -> Result<()> {
    let target = a.cluster.resolve()?;
    target.connect()?;
    let st = target
        .manager()
        .call(&ClusterStateReq)
        .map_err(|e| anyhow::anyhow!("the manager at {} cannot say: {e}", target.manager))?;
    let jobs = jobs(&st, &target.secret);
    if a.json {
        let mut v = serde_json::to_value(&st)?;
        v["jobs"] = serde_json::to_value(&jobs)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&st));
        print!("{}", render_jobs(&jobs));
    }
    match a.wait_healthy {
        Some(secs) => wait_healthy(&target, Duration::from_secs(secs)),
        None => Ok(()),
    }
}

/// Waits until no vRegion is degraded: a bar of the vRegions repaired (of
/// the most seen degraded), their rate and the time left on a terminal,
/// else a line every 2 s.
fn wait_healthy(target: &lego_cluster::dir::Target, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let bar = lego_bench::progress::Progress::counted("re-replication", 0, "vRegions");
    let mut most = 0;
    let mut said: Option<Instant> = None;
    loop {
        let st = target.manager().call(&ClusterStateReq)?;
        let count = |s: VRegionState| st.vregions.iter().filter(|v| v.state == s).count() as u64;
        let (degraded, lost) = (count(VRegionState::Degraded), count(VRegionState::Lost));
        most = most.max(degraded);
        if lost > 0 {
            bar.finish();
            anyhow::bail!("{lost} vRegions are lost (no copy left): they cannot be re-replicated");
        }
        if degraded == 0 {
            bar.finish();
            println!(
                "every vRegion is healthy ({} repaired while waiting, {:.1} s)",
                most,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > limit {
            bar.finish();
            anyhow::bail!(
                "{degraded} vRegions still degraded after {} s",
                limit.as_secs()
            );
        }
        match bar.on_terminal() {
            true => bar.count(most - degraded, most, format!("{degraded} degraded")),
            false if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) => {
                said = Some(Instant::now());
                println!(
                    "  {degraded} vRegions degraded, {} repaired",
                    most - degraded
                );
            }
            false => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `lego dashboard`: the dashboard's address with the token that opens it.
pub fn dashboard(cluster: &ClusterArgs) -> Result<()> {
    let target = cluster.resolve()?;
    let st = target
        .manager()
        .call(&ClusterStateReq)
        .map_err(|e| anyhow::anyhow!("the manager at {} cannot say: {e}", target.manager))?;
    let Some(http) = st.manager.http else {
        anyhow::bail!(
            "the manager at {} serves no HTTP: start it with --http ADDR",
            target.manager
        );
    };
    println!("http://{http}/?token={}", target.secret.http_token_hex());
    Ok(())
}

/// Where a drain of a memory monitor stands, in a line.
pub fn drain_line(d: &lego_wire::elastic::DrainInfo) -> String {
    match (d.copies, d.eta_s) {
        (0, _) => format!(
            "drained: holds no copy ({} copies, {} moved); it can be stopped",
            d.copies_moved,
            human(d.bytes_moved)
        ),
        (n, eta) => format!(
            "draining: {n} copies left, {} copies ({}) moved at {}/s{}",
            d.copies_moved,
            human(d.bytes_moved),
            human(d.rate),
            eta.map_or(String::new(), |s| format!(", about {s} s to go"))
        ),
    }
}

/// A counter as a number, or "-" when the runtime does not report it.
fn sum_prefixed(c: &std::collections::BTreeMap<String, u64>, prefix: &str) -> String {
    let mut found = false;
    let n: u64 = c
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .inspect(|_| found = true)
        .map(|(_, v)| v)
        .sum();
    if found {
        n.to_string()
    } else {
        "-".into()
    }
}

/// The running jobs of every processor monitor. Resident memory comes from
/// the runtime's `resident_pages`; faults and evictions are the sums of its
/// `faults_*` and `evictions_*` counters.
pub fn render_jobs(all: &[ProcessorJobs]) -> String {
    let mut o = String::new();
    let running: usize = all
        .iter()
        .map(|p| p.jobs.iter().filter(|j| j.running).count())
        .sum();
    let _ = writeln!(o, "\njobs: {running} running");
    if running > 0 {
        let _ = writeln!(
            o,
            "  {:<16} {:>4} {:>8} {:<12} {:>10} {:>10} {:>10} {:>10}  COMMAND",
            "JOB", "PROC", "PID", "VNODE", "EXCACHE", "RESIDENT", "FAULTS", "EVICTIONS"
        );
    }
    for p in all {
        if let Some(e) = &p.error {
            let _ = writeln!(o, "  processor {} ({}): {e}", p.processor, p.addr);
        }
        for j in p.jobs.iter().filter(|j| j.running) {
            let resident = j
                .counters
                .get("resident_pages")
                .map_or_else(|| "-".to_string(), |n| human(n * 4096));
            let mut cmd = j.argv.join(" ");
            if cmd.len() > 60 {
                let cut = (0..=57)
                    .rev()
                    .find(|&i| cmd.is_char_boundary(i))
                    .unwrap_or(0);
                cmd.truncate(cut);
                cmd.push_str("...");
            }
            let _ = writeln!(
                o,
                "  {:016x} {:>4} {:>8} {:<12} {:>10} {:>10} {:>10} {:>10}  {cmd}",
                j.job,
                p.processor,
                j.pid,
                j.vnode,
                human(j.excache),
                resident,
                sum_prefixed(&j.counters, "faults_"),
                sum_prefixed(&j.counters, "evictions_"),
            );
        }
    }
    o
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
        let _ = writeln!(
            o,
            "          http://{h}/metrics  http://{h}/state (token: lego http-token)  dashboard: lego dashboard"
        );
    }
    if let Some(store) = m.store.as_deref().filter(|s| s.starts_with("etcd")) {
        let standbys = match m.standbys.as_slice() {
            [] => "none".to_string(),
            s => s.join(", "),
        };
        let _ = writeln!(o, "          leader on {store}; standing by: {standbys}");
    }
    let alive = st
        .components
        .iter()
        .filter(|c| c.health == Health::Alive)
        .count();
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
        if let Some(d) = &c.drain {
            let _ = writeln!(o, "       {}", drain_line(d));
        }
    }
    // Hosts: the components by the host part of their address.
    let host = |a: &str| a.rsplit_once(':').map_or(a, |(h, _)| h).to_string();
    let mut hosts: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    hosts
        .entry(host(&m.addr))
        .or_default()
        .push("manager".into());
    for c in st.components.iter().filter(|c| c.health == Health::Alive) {
        hosts
            .entry(host(&c.addr))
            .or_default()
            .push(format!("{} {}", c.role, c.id));
    }
    if hosts.len() > 1 {
        let _ = writeln!(o, "\nhosts: {}", hosts.len());
        for (h, on) in &hosts {
            let _ = writeln!(o, "  {h:<21} {}", on.join(", "));
        }
    }
    let _ = writeln!(o, "\nvnodes: {}", st.vnodes.len());
    for v in &st.vnodes {
        let spaces: std::collections::BTreeSet<lego_wire::Asid> = st
            .vregions
            .iter()
            .filter(|r| r.asid.vnode() == v.id)
            .map(|r| r.asid)
            .collect();
        let served: Vec<&str> = st
            .components
            .iter()
            .filter(|c| !v.vip.is_empty() && c.vips.contains(&v.vip))
            .map(|c| c.addr.rsplit_once(':').map_or(c.addr.as_str(), |(h, _)| h))
            .collect();
        let net = match (v.vip.is_empty(), served.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!("  vIP {} (network {})", v.vip, v.network_name()),
            (false, false) => format!(
                "  vIP {} (network {}) served on {}",
                v.vip,
                v.network_name(),
                served.join(", ")
            ),
        };
        let _ = writeln!(
            o,
            "  {:>3}  {:<24} {} address spaces with vRegions{net}",
            v.id,
            v.name,
            spaces.len()
        );
    }
    let count = |state| st.vregions.iter().filter(|r| r.state == state).count();
    let _ = writeln!(
        o,
        "\nvRegions: {} ({} healthy, {} degraded, {} lost)",
        st.vregions.len(),
        count(VRegionState::Healthy),
        count(VRegionState::Degraded),
        count(VRegionState::Lost)
    );
    // Troubled vRegions first, then the rest, up to 20 lines.
    let mut shown: Vec<&lego_wire::control::VRegionInfo> = st.vregions.iter().collect();
    shown.sort_by_key(|r| (r.state == VRegionState::Healthy, r.asid, r.index));
    for r in shown.iter().take(20) {
        let _ = writeln!(
            o,
            "  space {}.{} vRegion {:<6} primary {:<3} backup {:<3} {}",
            r.asid.vnode(),
            r.asid.seq(),
            r.index,
            r.primary,
            r.backup.map_or("-".to_string(), |b| b.to_string()),
            r.state
        );
    }
    if st.vregions.len() > 20 {
        let _ = writeln!(
            o,
            "  ... {} more (lego status --json shows all)",
            st.vregions.len() - 20
        );
    }
    if !st.events.is_empty() {
        let _ = writeln!(o, "\nfailures and recoveries (most recent last):");
        for e in st.events.iter().rev().take(15).rev() {
            let took = e.took_ms.map_or(String::new(), |t| format!(" [{t} ms]"));
            let _ = writeln!(
                o,
                "  {:>8} ago  {:<14} {}{}",
                secs(e.ago_ms),
                e.kind,
                e.text,
                took
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_show_the_runtime_counters_they_have() {
        let job = |running, counters: &[(&str, u64)]| JobInfo {
            job: 0xab,
            pid: 42,
            vnode: "web".into(),
            argv: vec!["python3".into(), "-c".into(), "x".repeat(100)],
            excache: 64 << 20,
            running,
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let all = vec![
            ProcessorJobs {
                processor: 3,
                addr: "a".into(),
                error: None,
                jobs: vec![
                    job(
                        true,
                        &[
                            ("resident_pages", 256),
                            ("faults_fetched", 10),
                            ("faults_zero_filled", 5),
                            ("evictions_dirty", 7),
                        ],
                    ),
                    job(false, &[]),
                    job(true, &[]),
                ],
            },
            ProcessorJobs {
                processor: 4,
                addr: "b:1".into(),
                error: Some("cannot connect to b:1".into()),
                jobs: vec![],
            },
        ];
        let out = render_jobs(&all);
        assert!(out.contains("jobs: 2 running"), "{out}");
        let lines: Vec<&str> = out.lines().filter(|l| l.contains("python3")).collect();
        assert_eq!(lines.len(), 2, "{out}");
        let f: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            &f[..10],
            &[
                "00000000000000ab",
                "3",
                "42",
                "web",
                "64.0",
                "MiB",
                "1.0",
                "MiB",
                "15",
                "7"
            ]
        );
        assert!(lines[0].ends_with("..."), "long commands are cut");
        assert!(
            lines[1].contains("  -          -          -  "),
            "{}",
            lines[1]
        );
        assert!(out.contains("processor 4 (b:1): cannot connect to b:1"));
    }
}
