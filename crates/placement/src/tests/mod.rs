//! Table-driven tests. Each case is a name and a script of operations run on
//! a fresh [`Placement`]; every operation carries its expected outcome. The
//! tables live in the submodules, one per area; this file holds the script
//! language and its interpreter.

mod gmm;
mod membership;
mod misc;
mod recovery;
mod restore;
mod vnodes;

use crate::*;

pub(crate) const DEAD_AFTER: u64 = 1_000;
pub(crate) const GIB: u64 = 1 << 30;

/// One step of a script and what it must produce.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Register {
        now: u64,
        role: Role,
        addr: String,
        capacity: u64,
        instance: u64,
        previous: Option<ComponentId>,
        expect: Result<ComponentId, PlacementError>,
    },
    Heartbeat {
        now: u64,
        id: ComponentId,
        instance: u64,
        used: u64,
        expect: Result<(), PlacementError>,
    },
    /// `tick(now)` returns deaths of exactly these ids.
    Tick {
        now: u64,
        dead: Vec<ComponentId>,
    },
    /// `take_events()` returns exactly these.
    Events(Vec<Event>),
    Health(ComponentId, Health),
    LastHeard(ComponentId, u64),
    Used(ComponentId, u64),
    /// Persists everything and restores it at `now`, as a restarted manager does.
    Restart {
        now: u64,
    },
    RaiseIds(ComponentId, VnodeId),
    NextIds(ComponentId, VnodeId),
    CreateVnode(String, Result<VnodeId, PlacementError>),
    DeleteVnode(
        &'static str,
        Result<(VnodeId, Vec<VRegionKey>), PlacementError>,
    ),
    CreateSpace(VnodeId, Result<Asid, PlacementError>),
    /// Expected (primary, backup, newly created).
    Assign(
        VRegionKey,
        Result<(ComponentId, ComponentId, bool), PlacementError>,
    ),
    /// Expected new (primary, backup).
    Replace(
        VRegionKey,
        ComponentId,
        Result<(ComponentId, ComponentId), PlacementError>,
    ),
    VRegionsOn(ComponentId, Vec<VRegionKey>),
    Release(Asid, Vec<VRegionKey>),
    /// The keys of all placed vRegions, in order.
    VRegions(Vec<VRegionKey>),
    /// `vregion_state(key)` is this.
    State(VRegionKey, Option<VRegionState>),
    /// `recoveries(busy)` plans exactly these (key, survivor, failed, target).
    Recoveries(
        Vec<VRegionKey>,
        Vec<(VRegionKey, ComponentId, ComponentId, ComponentId)>,
    ),
    /// `commit_recovery` of (key, survivor, failed, target): new (primary, backup).
    Commit(
        (VRegionKey, ComponentId, ComponentId, ComponentId),
        Result<(ComponentId, ComponentId), PlacementError>,
    ),
    /// `declare_dead(now, id)` reports a death (true) or not.
    DeclareDead(u64, ComponentId, bool),
    SetReplicas(VnodeId, u8, Result<(), PlacementError>),
    /// `mark_bad_copy(key, id)`: new (primary, backup), or None.
    MarkBad(VRegionKey, ComponentId, Option<(ComponentId, ComponentId)>),
}

pub(crate) type Case = (&'static str, Vec<Op>);

/// The instance number the helpers give component `id`.
pub(crate) fn inst(id: ComponentId) -> u64 {
    0xabc0 + id
}

/// The address the helpers give component `id`.
pub(crate) fn addr(role: Role, id: ComponentId) -> String {
    format!("{role}-{id}:7000")
}

/// Component `id` (its expected fresh id) of `role` registers at `now`, 4 GiB.
pub(crate) fn join(now: u64, role: Role, id: ComponentId) -> Op {
    join_cap(now, role, id, 4 * GIB)
}

pub(crate) fn join_cap(now: u64, role: Role, id: ComponentId, capacity: u64) -> Op {
    Op::Register {
        now,
        role,
        addr: addr(role, id),
        capacity,
        instance: inst(id),
        previous: None,
        expect: Ok(id),
    }
}

/// Component `id` rejoins under its old id with the same instance.
pub(crate) fn rejoin(now: u64, role: Role, id: ComponentId) -> Op {
    Op::Register {
        now,
        role,
        addr: addr(role, id),
        capacity: 4 * GIB,
        instance: inst(id),
        previous: Some(id),
        expect: Ok(id),
    }
}

/// A successful heartbeat.
pub(crate) fn beat(now: u64, id: ComponentId, used: u64) -> Op {
    Op::Heartbeat {
        now,
        id,
        instance: inst(id),
        used,
        expect: Ok(()),
    }
}

pub(crate) fn registered(id: ComponentId, role: Role, rejoined: bool) -> Event {
    Event::ComponentRegistered {
        id,
        role,
        addr: addr(role, id),
        rejoined,
    }
}

pub(crate) fn died(id: ComponentId, role: Role, silent_ms: u64) -> Event {
    Event::ComponentDead {
        id,
        role,
        addr: addr(role, id),
        silent_ms,
    }
}

pub(crate) fn vnode(name: &str, expect: Result<VnodeId, PlacementError>) -> Op {
    Op::CreateVnode(name.to_string(), expect)
}

/// vRegion `index` of address space `seq` of vNode `vnode`.
pub(crate) fn key(vnode: VnodeId, seq: u32, index: u64) -> VRegionKey {
    VRegionKey {
        asid: make_asid(vnode, seq),
        index,
    }
}

/// vNode "v" (id 1) with one address space (1.1).
pub(crate) fn one_space() -> Vec<Op> {
    vec![vnode("v", Ok(1)), Op::CreateSpace(1, Ok(make_asid(1, 1)))]
}

pub(crate) fn run(cases: Vec<Case>) {
    for (name, ops) in cases {
        let mut p = Placement::new(PlacementConfig {
            dead_after_ms: DEAD_AFTER,
        });
        for (step, op) in ops.into_iter().enumerate() {
            let at = format!("case {name:?}, step {step}: {op:?}");
            apply(&mut p, op, &at);
            check_invariants(&p, &at);
        }
    }
}

fn apply(p: &mut Placement, op: Op, at: &str) {
    match op {
        Op::Register {
            now,
            role,
            addr,
            capacity,
            instance,
            previous,
            expect,
        } => {
            let got = p.register(now, role, addr, capacity, instance, previous);
            assert_eq!(got, expect, "{at}");
        }
        Op::Heartbeat {
            now,
            id,
            instance,
            used,
            expect,
        } => assert_eq!(p.heartbeat(now, id, instance, used), expect, "{at}"),
        Op::Tick { now, dead } => {
            let got: Vec<ComponentId> = p
                .tick(now)
                .iter()
                .map(|event| match event {
                    Event::ComponentDead { id, .. } => *id,
                    other => panic!("{at}: tick produced {other:?}"),
                })
                .collect();
            assert_eq!(got, dead, "{at}");
        }
        Op::Events(expect) => assert_eq!(p.take_events(), expect, "{at}"),
        Op::Health(id, health) => assert_eq!(component(p, id, at).health, health, "{at}"),
        Op::LastHeard(id, ms) => assert_eq!(component(p, id, at).last_heard_ms, ms, "{at}"),
        Op::Used(id, used) => assert_eq!(component(p, id, at).used, used, "{at}"),
        Op::Restart { now } => {
            *p = Placement::restore(
                p.config().clone(),
                now,
                p.components().cloned().collect(),
                p.vnodes().cloned().collect(),
                p.vregions().map(|(k, a)| (*k, *a)).collect(),
            );
        }
        Op::RaiseIds(component, vnode) => p.raise_next_ids(component, vnode),
        Op::NextIds(component, vnode) => {
            let got = (p.next_component_id(), p.next_vnode_id());
            assert_eq!(got, (component, vnode), "{at}");
        }
        Op::CreateVnode(name, expect) => {
            let got = p.create_vnode(&name);
            assert_eq!(got.as_ref().map(|v| v.id), expect.as_ref().copied(), "{at}");
            if let Ok(created) = got {
                assert_eq!(created.name, name, "{at}");
                assert_eq!(created.next_space, 1, "{at}");
                assert_eq!(p.vnode_by_name(&name), Some(&created), "{at}");
                assert_eq!(p.vnode(created.id), Some(&created), "{at}");
            }
        }
        Op::DeleteVnode(name, expect) => {
            let got = p.delete_vnode(name).map(|(vnode, removed)| {
                assert_eq!(vnode.name, name, "{at}");
                (vnode.id, removed.into_iter().map(|(k, _)| k).collect())
            });
            assert_eq!(got, expect, "{at}");
            assert_eq!(p.vnode_by_name(name), None, "{at}");
        }
        Op::CreateSpace(vnode, expect) => {
            let got = p.create_space(vnode);
            assert_eq!(
                got.as_ref().map(|(asid, _)| *asid),
                expect.as_ref().copied(),
                "{at}"
            );
            if let Ok((asid, record)) = got {
                assert_eq!(asid_vnode(asid), vnode, "{at}");
                assert_eq!(record.next_space, asid_seq(asid) + 1, "{at}");
                assert_eq!(p.vnode(vnode), Some(&record), "{at}");
            }
        }
        Op::Assign(key, expect) => {
            let got = p
                .assign_vregion(key)
                .map(|(a, new)| (a.primary, a.backup.unwrap_or(0), new));
            assert_eq!(got, expect, "{at}");
        }
        Op::Replace(key, failed, expect) => {
            // Plan, then commit at once (as if the copy were instant).
            let got = p
                .plan_recovery(key, failed)
                .and_then(|r| p.commit_recovery(&r))
                .map(|a| (a.primary, a.backup.unwrap_or(0)));
            assert_eq!(got, expect, "{at}");
        }
        Op::VRegionsOn(id, expect) => {
            let got: Vec<VRegionKey> = p.vregions_on(id).into_iter().map(|(k, _)| k).collect();
            assert_eq!(got, expect, "{at}");
        }
        Op::Release(asid, expect) => {
            let got: Vec<VRegionKey> = p.release_space(asid).into_iter().map(|(k, _)| k).collect();
            assert_eq!(got, expect, "{at}");
        }
        Op::State(key, expect) => assert_eq!(p.vregion_state(key), expect, "{at}"),
        Op::Recoveries(busy, expect) => {
            let got: Vec<_> = p
                .recoveries(&busy.into_iter().collect())
                .into_iter()
                .map(|r| (r.key, r.survivor, r.failed, r.target))
                .collect();
            assert_eq!(got, expect, "{at}");
        }
        Op::Commit((key, survivor, failed, target), expect) => {
            let r = Recovery {
                key,
                survivor,
                failed,
                target,
            };
            let got = p
                .commit_recovery(&r)
                .map(|a| (a.primary, a.backup.unwrap_or(0)));
            assert_eq!(got, expect, "{at}");
        }
        Op::DeclareDead(now, id, expect) => {
            assert_eq!(p.declare_dead(now, id).is_some(), expect, "{at}")
        }
        Op::MarkBad(key, id, expect) => {
            let got = p
                .mark_bad_copy(key, id)
                .map(|a| (a.primary, a.backup.unwrap_or(0)));
            assert_eq!(got, expect, "{at}");
        }
        Op::SetReplicas(vnode, n, expect) => {
            assert_eq!(p.set_replicas(vnode, n).map(|_| ()), expect, "{at}")
        }
        Op::VRegions(expect) => {
            let got: Vec<VRegionKey> = p.vregions().map(|(k, _)| *k).collect();
            assert_eq!(got, expect, "{at}");
        }
    }
}

fn component<'a>(p: &'a Placement, id: ComponentId, at: &str) -> &'a Component {
    p.component(id)
        .unwrap_or_else(|| panic!("{at}: no component {id}"))
}

/// What must hold after every step of every case.
fn check_invariants(p: &Placement, at: &str) {
    for (key, assignment) in p.vregions() {
        assert_ne!(Some(assignment.primary), assignment.backup, "{at}: {key}");
        assert_eq!(p.vregion(*key), Some(*assignment), "{at}");
    }
    let ids: Vec<ComponentId> = p.components().map(|c| c.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{at}: {ids:?}");
    assert!(
        ids.iter().all(|id| *id >= 1 && *id < p.next_component_id()),
        "{at}"
    );
    let vnodes: Vec<VnodeId> = p.vnodes().map(|v| v.id).collect();
    assert!(vnodes.windows(2).all(|w| w[0] < w[1]), "{at}: {vnodes:?}");
    assert!(
        vnodes.iter().all(|id| *id >= 1 && *id < p.next_vnode_id()),
        "{at}"
    );
}
