//! [`LocalCluster`]: lego daemons as child processes on loopback.
//!
//! Each daemon is the `lego` binary started with its role's subcommand, in
//! its own process group (so a Ctrl-C reaches only the supervisor, which
//! then stops them in order), with its log appended to `DIR/logs/NAME.log`,
//! told to exit if its supervisor disappears (`--exit-with`). Ports are
//! chosen by the kernel; each daemon reports its address through a ready
//! file in `DIR/run`. A manager started again listens where it did, so
//! that the rest of the cluster finds it. Dropping the cluster stops every
//! daemon.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lego_transport::TransportError;
use lego_wire::auth::Secret;
use lego_wire::control::{ClusterState, ClusterStateReq, MemStatsReq};
use lego_wire::Role;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::warn;

use crate::dir::{load_or_create_secret, write_atomic, ClusterFile, Target};
use crate::{ClusterError, CpuList, Encrypt};

/// How long a daemon may take to be ready, or to register.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// How the daemons of a cluster are started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The secret, the manager's database, logs, ready files, the storage
    /// monitor's files and `cluster.json` live here.
    pub dir: PathBuf,
    /// The `lego` executable the daemons run.
    pub exe: PathBuf,
    pub heartbeat_ms: u64,
    /// `LEGO_LOG` for the daemons (`None`: inherited).
    pub log: Option<String>,
}

/// A whole cluster, for [`LocalCluster::start`].
#[derive(Clone, Debug)]
pub struct Spec {
    pub memory_monitors: usize,
    /// Capacity of each memory monitor, in bytes.
    pub capacity: u64,
    /// CPUs of the memory and storage monitors [default: not pinned].
    pub memory_cpus: Option<CpuList>,
    /// Start a storage monitor too (its files in `DIR/storage`).
    pub storage: bool,
    /// More flags for the manager (e.g. `--vregion-size 16MiB`).
    pub manager_args: Vec<String>,
    /// Spread the daemons over a rack of network namespaces [default: all
    /// on loopback].
    pub rack: Option<RackSpec>,
    /// `--encrypt` of every daemon ([`Encrypt::Auto`]: sealed on a rack,
    /// plaintext on loopback).
    pub encrypt: Encrypt,
    /// Monitors join with one-time tokens and hold keys of their own, not
    /// the cluster secret ([`LocalCluster::join`]).
    pub join: bool,
    /// How many managers, and where they keep the cluster's state.
    pub managers: crate::Managers,
}

/// A rack for [`Spec::rack`]: `hosts` network namespaces, links shaped to
/// `link` (tc syntax, e.g. `10gbit`) if given.
#[derive(Clone, Debug)]
pub struct RackSpec {
    pub hosts: usize,
    pub link: Option<String>,
}

/// The processor monitor of a cluster.
#[derive(Clone, Debug)]
pub struct ProcessorSpec {
    /// ExCache, in bytes.
    pub excache: u64,
    /// `liblego_rt.so` [default: the processor monitor's own default].
    pub runtime: Option<PathBuf>,
    /// CPUs of the processor monitor and its programs [default: not pinned].
    pub cpus: Option<CpuList>,
}

/// One daemon process.
pub struct Daemon {
    /// `manager`, `memory-N`, `storage` or `processor`.
    pub name: String,
    /// Where it serves.
    pub addr: String,
    pub log: PathBuf,
    child: Child,
    exited: bool,
    /// How it was started, to start it again.
    pub(crate) args: Vec<OsString>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (not killed, not exited on its own).
    pub fn running(&mut self) -> bool {
        if !self.exited && matches!(self.child.try_wait(), Ok(Some(_))) {
            self.exited = true;
        }
        !self.exited
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }

    /// Sends it a signal (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, sig: Signal) -> Result<(), ClusterError> {
        kill(Pid::from_raw(self.child.id() as i32), sig).map_err(|e| ClusterError::Io {
            what: format!("cannot send {sig} to the {}", self.name),
            source: e.into(),
        })
    }

    /// Everything it logged, over all its starts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    fn stop(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        let _ = self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    warn!(daemon = %self.name, "did not stop within {grace:?}; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        self.exited = true;
    }
}

/// A cluster of daemons on this machine; dropping it stops them all.
pub struct LocalCluster {
    pub opts: Options,
    pub secret: Secret,
    /// Where the manager serves (fixed once it first started).
    pub manager_addr: String,
    /// Its HTTP endpoint, when it has one.
    pub http: Option<String>,
    pub manager: Option<Daemon>,
    /// More managers on the same etcd (`manager-2`, ...), standing by
    /// while another leads ([`LocalCluster::start_managers`]).
    pub standbys: Vec<Daemon>,
    /// The etcd cluster the managers keep their state on, when started here.
    pub etcd: Option<crate::etcd::EtcdCluster>,
    pub memories: Vec<Daemon>,
    pub storage: Option<Daemon>,
    pub processor: Option<Daemon>,
    /// Flags for the manager, taken at its next start.
    pub manager_flags: Vec<String>,
    /// `--encrypt` of every daemon started from now on.
    pub encrypt: Encrypt,
    /// Monitors started from now on join with a one-time token (made here
    /// with the secret) and keep a key of their own in `DIR/keys/NAME.json`;
    /// they are never given the cluster secret.
    pub join: bool,
    /// Join tokens for the next start of a daemon, by name.
    join_tokens: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
    /// Extra flags of the storage monitor (`--vnode-disk-quota`, ...).
    pub storage_flags: Vec<String>,
    memory_started: usize,
    /// The hosts the daemons run on, if on a rack ([`LocalCluster::set_rack`]);
    /// dropped after the daemons are stopped.
    rack: Option<crate::rack::Rack>,
    /// Which host each daemon runs on (by name), kept across restarts.
    placed: std::collections::BTreeMap<String, usize>,
}

impl LocalCluster {
    /// A cluster with no daemon yet: its directory and secret.
    pub fn new(opts: Options) -> Result<Self, ClusterError> {
        let dir = &opts.dir;
        for sub in ["logs", "run"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|source| ClusterError::Io {
                what: format!("cannot create {}", dir.join(sub).display()),
                source,
            })?;
        }
        if let Ok(f) = ClusterFile::read(dir) {
            if Path::new(&format!("/proc/{}", f.pid)).exists() && f.pid != std::process::id() {
                return Err(ClusterError::AlreadyRunning {
                    dir: dir.clone(),
                    pid: f.pid,
                });
            }
        }
        let _ = std::fs::remove_file(dir.join("cluster.json"));
        Ok(LocalCluster {
            secret: load_or_create_secret(dir)?,
            opts,
            manager_addr: String::new(),
            http: None,
            manager: None,
            standbys: Vec::new(),
            etcd: None,
            memories: Vec::new(),
            storage: None,
            processor: None,
            manager_flags: Vec::new(),
            encrypt: Encrypt::Auto,
            join: false,
            join_tokens: Default::default(),
            storage_flags: Vec::new(),
            memory_started: 0,
            rack: None,
            placed: std::collections::BTreeMap::new(),
        })
    }

    /// Runs the daemons started from now on across the hosts of `rack`:
    /// the manager on host 0, each other daemon on the next host (wrapping
    /// around to host 1). The calling thread moves onto host 0, so that the
    /// cluster's own calls (and every process this thread starts, such as
    /// `lego run`) reach the daemons there.
    pub fn set_rack(&mut self, rack: crate::rack::Rack) -> Result<(), ClusterError> {
        crate::rack::enter(&rack.hosts[0].ns)?;
        self.rack = Some(rack);
        Ok(())
    }

    /// The rack, if the daemons run on one.
    pub fn rack(&self) -> Option<&crate::rack::Rack> {
        self.rack.as_ref()
    }

    /// The host (index into the rack) daemon `name` was placed on, if on a rack.
    pub fn host_index(&self, name: &str) -> Option<usize> {
        self.placed.get(name).copied()
    }

    /// The host (index into the rack) daemon `name` runs on.
    fn host_of(&mut self, name: &str) -> Option<usize> {
        let n = self.rack.as_ref()?.hosts.len();
        if let Some(&h) = self.placed.get(name) {
            return Some(h);
        }
        let h = match (name, n) {
            ("manager", _) | (_, 1) => 0,
            _ => 1 + self.placed.values().filter(|&&h| h != 0).count() % (n - 1),
        };
        self.placed.insert(name.to_string(), h);
        Some(h)
    }

    /// `--listen` on the daemon's host's address, when on a rack.
    fn listen_args(&mut self, name: &str) -> Vec<OsString> {
        match self.host_of(name) {
            Some(h) => {
                let ip = self.rack.as_ref().map(|r| r.hosts[h].ip);
                vec![
                    "--listen".into(),
                    format!("{}:0", ip.expect("a rack")).into(),
                ]
            }
            None => Vec::new(),
        }
    }

    /// A manager, memory monitors, a storage monitor (if asked) and a
    /// processor monitor (if given), every one registered, and
    /// `cluster.json` written for clients.
    pub fn start(
        opts: Options,
        spec: &Spec,
        processor: Option<&ProcessorSpec>,
    ) -> Result<Self, ClusterError> {
        let mut c = LocalCluster::new(opts)?;
        c.manager_flags = spec.manager_args.clone();
        c.encrypt = spec.encrypt;
        c.join = spec.join;
        if let Some(r) = &spec.rack {
            c.set_rack(crate::rack::Rack::create(r.hosts, r.link.as_deref())?)?;
        }
        c.start_managers(&spec.managers)?;
        for _ in 0..spec.memory_monitors {
            c.add_memory(spec.capacity, spec.memory_cpus.as_ref())?;
        }
        if spec.storage {
            // A storage monitor stands for another host, as memory monitors do.
            c.add_storage(spec.memory_cpus.as_ref())?;
        }
        if let Some(p) = processor {
            c.add_processor(p)?;
        }
        c.write_file()?;
        Ok(c)
    }

    /// How clients reach this cluster.
    pub fn target(&self) -> Target {
        Target {
            manager: self.manager_addr.clone(),
            secret: self.secret.clone(),
        }
    }

    /// What `cluster.json` says about it.
    pub fn file(&self) -> ClusterFile {
        ClusterFile {
            manager: self.manager_addr.clone(),
            http: self.http.clone(),
            pid: std::process::id(),
            memory_monitors: self.memories.iter().map(|d| d.addr.clone()).collect(),
            netns: self.rack.as_ref().map(|r| r.hosts[0].ns.clone()),
        }
    }

    /// Writes `DIR/cluster.json`, for clients.
    pub fn write_file(&self) -> Result<(), ClusterError> {
        let text = serde_json::to_string_pretty(&self.file()).expect("serializable");
        write_atomic(&self.opts.dir.join("cluster.json"), text.as_bytes())
    }

    /// Starts the manager: on a kernel-chosen port the first time, where it
    /// was before after that.
    pub fn start_manager(&mut self) -> Result<(), ClusterError> {
        let before = self.manager.as_ref().map(|d| d.addr.clone());
        let (listen, http) = if let Some(addr) = before.filter(|a| !a.is_empty()) {
            let http = self.http.clone().unwrap_or_else(|| "127.0.0.1:0".into());
            (addr, http)
        } else if self.manager_addr.is_empty() {
            let ip = match self.host_of("manager") {
                Some(h) => self.rack.as_ref().expect("a rack").hosts[h].ip.to_string(),
                None => "127.0.0.1".to_string(),
            };
            (format!("{ip}:0"), format!("{ip}:0"))
        } else {
            let http = self.http.clone().unwrap_or_else(|| "127.0.0.1:0".into());
            (self.manager_addr.clone(), http)
        };
        let mut args: Vec<OsString> = ["manager", "--listen", &listen, "--http", &http]
            .iter()
            .map(OsString::from)
            .collect();
        args.extend([
            "--heartbeat-ms".into(),
            self.opts.heartbeat_ms.to_string().into(),
            "--db".into(),
            self.opts.dir.join("manager.redb").into(),
        ]);
        args.extend(self.manager_flags.iter().map(OsString::from));
        if self.on_etcd() && self.manager.is_some() {
            // Started again, it stands by (not ready) while another leads.
            let (mut d, _) = self.launch("manager", args)?;
            d.addr = listen;
            self.manager = Some(d);
            return Ok(());
        }
        let (d, ready) = self.spawn("manager", args)?;
        if !self.on_etcd() {
            self.manager_addr = d.addr.clone();
        }
        self.http = ready["http"].as_str().map(str::to_string);
        self.manager = Some(d);
        Ok(())
    }

    /// Starts another memory monitor of `capacity` bytes, `memory-N`, and
    /// waits until the manager sees it alive; returns its address.
    pub fn add_memory(
        &mut self,
        capacity: u64,
        cpus: Option<&CpuList>,
    ) -> Result<String, ClusterError> {
        self.memory_started += 1;
        let name = format!("memory-{}", self.memory_started);
        let mut args = self.role_args("memory");
        args.extend(self.key_args(&name, Role::Memory)?);
        args.extend(self.listen_args(&name));
        args.extend(["--capacity".into(), capacity.to_string().into()]);
        cpus_arg(&mut args, cpus);
        let (d, _) = self.spawn(&name, args)?;
        let addr = d.addr.clone();
        self.memories.push(d);
        self.wait_alive(Role::Memory, &addr)?;
        Ok(addr)
    }

    /// Starts a storage monitor keeping its files in `DIR/storage` (the same
    /// directory on every start, as a restarted monitor would), and waits
    /// until the manager sees it alive; returns its address.
    pub fn add_storage(&mut self, cpus: Option<&CpuList>) -> Result<String, ClusterError> {
        let mut args = self.role_args("storage");
        args.extend(self.key_args("storage", Role::Storage)?);
        args.extend(self.listen_args("storage"));
        args.extend(["--dir".into(), self.opts.dir.join("storage").into()]);
        args.extend(self.storage_flags.iter().map(OsString::from));
        cpus_arg(&mut args, cpus);
        let (d, _) = self.spawn("storage", args)?;
        let addr = d.addr.clone();
        self.storage = Some(d);
        self.wait_alive(Role::Storage, &addr)?;
        Ok(addr)
    }

    /// Starts the processor monitor and waits until the manager sees it
    /// alive; returns its address.
    pub fn add_processor(&mut self, p: &ProcessorSpec) -> Result<String, ClusterError> {
        let mut args = self.role_args("processor");
        args.extend(self.key_args("processor", Role::Processor)?);
        args.extend(self.listen_args("processor"));
        args.extend([
            "--excache".into(),
            p.excache.to_string().into(),
            "--state-dir".into(),
            self.opts.dir.join("jobs").into(),
        ]);
        if let Some(rt) = &p.runtime {
            args.extend(["--runtime".into(), rt.into()]);
        }
        args.extend(["--hide".into(), self.opts.dir.clone().into()]);
        if !nix::unistd::geteuid().is_root() {
            // Confinement needs root; said in the processor monitor's log.
            args.push("--unconfined".into());
        }
        cpus_arg(&mut args, p.cpus.as_ref());
        let (d, _) = self.spawn("processor", args)?;
        let addr = d.addr.clone();
        self.processor = Some(d);
        self.wait_alive(Role::Processor, &addr)?;
        Ok(addr)
    }

    /// With [`Self::join`]: a fresh join token for the daemon `name` and
    /// the file for its key (kept there across its restarts).
    fn key_args(&self, name: &str, role: Role) -> Result<Vec<OsString>, ClusterError> {
        if !self.join {
            return Ok(Vec::new());
        }
        let keys = self.opts.dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(|source| ClusterError::Io {
            what: format!("cannot create {}", keys.display()),
            source,
        })?;
        let file = keys.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&file);
        let t = self
            .target()
            .connect()?
            .call(&lego_wire::identity::TokenCreateReq { role, ttl_s: 600 })
            .map_err(|source| ClusterError::Unreachable {
                what: format!("the manager for a join token for the {name}"),
                source,
            })?;
        // The token goes in the environment of the first start only (not
        // on a command line others can read); restarts read the key file.
        self.join_tokens
            .borrow_mut()
            .insert(name.to_string(), t.token);
        Ok(vec!["--key-file".into(), file.into()])
    }

    fn role_args(&self, role: &str) -> Vec<OsString> {
        vec![
            role.into(),
            "--manager".into(),
            self.manager_addr.clone().into(),
        ]
    }

    /// Starts one daemon and waits for its ready file; returns it with
    /// what the file said.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        args: Vec<OsString>,
    ) -> Result<(Daemon, serde_json::Value), ClusterError> {
        let (mut d, ready) = self.launch(name, args)?;
        let v = wait_ready(&mut d, &ready)?;
        Ok((d, v))
    }

    /// Starts one daemon; returns it and the ready file it will write.
    pub(crate) fn launch(
        &mut self,
        name: &str,
        args: Vec<OsString>,
    ) -> Result<(Daemon, PathBuf), ClusterError> {
        use std::os::unix::process::CommandExt;
        let dir = &self.opts.dir;
        let ready = dir.join("run").join(format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let log = dir.join("logs").join(format!("{name}.log"));
        let io = |what: String| move |source| ClusterError::Io { what, source };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("cannot open {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("cannot open {}", log.display())))?;
        let host = self.host_of(name);
        let dir = &self.opts.dir;
        let mut cmd = match (host, &self.rack) {
            (Some(h), Some(r)) => r.command(h, self.opts.exe.as_os_str()),
            _ => Command::new(&self.opts.exe),
        };
        cmd.args(&args).arg("--encrypt").arg(self.encrypt.as_flag());
        // A daemon with a key of its own is never given the secret.
        if !args.iter().any(|a| a == "--key-file") {
            cmd.arg("--secret-file").arg(dir.join("secret"));
        }
        cmd.arg("--ready-file")
            .arg(&ready)
            .arg("--exit-with")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some(level) = &self.opts.log {
            cmd.env("LEGO_LOG", level);
        }
        if let Some(token) = self.join_tokens.borrow_mut().remove(name) {
            cmd.env("LEGO_JOIN_TOKEN", token);
        }
        let child = cmd.spawn().map_err(io(format!(
            "cannot start the {name} ({})",
            self.opts.exe.display()
        )))?;
        let d = Daemon {
            name: name.to_string(),
            addr: String::new(),
            log,
            child,
            exited: false,
            args,
        };
        Ok((d, ready))
    }

    /// Waits until the manager sees the component of `role` at `addr` alive.
    fn wait_alive(&self, role: Role, addr: &str) -> Result<(), ClusterError> {
        self.wait_state(&format!("the {role} monitor at {addr} registered"), |s| {
            s.alive(role).any(|c| c.addr == addr)
        })
        .map(drop)
    }

    /// The cluster's state, as the manager sees it.
    pub fn state(&self) -> Result<ClusterState, ClusterError> {
        self.target()
            .manager()
            .call(&ClusterStateReq)
            .map_err(|source| ClusterError::Unreachable {
                what: format!("the lego manager at {}", self.manager_addr),
                source,
            })
    }

    /// Waits (up to 15 s) until the manager's view satisfies `pred`.
    pub fn wait_state(
        &self,
        what: &str,
        pred: impl Fn(&ClusterState) -> bool,
    ) -> Result<ClusterState, ClusterError> {
        let manager = self.target().manager();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(s) = manager.call(&ClusterStateReq) {
                if pred(&s) {
                    return Ok(s);
                }
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady {
                    what: format!("not {what}"),
                    secs: READY_WITHIN.as_secs(),
                    log: self.opts.dir.join("logs"),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pages each memory monitor not stopped by us holds, by address.
    pub fn pages_held(&self) -> Vec<(String, Result<u64, TransportError>)> {
        let target = self.target();
        let mut out = Vec::new();
        for m in self.memories.iter().filter(|m| !m.exited) {
            let held = target
                .connect_to(&m.addr)
                .map_err(|e| match e {
                    ClusterError::Unreachable { source, .. } => source,
                    other => TransportError::Connect {
                        addr: m.addr.clone(),
                        source: std::io::Error::other(other.to_string()),
                    },
                })
                .and_then(|c| c.call(&MemStatsReq))
                .map(|s| s.pages_held);
            out.push((m.addr.clone(), held));
        }
        out
    }

    /// Every daemon, in the order they were started.
    pub fn daemons(&self) -> impl Iterator<Item = &Daemon> {
        self.manager
            .iter()
            .chain(&self.standbys)
            .chain(&self.memories)
            .chain(&self.storage)
            .chain(&self.processor)
    }

    /// Every daemon, to steer.
    pub fn daemons_mut(&mut self) -> impl Iterator<Item = &mut Daemon> {
        self.manager
            .iter_mut()
            .chain(&mut self.standbys)
            .chain(&mut self.memories)
            .chain(&mut self.storage)
            .chain(&mut self.processor)
    }

    /// The daemon called `name` (`manager`, `memory-2`, `storage`, ...).
    pub fn daemon(&mut self, name: &str) -> Result<&mut Daemon, ClusterError> {
        self.daemons_mut()
            .find(|d| d.name == name)
            .ok_or_else(|| ClusterError::NoDaemon(format!("daemon {name}")))
    }

    /// The memory monitor serving at `addr`.
    pub fn memory_at(&mut self, addr: &str) -> Result<&mut Daemon, ClusterError> {
        self.memories
            .iter_mut()
            .find(|d| d.addr == addr)
            .ok_or_else(|| ClusterError::NoDaemon(format!("memory monitor at {addr}")))
    }

    /// Kills a daemon by name with SIGKILL, as a crash would.
    pub fn kill9(&mut self, name: &str) -> Result<(), ClusterError> {
        let d = self.daemon(name)?;
        if !d.running() {
            return Err(ClusterError::NoDaemon(format!("running daemon {name}")));
        }
        d.kill9();
        Ok(())
    }

    /// Starts a stopped daemon again as it was started (the manager on its
    /// old address, a storage monitor over its old files).
    pub fn restart(&mut self, name: &str) -> Result<(), ClusterError> {
        if name == "manager" {
            if self.daemon(name)?.running() {
                return Err(ClusterError::NoDaemon(format!("stopped daemon {name}")));
            }
            return self.start_manager();
        }
        let d = self.daemon(name)?;
        if d.running() {
            return Err(ClusterError::NoDaemon(format!("stopped daemon {name}")));
        }
        let args = d.args.clone();
        if name.starts_with("manager-") {
            return self.restart_standby(name, args);
        }
        let (new, _) = self.spawn(name, args)?;
        *self.daemon(name)? = new;
        Ok(())
    }

    /// Daemons that exited on their own since the last call.
    pub fn check_children(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for d in self.daemons_mut().filter(|d| !d.exited) {
            if let Ok(Some(status)) = d.child.try_wait() {
                d.exited = true;
                gone.push(format!("{} exited ({status})", d.name));
            }
        }
        gone
    }

    /// Stops every daemon, the last started first: SIGTERM, then SIGKILL
    /// after 5 s.
    pub fn stop(&mut self) {
        let _ = std::fs::remove_file(self.opts.dir.join("cluster.json"));
        let mut all: Vec<&mut Daemon> = self.daemons_mut().collect();
        for d in all.iter_mut().rev() {
            d.stop(Duration::from_secs(5));
        }
        // The managers' store goes last.
        self.etcd = None;
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cpus_arg(args: &mut Vec<OsString>, cpus: Option<&CpuList>) {
    if let Some(c) = cpus {
        args.extend(["--cpus".into(), c.to_string().into()]);
    }
}

/// Waits for `d`'s ready file; sets its address from it and returns what
/// it said.
fn wait_ready(d: &mut Daemon, ready: &Path) -> Result<serde_json::Value, ClusterError> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                d.addr = v["addr"].as_str().unwrap_or_default().to_string();
                return Ok(v);
            }
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            d.exited = true;
            return Err(ClusterError::Exited {
                name: d.name.clone(),
                status: status.to_string(),
                log: tail(&d.log),
            });
        }
        if Instant::now() > deadline {
            d.kill9();
            return Err(ClusterError::NotReady {
                what: format!("the {} was not ready", d.name),
                secs: READY_WITHIN.as_secs(),
                log: d.log.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
