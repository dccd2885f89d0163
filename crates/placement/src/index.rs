//! Indexes kept beside the placement state, so that no decision scans all
//! of it (`lego sim` and the benches drive it at 100,000 components and
//! millions of vRegions):
//!
//! - the vRegions each memory monitor holds a copy of (a monitor's death
//!   touches only its own vRegions; a copy count is a lookup);
//! - the alive, undrained memory monitors in the GMM's order (load, copies
//!   held, id), so the least-loaded ones are the first of a sorted set;
//! - the alive processor monitors in the GPM's order (most free first).
//!
//! Every change of a vRegion's copies goes through
//! [`Placement::put_vregion`] / [`Placement::take_vregion`], and every
//! change of a component's health, use, capacity or drain through
//! [`Placement::reindex`]; [`Placement::check_index`] recomputes them all
//! from scratch (the tests call it after every step).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::{ComponentId, Health, Placement, Role, VRegionAssignment, VRegionKey};

/// A memory monitor's place in the GMM's order.
pub(crate) type MemoryRank = (u64, u64, ComponentId);
/// A processor monitor's place in the GPM's order.
pub(crate) type ProcessorRank = (Reverse<u64>, u64, ComponentId);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    /// The vRegions of which each monitor holds a copy (primary or backup).
    pub(crate) copies: BTreeMap<ComponentId, BTreeSet<VRegionKey>>,
    /// Alive, undrained memory monitors, least loaded first.
    pub(crate) memory: BTreeSet<MemoryRank>,
    /// Alive processor monitors, most free first.
    pub(crate) processors: BTreeSet<ProcessorRank>,
    /// The largest capacity a ranked memory monitor has had: with a load
    /// fraction it bounds the room any monitor further down can have.
    pub(crate) max_memory_capacity: u64,
    /// Where each component is in `memory` or `processors`.
    ranked: BTreeMap<ComponentId, Ranked>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ranked {
    Memory(MemoryRank),
    Processor(ProcessorRank),
}

/// `used / capacity` as an integer that orders as the fraction does (to
/// 2^-32), for sorted sets.
pub(crate) fn load_key(used: u64, capacity: u64) -> u64 {
    let k = ((used as u128) << 32) / capacity.max(1) as u128;
    k.min(u64::MAX as u128) as u64
}

impl Placement {
    /// Places or replaces a vRegion's copies, keeping the indexes.
    pub(crate) fn put_vregion(&mut self, key: VRegionKey, a: VRegionAssignment) {
        if let Some(old) = self.vregions.insert(key, a) {
            self.unindex_copies(key, old);
        }
        for id in a.copies() {
            self.index.copies.entry(id).or_default().insert(key);
            self.reindex(id);
        }
    }

    /// Removes a vRegion, keeping the indexes.
    pub(crate) fn take_vregion(&mut self, key: VRegionKey) -> Option<VRegionAssignment> {
        let old = self.vregions.remove(&key)?;
        self.unindex_copies(key, old);
        Some(old)
    }

    fn unindex_copies(&mut self, key: VRegionKey, old: VRegionAssignment) {
        for id in old.copies() {
            if let Some(set) = self.index.copies.get_mut(&id) {
                set.remove(&key);
                if set.is_empty() {
                    self.index.copies.remove(&id);
                }
            }
            self.reindex(id);
        }
    }

    /// How many vRegion copies `id` holds.
    pub(crate) fn copies_held(&self, id: ComponentId) -> u64 {
        self.index.copies.get(&id).map_or(0, |s| s.len() as u64)
    }

    /// Puts component `id` where it belongs in the ranked sets now (after a
    /// change of its health, use, capacity, drain, or copies held).
    pub(crate) fn reindex(&mut self, id: ComponentId) {
        if let Some(old) = self.index.ranked.remove(&id) {
            match old {
                Ranked::Memory(k) => self.index.memory.remove(&k),
                Ranked::Processor(k) => self.index.processors.remove(&k),
            };
        }
        let Some(c) = self.components.get(&id) else {
            return;
        };
        let rank = match c.role {
            Role::Memory if c.health == Health::Alive && !c.drained => Some(Ranked::Memory((
                load_key(c.used, c.capacity),
                self.copies_held(id),
                id,
            ))),
            Role::Processor if c.health == Health::Alive => Some(Ranked::Processor((
                Reverse(c.capacity.saturating_sub(c.used)),
                c.used,
                id,
            ))),
            _ => None,
        };
        match rank {
            Some(Ranked::Memory(k)) => {
                self.index.memory.insert(k);
                let cap = self.components[&id].capacity;
                self.index.max_memory_capacity = self.index.max_memory_capacity.max(cap);
            }
            Some(Ranked::Processor(k)) => {
                self.index.processors.insert(k);
            }
            None => return,
        }
        self.index.ranked.insert(id, rank.expect("ranked"));
    }

    /// Builds every index from the state (after a restore).
    pub(crate) fn rebuild_index(&mut self) {
        self.index = Index::default();
        let all: Vec<(VRegionKey, VRegionAssignment)> =
            self.vregions.iter().map(|(k, a)| (*k, *a)).collect();
        for (key, a) in all {
            for id in a.copies() {
                self.index.copies.entry(id).or_default().insert(key);
            }
        }
        let ids: Vec<ComponentId> = self.components.keys().copied().collect();
        for id in ids {
            self.reindex(id);
        }
    }

    /// Whether the indexes are what the state says (recomputed from
    /// scratch); `Err` says the first difference.
    pub fn check_index(&self) -> Result<(), String> {
        let mut fresh = self.clone();
        fresh.rebuild_index();
        fresh.index.max_memory_capacity = self.index.max_memory_capacity;
        if fresh.index.copies != self.index.copies {
            return Err("the copies each monitor holds are not indexed right".into());
        }
        if fresh.index.memory != self.index.memory {
            return Err(format!(
                "memory monitors ranked {:?}, should be {:?}",
                self.index.memory, fresh.index.memory
            ));
        }
        if fresh.index.processors != self.index.processors {
            return Err("processor monitors are not ranked right".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Placement, PlacementConfig, Role};

    /// The check finds an index that was not told of a change.
    #[test]
    fn a_stale_index_is_found() {
        let mut p = Placement::new(PlacementConfig {
            dead_after_ms: 1000,
            isolation_guard: false,
        });
        for i in 0..3 {
            p.register(0, Role::Memory, format!("m{i}"), 100, 1, None)
                .unwrap();
        }
        p.heartbeat(1, 2, 1, 50).unwrap();
        assert_eq!(p.check_index(), Ok(()));
        p.components.get_mut(&3).unwrap().used = 70;
        assert!(p.check_index().is_err());
        p.reindex(3);
        assert_eq!(p.check_index(), Ok(()));
    }
}
