//! The GPM: which processor monitor runs a new process, by load; and the
//! address space of a forked child, which starts as a copy of its parent's.

use crate::{
    Asid, ComponentId, Placement, PlacementError, Record, VRegionAssignment, VRegionKey, Vnode,
};

impl Placement {
    /// Picks the alive processor monitor with the most free ExCache that has at
    /// least `excache` bytes free (ties: fewer used bytes, then lower id).
    pub fn place_process(&self, excache: u64) -> Result<ComponentId, PlacementError> {
        // The most free first (an index, not a scan: see `index`).
        match self.index.processors.first() {
            Some(&(std::cmp::Reverse(free), _, id)) if free >= excache => Ok(id),
            _ => Err(PlacementError::NoProcessor {
                alive: self.index.processors.len(),
                excache,
            }),
        }
    }

    /// Creates the address space of a forked child of `parent`, in the same
    /// vNode and of the same job, whose vRegions live on the same memory
    /// monitors as the parent's (so each monitor copies locally), with a
    /// copy of the parent's memory lease (refused, and nothing changed, when
    /// that does not fit the vNode's quota). Returns the child's asid, the
    /// updated vNode and the child's vRegions.
    #[allow(clippy::type_complexity)]
    pub fn fork_space(
        &mut self,
        parent: Asid,
    ) -> Result<(Asid, Vnode, Vec<(VRegionKey, VRegionAssignment)>), PlacementError> {
        let owner = self.owner(parent);
        let before = self.vnodes.get(&parent.vnode()).cloned();
        let (child, vnode) = self.create_space(parent.vnode(), owner)?;
        // The child's copy of the memory counts against the quota too.
        let lease = self.lease_of(parent);
        if lease > 0 {
            if let Err(e) = self.lease(child, lease) {
                self.owners.remove(&child);
                if let Some(v) = before {
                    self.vnodes.insert(v.id, v);
                }
                return Err(e);
            }
        }
        let copied: Vec<(VRegionKey, VRegionAssignment)> = self
            .vregions
            .range(VRegionKey::range_of(parent))
            .map(|(k, a)| {
                (
                    VRegionKey {
                        asid: child,
                        index: k.index,
                    },
                    *a,
                )
            })
            .collect();
        for (k, a) in &copied {
            self.put_vregion(*k, *a);
            self.touch(Record::VRegion(*k));
        }
        Ok((child, vnode, copied))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Placement, PlacementConfig, PlacementError, Role, VRegionIdx, VRegionKey};

    fn cluster(processors: &[(u64, u64)]) -> Placement {
        let mut p = Placement::new(PlacementConfig {
            dead_after_ms: 1000,
            isolation_guard: false,
        });
        for (i, &(cap, used)) in processors.iter().enumerate() {
            let id = p
                .register(0, Role::Processor, format!("p{i}"), cap, 1, None)
                .unwrap();
            p.heartbeat(0, id, 1, used).unwrap();
        }
        p
    }

    #[test]
    fn place_process_table() {
        // (processors as (capacity, used), excache asked, expected)
        type Case = (&'static [(u64, u64)], u64, Result<u64, PlacementError>);
        let table: &[Case] = &[
            (&[(100, 0)], 50, Ok(1)),
            (&[(100, 80), (100, 10)], 50, Ok(2)),
            (&[(100, 60), (200, 170)], 30, Ok(1)),
            (&[(100, 0), (100, 0)], 10, Ok(1)),
            (
                &[(100, 90)],
                50,
                Err(PlacementError::NoProcessor {
                    alive: 1,
                    excache: 50,
                }),
            ),
            (
                &[],
                1,
                Err(PlacementError::NoProcessor {
                    alive: 0,
                    excache: 1,
                }),
            ),
        ];
        for (procs, want, expected) in table {
            assert_eq!(
                &cluster(procs).place_process(*want),
                expected,
                "{procs:?} asking {want}"
            );
        }
    }

    #[test]
    fn dead_processors_are_not_chosen() {
        let mut p = cluster(&[(100, 0), (100, 50)]);
        p.heartbeat(900, 2, 1, 50).unwrap();
        p.tick(1500);
        assert_eq!(p.place_process(10), Ok(2));
    }

    #[test]
    fn fork_space_copies_placements_into_a_new_space() {
        let mut p = Placement::new(PlacementConfig {
            dead_after_ms: 1000,
            isolation_guard: false,
        });
        for i in 0..3 {
            p.register(0, Role::Memory, format!("m{i}"), 1 << 30, 1, None)
                .unwrap();
        }
        let v = p.create_vnode("v").unwrap();
        let (parent, _) = p.create_space(v.id, None).unwrap();
        let (other, _) = p.create_space(v.id, None).unwrap();
        for index in [0, 5] {
            p.assign_vregion(VRegionKey {
                asid: parent,
                index: VRegionIdx(index),
            })
            .unwrap();
        }
        p.assign_vregion(VRegionKey {
            asid: other,
            index: VRegionIdx(1),
        })
        .unwrap();
        let (child, vnode, copied) = p.fork_space(parent).unwrap();
        assert_eq!(child.vnode(), v.id);
        assert_eq!(vnode.next_space, 4);
        assert_eq!(copied.len(), 2);
        for index in [0, 5] {
            assert_eq!(
                p.vregion(VRegionKey {
                    asid: child,
                    index: VRegionIdx(index)
                }),
                p.vregion(VRegionKey {
                    asid: parent,
                    index: VRegionIdx(index)
                })
            );
        }
        assert_eq!(
            p.vregion(VRegionKey {
                asid: child,
                index: VRegionIdx(1)
            }),
            None
        );
    }
}
