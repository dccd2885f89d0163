//! A job's life in the processor monitor: its ExCache quota, its start
//! (the runtime's environment, its vNode's mounts and network, the spawn,
//! the readers of its output, the waiter), its end, and freeing the memory
//! of its processes that exit while it runs on.
//!
//! A job's end (see [`wait_job`]): reap the main process, SIGKILL the rest
//! of its process group, drain its pipes, free its address spaces everywhere
//! (`ReleaseOwner` at the manager), return its quota, then publish its exit
//! code.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_transport::{lock, Credentials, PeerInfo};
use lego_wire::control::VnodeInfo;
use lego_wire::jobs::{LaunchReq, LaunchResp, Stream};
use lego_wire::types::identity;
use lego_wire::{VnodeId, PAGE_SIZE};
use tracing::{info, warn};

use crate::enter::Confine;
use crate::job::Job;
use crate::mounts::MountPlan;
use crate::rtstats::RtCounter;
use crate::shared::{ServiceConfig, Shared};
use crate::spawn::{program_env, spawn, EnterVia, RuntimeEnv};
use crate::{chain, human, ProcessorError};

/// Default quota: this fraction of the ExCache.
const DEFAULT_QUOTA_DIVISOR: u64 = 4;
/// How long a job's vNode mounts may take to come up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);

impl Shared {
    /// The quota a launch asks for, in whole pages.
    fn quota(&self, req: &LaunchReq) -> Result<u64, ProcessorError> {
        let cap = self.cfg.excache;
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
        let cap = self.cfg.excache;
        let mut g = lock(&self.granted);
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

    /// Starts a job: its quota out of the ExCache, then the program.
    pub(crate) fn launch(
        self: &Arc<Self>,
        peer: &PeerInfo,
        req: LaunchReq,
    ) -> Result<LaunchResp, ProcessorError> {
        let cfg = &self.cfg;
        if req.argv.is_empty() {
            return Err(ProcessorError::NoCommand);
        }
        if !cfg.runtime.is_file() {
            return Err(ProcessorError::RuntimeMissing {
                path: cfg.runtime.clone(),
            });
        }
        let quota = self.quota(&req)?;
        let vnode = self.manager.vnode_mount(&req.vnode)?;
        self.reserve(quota)?;
        self.start(peer, req, vnode, quota).inspect_err(|_| {
            *lock(&self.granted) -= quota;
        })
    }

    /// A fresh random job id (never 0, never one in use).
    fn new_job_id(&self) -> Result<u64, ProcessorError> {
        loop {
            let rnd = lego_wire::auth::random_bytes().map_err(|e| {
                ProcessorError::Thread(std::io::Error::other(format!("no randomness: {e}")))
            })?;
            let id = u64::from_le_bytes(rnd[..8].try_into().expect("8 bytes"));
            if id != 0 && !lock(&self.jobs).contains_key(&id) {
                return Ok(id);
            }
        }
    }

    /// Whether the vNode's jobs here get its network ([`crate::vnet`]).
    fn own_network(&self, v: &VnodeInfo) -> bool {
        let cfg = &self.cfg;
        cfg.confine && !v.host_network && !v.vip.is_empty() && cfg.own_networks
    }

    /// What the job's helper sets up: the vNode's mounts (when it is
    /// confined and its files are placed) and its network (`netns`).
    fn mount_plan(
        self: &Arc<Self>,
        v: &VnodeInfo,
        netns: Option<PathBuf>,
        keys: &JobKeys,
    ) -> MountPlan {
        let cfg = &self.cfg;
        let storage = v.storage.as_ref().filter(|_| cfg.confine);
        let (shared, name) = (self.clone(), v.name.clone());
        let resolve: crate::vfs::Resolver = Arc::new(move || {
            let v = shared.manager.vnode_mount(&name).ok()?;
            Some(v.storage?.addr)
        });
        MountPlan {
            vnode_id: v.id,
            vnode: v.name.clone(),
            mounts: storage.map(|_| v.mounts.clone()).unwrap_or_default(),
            storage: storage.map(|s| s.addr.clone()).unwrap_or_default(),
            owner: identity(v.id).filter(|_| cfg.confine),
            creds: Credentials::vnode(v.id, keys.vnode_key).fetching_from(&cfg.manager),
            resolve: Some(resolve),
            netns,
        }
    }

    /// The vNode's key and the job's proof: made here with the cluster
    /// secret, or (a monitor that joined with a token) given by the manager.
    fn job_keys(&self, job: u64, vnode: VnodeId) -> Result<JobKeys, ProcessorError> {
        if let Some(s) = self.cfg.auth.secret() {
            return Ok(JobKeys {
                vnode_key: s.vnode_key(vnode),
                job_proof: s.job_proof_hex(job, vnode),
            });
        }
        let got = self.manager.job_keys(job, vnode)?;
        let key = lego_wire::auth::Secret::from_hex(&got.vnode_key).map_err(|e| {
            ProcessorError::NoFiles {
                vnode: vnode.to_string(),
                why: format!("the manager's vnode key: {e}"),
            }
        })?;
        Ok(JobKeys {
            vnode_key: *key.as_bytes(),
            job_proof: got.job_proof,
        })
    }

    /// What the runtime inside the job's processes is told.
    fn runtime_env(&self, id: u64, v: &VnodeInfo, quota: u64, keys: &JobKeys) -> RuntimeEnv {
        let cfg = &self.cfg;
        RuntimeEnv {
            runtime: cfg.runtime.clone(),
            manager: cfg.manager.clone(),
            vnode: v.name.clone(),
            vnode_id: v.id,
            key_hex: lego_wire::auth::hex(&keys.vnode_key),
            excache: quota,
            job: id,
            job_proof: keys.job_proof.clone(),
            memory_quota: v.memory_quota,
        }
    }

    fn start(
        self: &Arc<Self>,
        peer: &PeerInfo,
        req: LaunchReq,
        vnode: VnodeInfo,
        quota: u64,
    ) -> Result<LaunchResp, ProcessorError> {
        let id = self.new_job_id()?;
        if !req.publish.is_empty() && !self.own_network(&vnode) {
            let why = match (vnode.host_network, self.cfg.confine && self.cfg.own_networks) {
                (true, _) => "it shares its host's network (its ports are the host's already)",
                (false, _) => "this processor monitor gives jobs no network of their own (it runs unconfined or without iproute2)",
            };
            return Err(ProcessorError::CannotPublish {
                vnode: vnode.name.clone(),
                why: why.into(),
            });
        }
        let netns = match self.own_network(&vnode) {
            true => Some(
                self.vnets
                    .acquire(id, vnode.id, &vnode.vip, &vnode.network_name())
                    .map_err(|why| ProcessorError::NoNetwork {
                        vnode: vnode.name.clone(),
                        why,
                    })?,
            ),
            false => None,
        };
        let started = self.start_in(peer, req, vnode, quota, id, netns);
        if started.is_err() {
            self.vnets.release(id);
        }
        started
    }

    fn start_in(
        self: &Arc<Self>,
        peer: &PeerInfo,
        req: LaunchReq,
        vnode: VnodeInfo,
        quota: u64,
        id: u64,
        netns: Option<PathBuf>,
    ) -> Result<LaunchResp, ProcessorError> {
        let keys = self.job_keys(id, vnode.id)?;
        let plan = self.mount_plan(&vnode, netns, &keys);
        let published = self.publish(id, &vnode, &req.publish)?;
        let env = program_env(&req.env, &self.runtime_env(id, &vnode, quota, &keys));
        let (mut child, broker) = self
            .spawn_in_vnode(id, &req, &env, &plan)
            .inspect_err(|_| self.unpublish(id))?;
        let pid = child.id();
        let job = Arc::new(Job::new(
            id,
            pid,
            req.vnode.clone(),
            req.argv.clone(),
            quota,
            peer.conn,
            child.stdin.take(),
        ));
        let watched = crate::broker::start(self.clone(), job.clone(), broker)
            .map(|h| job.set_broker(h))
            .and_then(|()| self.watch(&job, child));
        if let Err(e) = watched {
            // Without readers or a waiter nobody would clean up: refuse the job.
            let _ = job.signal(rustix::process::Signal::KILL.as_raw());
            lock(&self.jobs).remove(&id);
            self.unpublish(id);
            return Err(ProcessorError::Thread(e));
        }
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        info!(
            job = format_args!("{id:x}"),
            pid,
            vnode = %req.vnode,
            excache = %human(quota),
            confined = self.cfg.confine,
            argv = ?req.argv,
            "job started"
        );
        Ok(LaunchResp {
            job: id,
            pid,
            excache: quota,
            published,
        })
    }

    /// Forwards the ports `lego run --publish` asked for to the job's vIP.
    fn publish(
        &self,
        id: u64,
        vnode: &VnodeInfo,
        ports: &[(u16, u16)],
    ) -> Result<Vec<(String, String)>, ProcessorError> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let cannot = |why: String| ProcessorError::CannotPublish {
            vnode: vnode.name.clone(),
            why,
        };
        let vip = self
            .vnets
            .vip_of_job(id)
            .ok_or_else(|| cannot("the job has no network of its own".into()))?;
        let mut forwards = Vec::new();
        for &(host, port) in ports {
            match crate::publish::Forward::start(host, vip, port) {
                Ok(f) => forwards.push(f),
                Err(e) => {
                    forwards.iter().for_each(|f| f.stop());
                    return Err(cannot(format!("port {host} of this host: {e}")));
                }
            }
        }
        let shown = forwards
            .iter()
            .map(|f| (f.host.to_string(), f.target.to_string()))
            .collect();
        lock(&self.published).insert(id, forwards);
        Ok(shown)
    }

    /// Stops forwarding the job's published ports.
    pub(crate) fn unpublish(&self, id: u64) {
        let forwards = lock(&self.published).remove(&id).unwrap_or_default();
        for f in forwards {
            f.stop();
        }
    }

    /// Reads the job's output and waits for its end, each on a thread.
    fn watch(self: &Arc<Self>, job: &Arc<Job>, mut child: Child) -> std::io::Result<()> {
        let readers = (|| {
            if let Some(p) = child.stdout.take() {
                job.start_reader(Stream::Stdout, p)?;
            }
            if let Some(p) = child.stderr.take() {
                job.start_reader(Stream::Stderr, p)?;
            }
            Ok(())
        })();
        if let Err(e) = readers {
            let _ = job.signal(rustix::process::Signal::KILL.as_raw());
            let _ = child.wait();
            return Err(e);
        }
        lock(&self.jobs).insert(job.id, job.clone());
        let (shared, j) = (self.clone(), job.clone());
        std::thread::Builder::new()
            .name(format!("job-{:x}-wait", job.id & 0xffff))
            .spawn(move || wait_job(&shared, &j, child))
            .map(|_| ())
    }

    /// Starts a job through its helper ([`crate::enter`]), serves its
    /// mounts, and takes its broker's end, before the program runs.
    fn spawn_in_vnode(
        &self,
        id: u64,
        req: &LaunchReq,
        env: &[(String, String)],
        plan: &MountPlan,
    ) -> Result<(Child, std::os::fd::OwnedFd), ProcessorError> {
        let cfg = &self.cfg;
        let socket = cfg.state_dir.join(format!("job-{id:016x}.sock"));
        let _ = std::fs::remove_file(&socket);
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).map_err(ProcessorError::Thread)?;
        let confine = plan.owner.map(|uid| Confine {
            root: root_dir(cfg, id),
            uid,
            share_cwd: !req.isolated,
            files: vec![cfg.runtime.clone()],
            hide: std::iter::once(cfg.state_dir.clone())
                .chain(cfg.hide.iter().cloned())
                .collect(),
        });
        let via = EnterVia {
            exe: cfg.enter_exe.clone(),
            socket: socket.clone(),
            vnode: plan.vnode.clone(),
            mounts: plan.mounts.clone(),
            netns: plan.netns.clone(),
            confine,
        };
        let spawned = spawn(&req.argv, env, &req.cwd, &via);
        let served = spawned.and_then(|mut child| {
            match crate::mounts::serve(&listener, plan, Instant::now() + MOUNT_TIMEOUT) {
                Ok(broker) => Ok((child, broker)),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    warn!(vnode = %plan.vnode, "cannot start the job in its vnode: {why}");
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
}

/// The end of a job; runs on the job's own thread, which owns the child.
pub(crate) fn wait_job(shared: &Shared, job: &Job, mut child: Child) {
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
    shared.unpublish(job.id);
    shared.vnets.release(job.id);
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
    // The runtime's last words (its final counters) before its end.
    job.wait_broker(Duration::from_secs(2));
    let counters = job.counters();
    let _ = std::fs::remove_dir(root_dir(&shared.cfg, job.id));
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
    // Its totals move to the finished jobs' in the same step as it ends
    // (read again under the lock: a late report counts once).
    let mut finished = lock(&shared.finished_rt);
    for (k, v) in job.counters() {
        if RtCounter::of(&k) == RtCounter::Total {
            let e = finished.entry(k).or_default();
            *e = e.saturating_add(v);
        }
    }
    job.finish(code);
    drop(finished);
}

/// Where job `id`'s root is built (empty on the host: the root is a tmpfs
/// in the job's own mount namespace).
fn root_dir(cfg: &ServiceConfig, id: u64) -> PathBuf {
    cfg.state_dir.join(format!("job-{id:016x}.root"))
}

/// Frees the address spaces of a running job's processes that are gone
/// (each process's runtime tells its space through the broker).
pub(crate) fn reap_spaces(shared: &Shared) {
    let running: Vec<Arc<Job>> = lock(&shared.jobs)
        .values()
        .filter(|j| j.running())
        .cloned()
        .collect();
    for job in running {
        for asid in job.take_spaces_of_gone() {
            crate::broker::release(shared, &job, asid);
            shared
                .counters
                .spaces_reaped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a job needs that only a holder of the cluster secret can make.
struct JobKeys {
    vnode_key: [u8; 32],
    job_proof: String,
}
