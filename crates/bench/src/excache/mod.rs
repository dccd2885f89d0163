//! `lego bench excache`: one workload (sequential passes and random 8-byte
//! reads over a large array of pseudo-random data) run, in one invocation,
//!
//! - locally, with no lego and no limit (the reference);
//! - under `lego run --excache` at 100%, 50% and 25% of its working set, on
//!   a temporary embedded cluster started once for the whole bench, and at
//!   25% again in a vNode that keeps one copy of its memory (the cost of
//!   replication) ([`lego`]);
//! - in a cgroup v1 memory cgroup limited to 50% and to 25% of the working
//!   set, with swap on a file on disk, on zram, and on a loop device over a
//!   tmpfs file (one kind at a time) ([`squeeze`]);
//!
//! then printed side by side as one table of phase times and slowdowns, with
//! the runtime's remote-fault p50 beside a bare TCP round trip measured in
//! the same run, and the targets as MET/MISSED lines ([`summary`]). Every
//! configuration's checksum must equal the local run's.
//!
//! The workload is C (`workload.c`), compiled here with `gcc -O2`, so it is
//! an unmodified program in every configuration.
//!
//! Then the same for programs of the paper's kind and of the kinds that
//! hurt most ([`programs`]): a map-reduce word count, a numpy training loop,
//! a random write-heavy program and 4 threads of random reads, each locally
//! and under lego and swap (zram, file) at 50% and 25% of its working set.

mod lego;
pub mod plot;
pub mod programs;
pub mod report;
mod squeeze;
mod summary;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use lego_cluster::size::{human, parse_size};

use crate::child::run_child;
use crate::cprog::{compile_workload, measure_floor};
use crate::placement::{Placement, PlacementArg};
use crate::progress::Progress;
use crate::swap::{self, SwapKind};
use crate::{fail, BenchError, IoContext, Result};
use report::{commas, outcome_of, Outcome, Phases, Row};

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
    /// cgroup limit 50%, swap file on disk
    SwapFile50,
    /// cgroup limit 25%, swap file on disk
    SwapFile,
    /// cgroup limit 50%, swap on zram
    Zram50,
    /// cgroup limit 25%, swap on zram
    Zram,
    /// cgroup limit 50%, swap on a loop device over a tmpfs file
    Loop50,
    /// cgroup limit 25%, swap on a loop device over a tmpfs file
    Loop,
}

impl Config {
    /// Every configuration, in the order of the table.
    pub const ALL: [Config; 10] = [
        Config::Lego100,
        Config::Lego50,
        Config::Lego25,
        Config::Lego25Single,
        Config::SwapFile50,
        Config::SwapFile,
        Config::Zram50,
        Config::Zram,
        Config::Loop50,
        Config::Loop,
    ];

    /// Its row's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Config::Lego100 => "lego, ExCache 100%",
            Config::Lego50 => "lego, ExCache 50%",
            Config::Lego25 => "lego, ExCache 25%",
            Config::Lego25Single => "lego, ExCache 25%, 1 copy",
            Config::SwapFile50 => "cgroup 50%, swap file on disk",
            Config::SwapFile => "cgroup 25%, swap file on disk",
            Config::Zram50 => "cgroup 50%, swap on zram",
            Config::Zram => "cgroup 25%, swap on zram",
            Config::Loop50 => "cgroup 50%, swap on loop/tmpfs",
            Config::Loop => "cgroup 25%, swap on loop/tmpfs",
        }
    }

    /// Its ExCache quota or cgroup limit, in percent of the working set.
    pub fn percent(self) -> u64 {
        match self {
            Config::Lego100 => 100,
            Config::Lego50 | Config::SwapFile50 | Config::Zram50 | Config::Loop50 => 50,
            _ => 25,
        }
    }

    /// The kind of swap of a cgroup row.
    pub fn swap(self) -> Option<SwapKind> {
        match self {
            Config::SwapFile | Config::SwapFile50 => Some(SwapKind::File),
            Config::Zram | Config::Zram50 => Some(SwapKind::Zram),
            Config::Loop | Config::Loop50 => Some(SwapKind::LoopTmpfs),
            _ => None,
        }
    }

    /// The vNode a lego row runs in.
    pub fn vnode(self) -> Option<&'static str> {
        match self {
            Config::Lego100 | Config::Lego50 | Config::Lego25 => Some("bench-excache"),
            Config::Lego25Single => Some(lego::ONE_COPY_VNODE),
            _ => None,
        }
    }
}

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
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Config::ALL, value_name = "LIST")]
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
    /// Programs to run after the workload (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = programs::Program::ALL, value_name = "LIST")]
    pub programs: Vec<programs::Program>,
    /// Run no programs, only the workload
    #[arg(long, conflicts_with = "programs")]
    pub no_programs: bool,
    /// Run the lego rows on a rack of 4 hosts made on this machine (network
    /// namespaces on a bridge: the manager, 2 memory monitors, the processor
    /// monitor), as across real hosts; needs root
    #[arg(long)]
    pub rack: bool,
    /// With --rack, shape each host's link to this rate (tc syntax: 10gbit,
    /// 1gbit, ...) [default: unshaped]; several (comma-separated) run the
    /// lego rows once per rate, in one table
    #[arg(long, value_name = "RATES", requires = "rack", value_delimiter = ',')]
    pub link: Vec<String>,
    /// Seal the cluster's links (`auto`: sealed on a rack, plaintext on
    /// loopback); several (`on,off`) run the lego rows once per setting and
    /// every link rate, in one table. Programs run with the first only
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [lego_cluster::Encrypt::Auto], value_name = "WHEN")]
    pub encrypt: Vec<lego_cluster::Encrypt>,
    /// Also draw the run as SVG charts in DIR: slowdown against the
    /// ExCache share for every configuration, fault latency distributions,
    /// throughput over time
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

/// One cluster the lego rows run on: its link rate and sealing.
#[derive(Clone, Debug)]
pub(crate) struct Variant {
    pub rack: Option<lego_cluster::RackSpec>,
    pub encrypt: lego_cluster::Encrypt,
    /// Its name in the table, when a run has several.
    pub label: Option<String>,
}

impl Variant {
    /// Every combination of the rates and sealing settings asked for.
    fn all(a: &ExcacheBenchArgs) -> Vec<Variant> {
        let links: Vec<Option<String>> = match a.link.is_empty() {
            true => vec![None],
            false => a.link.iter().cloned().map(Some).collect(),
        };
        let several = links.len() * a.encrypt.len() > 1;
        let mut out = Vec::new();
        for link in &links {
            for &encrypt in &a.encrypt {
                let rack = a.rack.then(|| lego_cluster::RackSpec {
                    hosts: 4,
                    link: link.clone(),
                });
                // Auto seals exactly when the daemons are off loopback.
                let sealed = match encrypt {
                    lego_cluster::Encrypt::Auto => a.rack,
                    e => e == lego_cluster::Encrypt::On,
                };
                let seal = if sealed { "sealed" } else { "plaintext" };
                let label = several.then(|| match (a.rack, link) {
                    (true, Some(l)) => format!("{l}, {seal}"),
                    (true, None) => format!("unshaped, {seal}"),
                    (false, _) => format!("loopback, {seal}"),
                });
                out.push(Variant {
                    rack,
                    encrypt,
                    label,
                });
            }
        }
        out
    }
}

/// A program and its arguments and environment, run the same way in every
/// configuration.
pub(crate) struct Job {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

impl Job {
    /// Appends the program and its arguments to `cmd`, and sets its environment.
    pub fn append_to(&self, cmd: &mut Command) {
        cmd.arg(&self.program).args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// What every configuration shares.
struct Bench {
    /// The array's size, the working set, and the random reads.
    size: u64,
    ws: u64,
    reads: u64,
    /// The workload.
    job: Job,
    quick: bool,
    /// The clusters the lego rows run on, one after another.
    variants: Vec<Variant>,
    dir: TempDir,
    placement: Placement,
    stop: Arc<AtomicBool>,
    timeout: Duration,
    progress: Progress,
}

impl Bench {
    /// The ExCache quota or cgroup limit of a configuration, in bytes.
    fn quota(&self, c: Config) -> u64 {
        (self.ws * c.percent() / 100).div_ceil(PAGE) * PAGE
    }

    fn check_stop(&self) -> Result<()> {
        match self.stop.load(Ordering::Relaxed) {
            true => Err(BenchError::Interrupted),
            false => Ok(()),
        }
    }

    /// A row for a configuration that was not asked for.
    fn not_run(&self, c: Config) -> Row {
        Row::new(Some(c), Some(self.quota(c)), Outcome::NotSelected)
    }
}

pub fn run(a: ExcacheBenchArgs) -> Result<()> {
    let b = setup(&a)?;
    let swaps_before = swap::active_swaps();
    header(&a, &b, &swaps_before);
    b.progress.step(format!(
        "bare 4 KiB TCP round trip, {} times blocking and {} times polling",
        a.rtt_ops, a.rtt_ops
    ));
    let rtt = crate::rtt::bare_tcp(a.rtt_ops, b.placement.memory_cpus(), false)?;
    let rtt_polled = crate::rtt::bare_tcp(a.rtt_ops, b.placement.memory_cpus(), true)?;
    b.progress
        .step("the kernel's userfaultfd floor (install, read and drop 4 KiB pages, no network)");
    let floor = measure_floor(&b.dir.0);

    let mut rows = vec![local_row(&b)?];
    let mut progs = match a.no_programs {
        true => Vec::new(),
        false => programs::prepare(&b, &a.programs)?,
    };
    let selected = |c: Config| a.configs.contains(&c);
    let biggest = progs.iter().map(|p| p.ws).fold(b.ws, u64::max);
    let wanted = Config::ALL
        .into_iter()
        .any(|c| c.vnode().is_some() && selected(c))
        || !progs.is_empty();
    for (i, v) in b.variants.iter().enumerate() {
        let cluster = match wanted {
            true => lego::start(
                &b,
                v,
                (biggest * 5 / 4).div_ceil(1 << 20) << 20,
                biggest.div_ceil(1 << 20) << 20,
            )?,
            false => Err("not selected".into()),
        };
        for mut row in lego::rows(&b, &cluster, &selected)? {
            row.variant = v.label.clone();
            rows.push(row);
        }
        if i == 0 {
            programs::run_lego(&b, &cluster, &mut progs)?;
        }
        if let Ok(c) = &cluster {
            println!(
                "memory monitors after the lego runs: {}",
                lego::pages_held(c)
            );
        }
        drop(cluster);
    }
    b.check_stop()?;
    rows.extend(squeeze::rows(&b, &a, &selected, &mut progs)?);
    b.check_stop()?;
    b.progress.finish();

    let report = summary::Summary {
        rows: &rows,
        reads: b.reads,
        rtt: &rtt,
        rtt_polled: &rtt_polled,
        floor: &floor,
    };
    report.print();
    if let Some(dir) = &a.plot {
        let work = plot::Work {
            words: b.size / 8,
            forward_passes: a.forward_passes,
            backward_passes: a.backward_passes,
            reads: b.reads,
        };
        for p in plot::write(dir, &rows, &progs, &work)? {
            println!("plot: {}", p.display());
        }
    }
    let mut wrong: Vec<String> = report.check_checksums();
    wrong.extend(programs::print(&progs));
    summary::print_cleanup(
        &swaps_before,
        report.used_zram() || programs::used_zram(&progs),
    );
    if !wrong.is_empty() {
        fail!(
            "lego or swap returned wrong data: {} differ from the local run",
            wrong.join(", ")
        );
    }
    Ok(())
}

/// Sizes, signals, placement, the bench's directory and its workload.
fn setup(a: &ExcacheBenchArgs) -> Result<Bench> {
    let size = a
        .size
        .unwrap_or(if a.quick { 256 << 20 } else { 2 << 30 })
        .div_ceil(PAGE)
        * PAGE;
    if size < 16 * PAGE {
        return Err(BenchError::Setup("--size must be at least 64 KiB".into()));
    }
    let reads = a
        .random_reads
        .unwrap_or(if a.quick { 200_000 } else { 2_000_000 });
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).io(|| "cannot handle signals".into())?;
    }
    let placement = Placement::choose(a.placement)?;
    placement.pin_bench()?;
    let dir =
        TempDir(std::env::temp_dir().join(format!("lego-bench-excache-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).io(|| format!("cannot create {}", dir.0.display()))?;
    let workload = compile_workload(&dir.0)?;
    let args = [
        size,
        u64::from(a.forward_passes),
        u64::from(a.backward_passes),
        reads,
    ]
    .iter()
    .map(u64::to_string)
    .collect();
    Ok(Bench {
        size,
        ws: size + SLACK,
        reads,
        job: Job {
            program: workload,
            args,
            env: Vec::new(),
        },
        quick: a.quick,
        variants: Variant::all(a),
        dir,
        placement,
        stop,
        timeout: Duration::from_secs(a.timeout),
        progress: Progress::steps("bench"),
    })
}

/// What the report says before the table: the machine and the workload.
fn header(a: &ExcacheBenchArgs, b: &Bench, swaps_before: &[String]) {
    println!("lego bench excache\n{}", crate::environment(&b.placement));
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
        human(b.size),
        a.forward_passes,
        a.backward_passes,
        commas(b.reads)
    );
    println!(
        "working set W = the array + {} for the rest of the program = {}; \
         ExCache quotas and the cgroup limit are percentages of W\n",
        human(SLACK),
        human(b.ws)
    );
}

/// The reference: the workload with no lego and no limit, twice, keeping
/// the faster (on a VM the first touches of guest memory the host has not
/// backed yet can be slow, and that is not the workload).
fn local_row(b: &Bench) -> Result<Row> {
    let mut best: Option<(Phases, f64)> = None;
    for i in 1..=2 {
        b.progress
            .step(format!("local: no lego, no limit (run {i} of 2)"));
        let mut local = b.job.command();
        local.current_dir(&b.dir.0);
        let f = run_child(local, &b.stop, b.timeout)?;
        let p = match outcome_of(&f) {
            Outcome::Ran(p) => p,
            Outcome::Failed(why) => {
                fail!("the workload failed on its own, with no lego and no limit: {why}")
            }
            _ => unreachable!("outcome_of returns Ran or Failed"),
        };
        match &best {
            Some((b, _)) if b.checksum != p.checksum => fail!(
                "the workload is not deterministic: checksums {} and {} with no lego",
                b.checksum,
                p.checksum
            ),
            Some((b, _)) if b.total() <= p.total() => {}
            _ => best = Some((p, f.wall.as_secs_f64())),
        }
    }
    let (phases, wall) = best.expect("two local runs");
    let mut row = Row::new(None, None, Outcome::Ran(phases));
    row.note = Some(format!("the faster of 2 runs; wall {wall:.1} s"));
    Ok(row)
}

/// The bench's own directory; removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn loadavg() -> String {
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
