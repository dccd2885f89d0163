//! Moving copies off live memory monitors: drains (no new copies, every
//! copy planned away from the other copy, committed like a recovery) and
//! rebalancing (copies even out by capacity, within a threshold).

use super::*;
use Role::Memory;

fn with_space(ops: Vec<Op>) -> Vec<Op> {
    [one_space(), ops].concat()
}

#[test]
fn drains() {
    use PlacementError::*;
    let (k0, k1) = (key(1, 1, 0), key(1, 1, 1));
    run(vec![
        (
            "a drained monitor gets no new copies; its copies move, sourced from the other copy",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k0, Ok((1, 2, true))),
                Op::Drain(1, true, Ok(())),
                // 1 is the emptiest after 3, but drained.
                Op::Assign(k1, Ok((3, 2, true))),
                Op::DrainMoves(vec![], vec![(k0, 1, 2, 3)]),
                Op::DrainMoves(vec![k0], vec![]),
                // Until the commit both copies on 1 and 2 stay: two live copies.
                Op::State(k0, Some(VRegionState::Healthy)),
                Op::CommitMove((k0, 1, 2, 3), Ok((2, 3))),
                Op::State(k0, Some(VRegionState::Healthy)),
                Op::DrainMoves(vec![], vec![]),
                Op::VRegionsOn(1, vec![]),
                // Committed twice: outdated the second time.
                Op::CommitMove((k0, 1, 2, 3), Err(RecoveryOutdated { key: k0 })),
                Op::Drain(1, false, Ok(())),
                Op::Drain(99, true, Err(UnknownComponent(99))),
            ]),
        ),
        (
            "a backup drained: the primary stays primary",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Assign(k0, Ok((1, 2, true))),
                Op::Drain(2, true, Ok(())),
                Op::DrainMoves(vec![], vec![(k0, 2, 1, 3)]),
                Op::CommitMove((k0, 2, 1, 3), Ok((1, 3))),
            ]),
        ),
        (
            "nowhere to go: a drain with no spare monitor plans nothing",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                Op::Assign(k0, Ok((1, 2, true))),
                Op::Drain(2, true, Ok(())),
                Op::DrainMoves(vec![], vec![]),
            ]),
        ),
        (
            "a move is refused once its target or source died, or a copy changed",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                join(0, Memory, 4),
                Op::Assign(k0, Ok((1, 2, true))),
                Op::Drain(1, true, Ok(())),
                Op::DrainMoves(vec![], vec![(k0, 1, 2, 3)]),
                Op::DeclareDead(10, 3, true),
                Op::CommitMove((k0, 1, 2, 3), Err(RecoveryOutdated { key: k0 })),
                // Planned again onto the next monitor.
                Op::DrainMoves(vec![], vec![(k0, 1, 2, 4)]),
                Op::DeclareDead(11, 2, true),
                Op::CommitMove((k0, 1, 2, 4), Err(RecoveryOutdated { key: k0 })),
            ]),
        ),
        (
            "a vRegion with one copy moves from the drained monitor itself",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                Op::SetReplicas(1, 1, Ok(())),
                Op::Assign(k0, Ok((1, 0, true))),
                Op::Drain(1, true, Ok(())),
                Op::DrainMoves(vec![], vec![(k0, 1, 1, 2)]),
                Op::CommitMove((k0, 1, 1, 2), Ok((2, 0))),
            ]),
        ),
        (
            "a drain's copies spread over the spare monitors: each target counts the copies planned onto it",
            with_space(vec![
                join(0, Memory, 1),
                Op::SetReplicas(1, 1, Ok(())),
                Op::Assign(k0, Ok((1, 0, true))),
                Op::Assign(k1, Ok((1, 0, true))),
                Op::Assign(key(1, 1, 2), Ok((1, 0, true))),
                Op::Assign(key(1, 1, 3), Ok((1, 0, true))),
                join(0, Memory, 2),
                join(0, Memory, 3),
                Op::Drain(1, true, Ok(())),
                Op::DrainMoves(
                    vec![],
                    vec![
                        (k0, 1, 1, 2),
                        (k1, 1, 1, 3),
                        (key(1, 1, 2), 1, 1, 2),
                        (key(1, 1, 3), 1, 1, 3),
                    ],
                ),
            ]),
        ),
        (
            "only memory monitors are drained",
            with_space(vec![
                join(0, Role::Processor, 1),
                Op::Drain(1, true, Err(NotMemory(1))),
            ]),
        ),
    ]);
}

#[test]
fn rebalancing() {
    let k = |i| key(1, 1, i);
    let assign = |i, p, b| Op::Assign(k(i), Ok((p, b, true)));
    run(vec![
        (
            "a monitor that joins late takes copies until use is even within the threshold",
            with_space(vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                assign(0, 1, 2),
                assign(1, 1, 2),
                assign(2, 1, 2),
                assign(3, 1, 2),
                join(0, Memory, 3),
                // 4 copies each on 1 and 2, none on 3 (4 GiB each, 1 GiB a
                // copy): from the fullest (ties: the highest id) to 3, the
                // data from the copy that stays, until 3, 3 and 2 copies
                // (a gap of a quarter, within the threshold).
                Op::Rebalance(GIB, 0.3, 10, vec![(k(0), 2, 1, 3), (k(1), 1, 2, 3)]),
                Op::Rebalance(GIB, 0.3, 1, vec![(k(0), 2, 1, 3)]),
                // Even within a wide threshold: nothing to do.
                Op::Rebalance(GIB, 1.0, 10, vec![]),
            ]),
        ),
        (
            "nothing to even out with one monitor",
            with_space(vec![
                join(0, Memory, 1),
                Op::Rebalance(GIB, 0.0, 10, vec![]),
            ]),
        ),
    ]);
}
