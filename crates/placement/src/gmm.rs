//! The GMM: which distinct memory monitors (a primary and, for a vNode with
//! two copies, a backup) hold each vRegion, chosen by load; freeing the
//! vRegions of an address space.

use std::collections::BTreeMap;

use crate::{
    Asid, Backup, ComponentId, Health, Placement, PlacementError, Record, Role, VRegionAssignment,
    VRegionKey,
};

impl Placement {
    /// Places a vRegion, or returns its existing placement unchanged
    /// (second value false). A new vRegion goes to the two least-loaded
    /// alive memory monitors, ranked by (used / capacity, number of vRegion
    /// replicas held, id); the first is the primary.
    pub fn assign_vregion(
        &mut self,
        key: VRegionKey,
    ) -> Result<(VRegionAssignment, bool), PlacementError> {
        self.assign_vregion_sized(key, 0)
    }

    /// [`Placement::assign_vregion`] onto monitors with at least `bytes`
    /// free only (capacity less the use they last reported): a placer that
    /// knows a vRegion will be filled (`lego sim`) never overfills one.
    pub fn assign_vregion_sized(
        &mut self,
        key: VRegionKey,
        bytes: u64,
    ) -> Result<(VRegionAssignment, bool), PlacementError> {
        if let Some(existing) = self.vregions.get(&key) {
            return Ok((*existing, false));
        }
        let vnode = key.asid.vnode();
        if !self.vnodes.contains_key(&vnode) {
            return Err(PlacementError::UnknownVnodeId(vnode));
        }
        if !self.space_live(key.asid) {
            return Err(PlacementError::UnknownSpace(key.asid));
        }
        if self.vregions.range(VRegionKey::range_of(key.asid)).count()
            >= crate::MAX_VREGIONS_PER_SPACE
        {
            return Err(PlacementError::TooManyVRegions {
                asid: key.asid,
                max: crate::MAX_VREGIONS_PER_SPACE,
            });
        }
        let needed = self.vnodes[&vnode].replicas.clamp(1, 2) as usize;
        // The least loaded first (an index, not a scan: see `index`).
        // With a room to find: monitors are in load order, so once even the
        // largest capacity at this load leaves too little room, none further
        // down has it either.
        let max_cap = self.index.max_memory_capacity as u128;
        let ranked: Vec<ComponentId> = self
            .index
            .memory
            .iter()
            .take_while(|&&(load, _, _)| {
                bytes == 0
                    || max_cap - ((max_cap * load as u128) >> 32).min(max_cap) >= bytes as u128
            })
            .map(|&(_, _, id)| id)
            .filter(|id| {
                bytes == 0
                    || self.components[id]
                        .capacity
                        .saturating_sub(self.components[id].used)
                        >= bytes
            })
            .take(needed)
            .collect();
        if ranked.len() < needed {
            return Err(PlacementError::NotEnoughMemoryMonitors {
                alive: ranked.len(),
                needed,
            });
        }
        let assignment = VRegionAssignment {
            primary: ranked[0],
            backup: (needed == 2).then(|| Backup::On(ranked[1])),
        };
        self.put_vregion(key, assignment);
        self.touch(Record::VRegion(key));
        Ok((assignment, true))
    }

    /// Where a vRegion is placed, if it is.
    pub fn vregion(&self, key: VRegionKey) -> Option<VRegionAssignment> {
        self.vregions.get(&key).copied()
    }

    /// All placed vRegions, ordered by key.
    pub fn vregions(&self) -> impl Iterator<Item = (&VRegionKey, &VRegionAssignment)> {
        self.vregions.iter()
    }

    /// The vRegions of which `id` holds a replica (primary or backup),
    /// ordered by key: what to recover when it dies.
    pub fn vregions_on(&self, id: ComponentId) -> Vec<(VRegionKey, VRegionAssignment)> {
        self.index
            .copies
            .get(&id)
            .into_iter()
            .flatten()
            .map(|key| (*key, self.vregions[key]))
            .collect()
    }

    /// Removes every vRegion of the address space, its lease and its
    /// owner, and returns the vRegions, so the manager can tell their memory
    /// monitors to free them.
    pub fn release_space(&mut self, asid: Asid) -> Vec<(VRegionKey, VRegionAssignment)> {
        self.leases.remove(&asid);
        self.owners.remove(&asid);
        self.touch(Record::Lease(asid));
        self.touch(Record::Owner(asid));
        self.remove_vregions(asid, asid)
    }

    /// Removes the vRegions of address spaces `first..=last`.
    pub(crate) fn remove_vregions(
        &mut self,
        first: Asid,
        last: Asid,
    ) -> Vec<(VRegionKey, VRegionAssignment)> {
        let range = *VRegionKey::range_of(first).start()..=*VRegionKey::range_of(last).end();
        let keys: Vec<VRegionKey> = self.vregions.range(range).map(|(key, _)| *key).collect();
        keys.into_iter()
            .filter_map(|key| {
                self.dirty.insert(Record::VRegion(key));
                self.take_vregion(key).map(|a| (key, a))
            })
            .collect()
    }

    /// The least-loaded alive memory monitor not in `exclude` and not
    /// drained, counting `extra` bytes (copies planned but not made yet) as
    /// used on each monitor listed there. The ranked index gives the best
    /// of those without extra; each of those with extra is weighed anew.
    pub(crate) fn least_loaded_memory(
        &self,
        exclude: &[ComponentId],
        extra: &BTreeMap<ComponentId, u64>,
    ) -> Option<ComponentId> {
        let plain = self
            .index
            .memory
            .iter()
            .find(|(_, _, id)| !exclude.contains(id) && !extra.contains_key(id))
            .copied();
        let planned = extra.iter().filter_map(|(&id, &bytes)| {
            let c = self.components.get(&id)?;
            (c.role == Role::Memory
                && c.health == Health::Alive
                && !c.drained
                && !exclude.contains(&id))
            .then(|| {
                (
                    crate::index::load_key(c.used + bytes, c.capacity),
                    self.copies_held(id),
                    id,
                )
            })
        });
        plain.into_iter().chain(planned).min().map(|(_, _, id)| id)
    }
}
