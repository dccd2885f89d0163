//! The processor monitor's request handler, its jobs and counters, the
//! janitor, and shutdown (a job's start and end are in [`crate::launch`]).
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
//! When the connection that launched a job goes away first, the job is
//! killed (as ssh does) and cleaned up as at its end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lego_transport::{answer, lock, Handler, PeerInfo, Reject, ServerCounters};
use lego_wire::auth::Claim;
use lego_wire::jobs::{JobsReq, LaunchReq, OutputChunks, OutputReq, SignalReq, StdinReq};
use lego_wire::{Empty, ErrorCode, Op, Ping};
use tracing::{info, warn};

use crate::job::Job;
use crate::launch::reap_spaces;
use crate::manager::ManagerLink;
use crate::rtstats::RtCounter;
pub use crate::shared::ServiceConfig;
use crate::shared::{Counters, Shared};
use crate::{chain, ProcessorError};

/// How long a finished job's exit code and counters are kept for a client
/// that has not collected them.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);
/// Longest `Output` long-poll.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Serves `Launch`, `Output`, `Stdin`, `Signal` and `Jobs`.
pub struct ProcessorService {
    pub(crate) shared: Arc<Shared>,
    /// Set once the server runs, for the counters it keeps.
    pub server: OnceLock<Arc<ServerCounters>>,
}

impl ProcessorService {
    pub fn new(cfg: ServiceConfig) -> Self {
        let manager = ManagerLink::new(cfg.manager.clone(), cfg.auth.credentials(&cfg.manager));
        ProcessorService {
            shared: Arc::new(Shared {
                cfg,
                manager,
                jobs: Mutex::new(BTreeMap::new()),
                granted: Mutex::new(0),
                dialable: Mutex::new((None, Default::default())),
                counters: Counters::default(),
                vnets: crate::vnet::Vnets::new(),
                published: Mutex::new(BTreeMap::new()),
                finished_rt: Mutex::new(BTreeMap::new()),
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

    /// The monitor's counters, and the runtime counters of its jobs as
    /// `rt_NAME_total` (running and finished jobs: they only grow) or
    /// `rt_NAME` (levels of the running jobs), see [`RtCounter`].
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Held while the running jobs are read: a job's end moves its
        // counters into it under the same lock (each job counted once).
        let finished = lock(&self.shared.finished_rt);
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
        for (k, v) in finished.iter() {
            let e = m.entry(RtCounter::exported(k)).or_default();
            *e = e.saturating_add(*v);
        }
        drop(finished);
        for j in running {
            for (k, v) in j.counters() {
                if RtCounter::of(&k) != RtCounter::Skip {
                    let e = m.entry(RtCounter::exported(&k)).or_default();
                    *e = e.saturating_add(v);
                }
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
                shared.refresh_dialable(Duration::from_secs(2));
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
        self.shared.vnets.clear();
    }

    /// The manager declared this monitor dead (it was cut off or stopped)
    /// and freed its jobs' memory: each running job is told why on its
    /// stderr and killed, rather than left to fail on its first remote page.
    pub fn drop_jobs(&self, why: &str) {
        for j in self.jobs().into_iter().filter(|j| j.running()) {
            warn!(job = format_args!("{:x}", j.id), argv = ?j.argv, "killing the job: {why}");
            let msg = format!("lego: job {:x} killed: {why}\n", j.id);
            let _ = j.start_reader(
                lego_wire::jobs::Stream::Stderr,
                std::io::Cursor::new(msg.into_bytes()),
            );
            let _ = j.signal(rustix::process::Signal::KILL.as_raw());
        }
    }

    /// Whether other hosts reach this host's vNodes through it ([`crate::vnet`]).
    pub fn set_forwarding(&self, on: bool) {
        self.shared.vnets.set_forwarding(on)
    }

    /// The vIPs of the vNode networks on this host.
    pub fn vips(&self) -> Vec<String> {
        self.shared.vnets.vips()
    }

    /// Routes the vNode networks here as the manager says ([`crate::vnet`]).
    pub fn sync_routes(&self, routes: lego_wire::control::VipRoutes) {
        self.shared.vnets.sync(routes)
    }

    fn job(&self, id: u64) -> Result<Arc<Job>, ProcessorError> {
        lock(&self.shared.jobs)
            .get(&id)
            .cloned()
            .ok_or(ProcessorError::NoSuchJob(id))
    }
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
        match op {
            Op::Launch => answer(body, reply, |req: LaunchReq| {
                let argv = req.argv.clone();
                self.shared.launch(peer, req).map_err(|e| {
                    self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    info!(?argv, "launch refused: {}", chain(&e));
                    e.into()
                })
            }),
            Op::Output => answer(body, reply, |req: OutputReq| {
                let job = self.job(req.job)?;
                let mut out = Vec::new();
                job.poll_output(
                    Duration::from_millis(req.max_wait_ms).min(MAX_WAIT),
                    &mut out,
                );
                Ok(OutputChunks(out))
            }),
            Op::Stdin => answer(body, reply, |req: StdinReq| {
                Ok(self.job(req.job)?.write_stdin(&req.data)?)
            }),
            Op::Signal => answer(body, reply, |req: SignalReq| {
                let job = self.job(req.job)?;
                if job.signal(req.signal)? {
                    info!(
                        job = format_args!("{:x}", req.job),
                        signal = req.signal,
                        "job signalled"
                    );
                }
                Ok(Empty {})
            }),
            Op::Jobs => answer(body, reply, |_: JobsReq| {
                Ok(self.jobs().iter().map(|j| j.info()).collect())
            }),
            Op::Ping => answer(body, reply, |_: Ping| Ok(())),
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("a processor monitor does not serve {other}"),
            )),
        }
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
