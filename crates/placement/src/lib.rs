//! Placement and membership logic of the global manager (GPM/GMM/GSM) as a
//! pure, deterministic state machine: no I/O, no clocks (time comes in as
//! `now_ms`), no threads. The manager feeds it requests and ticks, persists
//! the records it returns, and acts on the [`Event`]s it queues.
//!
//! This file owns the [`Placement`] state itself, its construction and its
//! restoration after a manager restart. The operations live in:
//! - `membership`: registration, heartbeats, failure detection;
//! - `gmm`: vRegion placement on memory monitors;
//! - `recovery`: failover and re-replication when memory monitors die;
//! - `vnodes`: vNodes and their address spaces;
//! - `gsm`: storage placement of vNodes, and memory leases within quotas.
#![forbid(unsafe_code)]

mod error;
mod gmm;
mod gpm;
mod gsm;
mod membership;
mod recovery;
mod types;
mod vnodes;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use error::PlacementError;
pub use types::{
    asid_seq, asid_vnode, make_asid, Asid, Component, ComponentId, Event, Health, PlacementConfig,
    Recovery, Role, VRegionAssignment, VRegionKey, VRegionState, Vnode, VnodeId, BAD_COPY,
    DEFAULT_MOUNT,
};
pub use vnodes::{validate_mounts, validate_vnode_name, MAX_MOUNTS, MAX_VNODE_NAME};

/// The whole placement state. All collections are ordered, so every
/// iteration, and so every decision, is deterministic.
#[derive(Clone, Debug)]
pub struct Placement {
    config: PlacementConfig,
    components: BTreeMap<ComponentId, Component>,
    vnodes: BTreeMap<VnodeId, Vnode>,
    vnode_ids: BTreeMap<String, VnodeId>,
    vregions: BTreeMap<VRegionKey, VRegionAssignment>,
    /// Bytes of memory leased to each address space (see `gsm`).
    leases: BTreeMap<Asid, u64>,
    next_component: ComponentId,
    next_vnode: VnodeId,
    events: Vec<Event>,
}

impl Placement {
    /// An empty state: no components, no vNodes, no vRegions.
    pub fn new(config: PlacementConfig) -> Self {
        Self {
            config,
            components: BTreeMap::new(),
            vnodes: BTreeMap::new(),
            vnode_ids: BTreeMap::new(),
            vregions: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_component: 1,
            next_vnode: 1,
            events: Vec::new(),
        }
    }

    /// Rebuilds from persisted records after a manager restart. Every
    /// restored component but a memory monitor recorded dead gets health
    /// [`Health::Unknown`] and
    /// `last_heard_ms = now_ms`: a grace period of `dead_after_ms` to
    /// re-register or heartbeat. The next ids are one past the largest
    /// restored ones (see [`Placement::raise_next_ids`] to also skip the ids
    /// of deleted vNodes).
    pub fn restore(
        config: PlacementConfig,
        now_ms: u64,
        components: Vec<Component>,
        vnodes: Vec<Vnode>,
        vregions: Vec<(VRegionKey, VRegionAssignment)>,
    ) -> Self {
        let mut state = Self::new(config);
        for mut component in components {
            // A memory monitor declared dead stays dead: what it held is not
            // trusted, whatever it says when it is back. Others get another
            // chance.
            if !(component.health == Health::Dead && component.role == Role::Memory) {
                component.health = Health::Unknown;
            }
            component.last_heard_ms = now_ms;
            state.next_component = state.next_component.max(component.id.saturating_add(1));
            state.components.insert(component.id, component);
        }
        for vnode in vnodes {
            state.next_vnode = state.next_vnode.max(vnode.id.saturating_add(1));
            state.vnode_ids.insert(vnode.name.clone(), vnode.id);
            if let Some(old) = state.vnodes.insert(vnode.id, vnode) {
                state.vnode_ids.remove(&old.name);
            }
        }
        for (key, assignment) in vregions {
            let vnode = asid_vnode(key.asid);
            state.next_vnode = state.next_vnode.max(vnode.saturating_add(1));
            state.vregions.insert(key, assignment);
        }
        state
    }

    /// Raises the id counters to at least the given values (never lowers
    /// them). For a manager that persists [`Placement::next_component_id`]
    /// and [`Placement::next_vnode_id`], so that the id of a deleted vNode is
    /// not handed out again after a restart.
    pub fn raise_next_ids(&mut self, component: ComponentId, vnode: VnodeId) {
        self.next_component = self.next_component.max(component);
        self.next_vnode = self.next_vnode.max(vnode);
    }

    /// The id the next fresh registration gets.
    pub fn next_component_id(&self) -> ComponentId {
        self.next_component
    }

    /// The id the next created vNode gets.
    pub fn next_vnode_id(&self) -> VnodeId {
        self.next_vnode
    }

    /// The configuration this state was built with.
    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Drains all queued events (from `register` and `tick`), oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}
