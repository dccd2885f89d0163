//! vRegion placement: load ranking, distinct replicas, health filtering,
//! idempotence, release and replica replacement.

use super::*;
use Role::{Memory, Processor, Storage};

/// Tops the given script up with vNode 1 and its space 1.1 first.
fn with_space(ops: Vec<Op>) -> Vec<Op> {
    [one_space(), ops].concat()
}

#[test]
fn gmm() {
    use PlacementError::*;
    run(vec![
        (
            "least loaded by used/capacity, two distinct monitors",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                join_cap(0, Memory, 4, GIB),
                beat(1, 1, 3 * GIB),     // 0.75
                beat(1, 2, GIB),         // 0.25
                beat(1, 3, 2 * GIB),     // 0.5
                beat(1, 4, 2 * GIB / 5), // 0.4
                Op::Assign(key(1, 1, 0), Ok((2, 4, true))),
            ]),
        ),
        (
            "equal load: fewest replicas first, then lowest id",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(key(1, 1, 0), Ok((1, 2, true))),
                Op::Assign(key(1, 1, 1), Ok((3, 1, true))),
                Op::Assign(key(1, 1, 2), Ok((2, 3, true))),
                Op::Assign(key(1, 1, 3), Ok((1, 2, true))),
                Op::VRegionsOn(3, vec![key(1, 1, 1), key(1, 1, 2)]),
            ]),
        ),
        (
            "an existing assignment is returned unchanged",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(key(1, 1, 7), Ok((1, 2, true))),
                beat(1, 1, 4 * GIB),
                Op::Assign(key(1, 1, 7), Ok((1, 2, false))),
                Op::VRegions(vec![key(1, 1, 7)]),
            ]),
        ),
        (
            "dead monitors are never chosen",
            with_space(vec![
                join(0, Memory, 1),
                join(500, Memory, 2),
                join(500, Memory, 3),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
                Op::Assign(key(1, 1, 0), Ok((2, 3, true))),
                Op::Tick {
                    now: 1501,
                    dead: vec![2, 3],
                },
                Op::Assign(
                    key(1, 1, 1),
                    Err(NotEnoughMemoryMonitors {
                        alive: 0,
                        needed: 2,
                    }),
                ),
                Op::Assign(key(1, 1, 0), Ok((2, 3, false))),
            ]),
        ),
        (
            "unknown (restored, not yet heard from) monitors are never chosen",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Restart { now: 100 },
                beat(110, 3, 0),
                Op::Assign(
                    key(1, 1, 0),
                    Err(NotEnoughMemoryMonitors {
                        alive: 1,
                        needed: 2,
                    }),
                ),
                rejoin(120, Memory, 2),
                Op::Assign(key(1, 1, 0), Ok((2, 3, true))),
            ]),
        ),
        (
            "only memory monitors hold vregions",
            with_space(vec![
                join(0, Processor, 1),
                join(0, Storage, 2),
                join(0, Memory, 3),
                Op::Assign(
                    key(1, 1, 0),
                    Err(NotEnoughMemoryMonitors {
                        alive: 1,
                        needed: 2,
                    }),
                ),
                join(0, Memory, 4),
                beat(1, 3, GIB),
                Op::Assign(key(1, 1, 0), Ok((4, 3, true))),
            ]),
        ),
        (
            "no memory monitors at all",
            with_space(vec![Op::Assign(
                key(1, 1, 0),
                Err(NotEnoughMemoryMonitors {
                    alive: 0,
                    needed: 2,
                }),
            )]),
        ),
        (
            "the vnode of the address space must exist",
            vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                Op::Assign(key(7, 1, 0), Err(UnknownVnodeId(7))),
                Op::VRegions(vec![]),
            ],
        ),
        (
            "release_space removes exactly that space's vregions",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                Op::CreateSpace(1, Ok(Asid::new(1, 2))),
                Op::Assign(key(1, 1, 5), Ok((1, 2, true))),
                Op::Assign(key(1, 2, 0), Ok((1, 2, true))),
                Op::Assign(key(1, 1, 0), Ok((1, 2, true))),
                Op::Assign(key(1, 1, u64::MAX), Ok((1, 2, true))),
                Op::Release(
                    Asid::new(1, 1),
                    vec![key(1, 1, 0), key(1, 1, 5), key(1, 1, u64::MAX)],
                ),
                Op::VRegions(vec![key(1, 2, 0)]),
                Op::Release(Asid::new(1, 1), vec![]),
            ]),
        ),
        (
            "replace_replica promotes the survivor and picks a third monitor",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                join(0, Memory, 4),
                beat(1, 4, GIB),
                Op::Assign(key(1, 1, 0), Ok((1, 2, true))),
                Op::Replace(key(1, 1, 0), 1, Ok((2, 3))),
                Op::Replace(key(1, 1, 0), 3, Ok((2, 1))),
                Op::Replace(
                    key(1, 1, 0),
                    4,
                    Err(NotAReplica {
                        key: key(1, 1, 0),
                        id: 4,
                    }),
                ),
                Op::Replace(key(1, 1, 9), 1, Err(UnknownVRegion(key(1, 1, 9)))),
            ]),
        ),
        (
            "replace_replica needs a live survivor and a spare",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(500, Memory, 3),
                Op::Assign(key(1, 1, 0), Ok((1, 2, true))),
                beat(600, 2, 0),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
                Op::Replace(
                    key(1, 1, 0),
                    2,
                    Err(NoSurvivingReplica {
                        key: key(1, 1, 0),
                        survivor: 1,
                    }),
                ),
                Op::Tick {
                    now: 1501,
                    dead: vec![3],
                },
                Op::Replace(key(1, 1, 0), 1, Err(NoSpareMemoryMonitor(key(1, 1, 0)))),
                // 1 died holding the primary: its backup took over.
                Op::Assign(key(1, 1, 0), Ok((2, 1, false))),
            ]),
        ),
    ]);
}

#[test]
fn vregions_only_for_live_spaces() {
    use PlacementError::*;
    run(vec![(
        "a space never created, or released, gets no vRegion",
        with_space(vec![
            join(0, Memory, 1),
            join(0, Memory, 2),
            Op::Assign(key(1, 2, 0), Err(UnknownSpace(Asid::new(1, 2)))),
            Op::Assign(key(1, 1, 0), Ok((1, 2, true))),
            Op::Release(Asid::new(1, 1), vec![key(1, 1, 0)]),
            Op::Assign(key(1, 1, 1), Err(UnknownSpace(Asid::new(1, 1)))),
        ]),
    )]);
}

#[test]
fn live_spaces_and_their_vregions_are_bounded() {
    let mut p = Placement::new(PlacementConfig {
        dead_after_ms: DEAD_AFTER,
        isolation_guard: false,
    });
    for id in [1, 2] {
        p.register(0, Memory, format!("m{id}"), 4 * GIB, id, None)
            .unwrap();
    }
    p.create_vnode("v").unwrap();
    let (asid, _) = p.create_space(1, None).unwrap();
    for i in 0..crate::MAX_VREGIONS_PER_SPACE as u64 {
        p.assign_vregion(VRegionKey {
            asid,
            index: VRegionIdx(i),
        })
        .unwrap();
    }
    let over = VRegionKey {
        asid,
        index: VRegionIdx(1 << 40),
    };
    assert_eq!(
        p.assign_vregion(over),
        Err(PlacementError::TooManyVRegions {
            asid,
            max: crate::MAX_VREGIONS_PER_SPACE
        })
    );
    for _ in 1..crate::MAX_SPACES_PER_VNODE {
        p.create_space(1, Some(7)).unwrap();
    }
    assert_eq!(
        p.create_space(1, Some(7)),
        Err(PlacementError::TooManySpaces {
            vnode: 1,
            max: crate::MAX_SPACES_PER_VNODE
        })
    );
    // A released space makes room again.
    p.release_space(asid);
    assert!(p.create_space(1, None).is_ok());
}
