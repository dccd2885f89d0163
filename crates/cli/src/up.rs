//! `lego up`: a local cluster on loopback (a manager, memory monitors, a
//! storage monitor and a processor monitor), and the launcher behind it that
//! `lego bench` and `lego run` (its embedded cluster) reuse.
//!
//! Each daemon is this same binary started as a child process in its own
//! process group (so a Ctrl-C reaches `lego up`, which then stops the children
//! in order), with its log in `DIR/logs/ROLE.log`, told to exit if `lego up`
//! disappears. Ports are chosen by the kernel; each daemon reports its address
//! through a ready file. Once every memory monitor (and the processor
//! monitor, when there is one) has registered with the manager,
//! `DIR/cluster.json` tells clients where the manager is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use lego_wire::auth::Secret;
use lego_wire::control::ClusterState;
use lego_wire::Op;
use tracing::{info, warn};

use crate::cluster::{default_dir, load_or_create_secret, write_atomic, ClusterFile, Target};
use crate::cpus::{parse_cpu_list, CpuList};
use crate::size::{human, parse_size};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many memory monitors to start
    #[arg(long, default_value_t = 2)]
    pub memory_monitors: usize,
    /// Capacity of each memory monitor
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub capacity: u64,
    /// Directory for the secret, the manager's database, logs and cluster.json
    /// [default: $LEGO_DIR, else ~/.lego]
    #[arg(long, env = "LEGO_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Heartbeat interval of the cluster, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,
    /// ExCache of the processor monitor: local memory divided among the
    /// processes it runs (each gets a quota; the rest of their memory lives on
    /// the memory monitors)
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub excache: u64,
    /// The ExCache runtime for the processor monitor [default: liblego_rt.so
    /// next to the lego executable]
    #[arg(long, env = "LEGO_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Run the memory monitors only on these CPUs (e.g. 1 or 2-3)
    #[arg(long, value_parser = parse_cpu_list, value_name = "LIST")]
    pub memory_cpus: Option<CpuList>,
    /// Run the processor monitor and its programs only on these CPUs
    #[arg(long, value_parser = parse_cpu_list, value_name = "LIST")]
    pub processor_cpus: Option<CpuList>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    pub dir: PathBuf,
    pub memory_monitors: usize,
    pub capacity: u64,
    pub heartbeat_ms: u64,
    /// CPUs of the memory monitors [default: not pinned].
    pub memory_cpus: Option<CpuList>,
    /// Start a storage monitor too (its files in `DIR/storage`).
    pub storage: bool,
    /// More flags for the manager (e.g. `--vregion-size 16MiB`).
    pub manager_args: Vec<String>,
}

/// The processor monitor to start with the cluster.
#[derive(Clone, Debug)]
pub struct ProcessorSpec {
    pub excache: u64,
    /// `liblego_rt.so` [default: the processor monitor's own default].
    pub runtime: Option<PathBuf>,
    /// CPUs of the processor monitor and its programs [default: not pinned].
    pub cpus: Option<CpuList>,
}

struct Daemon {
    name: String,
    child: Child,
    exited: bool,
    /// How it was started, to start it again.
    args: Vec<String>,
    path_args: Vec<(String, std::ffi::OsString)>,
    /// Where it serves, once ready.
    addr: String,
}

/// A running local cluster; stopping it (or dropping it) stops every daemon.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub file: ClusterFile,
    pub secret: Secret,
    /// The processor monitor's address, when the cluster has one.
    pub processor: Option<String>,
    /// The storage monitor's address, when the cluster has one.
    pub storage: Option<String>,
    daemons: Vec<Daemon>,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl LocalCluster {
    /// A manager and memory monitors, no processor monitor.
    pub fn start(spec: &Spec) -> Result<Self> {
        Self::start_with(spec, None)
    }

    /// A manager, memory monitors and, with `processor`, a processor monitor.
    pub fn start_with(spec: &Spec, processor: Option<&ProcessorSpec>) -> Result<Self> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::create_dir_all(dir.join("run"))?;
        if let Ok(text) = std::fs::read_to_string(dir.join("cluster.json")) {
            if let Ok(f) = serde_json::from_str::<ClusterFile>(&text) {
                if pid_alive(f.pid) && f.pid != std::process::id() {
                    bail!(
                        "a lego cluster is already running in {} (lego up, pid {}): stop it, or use another --dir",
                        dir.display(),
                        f.pid
                    );
                }
            }
            let _ = std::fs::remove_file(dir.join("cluster.json"));
        }
        let secret = load_or_create_secret(dir)?;
        let mut cluster = LocalCluster {
            dir: dir.clone(),
            file: ClusterFile {
                manager: String::new(),
                http: None,
                pid: std::process::id(),
                memory_monitors: Vec::new(),
            },
            secret,
            processor: None,
            storage: None,
            daemons: Vec::new(),
        };
        let hb = spec.heartbeat_ms.to_string();
        let db = dir.join("manager.redb");
        let mut args = vec![
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--heartbeat-ms",
            &hb,
        ];
        args.extend(spec.manager_args.iter().map(String::as_str));
        let ready = cluster.spawn("manager", &args, &[("--db", db.as_os_str())])?;
        cluster.file.manager = ready["addr"].as_str().unwrap_or_default().to_string();
        cluster.file.http = ready["http"].as_str().map(str::to_string);
        // Started again (see `restart`), it listens where it did.
        let (addr, http) = (cluster.file.manager.clone(), cluster.file.http.clone());
        if let Some(d) = cluster.daemons.last_mut() {
            d.args[2] = addr;
            d.args[4] = http.unwrap_or_else(|| "127.0.0.1:0".into());
        }
        let cap = spec.capacity.to_string();
        let memory_cpus = spec.memory_cpus.as_ref().map(|c| c.to_string());
        for i in 1..=spec.memory_monitors {
            let manager = cluster.file.manager.clone();
            let mut args = vec!["memory", "--capacity", &cap, "--manager", &manager];
            if let Some(c) = &memory_cpus {
                args.extend(["--cpus", c]);
            }
            let ready = cluster.spawn(&format!("memory-{i}"), &args, &[])?;
            cluster
                .file
                .memory_monitors
                .push(ready["addr"].as_str().unwrap_or_default().to_string());
        }
        if spec.storage {
            let manager = cluster.file.manager.clone();
            let sdir = dir.join("storage");
            let mut args = vec!["storage", "--manager", &manager];
            if let Some(c) = &memory_cpus {
                // A storage monitor stands for another host, as memory monitors do.
                args.extend(["--cpus", c]);
            }
            let ready = cluster.spawn("storage", &args, &[("--dir", sdir.as_os_str())])?;
            cluster.storage = ready["addr"].as_str().map(str::to_string);
        }
        if let Some(p) = processor {
            let (manager, excache) = (cluster.file.manager.clone(), p.excache.to_string());
            let jobs = dir.join("jobs");
            let mut paths = vec![("--state-dir", jobs.as_os_str())];
            if let Some(rt) = &p.runtime {
                paths.push(("--runtime", rt.as_os_str()));
            }
            let cpus = p.cpus.as_ref().map(|c| c.to_string());
            let mut args = vec!["processor", "--excache", &excache, "--manager", &manager];
            if let Some(c) = &cpus {
                args.extend(["--cpus", c]);
            }
            let ready = cluster.spawn("processor", &args, &paths)?;
            cluster.processor = ready["addr"].as_str().map(str::to_string);
        }
        cluster.wait_registered(spec.memory_monitors)?;
        write_atomic(
            &dir.join("cluster.json"),
            serde_json::to_string_pretty(&cluster.file)?.as_bytes(),
        )?;
        Ok(cluster)
    }

    /// Starts one daemon and waits for its ready file.
    fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        path_args: &[(&str, &std::ffi::OsStr)],
    ) -> Result<serde_json::Value> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("cannot find the lego executable")?;
        let ready = self.dir.join("run").join(format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .arg("--secret-file")
            .arg(self.dir.join("secret"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--exit-with")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        for (flag, value) in path_args {
            cmd.arg(flag).arg(value);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        self.daemons.push(Daemon {
            name: name.to_string(),
            child,
            exited: false,
            args: args.iter().map(|a| a.to_string()).collect(),
            path_args: path_args
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_os_string()))
                .collect(),
            addr: String::new(),
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let d = self.daemons.last_mut().expect("just pushed");
                    d.addr = v["addr"].as_str().unwrap_or_default().to_string();
                    return Ok(v);
                }
            }
            let d = self.daemons.last_mut().expect("just pushed");
            if let Some(status) = d.child.try_wait()? {
                d.exited = true;
                bail!(
                    "the {name} exited ({status}) before it was ready:\n{}",
                    tail(&log_path)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the {name} was not ready within 15 s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_registered(&self, memory_monitors: usize) -> Result<()> {
        let target = self.target();
        let client = target.connect()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st: ClusterState = client.call_json(Op::ClusterState, &())?;
            let alive = st
                .components
                .iter()
                .filter(|c| {
                    c.role == "memory"
                        && c.health == "alive"
                        && self.file.memory_monitors.contains(&c.addr)
                })
                .count();
            let up = |role: &str, addr: &Option<String>| {
                addr.as_ref().is_none_or(|a| {
                    st.components
                        .iter()
                        .any(|c| c.role == role && c.health == "alive" && &c.addr == a)
                })
            };
            let (processor_alive, storage_alive) = (
                up("processor", &self.processor),
                up("storage", &self.storage),
            );
            if alive >= memory_monitors && processor_alive && storage_alive {
                return Ok(());
            }
            if Instant::now() > deadline {
                if !processor_alive {
                    bail!("the processor monitor did not register within 15 s");
                }
                if !storage_alive {
                    bail!("the storage monitor did not register within 15 s");
                }
                bail!("only {alive} of {memory_monitors} memory monitors registered within 15 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How clients reach this cluster.
    pub fn target(&self) -> Target {
        Target {
            manager: self.file.manager.clone(),
            secret: self.secret.clone(),
        }
    }

    /// The pid of a daemon by name (`manager`, `memory-1`, ...).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.daemons
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.child.id())
    }

    /// Kills a daemon by name with SIGKILL, as a crash would.
    pub fn kill9(&mut self, name: &str) -> Result<()> {
        let d = self
            .daemons
            .iter_mut()
            .find(|d| d.name == name && !d.exited)
            .with_context(|| format!("no running daemon {name}"))?;
        d.child.kill()?;
        d.child.wait()?;
        d.exited = true;
        Ok(())
    }

    /// Starts a stopped daemon again as it was started (a manager on its
    /// old address); returns its ready record.
    pub fn restart(&mut self, name: &str) -> Result<serde_json::Value> {
        let i = self
            .daemons
            .iter()
            .position(|d| d.name == name && d.exited)
            .with_context(|| format!("no stopped daemon {name}"))?;
        let d = self.daemons.remove(i);
        let args: Vec<&str> = d.args.iter().map(String::as_str).collect();
        let paths: Vec<(&str, &std::ffi::OsStr)> = d
            .path_args
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_os_str()))
            .collect();
        self.spawn(name, &args, &paths)
    }

    /// Starts another memory monitor like the first one, named `name`;
    /// returns its address.
    pub fn add_memory(&mut self, name: &str) -> Result<String> {
        let args = self
            .daemons
            .iter()
            .find(|d| d.name.starts_with("memory-"))
            .map(|d| d.args.clone())
            .context("the cluster has no memory monitor to copy")?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ready = self.spawn(name, &args, &[])?;
        let addr = ready["addr"].as_str().unwrap_or_default().to_string();
        self.file.memory_monitors.push(addr.clone());
        Ok(addr)
    }

    /// The name of the running daemon serving at `addr`.
    pub fn memory_name(&self, addr: &str) -> Option<String> {
        self.daemons
            .iter()
            .find(|d| d.addr == addr && !d.exited)
            .map(|d| d.name.clone())
    }

    /// Reports daemons that exited on their own since the last call.
    pub fn check_children(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for d in self.daemons.iter_mut().filter(|d| !d.exited) {
            if let Ok(Some(status)) = d.child.try_wait() {
                d.exited = true;
                gone.push(format!("{} exited ({status})", d.name));
            }
        }
        gone
    }

    /// Stops every daemon: SIGTERM, then SIGKILL after 5 s; memory monitors first.
    pub fn stop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("cluster.json"));
        for d in self.daemons.iter_mut().rev().filter(|d| !d.exited) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(d.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match d.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        warn!(daemon = %d.name, "did not stop within 5 s; killing it");
                        let _ = d.child.kill();
                        let _ = d.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            d.exited = true;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub fn run(a: UpArgs) -> Result<()> {
    if a.memory_monitors < 2 {
        warn!("with fewer than two memory monitors no vRegion can be placed (each needs a primary and a backup)");
    }
    // The processor monitor would refuse to start without the runtime: say
    // so before starting anything.
    let runtime = a
        .runtime
        .clone()
        .unwrap_or_else(lego_processor::default_runtime_path);
    lego_processor::check_runtime(&runtime)
        .map_err(|e| anyhow::anyhow!(lego_processor::chain(&e)))?;
    let dir = a.dir.clone().unwrap_or_else(default_dir);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut cluster = LocalCluster::start_with(
        &Spec {
            dir: dir.clone(),
            memory_monitors: a.memory_monitors,
            capacity: a.capacity,
            heartbeat_ms: a.heartbeat_ms,
            memory_cpus: a.memory_cpus.clone(),
            storage: true,
            manager_args: Vec::new(),
        },
        Some(&ProcessorSpec {
            excache: a.excache,
            runtime: a.runtime.clone(),
            cpus: a.processor_cpus.clone(),
        }),
    )?;
    let dir_flag = if a.dir.is_some() {
        format!(" --dir {}", dir.display())
    } else {
        String::new()
    };
    println!("lego cluster up in {}", dir.display());
    println!("  manager          {}", cluster.file.manager);
    if let Some(h) = &cluster.file.http {
        println!("  state, metrics   http://{h}/state  http://{h}/metrics");
    }
    for (i, m) in cluster.file.memory_monitors.iter().enumerate() {
        println!("  memory monitor {} {m} ({})", i + 1, human(a.capacity));
    }
    if let Some(p) = &cluster.processor {
        println!("  processor        {p} ({} ExCache)", human(a.excache));
    }
    if let Some(s) = &cluster.storage {
        println!(
            "  storage          {s} (files in {})",
            dir.join("storage").display()
        );
    }
    println!("  secret           {}", dir.join("secret").display());
    println!("  logs             {}", dir.join("logs").display());
    println!("run programs with `lego run{dir_flag} -- CMD`, see it with `lego status{dir_flag}`; Ctrl-C stops the cluster");
    while !stop.load(Ordering::Relaxed) {
        for gone in cluster.check_children() {
            warn!("{gone}; see {}", dir.join("logs").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    info!("stopping the cluster");
    cluster.stop();
    println!("lego cluster stopped");
    Ok(())
}
