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
//! - `migrate`: moving copies off live memory monitors (drains, rebalancing);
//! - `vnodes`: vNodes and their address spaces;
//! - `gsm`: storage placement of vNodes, and memory leases within quotas.
#![forbid(unsafe_code)]

mod error;
mod gmm;
mod gpm;
mod gsm;
mod index;
mod membership;
mod migrate;
mod recovery;
mod types;
mod vnodes;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use error::PlacementError;
pub use types::{
    Asid, Backup, Component, ComponentId, Event, Health, Move, PlacementConfig, Record, Records,
    Recovery, Role, Stored, VRegionAssignment, VRegionIdx, VRegionKey, VRegionState, Vnode,
    VnodeId, DEFAULT_MOUNT,
};
pub use vnodes::{validate_mounts, validate_vnode_name, MAX_MOUNTS, MAX_VNODE_NAME};

/// The owner of an address space that belongs to no job (job ids are
/// never 0).
pub const NO_JOB: u64 = 0;
/// Live address spaces a vNode may have at once: each is a durable record,
/// and a program must not grow the manager's state without bound.
pub const MAX_SPACES_PER_VNODE: usize = 1024;
/// vRegions one address space may have (the runtime's 64 GiB arena in
/// 32 MiB vRegions, the smallest size, is 2048).
pub const MAX_VREGIONS_PER_SPACE: usize = 4096;

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
    /// Every live address space, with the job it belongs to ([`NO_JOB`]:
    /// none). Only live spaces get vRegions.
    owners: BTreeMap<Asid, u64>,
    /// The jobs each processor monitor said it runs, in its last heartbeat
    /// (not durable: heartbeats tell it again after a restart).
    jobs: BTreeMap<ComponentId, Vec<u64>>,
    next_component: ComponentId,
    next_vnode: VnodeId,
    events: Vec<Event>,
    /// Records changed since the last [`Placement::take_dirty`].
    dirty: BTreeSet<Record>,
    /// Since when every live component has been silent past the dead
    /// interval at once: the manager, not they, is cut off (see
    /// [`Placement::tick`]). Not durable: a restart has its own grace.
    isolated_since: Option<u64>,
    /// When the failure detector last ran: a longer gap than half the dead
    /// interval means the manager itself was paused.
    last_tick: Option<u64>,
    /// Copies per monitor and monitors ranked for placement (see `index`).
    index: index::Index,
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
            owners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_component: 1,
            next_vnode: 1,
            events: Vec::new(),
            dirty: BTreeSet::new(),
            isolated_since: None,
            last_tick: None,
            index: index::Index::default(),
        }
    }

    /// Rebuilds from persisted records after a manager restart. Every
    /// restored component but a memory monitor recorded dead gets health
    /// [`Health::Unknown`] and `last_heard_ms = now_ms`: a grace period of
    /// `dead_after_ms` to re-register or heartbeat. The next ids are the
    /// recorded ones, and at least one past the largest restored ones.
    pub fn restore(config: PlacementConfig, now_ms: u64, records: Records) -> Self {
        let mut state = Self::new(config);
        for mut component in records.components {
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
        for vnode in records.vnodes {
            state.next_vnode = state.next_vnode.max(vnode.id.saturating_add(1));
            state.vnode_ids.insert(vnode.name.clone(), vnode.id);
            if let Some(old) = state.vnodes.insert(vnode.id, vnode) {
                state.vnode_ids.remove(&old.name);
            }
        }
        for (key, assignment) in records.vregions {
            let vnode = key.asid.vnode();
            state.next_vnode = state.next_vnode.max(vnode.saturating_add(1));
            state.vregions.insert(key, assignment);
        }
        state.leases.extend(records.leases);
        state.owners.extend(records.owners);
        // Records of a manager from before spaces without a job were
        // recorded: a space with vRegions or a lease is live.
        let implied: Vec<Asid> = state
            .vregions
            .keys()
            .map(|k| k.asid)
            .chain(state.leases.keys().copied())
            .collect();
        for a in implied {
            state.owners.entry(a).or_insert(NO_JOB);
        }
        state.next_component = state.next_component.max(records.next_component);
        state.next_vnode = state.next_vnode.max(records.next_vnode);
        state.rebuild_index();
        state
    }

    /// Everything durable, as [`Placement::restore`] takes it back.
    pub fn records(&self) -> Records {
        Records {
            components: self.components.values().cloned().collect(),
            vnodes: self.vnodes.values().cloned().collect(),
            vregions: self.vregions.iter().map(|(k, a)| (*k, *a)).collect(),
            owners: self.owners.iter().map(|(a, o)| (*a, *o)).collect(),
            leases: self.leases.iter().map(|(a, b)| (*a, *b)).collect(),
            next_component: self.next_component,
            next_vnode: self.next_vnode,
        }
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

    /// Drains the records changed since the last call: the manager makes
    /// each durable (its value now, or its absence) before answering.
    pub fn take_dirty(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Drains the records changed since the last call, each as it stands
    /// now: what the manager writes to its store before it answers.
    pub fn take_changes(&mut self) -> Vec<Stored> {
        let dirty = self.take_dirty();
        dirty.into_iter().map(|r| self.stored(r)).collect()
    }

    /// One durable record as it stands now.
    pub fn stored(&self, r: Record) -> Stored {
        let found = match r {
            Record::Component(id) => self.components.get(&id).cloned().map(Stored::Component),
            Record::Vnode(id) => self.vnodes.get(&id).cloned().map(Stored::Vnode),
            Record::VRegion(k) => self.vregions.get(&k).map(|a| Stored::VRegion(k, *a)),
            Record::Owner(a) => self.owners.get(&a).map(|o| Stored::Owner(a, *o)),
            Record::Lease(a) => self
                .leases
                .get(&a)
                .filter(|&&b| b > 0)
                .map(|b| Stored::Lease(a, *b)),
            Record::NextIds => Some(Stored::NextIds {
                component: self.next_component,
                vnode: self.next_vnode,
            }),
        };
        found.unwrap_or(Stored::Gone(r))
    }

    pub(crate) fn touch(&mut self, r: Record) {
        self.dirty.insert(r);
    }

    /// The job an address space belongs to.
    pub fn owner(&self, asid: Asid) -> Option<u64> {
        self.owners.get(&asid).copied().filter(|&o| o != NO_JOB)
    }

    /// Whether the address space was created and not released.
    pub fn space_live(&self, asid: Asid) -> bool {
        self.owners.contains_key(&asid)
    }

    /// The address spaces of a job.
    pub fn spaces_of(&self, owner: u64) -> Vec<Asid> {
        self.owners
            .iter()
            .filter(|(_, &o)| o == owner)
            .map(|(&a, _)| a)
            .collect()
    }

    /// The address spaces of any of these jobs.
    pub fn spaces_of_jobs(&self, jobs: &[u64]) -> Vec<Asid> {
        self.owners
            .iter()
            .filter(|(_, o)| jobs.contains(o))
            .map(|(&a, _)| a)
            .collect()
    }

    /// The address spaces of a vNode that belong to a job.
    pub fn owned_spaces_of_vnode(&self, vnode: VnodeId) -> Vec<Asid> {
        self.owners
            .range(Asid::range_of(vnode))
            .filter(|(_, &o)| o != NO_JOB)
            .map(|(&a, _)| a)
            .collect()
    }

    /// Records what a processor monitor said it runs (its heartbeat).
    pub fn set_jobs(&mut self, processor: ComponentId, jobs: Vec<u64>) {
        self.jobs.insert(processor, jobs);
    }

    /// Forgets the jobs a processor monitor reported (it died: they died
    /// with it) and returns them.
    pub fn take_jobs(&mut self, processor: ComponentId) -> Vec<u64> {
        self.jobs.remove(&processor).unwrap_or_default()
    }

    /// The jobs processor monitors reported, by processor.
    pub fn jobs(&self) -> &BTreeMap<ComponentId, Vec<u64>> {
        &self.jobs
    }

    /// The processor monitor that last reported running `job`.
    pub fn processor_of(&self, job: u64) -> Option<ComponentId> {
        self.jobs
            .iter()
            .find(|(_, js)| js.contains(&job))
            .map(|(&p, _)| p)
    }

    /// The running jobs of a vNode (those owning one of its spaces), as
    /// processor monitors last reported them.
    pub fn running_jobs_of_vnode(&self, vnode: VnodeId) -> Vec<u64> {
        let mut jobs: Vec<u64> = self
            .owners
            .range(Asid::range_of(vnode))
            .map(|(_, &o)| o)
            .filter(|&o| o != NO_JOB && self.jobs.values().any(|js| js.contains(&o)))
            .collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }
}
