//! Restarting the manager: what survives, the grace period, the id counters.

use super::*;
use Role::{Memory, Processor};

#[test]
fn restore() {
    run(vec![
        (
            "restored components are unknown, keep their load and get a grace period",
            vec![
                join(0, Memory, 1),
                join(0, Processor, 2),
                beat(10, 1, GIB),
                Op::Restart { now: 5000 },
                Op::Events(vec![]),
                Op::Health(1, Health::Unknown),
                Op::LastHeard(1, 5000),
                Op::Used(1, GIB),
                beat(5500, 1, GIB),
                Op::Health(1, Health::Alive),
                Op::Tick {
                    now: 6000,
                    dead: vec![],
                },
                Op::Health(2, Health::Unknown),
                Op::Tick {
                    now: 6001,
                    dead: vec![2],
                },
                Op::Events(vec![died(2, Processor, 1001)]),
            ],
        ),
        (
            "a processor or storage monitor dead before the restart gets another chance; a memory monitor does not",
            vec![
                join(0, Processor, 1),
                join(0, Memory, 2),
                Op::Tick {
                    now: 1001,
                    dead: vec![1, 2],
                },
                Op::Restart { now: 2000 },
                Op::Health(1, Health::Unknown),
                Op::Health(2, Health::Dead),
                beat(2001, 1, 0),
                Op::Health(1, Health::Alive),
                Op::Heartbeat {
                    now: 2001,
                    id: 2,
                    instance: inst(2),
                    used: 0,
                    expect: Err(PlacementError::ComponentDead(2)),
                },
            ],
        ),
        (
            "rejoining after a restart keeps the id",
            vec![
                join(0, Memory, 1),
                Op::Restart { now: 100 },
                rejoin(150, Memory, 1),
                Op::Health(1, Health::Alive),
                Op::Events(vec![registered(1, Memory, true)]),
            ],
        ),
        (
            "assignments, vnodes and id counters survive",
            vec![
                join(0, Memory, 1),
                join(0, Memory, 2),
                join(0, Memory, 3),
                vnode("a", Ok(1)),
                vnode("b", Ok(2)),
                Op::CreateSpace(2, Ok(Asid::new(2, 1))),
                Op::Assign(key(2, 1, 4), Ok((1, 2, true))),
                Op::Restart { now: 100 },
                Op::NextIds(4, 3),
                Op::Assign(key(2, 1, 4), Ok((1, 2, false))),
                Op::VRegions(vec![key(2, 1, 4)]),
                Op::CreateSpace(2, Ok(Asid::new(2, 2))),
                vnode("b", Err(PlacementError::VnodeExists("b".into()))),
                vnode("c", Ok(3)),
                join(100, Memory, 4),
            ],
        ),
        (
            "the recorded next ids keep a deleted vnode's id retired across a restart",
            vec![
                vnode("a", Ok(1)),
                vnode("b", Ok(2)),
                Op::DeleteVnode("b", Ok((2, vec![]))),
                Op::NextIds(1, 3),
                Op::Restart { now: 0 },
                Op::NextIds(1, 3),
                vnode("c", Ok(3)),
            ],
        ),
    ]);
}
