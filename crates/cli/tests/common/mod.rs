//! Test support: real lego daemons as child processes on loopback, started
//! with the same launcher as `lego up` ([`lego_cluster::LocalCluster`]) in a
//! temporary directory, always cleaned up (stopped on drop, and told to exit
//! if the test process dies); plus the helpers the tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lego_cluster::size::parse_size;
#[allow(unused_imports)]
pub use lego_cluster::{Daemon, LocalCluster, Options, ProcessorSpec, Signal};
use lego_transport::{Client, ClientOptions, Credentials, Redial};
use lego_wire::control::*;
use lego_wire::{Asid, Role, VRegionIdx, VnodeId};

pub mod etcd;
mod programs;
#[allow(unused_imports)]
pub use programs::*;

pub const LEGO: &str = env!("CARGO_BIN_EXE_lego");

/// The ExCache runtime the daemons preload, built once per test binary with
/// `$CARGO build -p lego-rt` (into the directory of the lego binary, where the
/// processor monitor looks by default). `LEGO_RUNTIME=PATH` (inherited by
/// every daemon and `lego run`) uses that file instead and builds nothing.
pub fn ensure_runtime() -> PathBuf {
    static RUNTIME: OnceLock<PathBuf> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("LEGO_RUNTIME") {
                return PathBuf::from(p);
            }
            let bin_dir = Path::new(LEGO).parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "lego-rt"]);
            if bin_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let out = cmd.output().expect("run cargo");
            assert!(
                out.status.success(),
                "cannot build the runtime:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let so = bin_dir.join("liblego_rt.so");
            assert!(so.is_file(), "{} was not built", so.display());
            so
        })
        .clone()
}

/// The python interpreter itself (python3 on PATH may be a shell shim).
/// The deepest first descendant of `pid` (a job's program, under its
/// helper and the init of its PID namespace).
pub fn leaf_process(pid: u32) -> u32 {
    let mut p = pid;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        match children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            Some(c) => p = c,
            None => return p,
        }
    }
}

/// A temporary directory any user may read (a confined program reads its
/// working directory with the rights of any local user).
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The system's python3: a confined program sees the host's /usr, not a
/// python installed under a user's home (pyenv, conda).
pub fn python() -> String {
    let py = "/usr/bin/python3";
    assert!(
        Path::new(py).exists(),
        "{py} is needed for these tests (apt-get install python3; .ci/run does)"
    );
    py.to_string()
}

/// A cluster with no daemon yet in a new directory, its manager to be
/// started with `manager_flags`.
fn new_cluster(heartbeat_ms: u64, manager_flags: &[&str]) -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::new(Options {
        dir: dir.path().to_path_buf(),
        exe: PathBuf::from(LEGO),
        heartbeat_ms,
        log: Some("debug".into()),
    })
    .unwrap();
    c.manager_flags = manager_flags.iter().map(|f| f.to_string()).collect();
    (dir, c)
}

/// Polls `f` every 5 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `lego up` (or any child) that is killed when the test ends, also when
/// it fails halfway, so no cluster outlives its test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn size(s: &str) -> u64 {
    parse_size(s).expect("a size")
}

/// A cluster of real daemons in a temporary directory (removed after the
/// cluster has stopped); derefs to the [`LocalCluster`].
pub struct TestCluster {
    cluster: Option<LocalCluster>,
    dir: tempfile::TempDir,
    /// The working directory of `lego run` (shown to confined programs
    /// read-only; readable by any user, unlike the cluster's directory).
    work: tempfile::TempDir,
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        self.cluster.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        self.cluster.as_mut().expect("running")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Stopped before the directory goes.
        drop(self.cluster.take());
        // LEGO_TEST_KEEP=1 keeps the logs of a failed test to read.
        if std::thread::panicking() && std::env::var_os("LEGO_TEST_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("kept the cluster's directory: {}", kept.display());
        }
    }
}

impl TestCluster {
    /// A manager (heartbeat `heartbeat_ms`) and `n` memory monitors of `capacity`.
    pub fn start(n: usize, capacity: &str, heartbeat_ms: u64) -> Self {
        Self::start_with(n, capacity, heartbeat_ms, &[])
    }

    /// A manager at `addr` (a fixed address: with `--store etcd`, the
    /// leader's key names it) with `manager_flags`, no memory monitor yet.
    pub fn with_manager_at(addr: &str, manager_flags: &[&str]) -> Self {
        let (dir, mut c) = new_cluster(200, manager_flags);
        c.manager_addr = addr.to_string();
        c.start_manager().unwrap();
        TestCluster {
            cluster: Some(c),
            dir,
            work: shared_dir(),
        }
    }

    /// `count` managers on the etcd at `url` (leases of `ttl_s`), with
    /// `manager_flags`: the first leads, the others (`manager-2`, ...)
    /// stand by; clients are given them all. No memory monitor yet.
    pub fn with_managers(count: usize, url: &str, ttl_s: u64, manager_flags: &[&str]) -> Self {
        let (dir, mut c) = new_cluster(200, manager_flags);
        c.start_managers(&lego_cluster::Managers {
            count,
            store: lego_cluster::Store::Etcd(url.to_string()),
            lease_ttl_s: ttl_s,
        })
        .unwrap();
        TestCluster {
            cluster: Some(c),
            dir,
            work: shared_dir(),
        }
    }

    /// Where components and programs started from now on find the manager
    /// (`A,B`: several, the leader among them).
    pub fn set_manager_addr(&mut self, addr: &str) {
        self.cluster.as_mut().unwrap().manager_addr = addr.to_string();
    }

    /// [`TestCluster::start`] with extra flags for the manager.
    pub fn start_with(n: usize, capacity: &str, heartbeat_ms: u64, manager_flags: &[&str]) -> Self {
        let (dir, mut c) = new_cluster(heartbeat_ms, manager_flags);
        c.start_manager().unwrap();
        for _ in 0..n {
            c.add_memory(size(capacity), None).unwrap();
        }
        TestCluster {
            cluster: Some(c),
            dir,
            work: shared_dir(),
        }
    }

    /// A cluster spread over a rack of `hosts` network namespaces, links
    /// shaped to `link`: the manager on host 0, two memory monitors of
    /// `capacity`, a storage monitor and a processor monitor with `excache`
    /// on the next hosts. The calling thread (the test) moves onto host 0.
    pub fn on_rack(hosts: usize, link: Option<&str>, capacity: &str, excache: &str) -> Self {
        let mut c = Self::rack_of(hosts, link, 2, capacity, &[], true);
        c.start_processor(excache);
        c
    }

    /// A manager (with `manager_flags`, 300 ms heartbeats) and `memories`
    /// memory monitors of `capacity`, and a storage monitor if `storage`,
    /// spread over a rack of `hosts` network namespaces with links shaped to
    /// `link`, the manager on host 0. The calling thread moves onto host 0.
    pub fn rack_of(
        hosts: usize,
        link: Option<&str>,
        memories: usize,
        capacity: &str,
        manager_flags: &[&str],
        storage: bool,
    ) -> Self {
        Self::rack_with(
            hosts,
            link,
            memories,
            capacity,
            manager_flags,
            storage,
            false,
        )
    }

    /// [`TestCluster::rack_of`], its monitors joined with one-time tokens
    /// (each holding a key of its own, never the cluster secret) if `join`.
    pub fn rack_with(
        hosts: usize,
        link: Option<&str>,
        memories: usize,
        capacity: &str,
        manager_flags: &[&str],
        storage: bool,
        join: bool,
    ) -> Self {
        let (dir, mut c) = new_cluster(300, manager_flags);
        c.set_rack(lego_cluster::rack::Rack::create(hosts, link).unwrap())
            .unwrap();
        c.join = join;
        c.start_manager().unwrap();
        for _ in 0..memories {
            c.add_memory(size(capacity), None).unwrap();
        }
        if storage {
            c.add_storage(None).unwrap();
        }
        TestCluster {
            cluster: Some(c),
            dir,
            work: shared_dir(),
        }
    }

    /// The cluster's directory (hidden from confined programs).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The working directory of [`TestCluster::run_command`]: files a
    /// program reads go here.
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// Kills the manager (kill -9).
    pub fn kill_manager(&mut self) {
        self.kill9("manager").unwrap();
    }

    /// Starts the manager again where it was, with `manager_flags`.
    pub fn restart_manager(&mut self) {
        self.start_manager().unwrap();
    }

    pub fn start_memory(&mut self, capacity: &str) -> String {
        self.add_memory(size(capacity), None).unwrap()
    }

    /// Starts a storage monitor keeping its files in `PATH/storage` (the
    /// same directory on every start, as a restarted monitor would), and
    /// waits until the manager sees it alive; returns its address.
    pub fn start_storage(&mut self) -> String {
        self.add_storage(None).unwrap()
    }

    /// Starts a processor monitor with `excache` (builds the runtime first if
    /// needed) and waits until the manager sees it alive; returns its address.
    pub fn start_processor(&mut self, excache: &str) -> String {
        let runtime = Some(ensure_runtime());
        self.add_processor(&ProcessorSpec {
            excache: size(excache),
            runtime,
            cpus: None,
        })
        .unwrap()
    }

    pub fn creds(&self) -> Credentials {
        Credentials::component(&self.secret)
    }

    /// A component connection to the processor monitor.
    pub fn processor_client(&self) -> Client {
        let addr = &self.processor.as_ref().expect("a processor monitor").addr;
        Client::connect(addr, &self.creds(), &ClientOptions::default())
            .expect("connect to the processor monitor")
    }

    /// `lego run FLAGS -- CMD...` against this cluster, not yet started.
    pub fn run_command(&self, flags: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(LEGO);
        c.current_dir(self.work())
            .arg("run")
            .arg("--manager")
            .arg(&self.manager_addr)
            .arg("--secret-file")
            .arg(self.path().join("secret"))
            .args(flags)
            .arg("--")
            .args(cmd);
        c
    }

    /// Asserts that no running memory monitor holds a page.
    pub fn assert_no_pages(&self, after: &str) {
        for (addr, held) in self.pages_held() {
            let held = held.expect("ask a memory monitor for its pages");
            assert_eq!(
                held, 0,
                "memory monitor {addr} holds {held} pages after {after}"
            );
        }
    }

    /// A component connection to the manager.
    pub fn manager_client(&self) -> Client {
        Client::connect(&self.manager_addr, &self.creds(), &ClientOptions::default())
            .expect("connect to manager")
    }

    /// The manager, for typed calls.
    pub fn mgr(&self) -> Redial {
        self.target().manager()
    }

    pub fn cluster_state(&self) -> ClusterState {
        self.state().expect("cluster state")
    }

    /// Waits (up to 15 s) until the cluster state satisfies `pred`.
    pub fn wait_until(&self, what: &str, pred: impl Fn(&ClusterState) -> bool) -> ClusterState {
        self.wait_state(what, pred)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a vNode and an address space in it; returns (vnode id, asid).
    pub fn vnode_space(&self, name: &str) -> (VnodeId, Asid) {
        let m = self.mgr();
        let v = m
            .call(&VnodeCreateReq {
                name: name.into(),
                ..VnodeCreateReq::default()
            })
            .unwrap();
        let s = m
            .call(&CreateSpaceReq {
                vnode: name.into(),
                owner: None,
                proof: None,
            })
            .unwrap();
        (v.id, s.asid)
    }

    pub fn assign(&self, asid: Asid, index: u64) -> AssignResp {
        self.mgr()
            .call(&AssignReq {
                asid,
                index: VRegionIdx(index),
            })
            .unwrap()
    }

    /// A connection to a memory monitor as a process of `vnode`.
    pub fn vnode_client(&self, addr: &str, vnode: VnodeId) -> Client {
        Client::connect(
            addr,
            &Credentials::vnode(vnode, self.secret.vnode_key(vnode)),
            &ClientOptions::default(),
        )
        .expect("connect to memory monitor")
    }

    /// Runs the lego CLI against this cluster's manager.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(LEGO)
            .args(args)
            .arg("--manager")
            .arg(&self.manager_addr)
            .arg("--secret-file")
            .arg(self.path().join("secret"))
            .output()
            .unwrap()
    }
}

/// Python hashing 1 GiB of seeded random data, then re-reading every 7th
/// MiB backwards: its output is the same wherever its memory lives.
pub const HASH_1GIB: &str = r#"
import hashlib, random
r = random.Random(42)
chunks = [r.randbytes(1 << 20) for _ in range(1024)]
h = hashlib.sha256()
for c in chunks:
    h.update(c)
for c in reversed(chunks[::7]):
    h.update(c[:4096])
print(h.hexdigest(), len(chunks), sum(len(c) for c in chunks))
"#;

/// The live memory monitors.
pub fn alive_memory(s: &ClusterState) -> Vec<&ComponentInfo> {
    s.alive(Role::Memory).collect()
}

pub fn mem_stats(c: &Client) -> MemStats {
    c.call(&MemStatsReq).unwrap()
}

/// Deterministic page content for page `p` of a test.
pub fn page_content(seed: u64, p: u64) -> Vec<u8> {
    let mut x = seed ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..lego_wire::PAGE_SIZE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Runs `cmd` to completion, collecting its output, and calls `tick` every
/// 10 ms while it runs; a command still running after `limit` is killed and
/// fails the test instead of hanging it.
pub fn output_watched(mut cmd: Command, limit: Duration, mut tick: impl FnMut()) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        tick();
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `n` bytes of garbage from the xorshift state `x` (advanced).
pub fn junk(x: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x as u8
        })
        .collect()
}
