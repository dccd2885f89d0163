//! Table-driven tests. Each case is a name and a script of operations run on
//! a fresh [`Placement`]; every operation carries its expected outcome. The
//! tables live in the submodules, one per area; this file holds the script
//! language and its interpreter.

mod gmm;
mod membership;
mod migrate;
mod misc;
mod recovery;
mod restore;
mod vnodes;

use std::collections::BTreeMap;

use crate::*;

pub(crate) const DEAD_AFTER: u64 = 1_000;
pub(crate) const GIB: u64 = 1 << 30;
/// How the tables write a bad backup copy (no component has this id).
pub(crate) const BAD_COPY: ComponentId = u64::MAX;

/// A backup as the tables write it: 0 for none, [`BAD_COPY`] for a bad one.
fn code(b: Option<Backup<ComponentId>>) -> ComponentId {
    match b {
        None => 0,
        Some(Backup::On(id)) => id,
        Some(Backup::Bad) => BAD_COPY,
    }
}

/// A failed copy as the tables write it.
fn failed(id: ComponentId) -> Backup<ComponentId> {
    if id == BAD_COPY {
        Backup::Bad
    } else {
        Backup::On(id)
    }
}

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
    /// `set_drained(id, drained)`.
    Drain(ComponentId, bool, Result<(), PlacementError>),
    /// `drain_moves(busy, 64 MiB)` plans exactly these (key, from, source, to).
    DrainMoves(
        Vec<VRegionKey>,
        Vec<(VRegionKey, ComponentId, ComponentId, ComponentId)>,
    ),
    /// `rebalance_moves(vregion_bytes, threshold, max)` plans exactly these.
    Rebalance(
        u64,
        f64,
        usize,
        Vec<(VRegionKey, ComponentId, ComponentId, ComponentId)>,
    ),
    /// `commit_move` of (key, from, source, to): new (primary, backup).
    CommitMove(
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
        asid: Asid::new(vnode, seq),
        index: VRegionIdx(index),
    }
}

/// vNode "v" (id 1) with one address space (1.1).
pub(crate) fn one_space() -> Vec<Op> {
    vec![vnode("v", Ok(1)), Op::CreateSpace(1, Ok(Asid::new(1, 1)))]
}

pub(crate) fn run(cases: Vec<Case>) {
    for (name, ops) in cases {
        let mut p = Placement::new(PlacementConfig {
            dead_after_ms: DEAD_AFTER,
            isolation_guard: false,
        });
        let mut store = Store::of(&p);
        for (step, op) in ops.into_iter().enumerate() {
            let at = format!("case {name:?}, step {step}: {op:?}");
            apply(&mut p, op, &at);
            check_invariants(&p, &at);
            store.save(&mut p);
            assert_eq!(store, Store::of(&p), "{at}: a change was not marked dirty");
        }
    }
}

/// What a manager's store would hold if it wrote every dirty record after
/// each step: it must equal the state's durable part at every step.
#[derive(Debug, PartialEq, Eq)]
struct Store {
    /// (role, address, capacity, instance, a memory monitor declared dead):
    /// heartbeats' load and times are not durable, and only a memory
    /// monitor's death outlives a restart.
    components: BTreeMap<ComponentId, (Role, String, u64, u64, bool)>,
    vnodes: BTreeMap<VnodeId, Vnode>,
    vregions: BTreeMap<VRegionKey, VRegionAssignment>,
    owners: BTreeMap<Asid, u64>,
    leases: BTreeMap<Asid, u64>,
    next_ids: (ComponentId, VnodeId),
}

impl Store {
    fn of(p: &Placement) -> Store {
        let r = p.records();
        Store {
            components: r.components.iter().map(|c| (c.id, durable(c))).collect(),
            vnodes: r.vnodes.into_iter().map(|v| (v.id, v)).collect(),
            vregions: r.vregions.into_iter().collect(),
            owners: r.owners.into_iter().collect(),
            leases: r.leases.into_iter().collect(),
            next_ids: (r.next_component, r.next_vnode),
        }
    }

    fn save(&mut self, p: &mut Placement) {
        for change in p.take_changes() {
            match change {
                Stored::Component(c) => put(&mut self.components, c.id, Some(durable(&c))),
                Stored::Vnode(v) => put(&mut self.vnodes, v.id, Some(v)),
                Stored::VRegion(k, a) => put(&mut self.vregions, k, Some(a)),
                Stored::Owner(a, o) => put(&mut self.owners, a, Some(o)),
                Stored::Lease(a, b) => put(&mut self.leases, a, Some(b)),
                Stored::NextIds { component, vnode } => self.next_ids = (component, vnode),
                Stored::Gone(Record::Component(id)) => put(&mut self.components, id, None),
                Stored::Gone(Record::Vnode(id)) => put(&mut self.vnodes, id, None),
                Stored::Gone(Record::VRegion(k)) => put(&mut self.vregions, k, None),
                Stored::Gone(Record::Owner(a)) => put(&mut self.owners, a, None),
                Stored::Gone(Record::Lease(a)) => put(&mut self.leases, a, None),
                Stored::Gone(Record::NextIds) => panic!("the id counters never go"),
            }
        }
    }
}

fn durable(c: &Component) -> (Role, String, u64, u64, bool) {
    let dead = c.health == Health::Dead && c.role == Role::Memory;
    (c.role, c.addr.clone(), c.capacity, c.instance, dead)
}

fn put<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
    match v {
        Some(v) => m.insert(k, v),
        None => m.remove(&k),
    };
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
            *p = Placement::restore(p.config().clone(), now, p.records());
        }
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
            let got = p.create_space(vnode, None);
            assert_eq!(
                got.as_ref().map(|(asid, _)| *asid),
                expect.as_ref().copied(),
                "{at}"
            );
            if let Ok((asid, record)) = got {
                assert_eq!(asid.vnode(), vnode, "{at}");
                assert_eq!(record.next_space, asid.seq() + 1, "{at}");
                assert_eq!(p.vnode(vnode), Some(&record), "{at}");
            }
        }
        Op::Assign(key, expect) => {
            let got = p
                .assign_vregion(key)
                .map(|(a, new)| (a.primary, code(a.backup), new));
            assert_eq!(got, expect, "{at}");
        }
        Op::Replace(key, gone, expect) => {
            // Plan, then commit at once (as if the copy were instant).
            let got = p
                .plan_recovery(key, failed(gone))
                .and_then(|r| p.commit_recovery(&r))
                .map(|a| (a.primary, code(a.backup)));
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
                .map(|r| (r.key, r.survivor, code(Some(r.failed)), r.target))
                .collect();
            assert_eq!(got, expect, "{at}");
        }
        Op::Commit((key, survivor, gone, target), expect) => {
            let r = Recovery {
                key,
                survivor,
                failed: failed(gone),
                target,
            };
            let got = p.commit_recovery(&r).map(|a| (a.primary, code(a.backup)));
            assert_eq!(got, expect, "{at}");
        }
        Op::Drain(id, drained, expect) => {
            assert_eq!(p.set_drained(id, drained, None), expect, "{at}");
        }
        Op::DrainMoves(busy, expect) => {
            let got: Vec<_> = p
                .drain_moves(&busy.into_iter().collect(), 64 << 20)
                .into_iter()
                .map(|m| (m.key, m.from, m.source, m.to))
                .collect();
            assert_eq!(got, expect, "{at}");
        }
        Op::Rebalance(bytes, threshold, max, expect) => {
            let got: Vec<_> = p
                .rebalance_moves(bytes, threshold, max)
                .into_iter()
                .map(|m| (m.key, m.from, m.source, m.to))
                .collect();
            assert_eq!(got, expect, "{at}");
        }
        Op::CommitMove((key, from, source, to), expect) => {
            let m = Move {
                key,
                from,
                source,
                to,
            };
            let got = p.commit_move(&m).map(|a| (a.primary, code(a.backup)));
            assert_eq!(got, expect, "{at}");
        }
        Op::DeclareDead(now, id, expect) => {
            assert_eq!(p.declare_dead(now, id).is_some(), expect, "{at}")
        }
        Op::MarkBad(key, id, expect) => {
            let got = p
                .mark_bad_copy(key, id)
                .map(|a| (a.primary, code(a.backup)));
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
        assert_ne!(
            Some(Backup::On(assignment.primary)),
            assignment.backup,
            "{at}: {key}"
        );
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
