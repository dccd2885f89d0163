//! The GSM: which storage monitor holds a vNode's files, by load; and memory
//! leases, which keep a vNode's processes within its memory quota.
//!
//! A vNode's storage is placed once, on the alive storage monitor with the
//! most free disk (ties: fewer vNodes placed there, then lower id), and stays
//! there: files do not move, so while that monitor is down the vNode's files
//! are unavailable (never silently replaced by an empty tree elsewhere).
//!
//! Leases: a process's runtime asks for memory in chunks before it hands it
//! to the program; the grants of all address spaces of a vNode together stay
//! within its quota. Releasing an address space returns its lease.

use crate::{Asid, ComponentId, Health, Placement, PlacementError, Record, Role, Vnode, VnodeId};

impl Placement {
    /// The storage monitor of vNode `id`, placing it first if it has none.
    /// Returns the vNode (to persist when `placed`) and whether it was placed now.
    pub fn place_storage(&mut self, id: VnodeId) -> Result<(Vnode, bool), PlacementError> {
        let vnode = self
            .vnodes
            .get(&id)
            .ok_or(PlacementError::UnknownVnodeId(id))?;
        if let Some(s) = vnode.storage {
            let health = self.components.get(&s).map(|c| c.health);
            return match health {
                Some(Health::Alive) => Ok((vnode.clone(), false)),
                other => Err(PlacementError::StorageDown {
                    vnode: vnode.name.clone(),
                    storage: s,
                    health: other.map_or("gone".to_string(), |h| h.to_string()),
                }),
            };
        }
        // vNodes per storage monitor, counted once (not once per monitor).
        let mut counts: std::collections::BTreeMap<ComponentId, usize> = Default::default();
        for s in self.vnodes.values().filter_map(|v| v.storage) {
            *counts.entry(s).or_default() += 1;
        }
        let placed_on = |c: ComponentId| counts.get(&c).copied().unwrap_or(0);
        let best = self
            .components
            .values()
            .filter(|c| c.role == Role::Storage && c.health == Health::Alive)
            .min_by_key(|c| {
                (
                    std::cmp::Reverse(c.capacity.saturating_sub(c.used)),
                    placed_on(c.id),
                    c.id,
                )
            })
            .map(|c| c.id)
            .ok_or_else(|| PlacementError::NoStorage(vnode.name.clone()))?;
        let vnode = self.vnodes.get_mut(&id).expect("looked up above");
        vnode.storage = Some(best);
        let vnode = vnode.clone();
        self.touch(Record::Vnode(id));
        Ok((vnode, true))
    }

    /// Bytes leased by all address spaces of vNode `id`.
    pub fn leased(&self, id: VnodeId) -> u64 {
        self.leases.range(Asid::range_of(id)).map(|(_, &b)| b).sum()
    }

    /// Leases `bytes` more to address space `asid`, within its vNode's
    /// quota. Returns the space's new lease.
    pub fn lease(&mut self, asid: Asid, bytes: u64) -> Result<u64, PlacementError> {
        let id = asid.vnode();
        let vnode = self
            .vnodes
            .get(&id)
            .ok_or(PlacementError::UnknownVnodeId(id))?;
        if let Some(quota) = vnode.memory_quota {
            let leased = self.leased(id);
            if leased.saturating_add(bytes) > quota {
                return Err(PlacementError::QuotaExceeded {
                    vnode: vnode.name.clone(),
                    quota,
                    leased,
                    asked: bytes,
                });
            }
        }
        let l = self.leases.entry(asid).or_insert(0);
        *l = l.saturating_add(bytes);
        let l = *l;
        self.touch(Record::Lease(asid));
        Ok(l)
    }

    /// The lease of one address space (0 if none).
    pub fn lease_of(&self, asid: Asid) -> u64 {
        self.leases.get(&asid).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Asid, Placement, PlacementConfig, PlacementError, Role};

    fn cluster(storage: &[(u64, u64)]) -> Placement {
        let mut p = Placement::new(PlacementConfig {
            dead_after_ms: 1000,
            isolation_guard: false,
        });
        for (i, &(cap, used)) in storage.iter().enumerate() {
            let id = p
                .register(0, Role::Storage, format!("s{i}"), cap, 1, None)
                .unwrap();
            p.heartbeat(0, id, 1, used).unwrap();
        }
        p
    }

    #[test]
    fn storage_goes_to_the_most_free_disk_and_stays() {
        // (storage monitors as (capacity, used), expected choice)
        type Monitors = &'static [(u64, u64)];
        let table: &[(Monitors, Option<u64>)] = &[
            (&[], None),
            (&[(100, 10)], Some(1)),
            (&[(100, 10), (100, 5)], Some(2)),
            (&[(100, 50), (200, 100)], Some(2)),
            (&[(100, 0), (100, 0)], Some(1)),
        ];
        for (monitors, want) in table {
            let mut p = cluster(monitors);
            let v = p.create_vnode("a").unwrap();
            match (p.place_storage(v.id), want) {
                (Ok((v, placed)), Some(w)) => {
                    assert!(placed);
                    assert_eq!(v.storage, Some(*w), "{monitors:?}");
                    // Placed once: asking again answers the same, unplaced.
                    let (again, placed) = p.place_storage(v.id).unwrap();
                    assert_eq!((again.storage, placed), (Some(*w), false));
                }
                (Err(PlacementError::NoStorage(n)), None) => assert_eq!(n, "a"),
                (other, _) => panic!("{monitors:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn ties_spread_vnodes_and_a_dead_monitor_is_reported() {
        let mut p = cluster(&[(100, 0), (100, 0)]);
        let a = p.create_vnode("a").unwrap();
        let b = p.create_vnode("b").unwrap();
        assert_eq!(p.place_storage(a.id).unwrap().0.storage, Some(1));
        assert_eq!(p.place_storage(b.id).unwrap().0.storage, Some(2));
        p.tick(5000);
        assert!(matches!(
            p.place_storage(a.id),
            Err(PlacementError::StorageDown { storage: 1, .. })
        ));
    }

    #[test]
    fn leases_stay_within_the_quota_of_the_vnode() {
        let mut p = cluster(&[]);
        let v = p.create_vnode_with("q", Vec::new(), Some(100)).unwrap();
        let (s1, s2) = (Asid::new(v.id, 1), Asid::new(v.id, 2));
        assert_eq!(p.lease(s1, 60).unwrap(), 60);
        assert_eq!(p.lease(s2, 40).unwrap(), 40);
        assert!(matches!(
            p.lease(s1, 1),
            Err(PlacementError::QuotaExceeded {
                leased: 100,
                quota: 100,
                asked: 1,
                ..
            })
        ));
        // Releasing a space returns its lease.
        p.release_space(s2);
        assert_eq!(p.leased(v.id), 60);
        assert_eq!(p.lease(s1, 40).unwrap(), 100);
        // No quota: anything goes.
        let free = p.create_vnode("free").unwrap();
        assert_eq!(
            p.lease(Asid::new(free.id, 1), u64::MAX / 2).unwrap(),
            u64::MAX / 2
        );
    }

    #[test]
    fn mounts_are_checked() {
        let mut p = cluster(&[]);
        assert_eq!(
            p.create_vnode("d").unwrap().mounts,
            vec!["/data".to_string()]
        );
        let ok = p
            .create_vnode_with("m", vec!["/data".into(), "/srv/x".into()], None)
            .unwrap();
        assert_eq!(ok.mounts.len(), 2);
        for bad in [
            vec!["data".to_string()],
            vec!["/".into()],
            vec!["/a/../b".into()],
            vec!["/a/".into()],
            vec!["/proc/x".into()],
            vec!["/a".into(), "/a/b".into()],
            vec!["/a".into(), "/a".into()],
        ] {
            assert!(
                matches!(
                    p.create_vnode_with("z", bad.clone(), None),
                    Err(PlacementError::InvalidMount { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            p.create_vnode_with("z", Vec::new(), Some(0)),
            Err(PlacementError::InvalidQuota)
        );
    }
}
