//! Recovery: failover of a dead primary to its backup, vRegion states,
//! planning and committing re-replication, lost vRegions, one-copy vNodes.

use super::*;
use Role::Memory;
use VRegionState::*;

fn with_space(ops: Vec<Op>) -> Vec<Op> {
    [one_space(), ops].concat()
}

#[test]
fn recovery() {
    use PlacementError::*;
    let k = key(1, 1, 0);
    run(vec![
        (
            "a dead primary fails over to its backup, then gets a new copy",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k, Ok((1, 2, true))),
                Op::State(k, Some(Healthy)),
                Op::Recoveries(vec![], vec![]),
                Op::Events(vec![
                    registered(1, Memory, false),
                    registered(2, Memory, false),
                    registered(3, Memory, false),
                ]),
                beat(600, 2, 0),
                beat(600, 3, 0),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
                Op::Events(vec![
                    died(1, Memory, 1001),
                    Event::Failover {
                        key: k,
                        dead: 1,
                        primary: 2,
                    },
                ]),
                Op::State(k, Some(Degraded)),
                Op::Assign(k, Ok((2, 1, false))),
                Op::Recoveries(vec![], vec![(k, 2, 1, 3)]),
                Op::Recoveries(vec![k], vec![]),
                Op::Commit((k, 2, 1, 3), Ok((2, 3))),
                Op::State(k, Some(Healthy)),
                Op::Recoveries(vec![], vec![]),
                // The same copy committed twice is outdated the second time.
                Op::Commit((k, 2, 1, 3), Err(RecoveryOutdated { key: k })),
            ]),
        ),
        (
            "a dead backup: the primary stays, no failover event",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k, Ok((1, 2, true))),
                Op::Events(vec![
                    registered(1, Memory, false),
                    registered(2, Memory, false),
                    registered(3, Memory, false),
                ]),
                Op::DeclareDead(10, 2, true),
                Op::DeclareDead(11, 2, false),
                Op::Events(vec![died(2, Memory, 10)]),
                Op::Assign(k, Ok((1, 2, false))),
                Op::Recoveries(vec![], vec![(k, 1, 2, 3)]),
            ]),
        ),
        (
            "both copies dead: lost, nothing to recover; a dead target is refused",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k, Ok((1, 2, true))),
                Op::DeclareDead(10, 3, true),
                Op::DeclareDead(10, 1, true),
                Op::Commit((k, 2, 1, 3), Err(RecoveryOutdated { key: k })),
                Op::DeclareDead(20, 2, true),
                Op::State(k, Some(Lost)),
                Op::Recoveries(vec![], vec![]),
                Op::Events(vec![
                    registered(1, Memory, false),
                    registered(2, Memory, false),
                    registered(3, Memory, false),
                    died(3, Memory, 10),
                    died(1, Memory, 10),
                    Event::Failover {
                        key: k,
                        dead: 1,
                        primary: 2,
                    },
                    died(2, Memory, 20),
                    Event::VRegionLost { key: k, dead: 2 },
                ]),
            ]),
        ),
        (
            "no spare monitor: the vRegion stays degraded until one joins",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                Op::Assign(k, Ok((1, 2, true))),
                Op::DeclareDead(10, 2, true),
                Op::State(k, Some(Degraded)),
                Op::Recoveries(vec![], vec![]),
                join(20, Memory, 3),
                Op::Recoveries(vec![], vec![(k, 1, 2, 3)]),
                Op::Release(Asid::new(1, 1), vec![k]),
                Op::Commit((k, 1, 2, 3), Err(RecoveryOutdated { key: k })),
                Op::State(k, None),
            ]),
        ),
        (
            "a copy that missed a write is never a survivor: it is rebuilt from the other",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k, Ok((1, 2, true))),
                Op::MarkBad(k, 9, None),
                Op::MarkBad(k, 1, Some((2, BAD_COPY))),
                Op::State(k, Some(Degraded)),
                Op::Recoveries(vec![], vec![(k, 2, BAD_COPY, 1)]),
                Op::Commit((k, 2, BAD_COPY, 1), Ok((2, 1))),
                Op::State(k, Some(Healthy)),
                // The good copy dies while the other is marked bad: lost,
                // never rebuilt from the bad one.
                Op::MarkBad(k, 1, Some((2, BAD_COPY))),
                Op::DeclareDead(10, 2, true),
                Op::State(k, Some(Lost)),
                Op::Recoveries(vec![], vec![]),
                Op::MarkBad(k, BAD_COPY, None),
            ]),
        ),
        (
            "a dead component stays dead across a restart; the others are unknown",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k, Ok((1, 2, true))),
                Op::DeclareDead(10, 1, true),
                Op::Restart { now: 20 },
                Op::Health(1, Health::Dead),
                Op::Health(2, Health::Unknown),
                Op::State(k, Some(Degraded)),
                // Only monitors heard from since the restart take copies.
                Op::Recoveries(vec![], vec![]),
                beat(30, 3, 0),
                Op::Recoveries(vec![], vec![(k, 2, 1, 3)]),
            ]),
        ),
        (
            "a one-copy vNode: one monitor suffices, and its death loses the vRegion",
            with_space(vec![
                Op::SetReplicas(1, 3, Err(InvalidReplicas(3))),
                Op::SetReplicas(1, 1, Ok(())),
                join(0, Memory, 1),
                Op::Assign(k, Ok((1, 0, true))),
                Op::State(k, Some(Healthy)),
                Op::DeclareDead(10, 1, true),
                Op::State(k, Some(Lost)),
                Op::Recoveries(vec![], vec![]),
            ]),
        ),
    ]);
}
