//! The records the placement state machine owns and persists: identifiers
//! (components, vNodes, address spaces), components and their health, vNodes,
//! vRegion keys and assignments, the events the manager must act on, and the
//! configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use lego_wire::types::{
    Asid, Backup, ComponentId, Health, Role, VRegionIdx, VRegionState, VnodeId,
};

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
    /// A memory monitor being emptied (`lego memory drain`): it gets no new
    /// copies, and the manager moves the ones it holds elsewhere.
    #[serde(default)]
    pub drained: bool,
    /// Bytes a second its copies move at, at most (None: as fast as they go).
    #[serde(default)]
    pub drain_rate: Option<u64>,
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
    /// The network it joined: vNodes of one network reach each other's
    /// vIPs ("": a network of its own).
    #[serde(default)]
    pub network: String,
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
    pub index: VRegionIdx,
}

impl VRegionKey {
    /// The first and last vRegions of an address space.
    pub fn range_of(asid: Asid) -> std::ops::RangeInclusive<VRegionKey> {
        VRegionKey {
            asid,
            index: VRegionIdx(0),
        }..=VRegionKey {
            asid,
            index: VRegionIdx(u64::MAX),
        }
    }
}

impl fmt::Display for VRegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vregion {} of space {}.{}",
            self.index,
            self.asid.vnode(),
            self.asid.seq()
        )
    }
}

/// The memory monitors holding a vRegion: a primary and, unless its vNode
/// keeps one copy only, a backup; always distinct. A backup that missed
/// writes is [`Backup::Bad`]: it counts as lost until re-replication
/// rebuilds it from the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VRegionAssignment {
    pub primary: ComponentId,
    pub backup: Option<Backup<ComponentId>>,
}

impl VRegionAssignment {
    /// Whether `id` holds a copy (primary or backup).
    pub fn holds(&self, id: ComponentId) -> bool {
        self.copies().any(|c| c == id)
    }

    /// The monitors holding a copy, primary first (a bad backup is none).
    pub fn copies(&self) -> impl Iterator<Item = ComponentId> {
        std::iter::once(self.primary).chain(self.backup.and_then(|b| b.on().copied()))
    }

    /// How many copies it should have.
    pub fn wanted(&self) -> usize {
        1 + self.backup.is_some() as usize
    }
}

/// A vRegion that lost a copy, and the memory monitor to rebuild it on: the
/// manager asks `survivor` to copy the vRegion onto `target`, then commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub key: VRegionKey,
    pub survivor: ComponentId,
    /// The copy being replaced: a dead monitor's, or a bad one.
    pub failed: Backup<ComponentId>,
    pub target: ComponentId,
}

/// Moving one copy of a vRegion off a live memory monitor (a drain or a
/// rebalance): `source` (the other copy, or `from` itself for a vRegion
/// with one copy) copies the vRegion onto `to`, forwarding later writes;
/// then `to` replaces `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub key: VRegionKey,
    pub from: ComponentId,
    pub source: ComponentId,
    pub to: ComponentId,
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
    /// A memory or processor monitor that had been declared dead came back
    /// under its old id; it gets a fresh id, and what it held (pages no one
    /// trusts, jobs whose memory was freed) is dropped.
    StaleIdentity {
        old: ComponentId,
        new: ComponentId,
        role: Role,
        addr: String,
    },
    /// Every live component went silent at once: the manager takes itself
    /// for cut off and declares none of them dead.
    Isolated { components: usize },
    /// A component was heard again after [`Event::Isolated`]: every live
    /// one gets a fresh dead interval to be heard.
    Reconnected { after_ms: u64 },
}

/// Tunables of the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementConfig {
    /// A component silent for strictly longer than this is marked dead.
    pub dead_after_ms: u64,
    /// When every live component is silent past `dead_after_ms` at once,
    /// take the manager for cut off (or paused) and declare none of them
    /// dead until one is heard again ([`Event::Isolated`]). The manager
    /// daemon sets it; without it the state machine declares whoever is
    /// silent, as its table tests expect.
    #[serde(default)]
    pub isolation_guard: bool,
}

/// A durable record of the state machine, named by its key. Every change
/// marks the records it touched; the manager writes each marked record's
/// current value to its store (or deletes it, when the record is gone)
/// before it answers (see [`crate::Placement::take_dirty`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Record {
    Component(ComponentId),
    Vnode(VnodeId),
    VRegion(VRegionKey),
    /// The job an address space belongs to.
    Owner(Asid),
    /// The memory leased to an address space.
    Lease(Asid),
    /// The next component and vNode ids.
    NextIds,
}

/// A durable record as it stands now: its value, to write to the store, or
/// [`Stored::Gone`], to delete it (see [`crate::Placement::take_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Component(Component),
    Vnode(Vnode),
    VRegion(VRegionKey, VRegionAssignment),
    /// An address space and the job it belongs to.
    Owner(Asid, u64),
    /// An address space and the bytes leased to it.
    Lease(Asid, u64),
    NextIds {
        component: ComponentId,
        vnode: VnodeId,
    },
    Gone(Record),
}

/// Everything durable, as loaded from the manager's store after a restart
/// (see [`crate::Placement::restore`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    pub components: Vec<Component>,
    pub vnodes: Vec<Vnode>,
    pub vregions: Vec<(VRegionKey, VRegionAssignment)>,
    /// (address space, the job it belongs to).
    pub owners: Vec<(Asid, u64)>,
    /// (address space, bytes leased).
    pub leases: Vec<(Asid, u64)>,
    /// The next ids to hand out (0: no record, start from the largest restored).
    pub next_component: ComponentId,
    pub next_vnode: VnodeId,
}
