//! `lego chaos`: checksum-verified programs on an embedded local cluster
//! while memory monitors, the storage monitor and the manager are killed
//! (`kill -9`) and restarted at random; prints every failure injected, how
//! long recovery took, the verdict on every output, and the pages left on
//! the memory monitors at the end.
//!
//! Rules that keep every failure survivable, as the system promises:
//! a memory monitor is killed only while every vRegion has two live copies
//! and all memory monitors are up (so never both copies of a vRegion at
//! once), and a replacement joins before the next; the storage monitor is
//! killed only after the file program's fsync; the manager at any time.

mod inject;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use lego_cluster::size::{parse_duration, parse_size};
use lego_cluster::{LocalCluster, Options, ProcessorSpec, Spec, Target};
use lego_transport::{lock, Redial};
use lego_wire::control::{ClusterState, ClusterStateReq, VnodeCreateReq};
use lego_wire::{ComponentId, Role, VRegionState};

use crate::progress::Progress;
use crate::{fail, CallContext, IoContext, Result};
use inject::{inject, report};
use workload::Verdict;

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// How long to inject failures (e.g. 10m, 90s); the programs then finish
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "TIME")]
    pub duration: Duration,
    /// Mean time between injected failures (each waits for the previous recovery)
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "TIME")]
    pub every: Duration,
    /// Memory monitors (at least 3: one may die while the others hold two copies of everything)
    #[arg(long, default_value_t = 3)]
    pub memory_monitors: usize,
    /// Memory programs running at once
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Memory each memory program fills; its ExCache is a quarter of it
    #[arg(long, default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub size: u64,
    /// Seed of the failure sequence [default: from the clock]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the cluster lives [default: a new temporary directory, removed after]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Heartbeat interval of the cluster (a silent component is dead after two)
    #[arg(long, default_value_t = 300, value_name = "MS")]
    pub heartbeat_ms: u64,
    /// The runtime library (liblego_rt.so) [default: next to the lego executable]
    #[arg(long, env = "LEGO_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Managers: more than one needs --store etcd; the manager kills then
    /// kill the one that leads, and a standby takes over
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub managers: usize,
    /// Where the managers keep the cluster's state: redb, etcd (a local
    /// 3-member etcd cluster) or etcd://HOST:PORT[,...]
    #[arg(long, default_value = "redb", value_parser = lego_cluster::Store::parse, value_name = "STORE")]
    pub store: lego_cluster::Store,
}

/// A tiny deterministic generator for the failure sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the programs reported.
#[derive(Default)]
struct Tally {
    right: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    file_right: AtomicU64,
    file_wrong: AtomicU64,
    file_failed: AtomicU64,
}

/// What a failure killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Memory,
    Manager,
    Storage,
}

impl Victim {
    const ALL: [Victim; 3] = [Victim::Memory, Victim::Manager, Victim::Storage];

    fn label(self) -> &'static str {
        match self {
            Victim::Memory => "memory monitor",
            Victim::Manager => "manager",
            Victim::Storage => "storage monitor",
        }
    }
}

/// One injected failure and its recovery.
struct Injected {
    victim: Victim,
    recovered_ms: Option<u64>,
}

/// The shared state of one chaos run.
struct Chaos {
    start: Instant,
    dir: PathBuf,
    cluster: Mutex<LocalCluster>,
    target: Target,
    manager: Redial,
    /// Capacity of each memory monitor, for those that join.
    capacity: u64,
    progress: Progress,
    expected: workload::Expected,
    tally: Tally,
    stop: AtomicBool,
    /// Set by the injector: the file worker kills the storage monitor at its
    /// next point after an fsync, and clears it.
    storage_kill: AtomicBool,
    storage_recovered_ms: Mutex<Option<Option<u64>>>,
    mib: u64,
}

impl Chaos {
    fn say(&self, text: &str) {
        let at = self.start.elapsed();
        self.progress.at(at);
        self.progress
            .println(format!("[{:>7.1}s] {text}", at.as_secs_f64()));
    }

    fn state(&self) -> Option<ClusterState> {
        self.manager.call(&ClusterStateReq).ok()
    }

    /// Waits until `f` holds of the cluster state; returns how long it took.
    fn wait(&self, limit: Duration, f: impl Fn(&ClusterState) -> bool) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.state().is_some_and(|s| f(&s)) {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// `1.25 s`, `10m 00s`.
fn secs(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60)
    }
}

fn alive(s: &ClusterState, role: Role) -> usize {
    s.alive(role).count()
}

/// Every vRegion has all its copies on memory monitors the manager has
/// heard from (alive, not merely not yet declared dead), none on `dead`.
fn healthy(s: &ClusterState, dead: Option<ComponentId>) -> bool {
    let live = |id: &ComponentId| Some(*id) != dead && s.alive(Role::Memory).any(|c| c.id == *id);
    s.vregions.iter().all(|r| {
        r.state == VRegionState::Healthy
            && live(&r.primary)
            && r.backup.is_none_or(|b| b.on().is_some_and(live))
    })
}

fn complete(s: &ClusterState, memory: usize) -> bool {
    alive(s, Role::Memory) >= memory
        && alive(s, Role::Processor) >= 1
        && alive(s, Role::Storage) >= 1
}

pub fn run(a: ChaosArgs) -> Result<i32> {
    if a.memory_monitors < 3 {
        fail!("lego chaos needs at least 3 memory monitors (--memory-monitors), so that one can die while every vRegion keeps two copies on the others");
    }
    if a.workers == 0 || a.size < (8 << 20) {
        fail!("lego chaos needs at least 1 worker and --size of at least 8MiB");
    }
    if a.managers > 1 && a.store == lego_cluster::Store::Redb {
        fail!(
            "--managers {} needs a store they share: add --store etcd",
            a.managers
        );
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let (dir, _tmp) = match &a.dir {
        Some(d) => (d.clone(), None),
        None => {
            let d = std::env::temp_dir().join(format!("lego-chaos-{}", std::process::id()));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    let mib = a.size >> 20;
    println!(
        "lego chaos: {} of failures, one every ~{} s, seed {seed}; {} memory monitors, {} memory programs of {mib} MiB (ExCache {} MiB) and 1 file program",
        secs(a.duration.as_millis() as u64),
        a.every.as_secs_f64(),
        a.memory_monitors,
        a.workers,
        mib / 4
    );
    if a.managers > 1 || a.store != lego_cluster::Store::Redb {
        println!(
            "managers: {} on {}; a manager kill kills the one that leads",
            a.managers.max(1),
            match &a.store {
                lego_cluster::Store::Redb => "redb".to_string(),
                lego_cluster::Store::LocalEtcd { members } =>
                    format!("a local etcd cluster of {members} members"),
                lego_cluster::Store::Etcd(url) => url.clone(),
            }
        );
    }
    println!(
        "{}",
        crate::environment(&crate::placement::Placement::Shared)
    );
    let scratch = dir.join("expected");
    std::fs::create_dir_all(&scratch).io(|| format!("cannot create {}", scratch.display()))?;
    let expected = workload::learn(mib, &scratch)?;
    let excache = (a.workers as u64 * a.size / 4 + (256 << 20)).max(1 << 30);
    let spec = Spec {
        memory_monitors: a.memory_monitors,
        capacity: (a.workers as u64 * a.size * 2).max(2 << 30),
        memory_cpus: None,
        storage: true,
        encrypt: lego_cluster::Encrypt::Auto,
        join: false,
        manager_args: vec!["--vregion-size".into(), "16MiB".into()],
        rack: None,
        managers: lego_cluster::Managers {
            count: a.managers.max(1),
            store: a.store.clone(),
            lease_ttl_s: 3,
        },
    };
    let processor = ProcessorSpec {
        excache,
        runtime: a.runtime.clone(),
        cpus: None,
    };
    let opts = Options {
        dir: dir.clone(),
        exe: std::env::current_exe().io(|| "cannot find the lego executable".into())?,
        heartbeat_ms: a.heartbeat_ms,
        log: None,
    };
    let cluster = LocalCluster::start(opts, &spec, Some(&processor))?;
    let target = cluster.target();
    let manager = target.manager();
    manager
        .call(&VnodeCreateReq {
            name: "chaos".into(),
            replicas: Some(2),
            ..VnodeCreateReq::default()
        })
        .call_for(|| "cannot create the vnode chaos".into())?;
    let chaos = Arc::new(Chaos {
        start: Instant::now(),
        dir: dir.clone(),
        cluster: Mutex::new(cluster),
        target,
        manager,
        capacity: spec.capacity,
        progress: Progress::timed("chaos", a.duration),
        expected,
        tally: Tally::default(),
        stop: AtomicBool::new(false),
        storage_kill: AtomicBool::new(false),
        storage_recovered_ms: Mutex::new(None),
        mib,
    });
    let mut workers = Vec::new();
    for w in 0..a.workers {
        let c = chaos.clone();
        workers.push(std::thread::spawn(move || memory_worker(&c, w as u64)));
    }
    {
        let c = chaos.clone();
        workers.push(std::thread::spawn(move || file_worker(&c)));
    }
    // Ctrl-C or SIGTERM ends the injections early; the report still comes.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())
            .io(|| "cannot handle signals".into())?;
    }
    let injected = inject(&chaos, &a, seed, &interrupted);
    chaos.stop.store(true, Ordering::Relaxed);
    chaos.say("no more failures; waiting for the programs to finish");
    chaos.progress.finish();
    for w in workers {
        let _ = w.join();
    }
    report(&chaos, &a, &injected)
}

/// A directory removed when the run ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memory_worker(c: &Chaos, w: u64) {
    let mut n = w;
    while !c.stop.load(Ordering::Relaxed) {
        let seed = n % workload::SEEDS;
        n += 1;
        let cmd = vec![
            "python3".to_string(),
            "-c".to_string(),
            workload::memory_program(seed, c.mib),
        ];
        let (v, took, _) = workload::judge(
            &c.dir,
            "chaos",
            Some((c.mib << 20) / 4),
            &cmd,
            &c.expected.memory[seed as usize],
            Duration::from_secs(60),
        );
        let t = &c.tally;
        match v {
            Verdict::Right => t.right.fetch_add(1, Ordering::Relaxed),
            Verdict::Wrong => {
                c.say(&format!(
                    "memory program (seed {seed}) printed WRONG output after {:.1} s",
                    took.as_secs_f64()
                ));
                t.wrong.fetch_add(1, Ordering::Relaxed)
            }
            Verdict::Failed(why) => {
                c.say(&format!("memory program (seed {seed}) failed: {why}"));
                t.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn file_worker(c: &Chaos) {
    let mut k = 0u64;
    while !c.stop.load(Ordering::Relaxed) {
        let seed = k % workload::SEEDS;
        let path = format!("/data/chaos-{k}.bin");
        k += 1;
        let want = &c.expected.file[seed as usize];
        let w = vec![
            "python3".to_string(),
            "-c".to_string(),
            workload::file_writer(seed, &path),
        ];
        let patience = Duration::from_secs(60);
        let (v, _, _) = workload::judge(&c.dir, "chaos", None, &w, want, patience);
        if !tally_file(c, "file writer", &v) {
            continue;
        }
        if c.storage_kill.load(Ordering::Relaxed) {
            let rec = kill_storage(c, &path);
            *lock(&c.storage_recovered_ms) = Some(rec);
            c.storage_kill.store(false, Ordering::Relaxed);
        }
        let (v, _, _) = workload::judge(
            &c.dir,
            "chaos",
            None,
            &workload::file_reader(&path),
            want,
            patience,
        );
        tally_file(c, "file read back", &v);
    }
}

fn tally_file(c: &Chaos, what: &str, v: &Verdict) -> bool {
    let t = &c.tally;
    match v {
        Verdict::Right => {
            t.file_right.fetch_add(1, Ordering::Relaxed);
            true
        }
        Verdict::Wrong => {
            c.say(&format!("{what}: WRONG checksum"));
            t.file_wrong.fetch_add(1, Ordering::Relaxed);
            false
        }
        Verdict::Failed(why) => {
            c.say(&format!("{what} failed: {why}"));
            t.file_failed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Kills the storage monitor (its last file fsynced), restarts it, and
/// returns how long until the manager saw it alive again.
fn kill_storage(c: &Chaos, synced: &str) -> Option<u64> {
    let t = Instant::now();
    if let Err(e) = lock(&c.cluster).kill9("storage") {
        c.say(&format!("cannot kill the storage monitor: {e}"));
        return None;
    }
    std::thread::sleep(Duration::from_millis(300));
    let restarted = {
        let mut cl = lock(&c.cluster);
        cl.restart("storage").map(|()| {
            cl.storage
                .as_ref()
                .map(|d| d.addr.clone())
                .unwrap_or_default()
        })
    };
    let addr = match restarted {
        Ok(addr) => addr,
        Err(e) => {
            c.say(&format!("cannot restart the storage monitor: {e}"));
            return None;
        }
    };
    let back = c.wait(Duration::from_secs(30), |s| {
        s.alive(Role::Storage).any(|x| x.addr == addr)
    });
    let ms = back.map(|_| t.elapsed().as_millis() as u64);
    c.say(&format!(
        "kill -9 storage monitor after the fsync of {synced}: serving again after {}",
        ms.map_or("(not within 30 s)".to_string(), secs)
    ));
    ms
}
