//! Test support: real lego daemons as child processes on loopback, always
//! cleaned up (killed on drop, and told to exit if the test process dies).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::auth::Secret;
use lego_wire::control::*;
use lego_wire::Op;

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

/// Polls `f` every 5 ms until it returns Some or `timeout` passes.
/// The python interpreter itself (python3 on PATH may be a shell shim).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "python3 is needed for these tests");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

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

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One daemon process.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
    /// Killed by the test.
    pub dead: bool,
}

impl Daemon {
    pub fn kill9(&mut self) {
        self.dead = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal to the daemon (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.name);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
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

/// A cluster of real daemons in a temporary directory.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub secret: Secret,
    pub manager_addr: String,
    pub heartbeat_ms: u64,
    pub manager: Option<Daemon>,
    pub memories: Vec<Daemon>,
    pub processor: Option<Daemon>,
    pub storage: Option<Daemon>,
    /// Extra flags for the manager (taken at its next start).
    pub manager_flags: Vec<String>,
    spawned: usize,
}

impl TestCluster {
    /// A manager (heartbeat `heartbeat_ms`) and `n` memory monitors of `capacity`.
    pub fn start(n: usize, capacity: &str, heartbeat_ms: u64) -> Self {
        Self::start_with(n, capacity, heartbeat_ms, &[])
    }

    /// [`TestCluster::start`] with extra flags for the manager.
    pub fn start_with(n: usize, capacity: &str, heartbeat_ms: u64, manager_flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::generate().unwrap();
        std::fs::write(dir.path().join("secret"), secret.to_hex()).unwrap();
        let mut c = TestCluster {
            manager_addr: format!("127.0.0.1:{}", free_port()),
            dir,
            secret,
            heartbeat_ms,
            manager: None,
            memories: Vec::new(),
            processor: None,
            storage: None,
            manager_flags: manager_flags.iter().map(|f| f.to_string()).collect(),
            spawned: 0,
        };
        c.start_manager();
        for _ in 0..n {
            c.start_memory(capacity);
        }
        let want = n;
        c.wait_state("all memory monitors alive", |s| {
            alive_memory(s).len() == want
        });
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, name: &str, args: &[&str]) -> Daemon {
        self.spawned += 1;
        let ready = self.path().join(format!("{name}-{}.ready", self.spawned));
        let log = self.path().join(format!("{name}-{}.log", self.spawned));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(LEGO)
            .args(args)
            .arg("--secret-file")
            .arg(self.path().join("secret"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--exit-with")
            .arg(std::process::id().to_string())
            .env("LEGO_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            name: name.into(),
            child,
            addr: String::new(),
            log,
            dead: false,
        };
        d.addr = wait_for(Duration::from_secs(10), &format!("{name} ready"), || {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("{name} exited early ({st}):\n{}", d.log_text());
            }
            let text = std::fs::read_to_string(&ready).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some(v["addr"].as_str()?.to_string())
        });
        d
    }

    pub fn start_manager(&mut self) {
        let db = self.path().join("manager.redb");
        let (addr, hb) = (self.manager_addr.clone(), self.heartbeat_ms.to_string());
        let mut args = vec![
            "manager",
            "--listen",
            &addr,
            "--http",
            "none",
            "--heartbeat-ms",
            &hb,
            "--db",
            db.to_str().unwrap(),
        ];
        let extra = self.manager_flags.clone();
        args.extend(extra.iter().map(String::as_str));
        let d = self.spawn("manager", &args);
        self.manager = Some(d);
    }

    pub fn kill_manager(&mut self) {
        if let Some(mut m) = self.manager.take() {
            m.kill9();
        }
    }

    pub fn start_memory(&mut self, capacity: &str) -> String {
        let mgr = self.manager_addr.clone();
        let d = self.spawn(
            "memory",
            &["memory", "--capacity", capacity, "--manager", &mgr],
        );
        let addr = d.addr.clone();
        self.memories.push(d);
        addr
    }

    /// Starts a storage monitor keeping its files in `PATH/storage` (the same
    /// directory on every start, as a restarted monitor would), and waits
    /// until the manager sees it alive; returns its address.
    pub fn start_storage(&mut self) -> String {
        let (mgr, dir) = (self.manager_addr.clone(), self.path().join("storage"));
        let d = self.spawn(
            "storage",
            &["storage", "--dir", dir.to_str().unwrap(), "--manager", &mgr],
        );
        let addr = d.addr.clone();
        self.storage = Some(d);
        self.wait_state("the storage monitor alive", |s| {
            s.components
                .iter()
                .any(|c| c.role == "storage" && c.health == "alive" && c.addr == addr)
        });
        addr
    }

    /// Starts a processor monitor with `excache` (builds the runtime first if
    /// needed) and waits until the manager sees it alive; returns its address.
    pub fn start_processor(&mut self, excache: &str) -> String {
        let runtime = ensure_runtime();
        let (mgr, jobs) = (self.manager_addr.clone(), self.path().join("jobs"));
        let d = self.spawn(
            "processor",
            &[
                "processor",
                "--excache",
                excache,
                "--manager",
                &mgr,
                "--runtime",
                runtime.to_str().unwrap(),
                "--state-dir",
                jobs.to_str().unwrap(),
            ],
        );
        let addr = d.addr.clone();
        self.processor = Some(d);
        self.wait_state("the processor monitor alive", |s| {
            s.components
                .iter()
                .any(|c| c.role == "processor" && c.health == "alive" && c.addr == addr)
        });
        addr
    }

    /// A component connection to the processor monitor.
    pub fn processor_client(&self) -> Client {
        let addr = &self.processor.as_ref().expect("a processor monitor").addr;
        Client::connect(
            addr,
            &Credentials::component(&self.secret),
            &ClientOptions::default(),
        )
        .expect("connect to the processor monitor")
    }

    /// `lego run FLAGS -- CMD...` against this cluster, not yet started.
    pub fn run_command(&self, flags: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(LEGO);
        c.arg("run")
            .arg("--manager")
            .arg(&self.manager_addr)
            .arg("--secret-file")
            .arg(self.path().join("secret"))
            .args(flags)
            .arg("--")
            .args(cmd);
        c
    }

    /// Asserts that no memory monitor (of those the test did not kill)
    /// holds a page.
    pub fn assert_no_pages(&self, after: &str) {
        for m in self.memories.iter().filter(|m| !m.dead) {
            let c = Client::connect(
                &m.addr,
                &Credentials::component(&self.secret),
                &ClientOptions::default(),
            )
            .expect("connect to memory monitor");
            let held = mem_stats(&c).pages_held;
            assert_eq!(
                held, 0,
                "memory monitor {} holds {held} pages after {after}",
                m.addr
            );
        }
    }

    /// A component connection to the manager.
    pub fn manager_client(&self) -> Client {
        Client::connect(
            &self.manager_addr,
            &Credentials::component(&self.secret),
            &ClientOptions::default(),
        )
        .expect("connect to manager")
    }

    pub fn state(&self) -> ClusterState {
        self.manager_client()
            .call_json(Op::ClusterState, &())
            .expect("cluster state")
    }

    /// Waits until the cluster state satisfies `pred`.
    pub fn wait_state(&self, what: &str, pred: impl Fn(&ClusterState) -> bool) -> ClusterState {
        wait_for(Duration::from_secs(15), what, || {
            let c = Client::connect(
                &self.manager_addr,
                &Credentials::component(&self.secret),
                &ClientOptions::default(),
            )
            .ok()?;
            let s: ClusterState = c.call_json(Op::ClusterState, &()).ok()?;
            pred(&s).then_some(s)
        })
    }

    /// Creates a vNode and an address space in it; returns (vnode id, asid).
    pub fn vnode_space(&self, name: &str) -> (u32, u64) {
        let m = self.manager_client();
        let v: VnodeInfo = m
            .call_json(
                Op::VnodeCreate,
                &VnodeReq {
                    name: name.into(),
                    ..VnodeReq::default()
                },
            )
            .unwrap();
        let s: CreateSpaceResp = m
            .call_json(
                Op::CreateSpace,
                &CreateSpaceReq {
                    vnode: name.into(),
                    owner: None,
                },
            )
            .unwrap();
        (v.id, s.asid)
    }

    pub fn assign(&self, asid: u64, index: u64) -> AssignResp {
        self.manager_client()
            .call_json(Op::AssignVRegion, &AssignReq { asid, index })
            .unwrap()
    }

    /// A connection to a memory monitor as a process of `vnode`.
    pub fn vnode_client(&self, addr: &str, vnode: u32) -> Client {
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

pub fn alive_memory(s: &ClusterState) -> Vec<&ComponentInfo> {
    s.components
        .iter()
        .filter(|c| c.role == "memory" && c.health == "alive")
        .collect()
}

pub fn mem_stats(c: &Client) -> MemStats {
    c.call_json(Op::MemStats, &()).unwrap()
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
