//! `lego bench excache`: one workload (sequential passes and random 8-byte
//! reads over a large array of pseudo-random data) run, in one invocation,
//!
//! - locally, with no lego and no limit (the reference);
//! - under `lego run --excache` at 100%, 50% and 25% of its working set, on
//!   a temporary embedded cluster started once for the whole bench, and at
//!   25% again in a vNode that keeps one copy of its memory (the cost of
//!   replication);
//! - in a cgroup v1 memory cgroup limited to 25% of the working set, with
//!   swap on a file on disk, on zram, and on a loop device over a tmpfs file
//!   (one at a time);
//!
//! then printed side by side as one table of phase times and slowdowns, with
//! the runtime's remote-fault p50 beside a bare TCP round trip measured in
//! the same run, and the targets as MET/MISSED lines. Every configuration's
//! checksum must equal the local run's.
//!
//! The workload is C (`workload.c`), compiled here with `gcc -O2`, so it is
//! an unmodified program in every configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::control::{ClusterState, MemStats};
use lego_wire::Op;

use super::child::*;
use super::cprog::{compile_workload, measure_floor};
use super::placement::{Placement, PlacementArg};
use super::report::*;
use super::swap::{self, MemCgroup, SwapKind, Undo};
use crate::size::{human, parse_size};
use crate::up::{LocalCluster, ProcessorSpec, Spec};

/// Room for the program's memory besides the array (stdio buffers, libc):
/// the working set is the array plus this.
const SLACK: u64 = 4 << 20;

const PAGE: u64 = 4096;

/// Configurations besides the local reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Config {
    /// lego, ExCache = 100% of the working set
    Lego100,
    /// lego, ExCache = 50%
    Lego50,
    /// lego, ExCache = 25%
    Lego25,
    /// lego, ExCache = 25%, one copy of each vRegion (no replication)
    Lego25Single,
    /// cgroup limit 25%, swap file on disk
    SwapFile,
    /// cgroup limit 25%, swap on zram
    Zram,
    /// cgroup limit 25%, swap on a loop device over a tmpfs file
    Loop,
}

const ALL: [Config; 7] = [
    Config::Lego100,
    Config::Lego50,
    Config::Lego25,
    Config::Lego25Single,
    Config::SwapFile,
    Config::Zram,
    Config::Loop,
];

#[derive(Args, Debug)]
pub struct ExcacheBenchArgs {
    /// Size of the workload's array [default: 2GiB; 256MiB with --quick]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub size: Option<u64>,
    /// A quick run (about 2 minutes): 256 MiB and 200,000 random reads,
    /// unless --size or --random-reads say otherwise
    #[arg(long)]
    pub quick: bool,
    /// Forward sequential passes over the array
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub forward_passes: u32,
    /// Backward sequential passes over the array
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub backward_passes: u32,
    /// Random 8-byte reads [default: 2,000,000; 200,000 with --quick]
    #[arg(long, value_name = "N")]
    pub random_reads: Option<u64>,
    /// Configurations to run besides the local one (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = ALL, value_name = "LIST")]
    pub configs: Vec<Config>,
    /// Directory for the swap file; must be on a disk [default: the temporary directory]
    #[arg(long, value_name = "DIR")]
    pub swap_dir: Option<PathBuf>,
    /// Longest time one configuration may run, in seconds
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub timeout: u64,
    /// Round trips of the bare TCP measurement
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub rtt_ops: usize,
    /// Where threads run [default: split when there are two CPUs or more]
    #[arg(long, value_enum, value_name = "HOW")]
    pub placement: Option<PlacementArg>,
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// The bench's own directory; removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn thp() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_else(|| "?".into())
}

pub fn run(a: ExcacheBenchArgs) -> Result<()> {
    let size = a
        .size
        .unwrap_or(if a.quick { 256 << 20 } else { 2 << 30 })
        .div_ceil(PAGE)
        * PAGE;
    if size < 16 * PAGE {
        bail!("--size must be at least 64 KiB");
    }
    let reads = a
        .random_reads
        .unwrap_or(if a.quick { 200_000 } else { 2_000_000 });
    let ws = size + SLACK;
    let quota = |pct: u64| (ws * pct / 100).div_ceil(PAGE) * PAGE;
    let selected = |c: Config| a.configs.contains(&c);
    let timeout = Duration::from_secs(a.timeout);

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let swaps_before = swap::active_swaps();

    let placement = Placement::choose(a.placement)?;
    placement.pin_bench()?;
    println!("lego bench excache\n{}", super::environment(&placement));
    println!(
        "transparent huge pages: {}; load average at the start: {} (other work on the machine adds noise)",
        thp(),
        loadavg()
    );
    println!(
        "swap before the bench: {}",
        if swaps_before.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{} (left alone; the bench's swap gets priority {} so it is used first)",
                swaps_before.join(", "),
                "32767"
            )
        }
    );
    println!(
        "workload: C, gcc -O2, 1 thread: malloc {} of pseudo-random data (xorshift, incompressible); \
         {} forward + {} backward sequential passes summing 8-byte words; {} random 8-byte reads",
        human(size),
        a.forward_passes,
        a.backward_passes,
        commas(reads)
    );
    println!(
        "working set W = the array + {} for the rest of the program = {}; \
         ExCache quotas and the cgroup limit are percentages of W\n",
        human(SLACK),
        human(ws)
    );

    let dir =
        TempDir(std::env::temp_dir().join(format!("lego-bench-excache-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0)
        .with_context(|| format!("cannot create {}", dir.0.display()))?;
    let workload = compile_workload(&dir.0)?;
    let wl_args: Vec<String> = vec![
        size.to_string(),
        a.forward_passes.to_string(),
        a.backward_passes.to_string(),
        reads.to_string(),
    ];

    progress(&format!(
        "bare 4 KiB TCP round trip, {} times blocking and {} times polling",
        a.rtt_ops, a.rtt_ops
    ));
    let rtt = super::rtt::bare_tcp(a.rtt_ops, placement.memory_cpus(), false)?;
    let rtt_polled = super::rtt::bare_tcp(a.rtt_ops, placement.memory_cpus(), true)?;
    progress("the kernel's userfaultfd floor (install, read and drop 4 KiB pages, no network)");
    let floor = measure_floor(&dir.0);

    let mut rows = Vec::new();
    // Twice, keeping the faster: on a VM the first touches of guest memory
    // the host has not backed yet can be slow, and that is not the workload.
    let mut best: Option<(Phases, f64)> = None;
    for i in 1..=2 {
        progress(&format!("local: no lego, no limit (run {i} of 2)"));
        let mut local = Command::new(&workload);
        local.args(&wl_args).current_dir(&dir.0);
        let f = run_child(local, &stop, timeout)?;
        let p = match outcome_of(&f) {
            Outcome::Ran(p) => p,
            Outcome::Failed(why) => {
                bail!("the workload failed on its own, with no lego and no limit: {why}")
            }
            _ => unreachable!("outcome_of returns Ran or Failed"),
        };
        match &best {
            Some((b, _)) if b.checksum != p.checksum => bail!(
                "the workload is not deterministic: checksums {} and {} with no lego",
                b.checksum,
                p.checksum
            ),
            Some((b, _)) if b.total() <= p.total() => {}
            _ => best = Some((p, f.wall.as_secs_f64())),
        }
    }
    let (local_phases, local_wall) = best.expect("two local runs");
    rows.push(Row {
        name: "local, no limit".into(),
        limit: None,
        outcome: Outcome::Ran(local_phases),
        note: Some(format!("the faster of 2 runs; wall {local_wall:.1} s")),
    });

    // lego at 100%, 50%, 25% of the working set, on one embedded cluster.
    let lego_cfgs = [
        (Config::Lego100, 100, "lego, ExCache 100%", "bench-excache"),
        (Config::Lego50, 50, "lego, ExCache 50%", "bench-excache"),
        (Config::Lego25, 25, "lego, ExCache 25%", "bench-excache"),
        (
            Config::Lego25Single,
            25,
            "lego, ExCache 25%, 1 copy",
            "bench-excache-1copy",
        ),
    ];
    let mut lego25_counters = None;
    if lego_cfgs.iter().any(|(c, ..)| selected(*c)) {
        let capacity = (ws * 5 / 4).div_ceil(1 << 20) << 20;
        let excache = ws.div_ceil(1 << 20) << 20;
        let cluster = match start_cluster(&dir.0, capacity, excache, &placement) {
            Ok(c) => Some(c),
            Err(skip) => {
                for (c, pct, name, _) in lego_cfgs {
                    rows.push(Row {
                        name: name.into(),
                        limit: Some(quota(pct)),
                        outcome: if selected(c) {
                            Outcome::Skipped(skip.clone())
                        } else {
                            Outcome::NotSelected
                        },
                        note: None,
                    });
                }
                None
            }
        };
        if let Some(cluster) = cluster {
            println!(
                "embedded cluster: 2 memory monitors of {} each (CPUs {}), a processor monitor with {} of ExCache (CPUs {}); TCP loopback",
                human(capacity),
                cluster.pid_of("memory-1").map_or("?".into(), super::cpus_allowed),
                human(excache),
                cluster.pid_of("processor").map_or("?".into(), super::cpus_allowed),
            );
            if let Err(e) = one_copy_vnode(&cluster) {
                progress(&format!("warning: {e:#}"));
            }
            for (c, pct, name, vnode) in lego_cfgs {
                let name = name.to_string();
                if !selected(c) {
                    rows.push(Row {
                        name,
                        limit: Some(quota(pct)),
                        outcome: Outcome::NotSelected,
                        note: None,
                    });
                    continue;
                }
                progress(&format!("{name} ({})", human(quota(pct))));
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("run")
                    .arg("--dir")
                    .arg(&cluster.dir)
                    .args(["--vnode", vnode, "--stats", "--excache"])
                    .arg(quota(pct).to_string())
                    .arg("--")
                    .arg(&workload)
                    .args(&wl_args)
                    .current_dir(&dir.0)
                    .env_remove("LEGO_LOG");
                if let Err(e) = wait_idle(&cluster) {
                    progress(&format!("warning: {e:#}"));
                }
                let f = run_child(cmd, &stop, timeout)?;
                let counters = parse_stats(&f.stderr);
                let note = lego_note(&counters);
                if c == Config::Lego25 {
                    lego25_counters = Some(counters);
                }
                rows.push(Row {
                    name,
                    limit: Some(quota(pct)),
                    outcome: outcome_of(&f),
                    note: Some(format!("{note}; wall {:.1} s", f.wall.as_secs_f64())),
                });
            }
            println!(
                "memory monitors after the lego runs: {}",
                pages_held(&cluster)
            );
            drop(cluster);
        }
    } else {
        for (_, pct, name, _) in lego_cfgs {
            rows.push(Row {
                name: name.into(),
                limit: Some(quota(pct)),
                outcome: Outcome::NotSelected,
                note: None,
            });
        }
    }

    // Linux: a cgroup limit of 25% with swap, one backend at a time.
    let limit = quota(25);
    let swap_size = size + (64 << 20);
    let swap_dir_base = a.swap_dir.clone().unwrap_or_else(std::env::temp_dir);
    let common = swap::preflight_common();
    let mut zram_used = false;
    for (c, kind) in [
        (Config::SwapFile, SwapKind::File),
        (Config::Zram, SwapKind::Zram),
        (Config::Loop, SwapKind::LoopTmpfs),
    ] {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let name = format!("cgroup 25%, {}", kind.label());
        let mut row = Row {
            name: name.clone(),
            limit: Some(limit),
            outcome: Outcome::NotSelected,
            note: None,
        };
        if selected(c) {
            let sdir =
                swap_dir_base.join(format!("lego-bench-excache-{}-swap", std::process::id()));
            let r = match &common {
                Err(why) => Err(Outcome::Skipped(why.clone())),
                Ok(parent) => match swap::preflight(kind, swap_size, limit, &swap_dir_base) {
                    Err(why) => Err(Outcome::Skipped(why)),
                    Ok(()) => {
                        progress(&format!("{name} ({})", human(limit)));
                        zram_used |= kind == SwapKind::Zram;
                        run_squeezed(
                            kind, swap_size, limit, parent, &sdir, &workload, &wl_args, &dir.0,
                            &stop, timeout,
                        )
                    }
                },
            };
            match r {
                // Interrupted, or a process that cannot be ended: stop here
                // (the guards of that configuration have run).
                Ok(Err(fatal)) => return Err(fatal),
                Ok(Ok((outcome, note))) => {
                    row.outcome = outcome;
                    row.note = Some(note);
                }
                Err(o) => row.outcome = o,
            }
        }
        rows.push(row);
    }
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }

    // The report.
    println!("\n{}", render_table(&rows, reads));
    for r in &rows {
        if let Some(n) = &r.note {
            println!("{:<34} {n}", r.name);
        }
    }
    let p50 = lego25_counters
        .as_ref()
        .and_then(|c| c.get("remote_fault_p50_us").copied());
    let mean = lego25_counters.as_ref().and_then(|c| {
        let (ns, n) = (
            c.get("remote_fault_ns_total")?,
            c.get("remote_faults_timed")?,
        );
        (*n > 0).then(|| *ns as f64 / *n as f64 / 1000.0)
    });
    println!(
        "\nremote fault, lego at 25% (runtime's histogram, quarter octaves: p50 is its bucket's midpoint): p50 {} µs, mean {} µs",
        p50.map_or("?".into(), |v| v.to_string()),
        mean.map_or("?".into(), |v| format!("{v:.1}"))
    );
    let ratio = |r: &super::rtt::Rtt| {
        p50.map_or(String::new(), |p| {
            format!(
                "; remote fault p50 / round trip = {:.2}x",
                p as f64 / r.p50_us
            )
        })
    };
    println!(
        "bare 4 KiB TCP round trip on loopback, same run: blocking p50 {:.1} µs, p99 {:.1} µs{}",
        rtt.p50_us,
        rtt.p99_us,
        ratio(&rtt)
    );
    println!(
        "  same, both ends polling (as lego's runtime and memory monitor do): p50 {:.1} µs, p99 {:.1} µs{}",
        rtt_polled.p50_us,
        rtt_polled.p99_us,
        ratio(&rtt_polled)
    );

    println!();
    let phases = |c: &str| {
        rows.iter()
            .find(|r| r.name == c)
            .and_then(|r| match &r.outcome {
                Outcome::Ran(p) => Some(p.clone()),
                _ => None,
            })
    };
    let lego25 = phases("lego, ExCache 25%");
    if let (Some(two), Some(one)) = (&lego25, phases("lego, ExCache 25%, 1 copy")) {
        println!(
            "replication at 25%: two copies against one: total {:.2} s against {:.2} s ({:.2}x); fill {:.2}x, sequential {:.2}x, random {:.2}x",
            two.total(),
            one.total(),
            two.total() / one.total(),
            two.fill / one.fill,
            two.seq() / one.seq(),
            two.random / one.random
        );
    }
    for kind in [SwapKind::File, SwapKind::LoopTmpfs] {
        let other = phases(&format!("cgroup 25%, {}", kind.label()));
        let what = format!(
            "at 25%, lego faster than {} on the random phase",
            kind.label()
        );
        println!(
            "{}",
            verdict(
                &what,
                lego25.as_ref().map(|p| p.random),
                other.as_ref().map(|p| p.random),
                |l, o| l < o
            )
        );
    }
    let local = phases("local, no limit");
    let what = "at 25%, lego's sequential passes (forward + backward) within 2x of local";
    println!(
        "{}",
        match (&lego25, &local) {
            (Some(l), Some(o)) => format!(
                "target: {what}: {:.2} s vs 2 x {:.2} s = {:.2} s ({:.1}x): {}",
                l.seq(),
                o.seq(),
                2.0 * o.seq(),
                l.seq() / o.seq(),
                if l.seq() <= 2.0 * o.seq() {
                    "MET"
                } else {
                    "MISSED"
                }
            ),
            _ => verdict(what, None, None, |_, _| false),
        }
    );
    match &floor {
        Ok(f) => println!(
            "  floor: the kernel alone takes {:.2} µs to install a page with UFFDIO_COPY, read it and drop it, \
             against {:.3} µs to read it resident; a pass that fetches 75% of its pages cannot run faster than \
             {:.1}x local through userfaultfd, whatever the network",
            f.install_us,
            f.local_us,
            f.least_slowdown(0.75)
        ),
        Err(why) => println!("  floor: not measured: {why}"),
    }

    // Every configuration must have computed the same thing.
    let reference = local.map(|p| p.checksum).unwrap_or_default();
    let ran: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ran(_)))
        .collect();
    let wrong: Vec<String> = ran
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Ran(p) if p.checksum != reference => Some(r.name.clone()),
            _ => None,
        })
        .collect();
    if wrong.is_empty() {
        println!(
            "checksums: all {} configurations that ran print {reference}, the local run's: identical",
            ran.len()
        );
    } else {
        println!(
            "checksums: DIFFERENT from the local run's {reference}: {}",
            wrong.join(", ")
        );
    }

    // Nothing of ours may remain.
    let mut left = Vec::new();
    let swaps_after = swap::active_swaps();
    if swaps_after != swaps_before {
        left.push(format!("swap is now [{}]", swaps_after.join(", ")));
    }
    if zram_used
        && std::fs::read_to_string("/sys/block/zram0/disksize").is_ok_and(|s| s.trim() != "0")
    {
        left.push("zram0 still has a disksize".into());
    }
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&format!("lego-bench-excache-{}-swap", std::process::id()))
    {
        left.push("the bench's tmpfs is still mounted".into());
    }
    if left.is_empty() {
        println!(
            "cleanup: swap as before ({}); the bench's cgroups, zram setup, loop device and tmpfs are gone",
            if swaps_before.is_empty() { "none".to_string() } else { swaps_before.join(", ") }
        );
    } else {
        println!("cleanup: LEFT BEHIND: {}", left.join("; "));
    }
    println!("load average at the end: {}", loadavg());
    if !wrong.is_empty() {
        bail!("checksums differ: lego or swap returned wrong data");
    }
    Ok(())
}

/// `MET`/`MISSED` with both numbers, or why it could not be judged.
fn verdict(
    what: &str,
    ours: Option<f64>,
    theirs: Option<f64>,
    ok: impl Fn(f64, f64) -> bool,
) -> String {
    match (ours, theirs) {
        (Some(l), Some(o)) => format!(
            "target: {what}: {l:.2} s vs {o:.2} s ({:.2}x): {}",
            l / o,
            if ok(l, o) { "MET" } else { "MISSED" }
        ),
        _ => format!("target: {what}: NOT MEASURED (a configuration did not run)"),
    }
}

fn lego_note(c: &BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return "the runtime reported no counters".into();
    }
    let g = |k: &str| c.get(k).copied().unwrap_or(0);
    format!(
        "faults {} fetched, {} zero-filled; prefetched {} ({} used, {} wasted); evictions {} clean, {} dirty; \
         {} fetched, {} written back; resident peak {}; remote fault p50 {} µs",
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
        g("remote_fault_p50_us")
    )
}

/// The vNode of the one-copy row: each of its vRegions on one memory
/// monitor only.
fn one_copy_vnode(c: &LocalCluster) -> Result<()> {
    use lego_wire::control::VnodeReq;
    c.target()
        .connect()?
        .call_json::<_, serde_json::Value>(
            Op::VnodeCreate,
            &VnodeReq {
                name: "bench-excache-1copy".into(),
                replicas: Some(1),
                ..VnodeReq::default()
            },
        )
        .context("cannot create the one-copy vnode")?;
    Ok(())
}

/// The embedded cluster for the lego rows, or why not.
fn start_cluster(
    dir: &Path,
    capacity: u64,
    excache: u64,
    placement: &Placement,
) -> Result<LocalCluster, String> {
    let runtime = std::env::var_os("LEGO_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(lego_processor::default_runtime_path);
    lego_processor::check_runtime(&runtime).map_err(|e| lego_processor::chain(&e))?;
    progress(&format!(
        "starting the embedded cluster: 2 memory monitors of {}, ExCache {}",
        human(capacity),
        human(excache)
    ));
    LocalCluster::start_with(
        &Spec {
            dir: dir.join("cluster"),
            memory_monitors: 2,
            capacity,
            heartbeat_ms: 1000,
            memory_cpus: placement.memory_cpus(),
            storage: false,
            manager_args: Vec::new(),
        },
        Some(&ProcessorSpec {
            excache,
            runtime: None,
            cpus: placement.app_cpus(),
        }),
    )
    .map_err(|e| format!("cannot start the embedded cluster: {e:#}"))
}

/// Waits until the manager sees no ExCache granted on the processor monitor:
/// it learns of a finished job's returned quota from the next heartbeat, and
/// would refuse to place the next run until then.
fn wait_idle(c: &LocalCluster) -> Result<()> {
    let mgr = c.target().connect()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st: ClusterState = mgr.call_json(Op::ClusterState, &())?;
        let used: u64 = st
            .components
            .iter()
            .filter(|c| c.role == "processor" && c.health == "alive")
            .map(|c| c.used)
            .sum();
        if used == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the manager still sees {} of ExCache granted after 10 s",
                human(used)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pages the memory monitors still hold (should be none).
fn pages_held(c: &LocalCluster) -> String {
    let held: Vec<String> = c
        .file
        .memory_monitors
        .iter()
        .map(|addr| {
            Client::connect(
                addr,
                &Credentials::component(&c.secret),
                &ClientOptions::default(),
            )
            .and_then(|cl| cl.call_json::<_, MemStats>(Op::MemStats, &()))
            .map_or_else(|e| format!("? ({e})"), |s| commas(s.pages_held))
        })
        .collect();
    format!("{} pages held", held.join(" and "))
}

/// The workload in a memory cgroup, with swap of one kind set up for it
/// and torn down after.
#[allow(clippy::too_many_arguments)]
fn run_squeezed(
    kind: SwapKind,
    swap_size: u64,
    limit: u64,
    parent: &Path,
    sdir: &Path,
    workload: &Path,
    args: &[String],
    cwd: &Path,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<Result<(Outcome, String)>, Outcome> {
    // Order matters for teardown: the cgroup goes first, then the swap, then the directory.
    let mut undo_dir = Undo::default();
    std::fs::create_dir(sdir)
        .map_err(|e| Outcome::Failed(format!("cannot create {}: {e}", sdir.display())))?;
    let d = sdir.to_path_buf();
    undo_dir.push(
        format!("the directory {}", sdir.display()),
        format!("rmdir {}", sdir.display()),
        move || std::fs::remove_dir(&d).context("rmdir"),
    );
    let active = swap::setup(kind, swap_size, sdir, stop)
        .map_err(|e| Outcome::Failed(format!("cannot set up {}: {e:#}", kind.label())))?;
    let cg = MemCgroup::create(
        parent,
        &format!("lego-bench-excache-{}", std::process::id()),
        limit,
    )
    .map_err(|e| Outcome::Failed(format!("{e:#}")))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(cg.procs_file())
        .arg(workload)
        .args(args)
        .current_dir(cwd);
    let f = match run_child(cmd, stop, timeout) {
        Ok(f) => f,
        Err(e) if e.is::<Stuck>() || stop.load(Ordering::Relaxed) => return Ok(Err(e)),
        Err(e) => return Err(Outcome::Failed(format!("{e:#}"))),
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
