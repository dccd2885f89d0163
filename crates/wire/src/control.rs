//! Control-plane requests of the manager and the memory monitors: JSON
//! documents, since they are small, rare and read by people too. Each
//! request is a type of its own bound to its op and reply by
//! [`json_request!`](crate::json_request) at the end of this file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::request::{from_body, to_body, Empty};
use crate::types::{
    Asid, Backup, ComponentId, EventKind, Health, Role, VRegionIdx, VRegionState, VnodeId,
};
use crate::Op;

/// `Register`: a component says hello (again, after a restart of either side).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReq {
    pub role: Role,
    /// Where the component serves requests.
    pub addr: String,
    /// Capacity in bytes (memory, ExCache or disk, by role).
    pub capacity: u64,
    /// Random per start of the daemon: tells a restart from a reconnect.
    pub instance: u64,
    /// The id this daemon had before, when it re-registers.
    pub previous: Option<ComponentId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResp {
    pub id: ComponentId,
    /// How often the manager wants a heartbeat.
    pub heartbeat_ms: u64,
}

/// `Heartbeat`: a component is alive and reports its load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReq {
    pub id: ComponentId,
    pub instance: u64,
    /// Bytes in use.
    pub used: u64,
    /// The component's counters, re-exported by the manager's `/metrics`.
    pub counters: BTreeMap<String, u64>,
    /// For a processor monitor: the jobs (address-space owners) it runs, so
    /// that the manager can free their memory if the processor dies.
    #[serde(default)]
    pub jobs: Vec<u64>,
    /// For a processor monitor: the vIPs of the vNode networks it serves
    /// (their processes run here), so other hosts route them here.
    #[serde(default)]
    pub vips: Vec<String>,
}

/// `AssignVRegion` (GMM): where does this vRegion live? Placed on first ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignReq {
    pub asid: Asid,
    pub index: VRegionIdx,
}

/// A component and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: ComponentId,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignResp {
    pub primary: Endpoint,
    /// `None`: the vNode keeps one copy of its memory.
    pub backup: Option<Backup<Endpoint>>,
    /// True when this call created the assignment.
    pub created: bool,
}

/// `CreateSpace`: a new address space of a vNode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSpaceReq {
    pub vnode: String,
    /// The job the space belongs to: `ReleaseOwner` frees all of a job's spaces.
    #[serde(default)]
    pub owner: Option<u64>,
    /// [`Secret::job_proof`](crate::auth::Secret::job_proof) of `owner` and
    /// the vNode, 64 hex digits: required when a vNode's process names an
    /// owner.
    #[serde(default)]
    pub proof: Option<String>,
}

/// `ForkSpace`: the child's space, a copy of `asid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkSpaceReq {
    pub asid: Asid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSpaceResp {
    pub asid: Asid,
    pub vnode_id: VnodeId,
    /// Size of a vRegion in bytes.
    pub vregion_bytes: u64,
}

/// `ReleaseSpace`: an address space is gone; free its pages everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpaceReq {
    pub asid: Asid,
    /// Only if it belongs to this job (refused otherwise): what a
    /// processor monitor asks on a job's word.
    #[serde(default)]
    pub job: Option<u64>,
}

/// `ReleaseOwner`: free every address space created for one job (summed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOwnerReq {
    pub owner: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpaceResp {
    pub vregions: u64,
    pub freed_pages: u64,
    /// Memory monitors that could not be told (dead or unreachable).
    pub unreachable: Vec<String>,
}

/// `PlaceProcess` (GPM): which processor monitor runs a new process?
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceProcessReq {
    pub vnode: String,
    /// ExCache bytes the process needs.
    pub excache: u64,
}

/// `VnodeCreate`: a vNode with its mount points, quota, network and copies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeCreateReq {
    pub name: String,
    /// Where its processes see its files (none: `/data`).
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Most bytes of memory its processes may hold together.
    #[serde(default)]
    pub memory_quota: Option<u64>,
    /// Its processes share their host's network (no namespace of their own
    /// holding the vIP).
    #[serde(default)]
    pub host_network: bool,
    /// Copies of each vRegion of its memory, 1 or 2 (none: 2).
    #[serde(default)]
    pub replicas: Option<u8>,
    /// The network it joins: vNodes of one network reach each other's
    /// vIPs, others cannot (none: a network of its own).
    #[serde(default)]
    pub network: Option<String>,
}

/// `VnodeList`: every vNode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeListReq;

/// `VnodeShow`: one vNode in detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeShowReq {
    pub name: String,
}

/// `VnodeMount` (GSM): a vNode's details with its storage monitor, placed
/// now if it had none (for a processor monitor about to mount it). The
/// answer has no `storage` when the cluster has no storage monitor at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeMountReq {
    pub name: String,
}

/// `VnodeDelete`: refused while its processes run, unless `force`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeDeleteReq {
    pub name: String,
    /// Stop its running processes first instead of refusing.
    #[serde(default)]
    pub force: bool,
}

/// A vNode as the manager knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeInfo {
    pub id: VnodeId,
    pub name: String,
    /// Its virtual IP address, from the manager's range ("" if outside it).
    #[serde(default)]
    pub vip: String,
    #[serde(default)]
    pub mounts: Vec<String>,
    #[serde(default)]
    pub memory_quota: Option<u64>,
    /// Its processes share their host's network.
    #[serde(default)]
    pub host_network: bool,
    /// Copies of each vRegion of its memory.
    #[serde(default)]
    pub replicas: u8,
    /// Bytes of memory leased to its processes now.
    #[serde(default)]
    pub memory_leased: u64,
    /// The storage monitor holding its files, once placed.
    #[serde(default)]
    pub storage: Option<Endpoint>,
    /// Its address spaces that hold memory now.
    #[serde(default)]
    pub spaces: u64,
    /// Its jobs running now, as processor monitors last reported them.
    #[serde(default)]
    pub jobs: Vec<u64>,
    /// The network it is in ("": one of its own).
    #[serde(default)]
    pub network: String,
}

impl VnodeInfo {
    /// The name of its network: the one it joined, or its own.
    pub fn network_name(&self) -> String {
        match self.network.is_empty() {
            true => format!("vnode:{}", self.name),
            false => self.network.clone(),
        }
    }
}

/// `VipRoutes`: where each vNode's vIP is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRoutesReq;

/// The answer to [`VipRoutesReq`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRoutes {
    /// One per vNode with a vIP.
    pub vnodes: Vec<VipRoute>,
    /// The IP address of every live component's host.
    pub hosts: Vec<String>,
}

/// A vNode's vIP, its network, and the processor hosts serving it (the
/// first is where other hosts route it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRoute {
    pub vnode: VnodeId,
    pub vip: String,
    pub network: String,
    pub served_by: Vec<String>,
}

/// `LeaseMemory`: lease memory to an address space, within its vNode's quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReq {
    pub asid: Asid,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResp {
    /// The space's lease now, in bytes.
    pub leased: u64,
}

/// `ReportMissed` (a process to the manager): the copy of vRegion `index`
/// of `asid` on memory monitor `id` missed a write, so it holds old pages
/// and must not be trusted (nor copied from).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissedReq {
    pub asid: Asid,
    pub index: VRegionIdx,
    pub id: ComponentId,
}

/// `ReportUnreachable` (a process to the manager): a memory monitor did not
/// answer it. The manager checks for itself before acting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableReq {
    pub id: ComponentId,
    pub why: String,
}

/// `ClusterState`: the whole cluster, as `lego status` and `/state` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStateReq;

/// One component as the manager sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub id: ComponentId,
    pub role: Role,
    pub addr: String,
    pub health: Health,
    pub capacity: u64,
    pub used: u64,
    pub last_heard_ms_ago: u64,
    pub counters: BTreeMap<String, u64>,
    /// vIPs served here (processor monitors).
    #[serde(default)]
    pub vips: Vec<String>,
    /// A memory monitor being drained: its progress (None: not drained).
    #[serde(default)]
    pub drain: Option<crate::elastic::DrainInfo>,
}

impl ComponentInfo {
    /// Whether it is a live component of this role.
    pub fn is_alive(&self, role: Role) -> bool {
        self.role == role && self.health == Health::Alive
    }
}

/// One vRegion assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VRegionInfo {
    pub asid: Asid,
    pub index: VRegionIdx,
    pub primary: ComponentId,
    /// `None`: the address space keeps one copy only.
    pub backup: Option<Backup<ComponentId>>,
    pub state: VRegionState,
}

/// Something the manager did about a failure, for `lego status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Milliseconds ago, at the time of the snapshot.
    pub ago_ms: u64,
    pub kind: EventKind,
    pub text: String,
    /// How long it took, when it is a recovery.
    pub took_ms: Option<u64>,
}

/// The manager itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerInfo {
    pub addr: String,
    pub http: Option<String>,
    pub uptime_ms: u64,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub vregion_bytes: u64,
    /// Where its records are: `redb`, or `etcd://...` (this manager the
    /// elected leader).
    #[serde(default)]
    pub store: Option<String>,
    /// Managers standing by on the same etcd, by address.
    #[serde(default)]
    pub standbys: Vec<String>,
}

/// The answer to [`ClusterStateReq`], also served as JSON over HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub manager: ManagerInfo,
    pub components: Vec<ComponentInfo>,
    pub vnodes: Vec<VnodeInfo>,
    pub vregions: Vec<VRegionInfo>,
    /// Recent failures and recoveries, oldest first.
    #[serde(default)]
    pub events: Vec<EventInfo>,
}

impl ClusterState {
    /// The live components of a role.
    pub fn alive(&self, role: Role) -> impl Iterator<Item = &ComponentInfo> {
        self.components.iter().filter(move |c| c.is_alive(role))
    }
}

/// `Replicate` (the manager to a vRegion's surviving copy): copy the pages
/// `first_page..first_page + pages` of `asid` to `target`, and forward every
/// later write of them that the target did not get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateReq {
    pub asid: Asid,
    pub first_page: crate::types::PageNo,
    pub pages: u64,
    pub target: Endpoint,
    /// Copy at most this many bytes a second (a drain with a rate), paced
    /// batch by batch; None: as fast as the target takes them.
    #[serde(default)]
    pub rate: Option<u64>,
    /// The target already holds a copy (a move's, made from the other
    /// copy): send only the pages it lacks or holds at an older version,
    /// which it is asked for first (`PageVersions`).
    #[serde(default)]
    pub sync: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateResp {
    /// Pages copied.
    pub pages: u64,
}

/// `GrantVRegions` (manager to memory monitor): vRegions `indices` of
/// `asid` are placed on this monitor; the vNode's processes may write there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantReq {
    pub asid: Asid,
    pub indices: Vec<crate::types::VRegionIdx>,
    /// The cluster's vRegion size (a power of two).
    pub vregion_bytes: u64,
    /// Pages of the vNode this monitor may hold (its memory quota), if it
    /// has one.
    pub vnode_quota_pages: Option<u64>,
}

/// `FreeVnode` (manager to memory monitor): vNode `vnode` is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeVnodeReq {
    pub vnode: crate::VnodeId,
}

/// `MemStats`: a memory monitor's use and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemStatsReq;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemStats {
    pub capacity_pages: u64,
    pub pages_held: u64,
    pub address_spaces: u64,
    pub counters: BTreeMap<String, u64>,
}

crate::json_request! {
    RegisterReq => RegisterResp, Op::Register;
    HeartbeatReq => crate::identity::HeartbeatResp, Op::Heartbeat;
    AssignReq => AssignResp, Op::AssignVRegion;
    CreateSpaceReq => CreateSpaceResp, Op::CreateSpace;
    ForkSpaceReq => CreateSpaceResp, Op::ForkSpace;
    ReleaseSpaceReq => ReleaseSpaceResp, Op::ReleaseSpace;
    ReleaseOwnerReq => ReleaseSpaceResp, Op::ReleaseOwner;
    PlaceProcessReq => Endpoint, Op::PlaceProcess;
    VnodeCreateReq => VnodeInfo, Op::VnodeCreate;
    VnodeListReq => Vec<VnodeInfo>, Op::VnodeList;
    VnodeShowReq => VnodeInfo, Op::VnodeShow;
    VnodeMountReq => VnodeInfo, Op::VnodeMount;
    VnodeDeleteReq => VnodeInfo, Op::VnodeDelete;
    LeaseReq => LeaseResp, Op::LeaseMemory;
    MissedReq => Empty, Op::ReportMissed;
    UnreachableReq => Empty, Op::ReportUnreachable;
    ClusterStateReq => ClusterState, Op::ClusterState;
    VipRoutesReq => VipRoutes, Op::VipRoutes;
    ReplicateReq => ReplicateResp, Op::Replicate;
    MemStatsReq => MemStats, Op::MemStats;
    GrantReq => Empty, Op::GrantVRegions;
    FreeVnodeReq => u64, Op::FreeVnode;
}
