//! The records the placement state machine owns and persists: identifiers
//! (components, vNodes, address spaces), components and their health, vNodes,
//! vRegion keys and assignments, the events the manager must act on, and the
//! configuration.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PlacementError;

/// A component (memory, processor or storage daemon). Assigned by the state
/// machine, starting at 1, never reused.
pub type ComponentId = u64;

/// A vNode. Assigned by the state machine, starting at 1, never reused.
pub type VnodeId = u32;

/// An address space: `(vnode_id as u64) << 32 | seq`, `seq` starting at 1 per vNode.
pub type Asid = u64;

/// The vNode an address space belongs to (the high 32 bits).
pub fn asid_vnode(asid: Asid) -> VnodeId {
    (asid >> 32) as VnodeId
}

/// The per-vNode sequence number of an address space (the low 32 bits).
pub fn asid_seq(asid: Asid) -> u32 {
    asid as u32
}

/// The address space `seq` of `vnode`.
pub fn make_asid(vnode: VnodeId, seq: u32) -> Asid {
    (u64::from(vnode) << 32) | u64::from(seq)
}

/// What a component is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Memory,
    Processor,
    Storage,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 3] = [Role::Memory, Role::Processor, Role::Storage];

    /// The lower-case name, as used on the command line and in serde.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Memory => "memory",
            Role::Processor => "processor",
            Role::Storage => "storage",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PlacementError;

    /// Parses a role name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| PlacementError::UnknownRole(s.to_string()))
    }
}

/// What the manager believes about a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Alive,
    Dead,
    /// Restored from the database after a manager restart and not yet heard from.
    Unknown,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Alive => "alive",
            Health::Dead => "dead",
            Health::Unknown => "unknown",
        })
    }
}

/// A registered component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub id: ComponentId,
    pub role: Role,
    pub addr: String,
    /// Bytes.
    pub capacity: u64,
    /// Bytes, from heartbeats.
    pub used: u64,
    /// Random per daemon start; tells a restarted daemon from the old one.
    pub instance: u64,
    pub health: Health,
    pub last_heard_ms: u64,
}

/// A named virtual node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vnode {
    pub id: VnodeId,
    pub name: String,
    /// The next sequence number for [`make_asid`].
    pub next_space: u32,
    /// Where its processes see its files (absolute paths).
    #[serde(default = "default_mounts")]
    pub mounts: Vec<String>,
    /// Most bytes of anonymous memory its processes may hold together.
    #[serde(default)]
    pub memory_quota: Option<u64>,
    /// The storage monitor that holds its files, once placed (GSM).
    #[serde(default)]
    pub storage: Option<ComponentId>,
    /// Its processes share the processor host's network instead of having a
    /// network namespace of their own holding the vIP.
    #[serde(default)]
    pub host_network: bool,
    /// Copies of each of its vRegions: 2 (a primary and a backup), or 1.
    #[serde(default = "default_replicas")]
    pub replicas: u8,
}

fn default_replicas() -> u8 {
    2
}

/// Where a vNode's files appear when no mount point is given.
pub const DEFAULT_MOUNT: &str = "/data";

fn default_mounts() -> Vec<String> {
    vec![DEFAULT_MOUNT.to_string()]
}

/// One vRegion of one address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VRegionKey {
    pub asid: Asid,
    /// Virtual address / vRegion size.
    pub index: u64,
}

impl fmt::Display for VRegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vregion {} of space {}.{}",
            self.index,
            asid_vnode(self.asid),
            asid_seq(self.asid)
        )
    }
}

/// The memory monitors holding a vRegion: a primary and, unless its vNode
/// keeps one copy only, a backup; always distinct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VRegionAssignment {
    pub primary: ComponentId,
    pub backup: Option<ComponentId>,
}

impl VRegionAssignment {
    /// Whether `id` holds a replica (primary or backup).
    pub fn holds(&self, id: ComponentId) -> bool {
        self.primary == id || self.backup == Some(id)
    }

    /// The monitors holding a copy, primary first.
    pub fn copies(&self) -> impl Iterator<Item = ComponentId> {
        std::iter::once(self.primary).chain(self.backup)
    }
}

/// Stands in the assignment for a copy known to have missed writes (a
/// process reported it): no component has this id, so the vRegion counts as
/// degraded until re-replication replaces it with a good copy.
pub const BAD_COPY: ComponentId = u64::MAX;

/// How a vRegion's copies stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VRegionState {
    /// Every copy it should have is on a live memory monitor.
    Healthy,
    /// A copy was lost and one survives: it is being (or will be) rebuilt.
    Degraded,
    /// No copy is on a live memory monitor.
    Lost,
}

impl fmt::Display for VRegionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VRegionState::Healthy => "healthy",
            VRegionState::Degraded => "degraded",
            VRegionState::Lost => "lost",
        })
    }
}

/// A vRegion that lost a copy, and the memory monitor to rebuild it on: the
/// manager asks `survivor` to copy the vRegion onto `target`, then commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub key: VRegionKey,
    pub survivor: ComponentId,
    pub failed: ComponentId,
    pub target: ComponentId,
}

/// Things the manager must log or act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ComponentRegistered {
        id: ComponentId,
        role: Role,
        addr: String,
        rejoined: bool,
    },
    ComponentDead {
        id: ComponentId,
        role: Role,
        addr: String,
        silent_ms: u64,
    },
    /// A memory monitor died holding the primary of `key`: its backup is
    /// the primary now.
    Failover {
        key: VRegionKey,
        dead: ComponentId,
        primary: ComponentId,
    },
    /// The last copy of `key` died with `dead`.
    VRegionLost { key: VRegionKey, dead: ComponentId },
    /// A memory monitor that had been declared dead came back under its old
    /// id; it holds no data anyone trusts and gets a fresh id.
    StaleIdentity {
        old: ComponentId,
        new: ComponentId,
        addr: String,
    },
}

/// Tunables of the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementConfig {
    /// A component silent for strictly longer than this is marked dead.
    pub dead_after_ms: u64,
}
