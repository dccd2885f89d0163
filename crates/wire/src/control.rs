//! Control-plane message bodies: JSON documents, since they are small, rare and
//! read by people too. Each request type names its answer type in a comment.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::WireError;

/// Encodes a control body.
pub fn to_body<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("control types always serialize")
}

/// Decodes a control body; malformed JSON is an error, never a panic.
pub fn from_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    Ok(serde_json::from_slice(body)?)
}

/// `Register` -> [`RegisterResp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReq {
    /// "memory", "processor" or "storage".
    pub role: String,
    /// Where the component serves requests.
    pub addr: String,
    /// Capacity in bytes (memory, ExCache or disk, by role).
    pub capacity: u64,
    /// Random per start of the daemon: tells a restart from a reconnect.
    pub instance: u64,
    /// The id this daemon had before, when it re-registers.
    pub previous: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResp {
    pub id: u64,
    /// How often the manager wants a heartbeat.
    pub heartbeat_ms: u64,
}

/// `Heartbeat` -> `{}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReq {
    pub id: u64,
    pub instance: u64,
    /// Bytes in use.
    pub used: u64,
    /// The component's counters, re-exported by the manager's `/metrics`.
    pub counters: BTreeMap<String, u64>,
    /// For a processor monitor: the jobs (address-space owners) it runs, so
    /// that the manager can free their memory if the processor dies.
    #[serde(default)]
    pub jobs: Vec<u64>,
}

/// `AssignVRegion` -> [`AssignResp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignReq {
    pub asid: u64,
    /// Virtual address divided by the vRegion size.
    pub index: u64,
}

/// log2 of the span of address space one vRegion covers, for a manager
/// configured with `vregion_bytes` (rounded up to a power of two, at least
/// 2 MiB): vRegion `index` holds pages `index << (shift - 12)` onwards.
pub fn vregion_shift(vregion_bytes: u64) -> u32 {
    vregion_bytes
        .max(1 << 21)
        .next_power_of_two()
        .trailing_zeros()
}

/// A component and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u64,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignResp {
    pub primary: Endpoint,
    /// `None`: the vNode keeps one copy of its memory.
    pub backup: Option<Endpoint>,
    /// True when this call created the assignment.
    pub created: bool,
}

/// `CreateSpace` -> [`CreateSpaceResp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSpaceReq {
    pub vnode: String,
    /// The job the space belongs to: `ReleaseOwner` frees all of a job's spaces.
    #[serde(default)]
    pub owner: Option<u64>,
}

/// `ForkSpace` -> [`CreateSpaceResp`]: the child's space, a copy of `asid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkSpaceReq {
    pub asid: u64,
}

/// `ReleaseOwner` -> [`ReleaseSpaceResp`] (summed over the owner's spaces).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOwnerReq {
    pub owner: u64,
}

/// `PlaceProcess` -> [`Endpoint`] of a processor monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceProcessReq {
    pub vnode: String,
    /// ExCache bytes the process needs.
    pub excache: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSpaceResp {
    pub asid: u64,
    pub vnode_id: u32,
    /// Size of a vRegion in bytes.
    pub vregion_bytes: u64,
}

/// `ReleaseSpace` -> [`ReleaseSpaceResp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpaceReq {
    pub asid: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpaceResp {
    pub vregions: u64,
    pub freed_pages: u64,
    /// Memory monitors that could not be told (dead or unreachable).
    pub unreachable: Vec<String>,
}

/// `VnodeCreate` and `VnodeDelete` -> [`VnodeInfo`].
/// Create (with mount points and quota), show, mount or delete a vNode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeReq {
    pub name: String,
    /// Create: where its processes see its files (none: `/data`).
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Create: most bytes of memory its processes may hold together.
    #[serde(default)]
    pub memory_quota: Option<u64>,
    /// Delete: stop its running processes first instead of refusing.
    #[serde(default)]
    pub force: bool,
    /// Create: its processes share their host's network (no namespace of
    /// their own holding the vIP).
    #[serde(default)]
    pub host_network: bool,
    /// Create: copies of each vRegion of its memory, 1 or 2 (none: 2).
    #[serde(default)]
    pub replicas: Option<u8>,
}

/// A vNode as the manager knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeInfo {
    pub id: u32,
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
}

/// Lease memory to an address space, within its vNode's quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReq {
    pub asid: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResp {
    /// The space's lease now, in bytes.
    pub leased: u64,
}

/// One component as the manager sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub id: u64,
    pub role: String,
    pub addr: String,
    /// "alive", "dead" or "unknown".
    pub health: String,
    pub capacity: u64,
    pub used: u64,
    pub last_heard_ms_ago: u64,
    pub counters: BTreeMap<String, u64>,
}

/// One vRegion assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VRegionInfo {
    pub asid: u64,
    pub index: u64,
    pub primary: u64,
    /// `None`: the address space keeps one copy only.
    pub backup: Option<u64>,
    /// "healthy" (every copy on a live monitor), "degraded" (a copy lost,
    /// being rebuilt) or "lost" (no live copy).
    #[serde(default)]
    pub state: String,
}

/// Something the manager did about a failure, for `lego status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Milliseconds ago, at the time of the snapshot.
    pub ago_ms: u64,
    /// "dead", "failover", "re-replicated", "lost", "stale", "jobs-lost", ...
    pub kind: String,
    pub text: String,
    /// How long it took, when it is a recovery.
    pub took_ms: Option<u64>,
}

/// `Replicate` (the manager to a vRegion's surviving copy) -> [`ReplicateResp`]:
/// copy the pages `first_page..first_page + pages` of `asid` to `target`,
/// and forward every later write of them that the target did not get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateReq {
    pub asid: u64,
    pub first_page: u64,
    pub pages: u64,
    pub target: Endpoint,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateResp {
    /// Pages copied.
    pub pages: u64,
}

/// `ReportMissed` (a process to the manager) -> `{}`: the copy of vRegion
/// `index` of `asid` on memory monitor `id` missed a write, so it holds old
/// pages and must not be trusted (nor copied from).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissedReq {
    pub asid: u64,
    pub index: u64,
    pub id: u64,
}

/// `ReportUnreachable` (a process to the manager) -> `{}`: a memory monitor
/// did not answer it. The manager checks for itself before acting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableReq {
    pub id: u64,
    pub why: String,
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
}

/// `ClusterState` -> this, also served as JSON over HTTP.
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

/// `MemStats` -> this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemStats {
    pub capacity_pages: u64,
    pub pages_held: u64,
    pub address_spaces: u64,
    pub counters: BTreeMap<String, u64>,
}

/// `Launch` -> [`LaunchResp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchReq {
    pub argv: Vec<String>,
    /// The environment of the program (the processor adds the runtime's).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub vnode: String,
    /// ExCache quota in bytes; `None` with `excache_percent` None: the default.
    pub excache: Option<u64>,
    /// ExCache quota as a percentage of the processor's ExCache.
    pub excache_percent: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchResp {
    pub job: u64,
    pub pid: u32,
    /// The quota granted, in bytes.
    pub excache: u64,
}

/// `Output` -> binary chunks (see [`crate::pages`]-style layout in `io`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputReq {
    pub job: u64,
    /// Longest time to wait for something to report.
    pub max_wait_ms: u64,
}

/// `Signal` -> `{}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReq {
    pub job: u64,
    pub signal: i32,
}

/// One job of a processor monitor, for `Jobs` and `lego status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job: u64,
    pub pid: u32,
    pub vnode: String,
    pub argv: Vec<String>,
    pub excache: u64,
    pub running: bool,
    /// The runtime's counters (faults, evictions, bytes moved, ...).
    pub counters: BTreeMap<String, u64>,
}
