//! What the manager does about failures: the journal of failures and
//! recoveries that `lego status` shows, the effects of placement events
//! (failovers made durable, lost vRegions and jobs reported), the
//! re-replication worker, and reports from processes that cannot reach a
//! memory monitor.
//!
//! Re-replication: for each degraded vRegion the placement state machine
//! plans a target; the manager asks the surviving memory monitor to copy the
//! vRegion there (`Replicate`, which also forwards writes made meanwhile),
//! and commits the new copy only once the copy is complete (up to four
//! vRegions at a time). A copy that fails is retried after a pause, with a
//! new plan.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lego_placement::{Event, Health, Recovery, Role, VRegionKey};
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::control::{
    vregion_shift, EventInfo, MissedReq, ReplicateReq, ReplicateResp, UnreachableReq,
};
use lego_wire::{Op, PAGE_SIZE};
use tracing::{error, info, warn};

use crate::db::Change;
use crate::service::{lock, ManagerService};

/// How many journal entries `lego status` can show.
const JOURNAL_LEN: usize = 64;
/// vRegions copied at once.
const PARALLEL_COPIES: usize = 4;
/// A copy that failed is not retried for this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);

struct Entry {
    at: Instant,
    kind: &'static str,
    text: String,
    took_ms: Option<u64>,
}

/// Recent failures and recoveries.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<VecDeque<Entry>>,
}

impl Journal {
    pub fn record(&self, kind: &'static str, text: String, took_ms: Option<u64>) {
        let mut e = lock(&self.entries);
        if e.len() == JOURNAL_LEN {
            e.pop_front();
        }
        e.push_back(Entry {
            at: Instant::now(),
            kind,
            text,
            took_ms,
        });
    }

    pub fn snapshot(&self) -> Vec<EventInfo> {
        lock(&self.entries)
            .iter()
            .map(|e| EventInfo {
                ago_ms: e.at.elapsed().as_millis() as u64,
                kind: e.kind.to_string(),
                text: e.text.clone(),
                took_ms: e.took_ms,
            })
            .collect()
    }
}

/// The re-replication worker's memory of failed copies.
#[derive(Default)]
pub struct Recoveries {
    failed_at: Mutex<BTreeMap<VRegionKey, Instant>>,
}

impl ManagerService {
    /// Acts on events of the placement state machine: logs them, makes
    /// failovers durable, frees the memory of a dead processor's jobs, and
    /// writes the journal.
    pub(crate) fn log_events(&self, events: Vec<Event>) {
        let mut silent: BTreeMap<u64, u64> = BTreeMap::new();
        for e in events {
            match e {
                Event::ComponentRegistered {
                    id,
                    role,
                    addr,
                    rejoined,
                } => {
                    self.counters.registrations.fetch_add(1, Ordering::Relaxed);
                    info!(id, %role, %addr, rejoined, "component registered");
                }
                Event::ComponentDead {
                    id,
                    role,
                    addr,
                    silent_ms,
                } => {
                    self.counters.deaths.fetch_add(1, Ordering::Relaxed);
                    silent.insert(id, silent_ms);
                    lock(&self.reports).remove(&id);
                    warn!(id, %role, %addr, silent_ms, "component is dead (silent, or unreachable when a process reported it)");
                    self.journal.record(
                        "dead",
                        format!("{role} monitor {id} ({addr}) declared dead"),
                        Some(silent_ms),
                    );
                    // Recorded, so that a restarted manager does not take a
                    // dead memory monitor's old pages for a copy.
                    let comp = lock(&self.state).component(id).cloned();
                    if let Some(comp) = comp {
                        if let Err(e) = self.persist(&[Change::Component(&comp)]) {
                            warn!(id, "cannot record a death: {}", e.message);
                        }
                    }
                    let jobs = lock(&self.jobs).remove(&id).unwrap_or_default();
                    if role == Role::Processor && !jobs.is_empty() {
                        self.free_jobs_of_dead_processor(id, &jobs);
                    }
                }
                Event::Failover { key, dead, primary } => {
                    let a = lock(&self.state).vregion(key);
                    if let Some(a) = a {
                        if let Err(e) = self.persist(&[Change::VRegion(key, a)]) {
                            warn!(%key, "cannot record a failover: {}", e.message);
                        }
                    }
                    self.counters.failovers.fetch_add(1, Ordering::Relaxed);
                    let took = silent.get(&dead).copied();
                    warn!(%key, dead, primary, took_ms = ?took, "failover: the backup is the primary now");
                    self.journal.record(
                        "failover",
                        format!("{key}: primary {dead} dead, backup {primary} took over"),
                        took,
                    );
                }
                Event::VRegionLost { key, dead } => {
                    self.counters.vregions_lost.fetch_add(1, Ordering::Relaxed);
                    error!(%key, dead, "vregion lost: no live copy is left");
                    self.journal.record(
                        "lost",
                        format!("{key}: its last live copy died with memory monitor {dead}"),
                        None,
                    );
                }
                Event::StaleIdentity { old, new, addr } => {
                    warn!(old, new, %addr, "a memory monitor declared dead came back; it gets a new id and its old pages are not trusted");
                    self.journal.record(
                        "stale",
                        format!("memory monitor {old} ({addr}) came back after it was declared dead: rejoined as {new}, its old pages dropped"),
                        None,
                    );
                }
            }
        }
    }

    /// A dead processor monitor's jobs died with it: frees their memory and
    /// journals what was lost.
    fn free_jobs_of_dead_processor(&self, processor: u64, jobs: &[u64]) {
        let t = Instant::now();
        let spaces: Vec<u64> = lock(&self.owners)
            .iter()
            .filter(|(_, o)| jobs.contains(o))
            .map(|(&a, _)| a)
            .collect();
        match self.release(&spaces) {
            Ok(r) => {
                let took = t.elapsed().as_millis() as u64;
                warn!(
                    processor,
                    jobs = jobs.len(),
                    spaces = spaces.len(),
                    freed = r.freed_pages,
                    took_ms = took,
                    "freed the memory of a dead processor monitor's jobs"
                );
                self.journal.record(
                    "jobs-lost",
                    format!(
                        "processor monitor {processor} died running jobs {jobs:?}: they are lost; {} address spaces and {} pages freed",
                        spaces.len(),
                        r.freed_pages
                    ),
                    Some(took),
                );
            }
            Err(e) => warn!(
                processor,
                "cannot free a dead processor monitor's jobs: {}", e.message
            ),
        }
    }

    /// Starts every recovery that can start now and runs them one by one;
    /// returns whether there was any.
    pub fn recover_once(&self) -> bool {
        let busy: BTreeSet<VRegionKey> = {
            let mut failed = lock(&self.recoveries.failed_at);
            failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
            failed.keys().copied().collect()
        };
        let plans = lock(&self.state).recoveries(&busy);
        // A few at a time: a dead monitor may have held many vRegions.
        for batch in plans.chunks(PARALLEL_COPIES) {
            std::thread::scope(|scope| {
                for r in batch {
                    scope.spawn(move || self.recover(r));
                }
            });
        }
        !plans.is_empty()
    }

    fn recover(&self, r: &Recovery) {
        let t = Instant::now();
        let (survivor, target) = {
            let st = lock(&self.state);
            (
                Self::endpoint(&st, r.survivor),
                Self::endpoint(&st, r.target),
            )
        };
        let shift = vregion_shift(self.cfg.vregion_bytes);
        let pages_per = 1u64 << (shift - PAGE_SIZE.trailing_zeros());
        let req = ReplicateReq {
            asid: r.key.asid,
            first_page: r.key.index.saturating_mul(pages_per),
            pages: pages_per,
            target,
        };
        info!(key = %r.key, survivor = r.survivor, target = r.target, "re-replicating");
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(120),
            ..ClientOptions::default()
        };
        let copied = Client::connect(&survivor.addr, &Credentials::component(&self.secret), &opts)
            .and_then(|c| c.call_json::<_, ReplicateResp>(Op::Replicate, &req))
            .map_err(|e| e.to_string());
        let committed = copied.and_then(|resp| {
            let mut st = lock(&self.state);
            let a = st.commit_recovery(r).map_err(|e| e.to_string())?;
            self.persist(&[Change::VRegion(r.key, a)])
                .map_err(|e| e.message)?;
            Ok(resp.pages)
        });
        let took = t.elapsed().as_millis() as u64;
        match committed {
            Ok(pages) => {
                self.counters.rereplications.fetch_add(1, Ordering::Relaxed);
                info!(key = %r.key, from = r.survivor, onto = r.target, pages, took_ms = took, "re-replicated: two live copies again");
                self.journal.record(
                    "re-replicated",
                    format!(
                        "{}: copied from {} onto {} ({pages} pages), two live copies again",
                        r.key, r.survivor, r.target
                    ),
                    Some(took),
                );
            }
            Err(e) => {
                self.counters
                    .rereplications_failed
                    .fetch_add(1, Ordering::Relaxed);
                warn!(key = %r.key, from = r.survivor, onto = r.target, took_ms = took, "re-replication failed, will retry: {e}");
                lock(&self.recoveries.failed_at).insert(r.key, Instant::now());
            }
        }
    }

    /// A process found that a copy of one of its vRegions missed a write:
    /// that copy is replaced by a placeholder, so it is never copied from,
    /// and the vRegion is rebuilt from the good copy.
    pub(crate) fn missed_reported(&self, req: &MissedReq) -> Result<(), lego_transport::Reject> {
        let key = VRegionKey {
            asid: req.asid,
            index: req.index,
        };
        let mut st = lock(&self.state);
        // A dead copy is being replaced anyway.
        if st
            .component(req.id)
            .is_none_or(|c| c.health == Health::Dead)
        {
            return Ok(());
        }
        let Some(a) = st.mark_bad_copy(key, req.id) else {
            return Ok(());
        };
        self.persist(&[Change::VRegion(key, a)])?;
        drop(st);
        warn!(%key, bad = req.id, "a copy missed a write: it will be rebuilt from the other");
        self.journal.record(
            "bad-copy",
            format!(
                "{key}: the copy on memory monitor {} missed a write; rebuilding from {}",
                req.id, a.primary
            ),
            None,
        );
        Ok(())
    }

    /// A process could not reach a memory monitor: check for ourselves, and
    /// declare it dead at once if we cannot reach it either.
    pub(crate) fn unreachable_reported(&self, req: &UnreachableReq) {
        let addr = {
            let st = lock(&self.state);
            match st.component(req.id) {
                Some(c) if c.role == Role::Memory && c.health != Health::Dead => c.addr.clone(),
                _ => return,
            }
        };
        let opts = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        // Twice, so that one slow moment on a loaded host is not a death.
        let probe = || {
            Client::connect(&addr, &Credentials::component(&self.secret), &opts)
                .and_then(|c| c.call(Op::Ping, &[]))
        };
        let Err(e) = probe().or_else(|_| probe()) else {
            return; // it answers us: the process's trouble is its own
        };
        let mut st = lock(&self.state);
        if st.declare_dead(self.now_ms(), req.id).is_none() {
            return;
        }
        let events = st.take_events();
        drop(st);
        warn!(id = req.id, %addr, why = %req.why, "a process could not reach a memory monitor and neither can the manager: declared dead: {e}");
        self.log_events(events);
    }
}
