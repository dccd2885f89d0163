//! The manager's request handler: a thin shell around the placement state
//! machine ([`State`]). Each request is decoded as its own type, checked
//! against what the caller is entitled to, and served by one method (in
//! [`crate::spaces`], [`crate::vnodes`] or [`crate::recovery`]); changes are
//! durable before they are answered, and the side effects on other
//! components (freeing pages, copying vRegions) happen outside the lock.
//!
//! Entitlement: component connections (daemons, the CLI) may do anything;
//! a vNode's connection (a process under the runtime) may only touch its own
//! vNode's address spaces, and may not register, place processes, create or
//! delete vNodes, or read the cluster's state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lego_placement::{Placement, PlacementError};
use lego_transport::{answer, lock, Handler, PeerInfo, Reject};
use lego_wire::auth::{Claim, Secret};
use lego_wire::control::*;
use lego_wire::identity::*;
use lego_wire::{ComponentId, ErrorCode, Op, Ping, VnodeId};

use tracing::warn;

use crate::identity::Identities;
use crate::journal::Journal;
use crate::peers::Peers;
use crate::state::State;
use crate::vip::VipRange;

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
    /// Requests refused because the caller was not entitled to them.
    pub refused: AtomicU64,
    /// Members' keys revoked.
    pub revocations: AtomicU64,
    /// Copies of vRegions moved off live memory monitors (drains, rebalancing).
    pub moves: AtomicU64,
    pub moves_failed: AtomicU64,
    /// Old copies of moved vRegions withdrawn from their monitors.
    pub withdrawals: AtomicU64,
    pub bytes_moved: AtomicU64,
}

/// Fixed facts about this manager.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub vregion_bytes: u64,
    /// Where vNodes' virtual IP addresses come from.
    pub vips: VipRange,
    /// Rebalance on its own when the memory monitors' use differs by more
    /// than this fraction of capacity (None: only on `lego rebalance`).
    pub rebalance: Option<f64>,
}

/// The manager: its state, the components it talks to, what it reports.
pub struct ManagerService {
    pub(crate) state: State,
    pub(crate) peers: Peers,
    pub(crate) cfg: ServiceConfig,
    /// Recent failures and recoveries, for `lego status`.
    pub(crate) journal: Journal,
    pub counters: ManagerCounters,
    /// The counters each component sent with its last heartbeat.
    reports: Mutex<HashMap<ComponentId, BTreeMap<String, u64>>>,
    /// The vIPs each processor monitor last said it serves ([`crate::vnet`]).
    pub(crate) served_vips: Mutex<HashMap<ComponentId, Vec<String>>>,
    /// Where the RPC and HTTP endpoints listen, once bound.
    pub addrs: OnceLock<(String, Option<String>)>,
    /// The cluster secret: checks the job proofs of vNodes' processes.
    pub(crate) secret: Secret,
    /// When each memory monitor was last probed on a process's report.
    pub(crate) probed: Mutex<HashMap<ComponentId, std::time::Instant>>,
    /// Join tokens, members and revocations ([`crate::identity`]).
    pub identities: Arc<Identities>,
    /// Drains and queued moves ([`crate::migrate`]).
    pub(crate) mover: crate::migrate::Mover,
}

impl ManagerService {
    pub fn new(
        placement: Placement,
        db: crate::store::Db,
        cfg: ServiceConfig,
        secret: &Secret,
        identities: Arc<Identities>,
    ) -> Self {
        ManagerService {
            state: State::new(placement, db),
            peers: Peers::new(secret),
            cfg,
            journal: Journal::default(),
            counters: ManagerCounters::default(),
            reports: Mutex::new(HashMap::new()),
            served_vips: Mutex::new(HashMap::new()),
            addrs: OnceLock::new(),
            secret: secret.clone(),
            probed: Mutex::new(HashMap::new()),
            identities,
            mover: crate::migrate::Mover::default(),
        }
    }

    /// Changes the state (durably) and acts on the events of the change.
    pub(crate) fn change<R>(
        &self,
        f: impl FnOnce(&mut Placement, u64) -> Result<R, PlacementError>,
    ) -> Result<R, Reject> {
        let (answer, events) = self.state.change(f);
        self.on_events(events);
        answer
    }

    /// Runs the failure detector once.
    pub fn tick(&self) {
        let _ = self.change(|st, now| {
            st.tick(now);
            Ok(())
        });
    }

    pub(crate) fn forget_report(&self, id: ComponentId) {
        lock(&self.reports).remove(&id);
        lock(&self.served_vips).remove(&id);
    }

    pub(crate) fn reports(&self) -> HashMap<ComponentId, BTreeMap<String, u64>> {
        lock(&self.reports).clone()
    }

    /// Every component, as [`ManagerService::cluster_state`] shows them
    /// (without the rest of the cluster, nor a call to the store).
    pub fn components(&self) -> Vec<ComponentInfo> {
        let now = self.state.now_ms();
        let reports = self.reports();
        self.state
            .read(|st| self.component_infos(st, now, &reports))
    }

    fn component_infos(
        &self,
        st: &Placement,
        now: u64,
        reports: &HashMap<ComponentId, BTreeMap<String, u64>>,
    ) -> Vec<ComponentInfo> {
        st.components()
            .map(|c| ComponentInfo {
                id: c.id,
                role: c.role,
                addr: c.addr.clone(),
                health: c.health,
                capacity: c.capacity,
                used: c.used,
                last_heard_ms_ago: now.saturating_sub(c.last_heard_ms),
                counters: reports.get(&c.id).cloned().unwrap_or_default(),
                vips: self.served_vips(c.id),
                drain: self.drain_info(st, c.id),
            })
            .collect()
    }

    /// A snapshot of the whole cluster, as `lego status` and `/state` show it.
    pub fn cluster_state(&self) -> ClusterState {
        let now = self.state.now_ms();
        let reports = self.reports();
        let (addr, http) = self.addrs.get().cloned().unwrap_or_default();
        let store = self.state.db().describe();
        let standbys = self.state.db().standbys();
        self.state.read(|st| ClusterState {
            manager: ManagerInfo {
                addr,
                http,
                uptime_ms: now,
                heartbeat_ms: self.cfg.heartbeat_ms,
                dead_after_ms: self.cfg.dead_after_ms,
                vregion_bytes: self.cfg.vregion_bytes,
                store: Some(store),
                standbys,
            },
            components: self.component_infos(st, now, &reports),
            vnodes: st.vnodes().map(|v| self.vnode_info(st, v)).collect(),
            vregions: st
                .vregions()
                .filter_map(|(k, a)| {
                    Some(VRegionInfo {
                        asid: k.asid,
                        index: k.index,
                        primary: a.primary,
                        backup: a.backup,
                        state: st.vregion_state(*k)?,
                    })
                })
                .collect(),
            events: self.journal.snapshot(),
        })
    }

    /// Refuses a vNode's connection asking about another vNode.
    pub(crate) fn require_vnode(peer: &PeerInfo, vnode: VnodeId) -> Result<(), Reject> {
        match peer.claim {
            Claim::Vnode(v) if v != vnode => Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("vnode {vnode} is not this connection's vnode ({v})"),
            )),
            _ => Ok(()),
        }
    }

    /// Where component `id` is (an empty address if unknown).
    pub(crate) fn endpoint(st: &Placement, id: ComponentId) -> Endpoint {
        Endpoint {
            id,
            addr: st.component(id).map(|c| c.addr.clone()).unwrap_or_default(),
        }
    }

    fn register(&self, peer: &PeerInfo, req: RegisterReq) -> Result<RegisterResp, Reject> {
        self.check_member(peer, Some(req.role), None)?;
        if let (Claim::Member(m), Some(p)) = (peer.claim, req.previous) {
            if self.identities.component_of(m) != Some(p) {
                return Err(Reject::new(
                    ErrorCode::NotEntitled,
                    format!("member {m} never registered as component {p}: it may not take its id"),
                ));
            }
        }
        // An address no one can dial is refused now, with why, rather than
        // found out by the first program placed there.
        crate::reachable::check_form(&req.addr, &peer.addr)
            .and_then(|()| crate::reachable::dial_back(&req.addr))
            .map_err(|why| {
                warn!(role = %req.role, addr = %req.addr, peer = %peer.addr, "registration refused: {why}");
                Reject::new(ErrorCode::BadRequest, why)
            })?;
        let id = self.change(|st, now| {
            st.register(
                now,
                req.role,
                req.addr,
                req.capacity,
                req.instance,
                req.previous,
            )
        })?;
        if let Claim::Member(m) = peer.claim {
            self.identities.registered(self.state.db(), m, id)?;
        }
        Ok(RegisterResp {
            id,
            heartbeat_ms: self.cfg.heartbeat_ms,
        })
    }

    fn heartbeat(&self, peer: &PeerInfo, req: HeartbeatReq) -> Result<HeartbeatResp, Reject> {
        self.check_member(peer, None, Some(req.id))?;
        self.change(|st, now| {
            st.heartbeat(now, req.id, req.instance, req.used)?;
            st.set_jobs(req.id, req.jobs);
            Ok(())
        })?;
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        lock(&self.reports).insert(req.id, req.counters);
        self.set_served_vips(req.id, req.vips);
        Ok(HeartbeatResp {
            revoked: self.identities.revoked.all(),
            revoked_addrs: self.revoked_addrs(),
            seal: self.identities.seal.load(Ordering::Relaxed),
        })
    }

    fn place_process(&self, req: PlaceProcessReq) -> Result<Endpoint, Reject> {
        self.state
            .read(|st| {
                if st.vnode_by_name(&req.vnode).is_none() {
                    return Err(PlacementError::UnknownVnode(req.vnode));
                }
                Ok(Self::endpoint(st, st.place_process(req.excache)?))
            })
            .map_err(crate::state::reject)
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
        // A member revoked while this connection was being set up.
        if matches!(peer.claim, Claim::Member(m) if self.identities.revoked.contains(m)) {
            return Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("{} has been revoked", peer.claim),
            ));
        }
        // A joining daemon may only join.
        if matches!(peer.claim, Claim::Join(_)) != (op == Op::Join) {
            return Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("{op} is not for a connection speaking for {}", peer.claim),
            ));
        }
        // What only the holders of the cluster secret (the operator) may ask.
        if matches!(
            op,
            Op::TokenCreate
                | Op::Revoke
                | Op::Members
                | Op::VnodeCreate
                | Op::VnodeDelete
                | Op::Drain
                | Op::Rebalance
        ) {
            peer.require_secret(op)?;
        }
        // What only components (daemons, the CLI) may ask.
        if matches!(
            op,
            Op::Register
                | Op::Heartbeat
                | Op::ReleaseOwner
                | Op::ReleaseSpace
                | Op::PlaceProcess
                | Op::VnodeCreate
                | Op::VnodeMount
                | Op::VnodeDelete
                | Op::ClusterState
                | Op::VipRoutes
        ) {
            peer.require_component(op)?;
        }
        let b = body;
        match op {
            Op::Ping => answer(b, reply, |_: Ping| Ok(())),
            Op::Register => answer(b, reply, |r| self.register(peer, r)),
            Op::Heartbeat => answer(b, reply, |r| self.heartbeat(peer, r)),
            Op::TokenCreate => answer(b, reply, |r| self.token_create(r)),
            Op::Join => answer(b, reply, |r| self.join(peer, r)),
            Op::PeerKey => answer(b, reply, |r| self.peer_key(peer, r)),
            Op::JobKeys => answer(b, reply, |r| self.job_keys(peer, r)),
            Op::Revoke => answer(b, reply, |r| self.revoke(r)),
            Op::Members => answer(b, reply, |_: MembersReq| Ok(self.identities.list())),
            Op::Drain => answer(b, reply, |r| self.drain(r)),
            Op::Rebalance => answer(b, reply, |r| self.rebalance(r)),
            Op::AssignVRegion => answer(b, reply, |r| self.assign(peer, r)),
            Op::CreateSpace => answer(b, reply, |r| self.create_space(peer, r)),
            Op::ForkSpace => answer(b, reply, |r| self.fork_space(peer, r)),
            Op::ReleaseSpace => answer(b, reply, |r| self.release_space(r)),
            Op::ReleaseOwner => answer(b, reply, |r| self.release_owner(r)),
            Op::LeaseMemory => answer(b, reply, |r| self.lease(peer, r)),
            Op::PlaceProcess => answer(b, reply, |r| self.place_process(r)),
            Op::VnodeCreate => answer(b, reply, |r| self.vnode_create(r)),
            Op::VnodeList => answer(b, reply, |_: VnodeListReq| Ok(self.vnode_list(peer))),
            Op::VnodeShow => answer(b, reply, |r| self.vnode_show(peer, r)),
            Op::VnodeMount => answer(b, reply, |r| self.vnode_mount(r)),
            Op::VnodeDelete => answer(b, reply, |r| self.vnode_delete(r)),
            Op::ReportMissed => answer(b, reply, |r| self.missed_reported(peer, r)),
            Op::ReportUnreachable => answer(b, reply, |r| self.unreachable_reported(r)),
            Op::ClusterState => answer(b, reply, |_: ClusterStateReq| Ok(self.cluster_state())),
            Op::VipRoutes => answer(b, reply, |_: VipRoutesReq| Ok(self.vip_routes())),
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("the manager does not serve {other}"),
            )),
        }
    }
}
