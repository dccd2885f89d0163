//! The processor monitor's request handler, its ExCache quotas, and the
//! waiter that cleans up after each job.
//!
//! Requests (component connections only: a vNode's process may not start or
//! steer jobs):
//!
//! | op | does |
//! |---|---|
//! | `Launch` | grants a quota out of the ExCache, spawns the program under the runtime |
//! | `Output` | long-poll: buffered stdout/stderr chunks, then the exit chunk |
//! | `Stdin` | bytes for the program's stdin; empty closes it |
//! | `Signal` | a signal to the job's process group |
//! | `Jobs` | every job known, with the runtime's counters |
//!
//! A job's end (see [`wait_job`]): reap the main process, SIGKILL the rest of
//! its process group, drain its pipes, free its address spaces everywhere
//! (`ReleaseOwner` at the manager), return its quota, then publish its exit
//! code. When the connection that launched a job goes away first, the job is
//! killed (as ssh does) and cleaned up the same way.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use lego_transport::{Handler, PeerInfo, Reject, ServerCounters};
use lego_wire::auth::{Claim, Secret};
use lego_wire::control::{from_body, to_body, LaunchReq, LaunchResp, OutputReq, SignalReq};
use lego_wire::io::{decode_stdin, Stream};
use lego_wire::{ErrorCode, Op, PAGE_SIZE};
use tracing::{info, warn};

use crate::job::{read_counters, Job};
use crate::manager::ManagerLink;
use crate::mounts::MountPlan;
use crate::spawn::{hex, program_env, spawn, EnterVia, RuntimeEnv};
use crate::{chain, human, ProcessorError};

/// How long a finished job's exit code and counters are kept for a client
/// that has not collected them.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);
/// Longest `Output` long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Default quota: this fraction of the ExCache.
const DEFAULT_QUOTA_DIVISOR: u64 = 4;

/// What the service needs to know.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// ExCache bytes this monitor divides among its jobs.
    pub excache: u64,
    /// Absolute path of `liblego_rt.so`.
    pub runtime: PathBuf,
    /// The manager's address (also given to the runtime).
    pub manager: String,
    pub secret: Secret,
    /// Where the runtime of each job writes its counters.
    pub state_dir: PathBuf,
    /// The `lego` executable with the vNode helper ([`crate::enter`]).
    pub enter_exe: PathBuf,
    /// Whether jobs may get a network namespace of their vNode's own (root
    /// and iproute2's `ip` are there).
    pub own_networks: bool,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    failed: AtomicU64,
    killed: AtomicU64,
    refused: AtomicU64,
    not_entitled: AtomicU64,
    spaces_reaped: AtomicU64,
}

struct Shared {
    cfg: ServiceConfig,
    manager: ManagerLink,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    /// Sum of the quotas of jobs not yet cleaned up.
    granted: Mutex<u64>,
    counters: Counters,
}

/// Serves `Launch`, `Output`, `Stdin`, `Signal` and `Jobs`.
pub struct ProcessorService {
    shared: Arc<Shared>,
    /// Set once the server runs, for the counters it keeps.
    pub server: OnceLock<Arc<ServerCounters>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessorService {
    pub fn new(cfg: ServiceConfig) -> Self {
        let manager = ManagerLink::new(cfg.manager.clone(), cfg.secret.clone());
        ProcessorService {
            shared: Arc::new(Shared {
                cfg,
                manager,
                jobs: Mutex::new(BTreeMap::new()),
                granted: Mutex::new(0),
                counters: Counters::default(),
            }),
            server: OnceLock::new(),
        }
    }

    /// Bytes of ExCache granted to jobs.
    pub fn granted(&self) -> u64 {
        *lock(&self.shared.granted)
    }

    /// Every job known (running, or finished and not yet forgotten).
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        lock(&self.shared.jobs).values().cloned().collect()
    }

    /// The monitor's counters, and the runtime counters of running jobs
    /// summed as `rt_NAME`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let jobs = self.jobs();
        let running: Vec<&Arc<Job>> = jobs.iter().filter(|j| j.running()).collect();
        let granted = self.granted();
        let mut m: BTreeMap<String, u64> = [
            ("jobs_started_total", g(&c.started)),
            ("jobs_running", running.len() as u64),
            ("jobs_failed_total", g(&c.failed)),
            ("jobs_killed_total", g(&c.killed)),
            ("launches_refused_total", g(&c.refused)),
            ("not_entitled_total", g(&c.not_entitled)),
            ("spaces_reaped_total", g(&c.spaces_reaped)),
            ("excache_granted_bytes", granted),
            ("excache_capacity_bytes", self.shared.cfg.excache),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for j in running {
            for (k, v) in j.counters().into_iter().filter(|(k, _)| additive(k)) {
                *m.entry(format!("rt_{k}")).or_default() += v;
            }
        }
        if let Some(sc) = self.server.get() {
            m.extend(sc.snapshot().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        m
    }

    /// Starts the thread that frees the memory of a job's processes that
    /// exited while the job runs on (children of a shell, say), and forgets
    /// finished jobs nobody collects.
    pub fn spawn_janitor(&self) -> std::io::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("processor-janitor".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                reap_spaces(&shared);
                let jobs: Vec<Arc<Job>> = lock(&shared.jobs).values().cloned().collect();
                for j in jobs.iter().filter(|j| j.running()) {
                    j.log_quota_refusals(&j.counters());
                }
                lock(&shared.jobs).retain(|_, j| !j.forgettable(KEEP_FINISHED));
            })?;
        Ok(())
    }

    /// Kills every running job and waits (up to `timeout`) for their cleanup.
    pub fn shutdown(&self, timeout: Duration) {
        let running: Vec<Arc<Job>> = self.jobs().into_iter().filter(|j| j.running()).collect();
        for j in &running {
            warn!(job = format_args!("{:x}", j.id), argv = ?j.argv, "the processor monitor stops: killing the job");
            j.launcher_gone();
            let _ = j.signal(rustix::process::Signal::KILL.as_raw());
        }
        let deadline = Instant::now() + timeout;
        while running.iter().any(|j| j.running()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn quota(&self, req: &LaunchReq) -> Result<u64, ProcessorError> {
        let cap = self.shared.cfg.excache;
        let page = PAGE_SIZE as u64;
        let bytes = match (req.excache, req.excache_percent) {
            (Some(_), Some(_)) => {
                return Err(ProcessorError::BadQuota(
                    "give either bytes or a percentage, not both".into(),
                ))
            }
            (Some(0), None) => return Err(ProcessorError::BadQuota("0 bytes".into())),
            (Some(b), None) => b.div_ceil(page).saturating_mul(page),
            (None, Some(p)) if p == 0 || p > 100 => {
                return Err(ProcessorError::BadQuota(format!(
                    "{p}% is not between 1% and 100%"
                )))
            }
            (None, Some(p)) => (cap / 100 * p as u64 / page * page).max(page),
            (None, None) => (cap / DEFAULT_QUOTA_DIVISOR / page * page).max(page),
        };
        Ok(bytes)
    }

    fn reserve(&self, bytes: u64) -> Result<(), ProcessorError> {
        let cap = self.shared.cfg.excache;
        let mut g = lock(&self.shared.granted);
        let free = cap.saturating_sub(*g);
        if bytes > free {
            return Err(ProcessorError::ExCacheExhausted {
                requested: bytes,
                free,
                capacity: cap,
            });
        }
        *g += bytes;
        Ok(())
    }

    fn launch(&self, peer: &PeerInfo, req: LaunchReq) -> Result<LaunchResp, ProcessorError> {
        let cfg = &self.shared.cfg;
        if req.argv.is_empty() {
            return Err(ProcessorError::NoCommand);
        }
        if !cfg.runtime.is_file() {
            return Err(ProcessorError::RuntimeMissing {
                path: cfg.runtime.clone(),
            });
        }
        let quota = self.quota(&req)?;
        let vnode = self.shared.manager.vnode_mount(&req.vnode)?;
        let vnode_id = match &vnode {
            Some(v) => v.id,
            None => self.shared.manager.vnode_id(&req.vnode)?,
        };
        self.reserve(quota)?;
        match self.start(peer, req, vnode_id, vnode, quota) {
            Ok(r) => Ok(r),
            Err(e) => {
                *lock(&self.shared.granted) -= quota;
                Err(e)
            }
        }
    }

    /// Starts a job through the helper that mounts its vNode's files, and
    /// serves those mounts before the program runs.
    fn spawn_in_vnode(
        &self,
        id: u64,
        req: &LaunchReq,
        env: &[(String, String)],
        plan: &MountPlan,
    ) -> Result<std::process::Child, ProcessorError> {
        let cfg = &self.shared.cfg;
        let socket = cfg.state_dir.join(format!("job-{id:016x}.fuse"));
        let _ = std::fs::remove_file(&socket);
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).map_err(ProcessorError::Thread)?;
        let via = EnterVia {
            exe: cfg.enter_exe.clone(),
            socket: socket.clone(),
            vnode: plan.vnode.clone(),
            mounts: plan.mounts.clone(),
            vip: plan.vip.clone(),
        };
        let spawned = spawn(&req.argv, env, &req.cwd, Some(&via));
        let served = spawned.and_then(|mut child| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            match crate::mounts::serve(&listener, plan, deadline) {
                Ok(()) => Ok(child),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    warn!(vnode = %plan.vnode, "cannot mount the vnode's files: {why}");
                    Err(ProcessorError::NoFiles {
                        vnode: plan.vnode.clone(),
                        why,
                    })
                }
            }
        });
        let _ = std::fs::remove_file(&socket);
        served
    }

    fn start(
        &self,
        peer: &PeerInfo,
        req: LaunchReq,
        vnode_id: u32,
        vnode: Option<lego_wire::control::VnodeInfo>,
        quota: u64,
    ) -> Result<LaunchResp, ProcessorError> {
        let cfg = &self.shared.cfg;
        let id = loop {
            let rnd = lego_wire::auth::random_bytes().map_err(|e| {
                ProcessorError::Thread(std::io::Error::other(format!("no randomness: {e}")))
            })?;
            let id = u64::from_le_bytes(rnd[..8].try_into().expect("8 bytes"));
            if id != 0 && !lock(&self.shared.jobs).contains_key(&id) {
                break id;
            }
        };
        let stats = cfg.state_dir.join(format!("job-{id:016x}.json"));
        let spaces = spaces_dir(cfg, id);
        std::fs::create_dir_all(&spaces).map_err(ProcessorError::Thread)?;
        let rt = RuntimeEnv {
            runtime: cfg.runtime.clone(),
            manager: cfg.manager.clone(),
            vnode: req.vnode.clone(),
            vnode_id,
            key_hex: hex(&cfg.secret.vnode_key(vnode_id)),
            excache: quota,
            job: id,
            stats: stats.clone(),
            spaces,
            memory_quota: vnode.as_ref().and_then(|v| v.memory_quota),
            host_netns: None,
        };
        let plan = vnode.and_then(|v| {
            let storage = v.storage?;
            let vip =
                (!v.host_network && !v.vip.is_empty() && cfg.own_networks).then(|| v.vip.clone());
            let (shared, name) = (self.shared.clone(), v.name.clone());
            let resolve: crate::vfs::Resolver = Arc::new(move || {
                let v = shared.manager.vnode_mount(&name).ok().flatten()?;
                Some(v.storage?.addr)
            });
            Some(MountPlan {
                vnode_id,
                vnode: v.name,
                mounts: v.mounts,
                storage: storage.addr,
                key: cfg.secret.vnode_key(vnode_id),
                resolve: Some(resolve),
                vip,
            })
        });
        let mut rt = rt;
        if plan.as_ref().is_some_and(|p| p.vip.is_some()) {
            rt.host_netns = Some(format!("/proc/{}/ns/net", std::process::id()));
        }
        let env = program_env(&req.env, &rt);
        let mut child = match &plan {
            None => spawn(&req.argv, &env, &req.cwd, None)?,
            Some(plan) => self.spawn_in_vnode(id, &req, &env, plan)?,
        };
        let pid = child.id();
        let job = Arc::new(Job::new(
            id,
            pid,
            req.vnode.clone(),
            req.argv.clone(),
            quota,
            peer.conn,
            stats,
            child.stdin.take(),
        ));
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let started = (|| {
            if let Some(p) = out {
                job.start_reader(Stream::Stdout, p)?;
            }
            if let Some(p) = err {
                job.start_reader(Stream::Stderr, p)?;
            }
            Ok(())
        })();
        if let Err(e) = started {
            let _ = job.signal(rustix::process::Signal::KILL.as_raw());
            let _ = child.wait();
            return Err(ProcessorError::Thread(e));
        }
        lock(&self.shared.jobs).insert(id, job.clone());
        let (shared, j) = (self.shared.clone(), job.clone());
        let waiter = std::thread::Builder::new()
            .name(format!("job-{:x}-wait", id & 0xffff))
            .spawn(move || wait_job(&shared, &j, child));
        if let Err(e) = waiter {
            // Without a waiter nobody would clean up: refuse the job.
            let _ = job.signal(rustix::process::Signal::KILL.as_raw());
            lock(&self.shared.jobs).remove(&id);
            return Err(ProcessorError::Thread(e));
        }
        self.shared.counters.started.fetch_add(1, Ordering::Relaxed);
        info!(
            job = format_args!("{id:x}"),
            pid,
            vnode = %req.vnode,
            excache = %human(quota),
            argv = ?req.argv,
            "job started"
        );
        Ok(LaunchResp {
            job: id,
            pid,
            excache: quota,
        })
    }

    fn job(&self, id: u64) -> Result<Arc<Job>, ProcessorError> {
        lock(&self.shared.jobs)
            .get(&id)
            .cloned()
            .ok_or(ProcessorError::NoSuchJob(id))
    }

    fn dispatch(&self, peer: &PeerInfo, op: Op, body: &[u8]) -> Result<Vec<u8>, Reject> {
        match op {
            Op::Launch => {
                let req: LaunchReq = from_body(body)?;
                let argv = req.argv.clone();
                self.launch(peer, req).map(|r| to_body(&r)).map_err(|e| {
                    self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    info!(?argv, "launch refused: {}", chain(&e));
                    e.into()
                })
            }
            Op::Output => {
                let req: OutputReq = from_body(body)?;
                let job = self.job(req.job)?;
                let mut out = Vec::new();
                job.poll_output(
                    Duration::from_millis(req.max_wait_ms).min(MAX_WAIT),
                    &mut out,
                );
                Ok(out)
            }
            Op::Stdin => {
                let (id, data) = decode_stdin(body)?;
                self.job(id)?.write_stdin(data)?;
                Ok(Vec::new())
            }
            Op::Signal => {
                let req: SignalReq = from_body(body)?;
                let job = self.job(req.job)?;
                if job.signal(req.signal)? {
                    info!(
                        job = format_args!("{:x}", req.job),
                        signal = req.signal,
                        "job signalled"
                    );
                }
                Ok(b"{}".to_vec())
            }
            Op::Jobs => {
                let list: Vec<_> = self.jobs().iter().map(|j| j.info()).collect();
                Ok(to_body(&list))
            }
            Op::Ping => Ok(Vec::new()),
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("a processor monitor does not serve {other}"),
            )),
        }
    }
}

/// Whether a runtime counter means something summed over jobs (an address
/// space id or a percentile does not).
fn additive(name: &str) -> bool {
    name != "asid" && !name.contains("_p50") && !name.contains("_p99")
}

/// The end of a job; runs on the job's own thread, which owns the child.
fn wait_job(shared: &Shared, job: &Job, mut child: Child) {
    let status = loop {
        match child.wait() {
            Ok(s) => break Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(
                    job = format_args!("{:x}", job.id),
                    "cannot wait for the job: {e}"
                );
                break None;
            }
        }
    };
    if job.reaped() {
        info!(
            job = format_args!("{:x}", job.id),
            "killed what the job left running in its process group"
        );
    }
    if !job.wait_group_gone(Duration::from_secs(2)) {
        warn!(
            job = format_args!("{:x}", job.id),
            "processes of the job's group still exist 2 s after SIGKILL"
        );
    }
    job.close_stdin();
    job.wait_pipes();
    let (code, how) = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, format!("status {c}")),
            (None, Some(sig)) => (128 + sig, format!("signal {sig}")),
            _ => (125, format!("{s}")),
        },
        None => (125, "an unknown status".to_string()),
    };
    match status.map(|s| (s.code(), s.signal())) {
        Some((Some(0), _)) => {}
        Some((None, Some(_))) => {
            shared.counters.killed.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let counters = read_counters(&job.stats_path);
    let _ = std::fs::remove_dir_all(spaces_dir(&shared.cfg, job.id));
    let _ = std::fs::remove_file(&job.stats_path);
    let freed = match shared.manager.release_owner(job.id) {
        Ok(r) => {
            if !r.unreachable.is_empty() {
                warn!(
                    job = format_args!("{:x}", job.id),
                    unreachable = ?r.unreachable,
                    "some memory monitors could not be told to free the job's pages"
                );
            }
            format!("{} pages freed", r.freed_pages)
        }
        Err(e) => {
            warn!(
                job = format_args!("{:x}", job.id),
                "the job's memory could not be freed: {}",
                chain(&e)
            );
            "its memory NOT freed".to_string()
        }
    };
    *lock(&shared.granted) -= job.excache;
    info!(
        job = format_args!("{:x}", job.id),
        "job {:x} ({}) exited with {how}; {freed}",
        job.id,
        job.argv.join(" ")
    );
    job.log_quota_refusals(&counters);
    job.finish(code, counters);
}

impl Handler for ProcessorService {
    fn handle(
        &self,
        peer: &PeerInfo,
        op: Op,
        body: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        if let Claim::Vnode(v) = peer.claim {
            if op != Op::Ping {
                self.shared
                    .counters
                    .not_entitled
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Reject::new(
                    ErrorCode::NotEntitled,
                    format!("{op} needs a component connection; this one is vnode {v}'s"),
                ));
            }
        }
        *reply = self.dispatch(peer, op, body)?;
        Ok(())
    }

    fn disconnected(&self, peer: &PeerInfo) {
        let mine: Vec<Arc<Job>> = lock(&self.shared.jobs)
            .values()
            .filter(|j| j.launcher == peer.conn)
            .cloned()
            .collect();
        for j in mine {
            if j.launcher_gone() {
                warn!(
                    job = format_args!("{:x}", j.id),
                    argv = ?j.argv,
                    "the client of the job went away; killing the job"
                );
                let _ = j.signal(rustix::process::Signal::KILL.as_raw());
            } else {
                lock(&self.shared.jobs).remove(&j.id);
            }
        }
    }
}

/// Where the processes of job `id` record their address spaces.
fn spaces_dir(cfg: &ServiceConfig, id: u64) -> std::path::PathBuf {
    cfg.state_dir.join(format!("spaces-{id:016x}"))
}

/// Releases the address spaces of a running job's processes that are gone
/// (each process records `<pid>` -> its asid in the job's spaces directory).
fn reap_spaces(shared: &Shared) {
    let running: Vec<Arc<Job>> = lock(&shared.jobs)
        .values()
        .filter(|j| j.running())
        .cloned()
        .collect();
    for job in running {
        let Ok(entries) = std::fs::read_dir(spaces_dir(&shared.cfg, job.id)) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let asid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
            if let Some(asid) = asid {
                match shared.manager.release_space(asid) {
                    Ok(r) => {
                        shared
                            .counters
                            .spaces_reaped
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            job = format_args!("{:x}", job.id),
                            pid,
                            freed = r.freed_pages,
                            "an exited process's memory was freed"
                        );
                    }
                    Err(e) => {
                        warn!(
                            pid,
                            "cannot free an exited process's memory yet: {}",
                            chain(&e)
                        );
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}
