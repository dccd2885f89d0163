//! The manager's request handler: the placement state machine behind a lock,
//! its changes made durable before they are answered, and the side effects
//! (freeing pages on memory monitors) done outside the lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use lego_placement::{
    asid_vnode, Health, Placement, PlacementError, Role, VRegionAssignment, VRegionKey,
};
use lego_transport::{Client, ClientOptions, Credentials, Handler, PeerInfo, Reject};
use lego_wire::auth::{Claim, Secret};
use lego_wire::control::*;
use lego_wire::pages::{decode_u64, encode_u64};
use lego_wire::{ErrorCode, Op};
use tracing::{info, warn};

use crate::db::{Change, Db};

/// Counters of the manager itself.
#[derive(Debug, Default)]
pub struct ManagerCounters {
    pub registrations: AtomicU64,
    pub heartbeats: AtomicU64,
    pub deaths: AtomicU64,
    pub vregions_assigned: AtomicU64,
    pub spaces_created: AtomicU64,
    pub spaces_released: AtomicU64,
    pub failovers: AtomicU64,
    pub vregions_lost: AtomicU64,
    pub rereplications: AtomicU64,
    pub rereplications_failed: AtomicU64,
}

/// Fixed facts about this manager.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub vregion_bytes: u64,
    /// Where vNodes' virtual IP addresses come from.
    pub vips: crate::vnodes::VipRange,
}

/// The manager's state and request handler.
pub struct ManagerService {
    pub(crate) state: Mutex<Placement>,
    db: Db,
    started: Instant,
    pub(crate) cfg: ServiceConfig,
    pub(crate) secret: Secret,
    /// Where the RPC and HTTP endpoints listen, once bound.
    pub addrs: OnceLock<(String, Option<String>)>,
    pub(crate) reports: Mutex<HashMap<u64, BTreeMap<String, u64>>>,
    pool: Mutex<HashMap<String, Client>>,
    /// Which job (owner) each address space belongs to, when it has one.
    pub(crate) owners: Mutex<BTreeMap<u64, u64>>,
    /// The jobs each processor monitor said it runs, in its last heartbeat.
    pub(crate) jobs: Mutex<HashMap<u64, Vec<u64>>>,
    pub counters: ManagerCounters,
    /// Recent failures and recoveries, for `lego status`.
    pub(crate) journal: crate::recovery::Journal,
    pub(crate) recoveries: crate::recovery::Recoveries,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn reject(e: PlacementError) -> Reject {
    use PlacementError as P;
    let code = match &e {
        P::NotEnoughMemoryMonitors { .. }
        | P::NoSpareMemoryMonitor(_)
        | P::NoProcessor { .. }
        | P::NoStorage(_)
        | P::StorageDown { .. } => ErrorCode::Unavailable,
        P::QuotaExceeded { .. } => ErrorCode::OutOfMemory,
        P::UnknownComponent(_) | P::UnknownVnode(_) | P::UnknownVnodeId(_) => ErrorCode::NotFound,
        P::VnodeExists(_) | P::StaleInstance { .. } | P::ComponentDead(_) => ErrorCode::Conflict,
        _ => ErrorCode::BadRequest,
    };
    Reject::new(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Reject {
    warn!("internal error: {e}");
    Reject::new(ErrorCode::Internal, e.to_string())
}

impl ManagerService {
    pub fn new(
        placement: Placement,
        db: Db,
        cfg: ServiceConfig,
        secret: Secret,
        owners: BTreeMap<u64, u64>,
    ) -> Self {
        ManagerService {
            state: Mutex::new(placement),
            db,
            started: Instant::now(),
            cfg,
            secret,
            addrs: OnceLock::new(),
            reports: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            owners: Mutex::new(owners),
            jobs: Mutex::new(HashMap::new()),
            counters: ManagerCounters::default(),
            journal: Default::default(),
            recoveries: Default::default(),
        }
    }

    /// Milliseconds since this manager started: the state machine's clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs the failure detector once and logs what happened.
    pub fn tick(&self) {
        let now = self.now_ms();
        let mut st = lock(&self.state);
        st.tick(now);
        let events = st.take_events();
        drop(st);
        self.log_events(events);
    }

    pub(crate) fn persist(&self, changes: &[Change<'_>]) -> Result<(), Reject> {
        self.db.apply(changes).map_err(internal)
    }

    /// A snapshot of the whole cluster, as `lego status` and `/state` show it.
    pub fn cluster_state(&self) -> ClusterState {
        let now = self.now_ms();
        let st = lock(&self.state);
        let reports = lock(&self.reports);
        let (addr, http) = self.addrs.get().cloned().unwrap_or_default();
        ClusterState {
            manager: ManagerInfo {
                addr,
                http,
                uptime_ms: now,
                heartbeat_ms: self.cfg.heartbeat_ms,
                dead_after_ms: self.cfg.dead_after_ms,
                vregion_bytes: self.cfg.vregion_bytes,
            },
            components: st
                .components()
                .map(|c| ComponentInfo {
                    id: c.id,
                    role: c.role.to_string(),
                    addr: c.addr.clone(),
                    health: c.health.to_string(),
                    capacity: c.capacity,
                    used: c.used,
                    last_heard_ms_ago: now.saturating_sub(c.last_heard_ms),
                    counters: reports.get(&c.id).cloned().unwrap_or_default(),
                })
                .collect(),
            vnodes: st.vnodes().map(|v| self.vnode_info(&st, v)).collect(),
            vregions: st
                .vregions()
                .map(|(k, a)| VRegionInfo {
                    asid: k.asid,
                    index: k.index,
                    primary: a.primary,
                    backup: a.backup,
                    state: st
                        .vregion_state(*k)
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                })
                .collect(),
            events: self.journal.snapshot(),
        }
    }

    pub(crate) fn require_vnode(peer: &PeerInfo, vnode: u32) -> Result<(), Reject> {
        match peer.claim {
            Claim::Vnode(v) if v != vnode => Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("vnode {vnode} is not this connection's vnode ({v})"),
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn endpoint(st: &Placement, id: u64) -> Endpoint {
        Endpoint {
            id,
            addr: st.component(id).map(|c| c.addr.clone()).unwrap_or_default(),
        }
    }

    /// Tells the memory monitors holding `removed` vRegions to free their
    /// address spaces. Returns (pages freed, monitors that could not be told).
    pub(crate) fn free_on_monitors(
        &self,
        removed: &[(VRegionKey, VRegionAssignment)],
    ) -> (u64, Vec<String>) {
        // Every live memory monitor is told, not only the copies' holders: a
        // copy being rebuilt (or one whose rebuilding was cut short) may
        // hold pages of the space too.
        let spaces: BTreeSet<u64> = removed.iter().map(|(k, _)| k.asid).collect();
        let holders: BTreeSet<u64> = removed
            .iter()
            .flat_map(|(_, a)| a.copies())
            .filter(|&id| id != lego_placement::BAD_COPY)
            .collect();
        let targets: Vec<(u64, Option<String>, BTreeSet<u64>)> = {
            let st = lock(&self.state);
            let alive: BTreeSet<u64> = st
                .components()
                .filter(|c| c.role == Role::Memory && c.health != Health::Dead)
                .map(|c| c.id)
                .collect();
            holders
                .union(&alive)
                .map(|&id| {
                    let addr = st
                        .component(id)
                        .filter(|c| c.health != Health::Dead)
                        .map(|c| c.addr.clone());
                    (id, addr, spaces.clone())
                })
                .collect()
        };
        let (mut freed, mut unreachable) = (0, Vec::new());
        for (id, addr, spaces) in targets {
            let Some(addr) = addr else {
                unreachable.push(format!("memory monitor {id} (dead)"));
                continue;
            };
            let result = spaces.iter().try_fold(0, |acc, &asid| {
                let c = self.client(&addr)?;
                let f = c.call(Op::FreeSpace, &[&encode_u64(asid)]);
                if f.is_err() {
                    lock(&self.pool).remove(&addr);
                }
                let f = f?;
                Ok::<u64, lego_transport::TransportError>(
                    acc + decode_u64("freed", &f.body).unwrap_or(0),
                )
            });
            match result {
                Ok(n) => freed += n,
                Err(e) => {
                    warn!(id, %addr, "cannot free pages on memory monitor: {e}");
                    unreachable.push(format!("memory monitor {id} at {addr}"));
                }
            }
        }
        (freed, unreachable)
    }

    pub(crate) fn client(&self, addr: &str) -> Result<Client, lego_transport::TransportError> {
        if let Some(c) = lock(&self.pool).get(addr).filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let opts = ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        };
        let c = Client::connect(addr, &Credentials::component(&self.secret), &opts)?;
        lock(&self.pool).insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn dispatch(&self, peer: &PeerInfo, op: Op, body: &[u8]) -> Result<Vec<u8>, Reject> {
        match op {
            Op::Ping => Ok(Vec::new()),
            Op::Register => {
                peer.require_component(op)?;
                let req: RegisterReq = from_body(body)?;
                let role: Role = req.role.parse().map_err(reject)?;
                let mut st = lock(&self.state);
                let id = st
                    .register(
                        self.now_ms(),
                        role,
                        req.addr,
                        req.capacity,
                        req.instance,
                        req.previous,
                    )
                    .map_err(reject)?;
                let comp = st.component(id).expect("just registered").clone();
                self.persist(&[Change::Component(&comp), Change::next_ids(&st)])?;
                let events = st.take_events();
                drop(st);
                self.log_events(events);
                Ok(to_body(&RegisterResp {
                    id,
                    heartbeat_ms: self.cfg.heartbeat_ms,
                }))
            }
            Op::Heartbeat => {
                peer.require_component(op)?;
                let req: HeartbeatReq = from_body(body)?;
                lock(&self.state)
                    .heartbeat(self.now_ms(), req.id, req.instance, req.used)
                    .map_err(reject)?;
                self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                lock(&self.reports).insert(req.id, req.counters);
                lock(&self.jobs).insert(req.id, req.jobs);
                Ok(b"{}".to_vec())
            }
            Op::AssignVRegion => {
                let req: AssignReq = from_body(body)?;
                Self::require_vnode(peer, asid_vnode(req.asid))?;
                let key = VRegionKey {
                    asid: req.asid,
                    index: req.index,
                };
                let mut st = lock(&self.state);
                let (a, created) = st.assign_vregion(key).map_err(reject)?;
                if created {
                    self.persist(&[Change::VRegion(key, a)])?;
                    self.counters
                        .vregions_assigned
                        .fetch_add(1, Ordering::Relaxed);
                    info!(%key, primary = a.primary, backup = ?a.backup, "vregion placed");
                }
                let resp = AssignResp {
                    primary: Self::endpoint(&st, a.primary),
                    backup: a.backup.map(|b| Self::endpoint(&st, b)),
                    created,
                };
                Ok(to_body(&resp))
            }
            Op::CreateSpace => {
                let req: CreateSpaceReq = from_body(body)?;
                let mut st = lock(&self.state);
                let vid = st
                    .vnode_by_name(&req.vnode)
                    .map(|v| v.id)
                    .ok_or_else(|| reject(PlacementError::UnknownVnode(req.vnode.clone())))?;
                Self::require_vnode(peer, vid)?;
                let (asid, vnode) = st.create_space(vid).map_err(reject)?;
                let mut changes = vec![Change::Vnode(&vnode)];
                if let Some(owner) = req.owner {
                    changes.push(Change::Owner { asid, owner });
                    lock(&self.owners).insert(asid, owner);
                }
                self.persist(&changes)?;
                self.counters.spaces_created.fetch_add(1, Ordering::Relaxed);
                Ok(to_body(&CreateSpaceResp {
                    asid,
                    vnode_id: vid,
                    vregion_bytes: self.cfg.vregion_bytes,
                }))
            }
            Op::ReleaseSpace => {
                let req: ReleaseSpaceReq = from_body(body)?;
                Self::require_vnode(peer, asid_vnode(req.asid))?;
                Ok(to_body(&self.release(&[req.asid])?))
            }
            Op::ReleaseOwner => {
                peer.require_component(op)?;
                let req: ReleaseOwnerReq = from_body(body)?;
                let spaces: Vec<u64> = lock(&self.owners)
                    .iter()
                    .filter(|(_, &o)| o == req.owner)
                    .map(|(&a, _)| a)
                    .collect();
                let resp = self.release(&spaces)?;
                info!(
                    owner = req.owner,
                    spaces = spaces.len(),
                    freed = resp.freed_pages,
                    "job's memory released"
                );
                Ok(to_body(&resp))
            }
            Op::ForkSpace => {
                let req: ForkSpaceReq = from_body(body)?;
                Self::require_vnode(peer, asid_vnode(req.asid))?;
                self.fork(req.asid).map(|r| to_body(&r))
            }
            Op::PlaceProcess => {
                peer.require_component(op)?;
                let req: PlaceProcessReq = from_body(body)?;
                let st = lock(&self.state);
                if st.vnode_by_name(&req.vnode).is_none() {
                    return Err(reject(PlacementError::UnknownVnode(req.vnode)));
                }
                let id = st.place_process(req.excache).map_err(reject)?;
                Ok(to_body(&Self::endpoint(&st, id)))
            }
            Op::VnodeCreate
            | Op::VnodeList
            | Op::VnodeShow
            | Op::VnodeMount
            | Op::VnodeDelete
            | Op::LeaseMemory => self.vnode_op(peer, op, body),
            Op::ReportMissed => {
                let req: MissedReq = from_body(body)?;
                Self::require_vnode(peer, asid_vnode(req.asid))?;
                self.missed_reported(&req)?;
                Ok(b"{}".to_vec())
            }
            Op::ReportUnreachable => {
                let req: UnreachableReq = from_body(body)?;
                self.unreachable_reported(&req);
                Ok(b"{}".to_vec())
            }
            Op::ClusterState => {
                peer.require_component(op)?;
                Ok(to_body(&self.cluster_state()))
            }
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("the manager does not serve {other}"),
            )),
        }
    }
}

impl ManagerService {
    /// Releases address spaces: drops their vRegions durably, then frees their
    /// pages on the memory monitors.
    pub(crate) fn release(&self, spaces: &[u64]) -> Result<ReleaseSpaceResp, Reject> {
        let removed = {
            let mut st = lock(&self.state);
            let removed: Vec<_> = spaces.iter().flat_map(|&a| st.release_space(a)).collect();
            let mut changes: Vec<Change> = removed
                .iter()
                .map(|(k, _)| Change::DeleteVRegion(*k))
                .collect();
            changes.extend(spaces.iter().map(|&a| Change::DeleteOwner(a)));
            changes.extend(spaces.iter().map(|&a| Change::DeleteLease(a)));
            self.persist(&changes)?;
            let mut owners = lock(&self.owners);
            for a in spaces {
                owners.remove(a);
            }
            removed
        };
        let (freed, unreachable) = self.free_on_monitors(&removed);
        self.counters
            .spaces_released
            .fetch_add(spaces.len() as u64, Ordering::Relaxed);
        for a in spaces {
            tracing::debug!(asid = format_args!("{a:#x}"), "address space released");
        }
        Ok(ReleaseSpaceResp {
            vregions: removed.len() as u64,
            freed_pages: freed,
            unreachable,
        })
    }

    /// Creates a forked child's address space: same vNode and owner, same
    /// memory monitors, each of which copies the parent's pages locally.
    fn fork(&self, parent: u64) -> Result<CreateSpaceResp, Reject> {
        let (child, copied, monitors) = {
            let mut st = lock(&self.state);
            let (child, vnode, copied) = st.fork_space(parent).map_err(reject)?;
            // The child's copy of the memory counts against the quota too.
            let lease = st.lease_of(parent);
            if lease > 0 {
                if let Err(e) = st.lease(child, lease) {
                    st.release_space(child);
                    warn!(parent = format_args!("{parent:#x}"), "fork refused: {e}");
                    return Err(Reject::new(ErrorCode::OutOfMemory, e.to_string()));
                }
            }
            let mut changes: Vec<Change> = vec![Change::Vnode(&vnode)];
            if lease > 0 {
                changes.push(Change::Lease {
                    asid: child,
                    bytes: lease,
                });
            }
            changes.extend(copied.iter().map(|(k, a)| Change::VRegion(*k, *a)));
            let owner = lock(&self.owners).get(&parent).copied();
            if let Some(owner) = owner {
                changes.push(Change::Owner { asid: child, owner });
            }
            self.persist(&changes)?;
            if let Some(owner) = owner {
                lock(&self.owners).insert(child, owner);
            }
            let ids: BTreeSet<u64> = copied
                .iter()
                .flat_map(|(_, a)| a.copies())
                .filter(|&id| id != lego_placement::BAD_COPY)
                .collect();
            let monitors: Vec<(u64, Option<String>)> = ids
                .into_iter()
                .map(|id| {
                    (
                        id,
                        st.component(id)
                            .filter(|c| c.health != Health::Dead)
                            .map(|c| c.addr.clone()),
                    )
                })
                .collect();
            (child, copied, monitors)
        };
        let body = [parent.to_le_bytes(), child.to_le_bytes()].concat();
        // A dead copy is skipped: the child's vRegions are then degraded
        // like the parent's, and get their second copy back the same way.
        let live = monitors.iter().filter(|(_, a)| a.is_some()).count();
        if live == 0 && !monitors.is_empty() {
            let _ = self.release(&[child]);
            return Err(Reject::new(
                ErrorCode::Unavailable,
                "no live memory monitor holds the parent's memory".to_string(),
            ));
        }
        for (id, addr) in monitors {
            let Some(addr) = addr else {
                warn!(
                    parent = format_args!("{parent:#x}"),
                    id, "fork: skipping a dead copy"
                );
                continue;
            };
            let done = self
                .client(&addr)
                .and_then(|c| c.call(Op::CloneSpace, &[&body]));
            let done = done.map_err(|e| {
                lock(&self.pool).remove(&addr);
                e.to_string()
            });
            if let Err(why) = done {
                warn!(
                    parent = format_args!("{parent:#x}"),
                    "fork cannot copy memory: {why}"
                );
                let _ = self.release(&[child]);
                return Err(Reject::new(
                    ErrorCode::Unavailable,
                    format!("cannot copy the parent's memory: {why}"),
                ));
            }
        }
        info!(
            parent = format_args!("{parent:#x}"),
            child = format_args!("{child:#x}"),
            vregions = copied.len(),
            "address space forked"
        );
        Ok(CreateSpaceResp {
            asid: child,
            vnode_id: asid_vnode(child),
            vregion_bytes: self.cfg.vregion_bytes,
        })
    }
}

impl Handler for ManagerService {
    fn handle(
        &self,
        peer: &PeerInfo,
        op: Op,
        body: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        *reply = self.dispatch(peer, op, body)?;
        Ok(())
    }
}
