//! The lego rows of `lego bench excache`: the workload and the programs
//! under `lego run` at each ExCache quota, on one embedded cluster started
//! for all of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lego_cluster::size::human;
use lego_cluster::{ProcessorSpec, Spec};
use lego_wire::control::{ClusterStateReq, VnodeCreateReq};
use lego_wire::Role;

use super::report::{commas, outcome_of, parse_stats, Outcome, Row};
use super::{Bench, Config, Job, Variant, PAGE};
use crate::child::{run_child, Finished};
use crate::{fail, CallContext, Result, TempCluster};

/// The vNode of the one-copy row: each of its vRegions on one memory
/// monitor only.
pub const ONE_COPY_VNODE: &str = "bench-excache-1copy";

/// The embedded cluster for every lego row and program, with memory
/// monitors of `capacity` each and an ExCache of `excache`, or why not
/// (the rows are then skipped). The outer error stops the bench.
pub(super) fn start(
    b: &Bench,
    v: &Variant,
    capacity: u64,
    excache: u64,
) -> Result<Result<TempCluster, String>> {
    b.check_stop()?;
    let cluster = match start_cluster(b, v, capacity, excache) {
        Ok(c) => c,
        Err(skip) => return Ok(Err(skip)),
    };
    let cpus =
        |d: Option<&lego_cluster::Daemon>| d.map_or("?".into(), |d| crate::cpus_allowed(d.pid()));
    let net = match cluster.rack() {
        Some(r) => format!(
            "TCP across a rack of {} hosts (network namespaces on a bridge), links {}",
            r.hosts.len(),
            r.rate.as_deref().unwrap_or("unshaped")
        ),
        None => "TCP loopback".into(),
    };
    let sealed = match v.encrypt {
        lego_cluster::Encrypt::Auto => cluster.rack().is_some(),
        e => e == lego_cluster::Encrypt::On,
    };
    let net = match sealed {
        true => format!("{net}, links sealed (AES-256-GCM)"),
        false => format!("{net}, links in plaintext"),
    };
    println!(
        "embedded cluster: 2 memory monitors of {} each (CPUs {}), a processor monitor with {} of ExCache (CPUs {}); {net}",
        human(capacity),
        cpus(cluster.memories.first()),
        human(excache),
        cpus(cluster.processor.as_ref()),
    );
    if let Err(e) = one_copy_vnode(&cluster) {
        b.progress
            .println(format!("warning: {}", lego_wire::error::chain(&e)));
    }
    Ok(Ok(cluster))
}

/// The rows of every lego configuration of the workload.
pub(super) fn rows(
    b: &Bench,
    cluster: &Result<TempCluster, String>,
    selected: &dyn Fn(Config) -> bool,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for c in Config::ALL.into_iter().filter(|c| c.vnode().is_some()) {
        rows.push(match (selected(c), cluster) {
            (false, _) => b.not_run(c),
            (true, Err(skip)) => {
                Row::new(Some(c), Some(b.quota(c)), Outcome::Skipped(skip.clone()))
            }
            (true, Ok(cluster)) => {
                let quota = b.quota(c);
                b.progress.step(format!("{} ({})", c.label(), human(quota)));
                let vnode = c.vnode().unwrap_or("default");
                let (f, counters) = run_job(b, cluster, vnode, quota, &b.job)?;
                let mut row = Row::new(Some(c), Some(quota), outcome_of(&f));
                row.note = Some(format!(
                    "{}; wall {:.1} s",
                    lego_note(&counters),
                    f.wall.as_secs_f64()
                ));
                row.counters = counters;
                row
            }
        });
    }
    Ok(rows)
}

/// Runs a job under `lego run --excache QUOTA` in a vNode; returns how it
/// ended and what the runtime counted.
pub(super) fn run_job(
    b: &Bench,
    cluster: &TempCluster,
    vnode: &str,
    quota: u64,
    job: &Job,
) -> Result<(Finished, BTreeMap<String, u64>)> {
    let mut cmd = Command::new(&cluster.opts.exe);
    cmd.arg("run")
        .arg("--dir")
        .arg(&cluster.opts.dir)
        .args([
            "--vnode",
            vnode,
            "--stats",
            "--stats-histogram",
            "--excache",
        ])
        .arg(quota.to_string())
        .arg("--");
    job.append_to(&mut cmd);
    cmd.current_dir(&b.dir.0).env_remove("LEGO_LOG");
    if let Err(e) = wait_idle(cluster) {
        b.progress
            .println(format!("warning: {}", lego_wire::error::chain(&e)));
    }
    let f = run_child(cmd, &b.stop, b.timeout)?;
    let counters = parse_stats(&f.stderr);
    Ok((f, counters))
}

/// The counters of a lego run, in one line.
pub(super) fn lego_note(c: &BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return "the runtime reported no counters".into();
    }
    let g = |k: &str| c.get(k).copied().unwrap_or(0);
    format!(
        "faults {} fetched, {} zero-filled; prefetched {} ({} used, {} wasted); evictions {} clean, {} dirty; \
         {} fetched, {} written back; resident peak {}; remote fault p50 {} µs, p99 {} µs",
        commas(g("faults_fetched")),
        commas(g("faults_zero_filled")),
        commas(g("prefetched_pages")),
        commas(g("prefetch_used")),
        commas(g("prefetch_wasted")),
        commas(g("evictions_clean")),
        commas(g("evictions_dirty")),
        human(g("bytes_fetched")),
        human(g("bytes_written_back")),
        human(g("resident_peak_pages") * PAGE),
        g("remote_fault_p50_us"),
        g("remote_fault_p99_us")
    )
}

/// Creates the vNode of the one-copy row.
fn one_copy_vnode(c: &TempCluster) -> Result<()> {
    c.target()
        .manager()
        .call(&VnodeCreateReq {
            name: ONE_COPY_VNODE.into(),
            replicas: Some(1),
            ..VnodeCreateReq::default()
        })
        .call_for(|| "cannot create the one-copy vnode".into())
        .map(drop)
}

/// The embedded cluster for the lego rows, or why not.
fn start_cluster(
    b: &Bench,
    v: &Variant,
    capacity: u64,
    excache: u64,
) -> Result<TempCluster, String> {
    let runtime = std::env::var_os("LEGO_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(lego_processor::default_runtime_path);
    lego_processor::check_runtime(&runtime).map_err(|e| lego_processor::chain(&e))?;
    b.progress.step(format!(
        "starting the embedded cluster: 2 memory monitors of {}, ExCache {}",
        human(capacity),
        human(excache)
    ));
    let spec = Spec {
        memory_monitors: 2,
        capacity,
        memory_cpus: b.placement.memory_cpus(),
        storage: false,
        encrypt: v.encrypt,
        join: false,
        manager_args: Vec::new(),
        rack: v.rack.clone(),
        managers: Default::default(),
    };
    let processor = ProcessorSpec {
        excache,
        runtime: None,
        cpus: b.placement.app_cpus(),
    };
    TempCluster::start(b.dir.0.join("cluster"), 1000, &spec, Some(&processor)).map_err(|e| {
        format!(
            "cannot start the embedded cluster: {}",
            lego_wire::error::chain(&e)
        )
    })
}

/// Waits until the manager sees no ExCache granted on the processor monitor:
/// it learns of a finished job's returned quota from the next heartbeat, and
/// would refuse to place the next run until then.
fn wait_idle(c: &TempCluster) -> Result<()> {
    let mgr = c.target().manager();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = mgr
            .call(&ClusterStateReq)
            .call_for(|| "cannot ask the manager for the cluster's state".into())?;
        let used: u64 = st.alive(Role::Processor).map(|c| c.used).sum();
        if used == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            fail!(
                "the manager still sees {} of ExCache granted after 10 s",
                human(used)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pages the memory monitors still hold (should be none).
pub(super) fn pages_held(c: &TempCluster) -> String {
    let held: Vec<String> = c
        .memories
        .iter()
        .map(|m| {
            c.target()
                .connect_to(&m.addr)
                .map_err(|e| e.to_string())
                .and_then(|cl| {
                    cl.call(&lego_wire::control::MemStatsReq)
                        .map_err(|e| e.to_string())
                })
                .map_or_else(|e| format!("? ({e})"), |s| commas(s.pages_held))
        })
        .collect();
    format!("{} pages held", held.join(" and "))
}
