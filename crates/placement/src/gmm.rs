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
        let ranked = self.ranked_memory_monitors(&[]);
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
        self.vregions.insert(key, assignment);
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
        self.vregions
            .iter()
            .filter(|(_, assignment)| assignment.holds(id))
            .map(|(key, assignment)| (*key, *assignment))
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
                self.vregions.remove(&key).map(|a| (key, a))
            })
            .collect()
    }

    /// Alive memory monitors not in `exclude` and not drained, least loaded
    /// first.
    pub(crate) fn ranked_memory_monitors(&self, exclude: &[ComponentId]) -> Vec<ComponentId> {
        self.ranked_memory_monitors_with(exclude, &BTreeMap::new())
    }

    /// Like [`Placement::ranked_memory_monitors`], counting `extra` bytes
    /// (copies planned but not made yet) as used on each monitor listed.
    pub(crate) fn ranked_memory_monitors_with(
        &self,
        exclude: &[ComponentId],
        extra: &BTreeMap<ComponentId, u64>,
    ) -> Vec<ComponentId> {
        let mut replicas: BTreeMap<ComponentId, u64> = BTreeMap::new();
        for id in self.vregions.values().flat_map(|a| a.copies()) {
            *replicas.entry(id).or_default() += 1;
        }
        let mut candidates: Vec<(f64, u64, ComponentId)> = self
            .components
            .values()
            .filter(|c| c.role == Role::Memory && c.health == Health::Alive && !c.drained)
            .filter(|c| !exclude.contains(&c.id))
            .map(|c| {
                let planned = extra.get(&c.id).copied().unwrap_or(0);
                let load = (c.used + planned) as f64 / c.capacity.max(1) as f64;
                (load, replicas.get(&c.id).copied().unwrap_or(0), c.id)
            })
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        candidates.into_iter().map(|(_, _, id)| id).collect()
    }
}
