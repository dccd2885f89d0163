//! Moving copies of vRegions off live memory monitors: draining one
//! (`lego memory drain`), and rebalancing use across them. Planned here,
//! copied by the manager and the source copy (which forwards the writes
//! that come meanwhile), and committed here, exactly like re-replication
//! (`recovery`), except that the copy replaced is alive until the commit:
//! a vRegion never has fewer live copies than its vNode asked for.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    Backup, ComponentId, Health, Move, Placement, PlacementError, Record, Role, VRegionAssignment,
    VRegionKey,
};

impl Placement {
    /// Marks memory monitor `id` drained (no new copies go there; the
    /// manager moves its copies away, at most `rate` bytes a second) or not.
    pub fn set_drained(
        &mut self,
        id: ComponentId,
        drained: bool,
        rate: Option<u64>,
    ) -> Result<(), PlacementError> {
        let c = self
            .components
            .get_mut(&id)
            .ok_or(PlacementError::UnknownComponent(id))?;
        if c.role != Role::Memory {
            return Err(PlacementError::NotMemory(id));
        }
        c.drained = drained;
        c.drain_rate = rate.filter(|_| drained);
        self.reindex(id);
        self.touch(Record::Component(id));
        Ok(())
    }

    /// Plans moving the copy of `key` on `from` to the least-loaded live
    /// memory monitor that is not drained and holds no copy of it. The data
    /// comes from the other copy (so the copy on `from` is never the only
    /// source of a two-copy vRegion), or from `from` for a one-copy
    /// vRegion. Changes nothing.
    pub fn plan_move(&self, key: VRegionKey, from: ComponentId) -> Result<Move, PlacementError> {
        self.plan_move_with(key, from, &BTreeMap::new())
    }

    /// [`Placement::plan_move`], counting `extra` bytes as used on the
    /// monitors listed (moves planned before this one).
    fn plan_move_with(
        &self,
        key: VRegionKey,
        from: ComponentId,
        extra: &BTreeMap<ComponentId, u64>,
    ) -> Result<Move, PlacementError> {
        let a = self
            .vregion(key)
            .ok_or(PlacementError::UnknownVRegion(key))?;
        if !a.holds(from) {
            return Err(PlacementError::NotAReplica { key, id: from });
        }
        let source = match a.backup {
            None => from,
            // A copy being rebuilt: recovery finishes first.
            Some(Backup::Bad) => return Err(PlacementError::NoBadCopy { key }),
            Some(Backup::On(b)) if b == from => a.primary,
            Some(Backup::On(b)) => b,
        };
        if !self.live(source) || !self.live(from) {
            return Err(PlacementError::NoSurvivingReplica {
                key,
                survivor: source,
            });
        }
        let exclude: Vec<ComponentId> = a.copies().collect();
        let to = self
            .least_loaded_memory(&exclude, extra)
            .ok_or(PlacementError::NoSpareMemoryMonitor(key))?;
        Ok(Move {
            key,
            from,
            source,
            to,
        })
    }

    /// The moves that empty drained memory monitors, one per copy not in
    /// `busy`, in key order; copies with nowhere to go are left out. Each
    /// move's target counts the copies planned onto it before (a vRegion
    /// of `vregion_bytes` each), so the copies spread over the monitors.
    pub fn drain_moves(&self, busy: &BTreeSet<VRegionKey>, vregion_bytes: u64) -> Vec<Move> {
        let drained: Vec<ComponentId> = self
            .components
            .values()
            .filter(|c| c.role == Role::Memory && c.drained && c.health == Health::Alive)
            .map(|c| c.id)
            .collect();
        let mut moves = Vec::new();
        let mut planned: BTreeMap<ComponentId, u64> = BTreeMap::new();
        // The drained monitors' copies (from the index), in key order.
        let keys: BTreeSet<VRegionKey> = drained
            .iter()
            .filter_map(|d| self.index.copies.get(d))
            .flatten()
            .copied()
            .collect();
        for key in &keys {
            let a = &self.vregions[key];
            if busy.contains(key) {
                continue;
            }
            if let Some(from) = a.copies().find(|id| drained.contains(id)) {
                if let Ok(m) = self.plan_move_with(*key, from, &planned) {
                    *planned.entry(m.to).or_default() += vregion_bytes;
                    moves.push(m);
                }
            }
        }
        moves
    }

    /// Copies of vRegions held by `id`.
    pub fn copies_on(&self, id: ComponentId) -> usize {
        self.copies_held(id) as usize
    }

    /// Moves that even out the copies held by live, undrained memory
    /// monitors, weighted by capacity: while the fullest holds more than
    /// `threshold` (a fraction of its capacity, counting `vregion_bytes`
    /// per copy) above the emptiest, one copy it holds that the emptiest
    /// does not goes there; at most `max` moves. Changes nothing.
    pub fn rebalance_moves(&self, vregion_bytes: u64, threshold: f64, max: usize) -> Vec<Move> {
        let monitors: Vec<(ComponentId, u64)> = self
            .components
            .values()
            .filter(|c| c.role == Role::Memory && c.health == Health::Alive && !c.drained)
            .map(|c| (c.id, c.capacity.max(1)))
            .collect();
        if monitors.len() < 2 {
            return Vec::new();
        }
        // Where every copy is, as the plan goes.
        let mut held: BTreeMap<ComponentId, BTreeSet<VRegionKey>> = monitors
            .iter()
            .map(|(id, _)| (*id, BTreeSet::new()))
            .collect();
        let mut placed: BTreeMap<VRegionKey, VRegionAssignment> = BTreeMap::new();
        for (key, a) in &self.vregions {
            if a.backup == Some(Backup::Bad) {
                continue;
            }
            placed.insert(*key, *a);
            for id in a.copies() {
                if let Some(h) = held.get_mut(&id) {
                    h.insert(*key);
                }
            }
        }
        let cap: BTreeMap<ComponentId, u64> = monitors.iter().copied().collect();
        let use_of = |held: &BTreeMap<ComponentId, BTreeSet<VRegionKey>>, id: ComponentId| {
            held[&id].len() as f64 * vregion_bytes as f64 / cap[&id] as f64
        };
        let mut moves = Vec::new();
        while moves.len() < max {
            let by_use = |a: &ComponentId, b: &ComponentId| {
                use_of(&held, *a)
                    .total_cmp(&use_of(&held, *b))
                    .then(a.cmp(b))
            };
            let fullest = *held
                .keys()
                .max_by(|a, b| by_use(a, b))
                .expect("two or more");
            let emptiest = *held
                .keys()
                .min_by(|a, b| by_use(a, b))
                .expect("two or more");
            let gap = use_of(&held, fullest) - use_of(&held, emptiest);
            // Moving one copy changes the gap by the copy's share of both;
            // stop when the gap is within the threshold or a move would not
            // narrow it.
            let step = vregion_bytes as f64 / cap[&fullest] as f64
                + vregion_bytes as f64 / cap[&emptiest] as f64;
            if gap <= threshold || gap <= step / 2.0 {
                break;
            }
            let Some(key) = held[&fullest]
                .iter()
                .find(|k| !held[&emptiest].contains(k))
                .copied()
            else {
                break;
            };
            let a = placed[&key];
            let source = match a.backup {
                Some(Backup::On(b)) if b == fullest => a.primary,
                Some(Backup::On(b)) => b,
                _ => fullest,
            };
            moves.push(Move {
                key,
                from: fullest,
                source,
                to: emptiest,
            });
            held.get_mut(&fullest).expect("listed").remove(&key);
            held.get_mut(&emptiest).expect("listed").insert(key);
            placed.insert(key, replaced(a, fullest, emptiest, source));
        }
        moves
    }

    /// Records a finished move: `to` replaces `from` (the source is the
    /// primary of a two-copy vRegion from now on). Refused when the vRegion
    /// was released or its copies changed meanwhile, or `to` or the source
    /// is no longer live (the copy is then worthless).
    pub fn commit_move(&mut self, m: &Move) -> Result<VRegionAssignment, PlacementError> {
        let outdated = PlacementError::RecoveryOutdated { key: m.key };
        let a = *self.vregions.get(&m.key).ok_or(outdated.clone())?;
        let to_is_memory = self
            .components
            .get(&m.to)
            .is_some_and(|c| c.role == Role::Memory);
        let valid = a.holds(m.from)
            && a.holds(m.source)
            && !a.holds(m.to)
            && to_is_memory
            && self.live(m.to)
            && self.live(m.source);
        if !valid {
            return Err(outdated);
        }
        let new = replaced(a, m.from, m.to, m.source);
        self.put_vregion(m.key, new);
        self.touch(Record::VRegion(m.key));
        Ok(new)
    }

    fn live(&self, id: ComponentId) -> bool {
        self.components
            .get(&id)
            .is_some_and(|c| c.health == Health::Alive)
    }
}

/// `a` with `to` in place of `from`: the source (the copy that stays) is
/// the primary of a two-copy vRegion.
fn replaced(
    a: VRegionAssignment,
    from: ComponentId,
    to: ComponentId,
    source: ComponentId,
) -> VRegionAssignment {
    match a.backup {
        None => VRegionAssignment {
            primary: to,
            backup: None,
        },
        Some(_) => {
            let stays = if source == from { a.primary } else { source };
            VRegionAssignment {
                primary: stays,
                backup: Some(Backup::On(to)),
            }
        }
    }
}
