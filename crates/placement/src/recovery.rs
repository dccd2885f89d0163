//! Recovery of vRegions when memory monitors die: the backup of a dead
//! primary takes over at once (failover), and a vRegion left with one copy
//! gets a second one on another live memory monitor (re-replication), planned
//! here, copied by the manager and the survivor, and committed here.

use std::collections::BTreeSet;

use crate::{
    Backup, ComponentId, Event, Health, Placement, PlacementError, Record, Recovery, Role,
    VRegionAssignment, VRegionKey, VRegionState,
};

impl Placement {
    fn alive(&self, id: ComponentId) -> bool {
        self.components
            .get(&id)
            .is_some_and(|c| c.health == Health::Alive || c.health == Health::Unknown)
    }

    /// How the copies of `key` stand; `None` for an unknown vRegion. A
    /// monitor of unknown health (just after a manager restart) counts as
    /// live until it is declared dead.
    pub fn vregion_state(&self, key: VRegionKey) -> Option<VRegionState> {
        let a = self.vregions.get(&key)?;
        let live = a.copies().filter(|&id| self.alive(id)).count();
        let wanted = a.wanted();
        Some(match live {
            0 => VRegionState::Lost,
            n if n < wanted => VRegionState::Degraded,
            _ => VRegionState::Healthy,
        })
    }

    /// A memory monitor was declared dead: every vRegion whose primary it
    /// held is served by its backup from now on. Queues a
    /// [`Event::Failover`] for each, and an [`Event::VRegionLost`] for each
    /// vRegion of which it held the last live copy.
    pub(crate) fn fail_over(&mut self, dead: ComponentId) {
        let keys: Vec<VRegionKey> = self
            .index
            .copies
            .get(&dead)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for key in keys {
            let a = self.vregions[&key];
            let survivor = a.copies().find(|&id| id != dead && self.alive(id));
            match survivor {
                None => self.events.push(Event::VRegionLost { key, dead }),
                Some(s) if a.primary == dead => {
                    self.put_vregion(
                        key,
                        VRegionAssignment {
                            primary: s,
                            backup: Some(Backup::On(dead)),
                        },
                    );
                    self.dirty.insert(Record::VRegion(key));
                    self.events.push(Event::Failover {
                        key,
                        dead,
                        primary: s,
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// A process found that the copy of `key` on `bad` missed a write: that
    /// copy becomes [`Backup::Bad`] (the other copy becomes the primary), so
    /// it is never a survivor and the vRegion is rebuilt from the good copy.
    /// Returns the new assignment; `None` if `bad` holds no copy of it or is
    /// its only live copy (then nothing better is known, and the process
    /// itself never reads it).
    pub fn mark_bad_copy(
        &mut self,
        key: VRegionKey,
        bad: ComponentId,
    ) -> Option<VRegionAssignment> {
        let a = *self.vregions.get(&key)?;
        let other = a.copies().find(|&id| id != bad)?;
        if !a.holds(bad) || !self.alive(other) {
            return None;
        }
        let new = VRegionAssignment {
            primary: other,
            backup: Some(Backup::Bad),
        };
        self.put_vregion(key, new);
        self.touch(Record::VRegion(key));
        Some(new)
    }

    /// Plans giving `key` a second copy again in place of `failed` (a dead
    /// monitor's copy, or the bad one): the other copy is the survivor, the
    /// least-loaded live memory monitor holding neither is the target.
    /// Changes nothing.
    pub fn plan_recovery(
        &self,
        key: VRegionKey,
        failed: Backup<ComponentId>,
    ) -> Result<Recovery, PlacementError> {
        let a = self
            .vregion(key)
            .ok_or(PlacementError::UnknownVRegion(key))?;
        let survivor = match (a.backup, failed) {
            (Some(Backup::Bad), Backup::Bad) => a.primary,
            (Some(_), Backup::Bad) => return Err(PlacementError::NoBadCopy { key }),
            (Some(Backup::On(b)), Backup::On(f)) if a.primary == f => b,
            (Some(Backup::On(b)), Backup::On(f)) if b == f => a.primary,
            (_, Backup::On(f)) => return Err(PlacementError::NotAReplica { key, id: f }),
            (None, Backup::Bad) => return Err(PlacementError::NoBadCopy { key }),
        };
        if !self.alive(survivor) {
            return Err(PlacementError::NoSurvivingReplica { key, survivor });
        }
        let mut exclude = vec![survivor];
        exclude.extend(failed.on().copied());
        let target = self
            .least_loaded_memory(&exclude, &Default::default())
            .ok_or(PlacementError::NoSpareMemoryMonitor(key))?;
        Ok(Recovery {
            key,
            survivor,
            failed,
            target,
        })
    }

    /// Every recovery that can start now: one per degraded vRegion (a dead
    /// copy, a live one) not in `busy`, in key order. vRegions with no spare
    /// monitor to copy onto are left out (they stay degraded).
    pub fn recoveries(&self, busy: &BTreeSet<VRegionKey>) -> Vec<Recovery> {
        let degraded: Vec<(VRegionKey, Backup<ComponentId>)> = self
            .vregions
            .iter()
            .filter(|(k, _)| !busy.contains(k))
            .filter_map(|(k, a)| {
                let failed = match a.backup {
                    Some(Backup::Bad) => Backup::Bad,
                    _ => Backup::On(a.copies().find(|&id| !self.alive(id))?),
                };
                a.copies().any(|id| self.alive(id)).then_some((*k, failed))
            })
            .collect();
        degraded
            .into_iter()
            .filter_map(|(k, failed)| self.plan_recovery(k, failed).ok())
            .collect()
    }

    /// Records a finished copy: `target` replaces `failed`, and the survivor
    /// is the primary. Refused when the vRegion was released or its copies
    /// changed meanwhile, or the target died (the copy is then worthless).
    pub fn commit_recovery(&mut self, r: &Recovery) -> Result<VRegionAssignment, PlacementError> {
        let outdated = PlacementError::RecoveryOutdated { key: r.key };
        let a = self.vregions.get(&r.key).ok_or(outdated.clone())?;
        let still_failed = match r.failed {
            Backup::On(f) => a.holds(f),
            Backup::Bad => a.backup == Some(Backup::Bad),
        };
        if !(a.holds(r.survivor) && still_failed && self.alive(r.target) && self.alive(r.survivor))
        {
            return Err(outdated);
        }
        let target_is_memory = self
            .components
            .get(&r.target)
            .is_some_and(|c| c.role == Role::Memory);
        if !target_is_memory {
            return Err(outdated);
        }
        let a = VRegionAssignment {
            primary: r.survivor,
            backup: Some(Backup::On(r.target)),
        };
        self.put_vregion(r.key, a);
        self.touch(Record::VRegion(r.key));
        Ok(a)
    }
}
