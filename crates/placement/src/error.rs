//! The one error type of the crate.

use thiserror::Error;

use crate::{Asid, ComponentId, VRegionKey, VnodeId};

/// Why a placement request was refused. Refusals never change the state.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PlacementError {
    #[error("unknown component {0}")]
    UnknownComponent(ComponentId),
    #[error("stale instance {instance:#x} for component {id} (registered instance is {registered:#x}); re-register")]
    StaleInstance {
        id: ComponentId,
        instance: u64,
        registered: u64,
    },
    #[error("component {0} was marked dead and must re-register")]
    ComponentDead(ComponentId),
    #[error("invalid component address {0:?}: must not be empty")]
    InvalidAddress(String),
    #[error("need {needed} alive memory monitors to place a vregion, {alive} alive")]
    NotEnoughMemoryMonitors { alive: usize, needed: usize },
    #[error("no alive memory monitor left to take over a replica of {0}")]
    NoSpareMemoryMonitor(VRegionKey),
    #[error("no surviving replica of {key}: component {survivor} is dead or gone")]
    NoSurvivingReplica {
        key: VRegionKey,
        survivor: ComponentId,
    },
    #[error("unknown {0}")]
    UnknownVRegion(VRegionKey),
    #[error("a vnode keeps 1 or 2 copies of its memory, not {0}")]
    InvalidReplicas(u8),
    #[error("{key} changed while its copy was rebuilt; the copy is dropped")]
    RecoveryOutdated { key: VRegionKey },
    #[error("component {id} holds no replica of {key}")]
    NotAReplica { key: VRegionKey, id: ComponentId },
    #[error("{key} has no bad copy to rebuild")]
    NoBadCopy { key: VRegionKey },
    #[error("component {0} is not a memory monitor")]
    NotMemory(ComponentId),
    #[error("no alive processor monitor has {excache} bytes of ExCache free ({alive} alive)")]
    NoProcessor { alive: usize, excache: u64 },
    #[error("unknown vnode {0:?}")]
    UnknownVnode(String),
    #[error("unknown vnode id {0}")]
    UnknownVnodeId(VnodeId),
    #[error("invalid vnode name {name:?}: {reason}")]
    InvalidVnodeName { name: String, reason: &'static str },
    #[error("vnode {0:?} already exists")]
    VnodeExists(String),
    #[error("vnode ids exhausted")]
    VnodeIdsExhausted,
    #[error("address space ids of vnode {0} exhausted")]
    SpacesExhausted(VnodeId),
    #[error("unknown address space {0}: never created, or released")]
    UnknownSpace(Asid),
    #[error("vnode {vnode} has {max} live address spaces, the most it may have")]
    TooManySpaces { vnode: VnodeId, max: usize },
    #[error("address space {asid} has {max} vregions, the most it may have")]
    TooManyVRegions { asid: Asid, max: usize },
    #[error("invalid mount point {mount:?}: {reason}")]
    InvalidMount { mount: String, reason: &'static str },
    #[error("a memory quota must be more than 0 bytes")]
    InvalidQuota,
    #[error("no alive storage monitor to hold the files of vnode {0:?}")]
    NoStorage(String),
    #[error("storage monitor {storage} that holds the files of vnode {vnode:?} is {health}")]
    StorageDown {
        vnode: String,
        storage: ComponentId,
        health: String,
    },
    #[error("vnode {vnode:?} is at its memory quota: {leased} of {quota} bytes leased, {asked} more asked")]
    QuotaExceeded {
        vnode: String,
        quota: u64,
        leased: u64,
        asked: u64,
    },
}
