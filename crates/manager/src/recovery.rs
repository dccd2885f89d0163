//! What the manager does about failures: the effects of placement events
//! (deaths journaled, failovers counted, a dead processor's jobs freed),
//! the re-replication worker, and reports from processes that a copy
//! missed a write or that a memory monitor does not answer.
//!
//! Re-replication: for each degraded vRegion the placement state machine
//! plans a target; the manager asks the surviving memory monitor to copy the
//! vRegion there (`Replicate`, which also forwards writes made meanwhile),
//! and commits the new copy only once the copy is complete (up to four
//! vRegions at a time). A copy that fails is retried after a pause, with a
//! new plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lego_placement::{Event, Health, Recovery, Role, VRegionKey};
use lego_transport::{lock, PeerInfo, Reject};
use lego_wire::control::{MissedReq, ReplicateReq, UnreachableReq};
use lego_wire::types::{vregion_shift, EventKind};
use lego_wire::{ComponentId, Empty};
use tracing::{error, info, warn};

use crate::service::ManagerService;

/// How often a memory monitor is probed on processes' word.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// vRegions copied at once.
pub(crate) const PARALLEL_COPIES: usize = 4;
/// A copy that failed is not retried for this long.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The re-replication worker's memory of copies that failed, and when.
pub type FailedCopies = BTreeMap<VRegionKey, Instant>;

impl ManagerService {
    /// Acts on events of the placement state machine: logs and counts them,
    /// frees the memory of a dead processor's jobs, writes the journal.
    pub(crate) fn on_events(&self, events: Vec<Event>) {
        let mut silent: BTreeMap<ComponentId, u64> = BTreeMap::new();
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
                    self.forget_report(id);
                    warn!(id, %role, %addr, silent_ms, "component is dead (silent, or unreachable when a process reported it)");
                    self.journal.record(
                        EventKind::Dead,
                        format!("{role} monitor {id} ({addr}) declared dead"),
                        Some(silent_ms),
                    );
                    if role == Role::Processor {
                        self.free_jobs_of_dead_processor(id);
                    }
                }
                Event::Failover { key, dead, primary } => {
                    self.counters.failovers.fetch_add(1, Ordering::Relaxed);
                    let took = silent.get(&dead).copied();
                    warn!(%key, dead, primary, took_ms = ?took, "failover: the backup is the primary now");
                    self.journal.record(
                        EventKind::Failover,
                        format!("{key}: primary {dead} dead, backup {primary} took over"),
                        took,
                    );
                }
                Event::VRegionLost { key, dead } => {
                    self.counters.vregions_lost.fetch_add(1, Ordering::Relaxed);
                    error!(%key, dead, "vregion lost: no live copy is left");
                    self.journal.record(
                        EventKind::Lost,
                        format!("{key}: its last live copy died with memory monitor {dead}"),
                        None,
                    );
                }
                Event::Isolated { components } => {
                    warn!(components, "no component heard within the dead interval: this manager takes itself for cut off (or paused) and declares none dead");
                    self.journal.record(
                        EventKind::Isolated,
                        format!("none of the {components} live components heard: the manager is cut off or was paused; nobody declared dead"),
                        None,
                    );
                }
                Event::Reconnected { after_ms } => {
                    info!(
                        after_ms,
                        "the manager hears components again after being cut off or paused: that silence is not held against them"
                    );
                    self.journal.record(
                        EventKind::Isolated,
                        format!("the manager heard no one for {after_ms} ms (cut off or paused); that silence is not held against any component"),
                        Some(after_ms),
                    );
                }
                Event::StaleIdentity {
                    old,
                    new,
                    role,
                    addr,
                } => {
                    let dropped = match role {
                        Role::Processor => "its jobs (declared lost, their memory freed) killed",
                        _ => "its old pages dropped",
                    };
                    warn!(old, new, %role, %addr, "a monitor declared dead came back; it gets a new id: {dropped}");
                    self.journal.record(
                        EventKind::Stale,
                        format!("{role} monitor {old} ({addr}) came back after it was declared dead: rejoined as {new}, {dropped}"),
                        None,
                    );
                }
            }
        }
    }

    /// A dead processor monitor's jobs died with it: frees their memory and
    /// journals what was lost.
    fn free_jobs_of_dead_processor(&self, processor: ComponentId) {
        let t = Instant::now();
        let Ok((jobs, spaces)) = self.change(|st, _| {
            let jobs = st.take_jobs(processor);
            let spaces = st.spaces_of_jobs(&jobs);
            Ok((jobs, spaces))
        }) else {
            return;
        };
        if jobs.is_empty() {
            return;
        }
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
                    EventKind::JobsLost,
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

    /// Starts every recovery that can start now (none of those in `failed`
    /// less than [`RETRY_AFTER`] ago) and runs them, a few at a time;
    /// returns whether there was any.
    pub fn recover_once(&self, failed: &mut FailedCopies) -> bool {
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        let busy: BTreeSet<VRegionKey> = failed.keys().copied().collect();
        let plans = self.state.read(|st| st.recoveries(&busy));
        // A few at a time: a dead monitor may have held many vRegions.
        for batch in plans.chunks(PARALLEL_COPIES) {
            let done: Vec<(VRegionKey, bool)> = std::thread::scope(|scope| {
                let running: Vec<_> = batch
                    .iter()
                    .map(|r| scope.spawn(move || (r.key, self.recover(r))))
                    .collect();
                running.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            for (key, ok) in done {
                if !ok {
                    failed.insert(key, Instant::now());
                }
            }
        }
        !plans.is_empty()
    }

    /// Rebuilds one copy; returns whether it is committed.
    fn recover(&self, r: &Recovery) -> bool {
        let t = Instant::now();
        let (survivor, target) = self
            .state
            .read(|st| (Self::endpoint(st, r.survivor), Self::endpoint(st, r.target)));
        let (first_page, pages) = r.key.index.pages(vregion_shift(self.cfg.vregion_bytes));
        let req = ReplicateReq {
            asid: r.key.asid,
            first_page,
            pages,
            target,
            rate: None,
            sync: false,
        };
        info!(key = %r.key, survivor = r.survivor, target = r.target, "re-replicating");
        self.grant(r.key, [r.target]);
        let committed = self
            .peers
            .replicate(&survivor.addr, &req)
            .map_err(|e| e.to_string())
            .and_then(|resp| {
                self.change(|st, _| st.commit_recovery(r))
                    .map_err(|e| e.message)?;
                Ok(resp.pages)
            });
        let took = t.elapsed().as_millis() as u64;
        match committed {
            Ok(pages) => {
                self.counters.rereplications.fetch_add(1, Ordering::Relaxed);
                info!(key = %r.key, from = r.survivor, onto = r.target, pages, took_ms = took, "re-replicated: two live copies again");
                self.journal.record(
                    EventKind::ReReplicated,
                    format!(
                        "{}: copied from {} onto {} ({pages} pages), two live copies again",
                        r.key, r.survivor, r.target
                    ),
                    Some(took),
                );
                true
            }
            Err(e) => {
                self.counters
                    .rereplications_failed
                    .fetch_add(1, Ordering::Relaxed);
                warn!(key = %r.key, from = r.survivor, onto = r.target, took_ms = took, "re-replication failed, will retry: {e}");
                false
            }
        }
    }

    /// A process found that a copy of one of its vRegions missed a write:
    /// that copy is marked bad, so it is never copied from, and the vRegion
    /// is rebuilt from the good copy.
    pub(crate) fn missed_reported(&self, peer: &PeerInfo, req: MissedReq) -> Result<Empty, Reject> {
        Self::require_vnode(peer, req.asid.vnode())?;
        let key = VRegionKey {
            asid: req.asid,
            index: req.index,
        };
        let marked = self.change(|st, _| {
            // A dead copy is being replaced anyway.
            if st
                .component(req.id)
                .is_none_or(|c| c.health == Health::Dead)
            {
                return Ok(None);
            }
            Ok(st.mark_bad_copy(key, req.id))
        })?;
        if let Some(a) = marked {
            warn!(%key, bad = req.id, "a copy missed a write: it will be rebuilt from the other");
            self.journal.record(
                EventKind::BadCopy,
                format!(
                    "{key}: the copy on memory monitor {} missed a write; rebuilding from {}",
                    req.id, a.primary
                ),
                None,
            );
        }
        Ok(Empty {})
    }

    /// A process could not reach a memory monitor: check for ourselves, and
    /// declare it dead at once if we cannot reach it either.
    pub(crate) fn unreachable_reported(&self, req: UnreachableReq) -> Result<Empty, Reject> {
        let addr = self.state.read(|st| match st.component(req.id) {
            Some(c) if c.role == Role::Memory && c.health != Health::Dead => Some(c.addr.clone()),
            _ => None,
        });
        let Some(addr) = addr else {
            return Ok(Empty {});
        };
        // Any process may say so, as often as it likes: the manager looks
        // at most once a second per monitor (a dead one is declared on the
        // first look; the rest are answered from it).
        {
            let mut probed = lock(&self.probed);
            let now = Instant::now();
            if probed
                .get(&req.id)
                .is_some_and(|t| now.duration_since(*t) < PROBE_EVERY)
            {
                return Ok(Empty {});
            }
            probed.insert(req.id, now);
            probed.retain(|_, t| now.duration_since(*t) < PROBE_EVERY);
        }
        let Err(e) = self.peers.probe(&addr) else {
            return Ok(Empty {}); // it answers us: the process's trouble is its own
        };
        let why: String = req.why.chars().take(200).collect();
        warn!(id = req.id, %addr, %why, "a process could not reach a memory monitor and neither can the manager: declaring it dead: {e}");
        self.change(|st, now| {
            st.declare_dead(now, req.id);
            Ok(())
        })?;
        Ok(Empty {})
    }
}
