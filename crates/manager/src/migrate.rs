//! Elastic memory at the manager: draining memory monitors, rebalancing,
//! and the mover that carries out the moves the placement state machine
//! plans (`lego_placement` `migrate`).
//!
//! One move of the copy of vRegion K on `from` to `to`, the other copy
//! `source` staying (for a one-copy vRegion, `source` is `from`):
//!
//! ```text
//! 1. grant K on `to`
//! 2. Replicate K from `source` onto `to`: `source` forwards every write
//!    that did not also go to `to`, then copies its pages (versions keep
//!    the newest of each page)
//! 3. (two copies) Replicate K from `from` onto `to`, `sync`: `from` too
//!    forwards its writes from now on, and sends the pages it holds newer
//!    than `to` does: a write that reached `from` but not `source` (which
//!    the process then reports; `source` becomes the copy rebuilt) is on
//!    `to` before the commit, not lost with `from`
//! 4. commit: K is on (source, to) from now on, durably
//! 5. Withdraw K on `from`: its writes are refused from then on, its
//!    mirror forgotten, its pages freed. A process still writing to `from`
//!    is refused, takes `from` for stale and asks where K is; its write is
//!    on `source`, which forwards it to `to` until the process writes
//!    naming `to`. A read from `from` finds no pages and goes to the other
//!    copy. A monitor that cannot be told is told again every round until
//!    it is, or is dead.
//! ```
//!
//! Until the commit, K keeps both its copies: a drain never leaves a vRegion
//! with fewer live copies than its vNode asked for. A move whose copy fails,
//! or whose vRegion changed meanwhile (a death, a release), is dropped and
//! planned again later.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lego_placement::{ComponentId, Health, Move, Placement, VRegionKey};
use lego_transport::{lock, Reject};
use lego_wire::control::ReplicateReq;
use lego_wire::elastic::{
    DrainInfo, DrainReq, DrainResp, MoveInfo, RebalancePlan, RebalanceReq, WithdrawReq,
};
use lego_wire::types::{vregion_shift, EventKind};
use lego_wire::{ErrorCode, PAGE_SIZE};
use tracing::{info, warn};

use crate::recovery::{FailedCopies, RETRY_AFTER};
use crate::service::ManagerService;

/// The most moves one `lego rebalance` plans.
pub const MAX_REBALANCE_MOVES: u32 = 256;
/// How often `--rebalance` looks at the memory monitors' use.
pub const REBALANCE_EVERY: Duration = Duration::from_secs(5);

/// How a drain goes (since this manager started, for one that was
/// running before).
#[derive(Clone, Debug)]
pub(crate) struct Draining {
    started: Instant,
    copies_moved: u64,
    bytes_moved: u64,
    /// Whether its end was journaled.
    done: bool,
}

/// What the mover shares with the requests.
#[derive(Default)]
pub(crate) struct Mover {
    pub(crate) drains: std::sync::Mutex<BTreeMap<ComponentId, Draining>>,
    /// Moves asked for by `lego rebalance` (or planned by `--rebalance`),
    /// run before new drain moves.
    queued: std::sync::Mutex<Vec<Move>>,
    last_rebalance: std::sync::Mutex<Option<Instant>>,
    /// Copies to withdraw that could not be yet: (vRegion, monitor).
    withdrawals: std::sync::Mutex<Vec<(VRegionKey, ComponentId)>>,
}

impl ManagerService {
    pub(crate) fn drain(&self, req: DrainReq) -> Result<DrainResp, Reject> {
        let rate = req.rate.filter(|r| *r > 0);
        self.change(|st, _| st.set_drained(req.id, req.drained, rate))?;
        let copies = self.state.read(|st| st.copies_on(req.id)) as u64;
        let mut drains = lock(&self.mover.drains);
        if req.drained {
            info!(id = req.id, copies, rate = ?req.rate, "draining a memory monitor");
            self.journal.record(
                EventKind::Drain,
                format!(
                    "memory monitor {} drained: {copies} copies to move{}",
                    req.id,
                    req.rate
                        .map_or(String::new(), |r| format!(" at most {r} B/s"))
                ),
                None,
            );
            drains.insert(
                req.id,
                Draining {
                    started: Instant::now(),
                    copies_moved: 0,
                    bytes_moved: 0,
                    done: copies == 0,
                },
            );
        } else if drains.remove(&req.id).is_some() {
            info!(id = req.id, copies, "undrained a memory monitor");
            self.journal.record(
                EventKind::Drain,
                format!(
                    "memory monitor {} undrained, holding {copies} copies",
                    req.id
                ),
                None,
            );
        }
        Ok(DrainResp { copies })
    }

    pub(crate) fn rebalance(&self, req: RebalanceReq) -> Result<RebalancePlan, Reject> {
        if !(0.0..=1.0).contains(&req.threshold) {
            return Err(Reject::new(
                ErrorCode::BadRequest,
                format!("a threshold is 0 to 1 of capacity, not {}", req.threshold),
            ));
        }
        let max = req.max.clamp(1, MAX_REBALANCE_MOVES) as usize;
        let moves = self
            .state
            .read(|st| st.rebalance_moves(self.cfg.vregion_bytes, req.threshold, max));
        let plan = RebalancePlan {
            moves: moves
                .iter()
                .map(|m| MoveInfo {
                    asid: m.key.asid,
                    index: m.key.index,
                    from: m.from,
                    to: m.to,
                })
                .collect(),
            started: !req.dry_run && !moves.is_empty(),
        };
        if plan.started {
            info!(
                moves = moves.len(),
                threshold = req.threshold,
                "rebalancing"
            );
            lock(&self.mover.queued).extend(moves);
        }
        Ok(plan)
    }

    /// With `--rebalance PERCENT`: every [`REBALANCE_EVERY`], when nothing
    /// is moving, queues the moves that even out use past the threshold (a
    /// monitor that joined, copies that piled up after failures).
    fn maybe_rebalance(&self) {
        let Some(threshold) = self.cfg.rebalance else {
            return;
        };
        {
            let mut last = lock(&self.mover.last_rebalance);
            if last.is_some_and(|t| t.elapsed() < REBALANCE_EVERY)
                || !lock(&self.mover.queued).is_empty()
            {
                return;
            }
            *last = Some(Instant::now());
        }
        let moves = self
            .state
            .read(|st| st.rebalance_moves(self.cfg.vregion_bytes, threshold, 8));
        if !moves.is_empty() {
            info!(moves = moves.len(), threshold, "use is uneven: rebalancing");
            lock(&self.mover.queued).extend(moves);
        }
    }

    /// A drained memory monitor's progress, for `lego status`.
    pub(crate) fn drain_info(&self, st: &Placement, id: ComponentId) -> Option<DrainInfo> {
        let c = st.component(id)?;
        if !c.drained {
            return None;
        }
        let copies = st.copies_on(id) as u64;
        let d = lock(&self.mover.drains).get(&id).cloned();
        let Some(d) = d else {
            return Some(DrainInfo {
                copies,
                ..DrainInfo::default()
            });
        };
        let secs = d.started.elapsed().as_secs_f64().max(1e-3);
        let rate = d.bytes_moved as f64 / secs;
        let per_copy = d.bytes_moved as f64 / d.copies_moved.max(1) as f64;
        let eta_s = (d.copies_moved > 0 && rate > 0.0)
            .then(|| (copies as f64 * per_copy / rate).ceil() as u64);
        Some(DrainInfo {
            copies,
            copies_moved: d.copies_moved,
            bytes_moved: d.bytes_moved,
            rate: rate as u64,
            eta_s,
        })
    }

    /// One round of the mover: the queued rebalancing moves, then the
    /// moves that empty drained monitors, a few at a time (one at a time
    /// for a drain with a rate); returns whether there was any.
    pub fn move_once(&self, failed: &mut FailedCopies) -> bool {
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        self.withdraw_pending();
        let busy: BTreeSet<VRegionKey> = failed.keys().copied().collect();
        self.maybe_rebalance();
        let mut moves: Vec<Move> = std::mem::take(&mut *lock(&self.mover.queued));
        let draining: Vec<Move> = self
            .state
            .read(|st| st.drain_moves(&busy, self.cfg.vregion_bytes));
        moves.extend(draining);
        if moves.is_empty() {
            return false;
        }
        // The drained monitors and their rates, durable with them.
        let (drained, rates): (BTreeSet<ComponentId>, BTreeMap<ComponentId, u64>) =
            self.state.read(|st| {
                let drained = st
                    .components()
                    .filter(|c| c.drained)
                    .map(|c| c.id)
                    .collect();
                let rates = st
                    .components()
                    .filter(|c| c.drained)
                    .filter_map(|c| Some((c.id, c.drain_rate?)))
                    .collect();
                (drained, rates)
            });
        {
            // Drains that were running before this manager started.
            let mut drains = lock(&self.mover.drains);
            for m in moves.iter().filter(|m| drained.contains(&m.from)) {
                drains.entry(m.from).or_insert_with(|| Draining {
                    started: Instant::now(),
                    copies_moved: 0,
                    bytes_moved: 0,
                    done: false,
                });
            }
        }
        // One copy at a time: on the memory monitors' CPUs a copy competes
        // with the programs' faults, and several at once move no faster
        // (`lego bench migrate`).
        for batch in moves.chunks(1) {
            let t = Instant::now();
            let done: Vec<(Move, Result<u64, String>)> = std::thread::scope(|scope| {
                let running: Vec<_> = batch
                    .iter()
                    .map(|m| {
                        let rate = rates.get(&m.from).copied();
                        scope.spawn(move || (*m, self.run_move(m, rate)))
                    })
                    .collect();
                running.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            for (m, r) in done {
                match r {
                    Ok(bytes) => {
                        if let Some(d) = lock(&self.mover.drains).get_mut(&m.from) {
                            d.copies_moved += 1;
                            d.bytes_moved += bytes;
                        }
                        // At most `rate`: wait out what this copy was too
                        // fast for.
                        if let Some(&rate) = rates.get(&m.from) {
                            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(t.elapsed()) {
                                std::thread::sleep(wait.min(Duration::from_secs(60)));
                            }
                        }
                    }
                    Err(_) => {
                        failed.insert(m.key, Instant::now());
                    }
                }
            }
        }
        self.note_drained();
        true
    }

    /// Journals each drain that has ended: its monitor holds no copy.
    fn note_drained(&self) {
        // The placement first, then the drains (the order cluster_state takes).
        let ids: Vec<ComponentId> = lock(&self.mover.drains).keys().copied().collect();
        let empty: Vec<ComponentId> = self.state.read(|st| {
            ids.into_iter()
                .filter(|id| st.copies_on(*id) == 0)
                .collect()
        });
        let mut drains = lock(&self.mover.drains);
        for id in empty {
            let Some(d) = drains.get_mut(&id) else {
                continue;
            };
            if d.copies_moved == 0 || d.done {
                continue;
            }
            d.done = true;
            let took = d.started.elapsed();
            info!(
                id,
                copies = d.copies_moved,
                bytes = d.bytes_moved,
                took_ms = took.as_millis() as u64,
                "memory monitor drained: it holds no copy"
            );
            self.journal.record(
                EventKind::Drain,
                format!(
                    "memory monitor {id} drained: {} copies ({} bytes) moved; it can be stopped",
                    d.copies_moved, d.bytes_moved
                ),
                Some(took.as_millis() as u64),
            );
        }
    }

    /// Runs one move, the copy paced to `rate` bytes a second if given;
    /// returns the bytes copied.
    fn run_move(&self, m: &Move, rate: Option<u64>) -> Result<u64, String> {
        let t = Instant::now();
        let (source, to, from) = self.state.read(|st| {
            (
                Self::endpoint(st, m.source),
                Self::endpoint(st, m.to),
                Self::endpoint(st, m.from),
            )
        });
        let (first_page, pages) = m.key.index.pages(vregion_shift(self.cfg.vregion_bytes));
        let granted = self.try_grant(m.key, [m.to]);
        let req = ReplicateReq {
            asid: m.key.asid,
            first_page,
            pages,
            target: to,
            rate,
            sync: false,
        };
        let copied = granted
            .and_then(|()| {
                self.peers
                    .replicate(&source.addr, &req)
                    .map_err(|e| e.to_string())
            })
            .and_then(|resp| {
                if m.from == m.source {
                    return Ok(resp.pages);
                }
                // What reached only the old copy goes to the new one too.
                let sync = ReplicateReq {
                    sync: true,
                    ..req.clone()
                };
                let more = self
                    .peers
                    .replicate(&from.addr, &sync)
                    .map_err(|e| e.to_string())?;
                Ok(resp.pages + more.pages)
            })
            .and_then(|copied| {
                self.change(|st, _| st.commit_move(m))
                    .map_err(|e| e.message)?;
                Ok(copied)
            });
        let copied = match copied {
            Ok(p) => p,
            Err(e) => {
                self.counters.moves_failed.fetch_add(1, Ordering::Relaxed);
                // The pages copied to `to` stay there until the address
                // space is released: recovery may be placing K on `to` at
                // this moment, and a withdraw would undo its copy.
                warn!(key = %m.key, from = m.from, to = m.to, "a move failed, will plan it again: {e}");
                return Err(e);
            }
        };
        self.withdraw_later(m.key, m.from);
        let bytes = copied * PAGE_SIZE as u64;
        let took = t.elapsed().as_millis() as u64;
        self.counters.moves.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_moved
            .fetch_add(bytes, Ordering::Relaxed);
        info!(key = %m.key, from = m.from, to = m.to, source = m.source, pages = copied, took_ms = took, "moved a copy");
        self.journal.record(
            EventKind::Moved,
            format!(
                "{}: copy moved from {} to {} ({copied} pages, from {})",
                m.key, m.from, m.to, m.source
            ),
            Some(took),
        );
        Ok(bytes)
    }

    /// Withdraws the copy of `key` on `id` (refused from then on, freed),
    /// now if it can be told, else in a later round.
    fn withdraw_later(&self, key: VRegionKey, id: ComponentId) {
        lock(&self.mover.withdrawals).push((key, id));
        self.withdraw_pending();
    }

    /// Tells each monitor of a pending withdrawal, keeping those that
    /// cannot be told yet. One that died (its pages are gone with it) or
    /// that holds the vRegion again (a later placement) is let be.
    fn withdraw_pending(&self) {
        let pending = std::mem::take(&mut *lock(&self.mover.withdrawals));
        let mut left = Vec::new();
        for (key, id) in pending {
            let addr = self.state.read(|st| {
                let holds = st.vregion(key).is_some_and(|a| a.holds(id));
                st.component(id)
                    .filter(|c| c.health == Health::Alive && !holds)
                    .map(|c| c.addr.clone())
            });
            let Some(addr) = addr else {
                continue;
            };
            let w = WithdrawReq {
                asid: key.asid,
                index: key.index,
                vregion_bytes: self.cfg.vregion_bytes,
            };
            match self.peers.withdraw(&addr, &w) {
                Ok(_) => self.counters.withdrawals.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    warn!(%key, id, "cannot tell a memory monitor that a copy left it; will again: {e}");
                    left.push((key, id));
                    0
                }
            };
        }
        lock(&self.mover.withdrawals).extend(left);
    }
}
