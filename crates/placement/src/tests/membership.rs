//! Registration, rejoining, heartbeats and failure detection.

use super::*;
use Role::{Memory, Processor, Storage};

#[test]
fn membership() {
    run(vec![
        (
            "fresh ids start at 1 and count up across roles",
            vec![
                join(0, Memory, 1),
                join(0, Processor, 2),
                join(0, Storage, 3),
                Op::Health(2, Health::Alive),
                Op::NextIds(4, 1),
                Op::Events(vec![
                    registered(1, Memory, false),
                    registered(2, Processor, false),
                    registered(3, Storage, false),
                ]),
                Op::Events(vec![]),
            ],
        ),
        (
            "rejoin with a known id of the same role reuses it and updates it",
            vec![
                join(0, Memory, 1),
                beat(5, 1, GIB),
                Op::Register {
                    now: 10,
                    role: Memory,
                    addr: "elsewhere:7001".into(),
                    capacity: 8 * GIB,
                    instance: 77,
                    previous: Some(1),
                    expect: Ok(1),
                },
                Op::Used(1, 0),
                Op::LastHeard(1, 10),
                Op::Events(vec![
                    registered(1, Memory, false),
                    Event::ComponentRegistered {
                        id: 1,
                        role: Memory,
                        addr: "elsewhere:7001".into(),
                        rejoined: true,
                    },
                ]),
                Op::Heartbeat {
                    now: 20,
                    id: 1,
                    instance: inst(1),
                    used: 0,
                    expect: Err(PlacementError::StaleInstance {
                        id: 1,
                        instance: inst(1),
                        registered: 77,
                    }),
                },
                Op::Heartbeat {
                    now: 20,
                    id: 1,
                    instance: 77,
                    used: GIB,
                    expect: Ok(()),
                },
                Op::NextIds(2, 1),
            ],
        ),
        (
            "rejoin with the same instance keeps the reported load",
            vec![
                join(0, Memory, 1),
                beat(5, 1, GIB),
                rejoin(10, Memory, 1),
                Op::Used(1, GIB),
            ],
        ),
        (
            "previous naming an unknown id or another role gets a fresh id",
            vec![
                join(0, Memory, 1),
                Op::Register {
                    now: 0,
                    role: Memory,
                    addr: "a:1".into(),
                    capacity: GIB,
                    instance: 1,
                    previous: Some(9),
                    expect: Ok(2),
                },
                Op::Register {
                    now: 0,
                    role: Processor,
                    addr: "b:1".into(),
                    capacity: GIB,
                    instance: 1,
                    previous: Some(1),
                    expect: Ok(3),
                },
                Op::Health(1, Health::Alive),
                Op::NextIds(4, 1),
            ],
        ),
        (
            "an empty address is refused without using an id or queueing an event",
            vec![
                Op::Register {
                    now: 0,
                    role: Storage,
                    addr: " ".into(),
                    capacity: 0,
                    instance: 1,
                    previous: None,
                    expect: Err(PlacementError::InvalidAddress(" ".into())),
                },
                Op::Events(vec![]),
                join(0, Storage, 1),
            ],
        ),
        (
            "heartbeat from an unknown id",
            vec![
                join(0, Memory, 1),
                Op::Heartbeat {
                    now: 1,
                    id: 5,
                    instance: inst(5),
                    used: 0,
                    expect: Err(PlacementError::UnknownComponent(5)),
                },
            ],
        ),
        (
            "heartbeat from a stale instance changes nothing",
            vec![
                join(0, Memory, 1),
                Op::Heartbeat {
                    now: 900,
                    id: 1,
                    instance: 999,
                    used: 3,
                    expect: Err(PlacementError::StaleInstance {
                        id: 1,
                        instance: 999,
                        registered: inst(1),
                    }),
                },
                Op::Used(1, 0),
                Op::LastHeard(1, 0),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
            ],
        ),
        (
            "a dead storage monitor's heartbeat is refused until it re-registers under its id",
            vec![
                join(0, Storage, 1),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
                Op::Health(1, Health::Dead),
                Op::Heartbeat {
                    now: 1002,
                    id: 1,
                    instance: inst(1),
                    used: 0,
                    expect: Err(PlacementError::ComponentDead(1)),
                },
                Op::Health(1, Health::Dead),
                rejoin(1003, Storage, 1),
                Op::Health(1, Health::Alive),
                beat(1004, 1, 0),
                Op::Tick {
                    now: 2004,
                    dead: vec![],
                },
                Op::Events(vec![
                    registered(1, Storage, false),
                    died(1, Storage, 1001),
                    registered(1, Storage, true),
                ]),
            ],
        ),
        (
            "a memory monitor declared dead comes back as a new component",
            vec![
                join(0, Memory, 1),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
                Op::Register {
                    now: 1003,
                    role: Memory,
                    addr: addr(Memory, 1),
                    capacity: 4 * GIB,
                    instance: inst(1),
                    previous: Some(1),
                    expect: Ok(2),
                },
                Op::Health(1, Health::Dead),
                Op::Health(2, Health::Alive),
                Op::Events(vec![
                    registered(1, Memory, false),
                    died(1, Memory, 1001),
                    Event::StaleIdentity {
                        old: 1,
                        new: 2,
                        role: Memory,
                        addr: addr(Memory, 1),
                    },
                    Event::ComponentRegistered {
                        id: 2,
                        role: Memory,
                        addr: addr(Memory, 1),
                        rejoined: false,
                    },
                ]),
            ],
        ),
        (
            "tick kills exactly when silent > dead_after_ms, and reports each death once",
            vec![
                join(0, Memory, 1),
                join(500, Processor, 2),
                Op::Tick {
                    now: 1000,
                    dead: vec![],
                },
                Op::Health(1, Health::Alive),
                Op::Tick {
                    now: 1001,
                    dead: vec![1],
                },
                Op::Tick {
                    now: 1500,
                    dead: vec![],
                },
                Op::Tick {
                    now: 1501,
                    dead: vec![2],
                },
                Op::Tick {
                    now: 9000,
                    dead: vec![],
                },
                Op::Events(vec![
                    registered(1, Memory, false),
                    registered(2, Processor, false),
                    died(1, Memory, 1001),
                    died(2, Processor, 1001),
                ]),
            ],
        ),
        (
            "heartbeats postpone death; an out-of-order old heartbeat does not rewind",
            vec![
                join(0, Storage, 1),
                beat(900, 1, 0),
                beat(800, 1, 0),
                Op::LastHeard(1, 900),
                Op::Tick {
                    now: 1900,
                    dead: vec![],
                },
                Op::Tick {
                    now: 1901,
                    dead: vec![1],
                },
            ],
        ),
        (
            "a clock behind last_heard_ms kills nobody",
            vec![
                join(5000, Memory, 1),
                Op::Tick {
                    now: 0,
                    dead: vec![],
                },
            ],
        ),
    ]);
}

/// Ticks every 50 ms from `from` to `to` (as the manager's detector does),
/// with `beat` called first at each step; returns the deaths.
fn run_for(
    p: &mut Placement,
    from: u64,
    to: u64,
    mut beat: impl FnMut(&mut Placement, u64),
) -> Vec<ComponentId> {
    let mut dead = Vec::new();
    let mut t = from;
    while t < to {
        t += 50;
        beat(p, t);
        for e in p.tick(t) {
            if let Event::ComponentDead { id, .. } = e {
                dead.push(id);
            }
        }
    }
    dead
}

/// With the isolation guard (the manager daemon's setting): no component
/// heard for half the dead interval is the manager cut off, and a gap
/// between ticks that long is the manager paused; either way nobody is
/// declared dead for it, and only the silence past the normal is forgiven,
/// so a component that really died is still declared.
#[test]
fn a_manager_that_hears_no_one_takes_itself_for_cut_off() {
    let mut p = Placement::new(PlacementConfig {
        dead_after_ms: DEAD_AFTER,
        isolation_guard: true,
    });
    let id = |p: &mut Placement, role, n: u64| {
        p.register(0, role, format!("h{n}:1"), GIB, n, None)
            .unwrap()
    };
    let (m1, m2, pr) = (
        id(&mut p, Memory, 1),
        id(&mut p, Memory, 2),
        id(&mut p, Processor, 3),
    );
    // Beating every 500 ms at staggered phases: nobody dies.
    let beats = |p: &mut Placement, t: u64| {
        for (c, phase) in [(m1, 0), (m2, 150), (pr, 300)] {
            if t % 500 == phase {
                p.heartbeat(t, c, c, 0).unwrap();
            }
        }
    };
    assert!(run_for(&mut p, 0, 3_000, beats).is_empty());
    p.take_events();
    // Cut off for 6 s: nobody dies, one Isolated event.
    assert!(run_for(&mut p, 3_000, 9_000, |_, _| {}).is_empty());
    assert_eq!(p.take_events(), vec![Event::Isolated { components: 3 }]);
    // Back: all beat again, nobody dies.
    assert!(run_for(&mut p, 9_000, 12_000, beats).is_empty());
    assert!(matches!(p.take_events()[..], [Event::Reconnected { .. }]));
    // The manager paused 6 s (no ticks); heartbeats queued meanwhile are
    // handled before its next tick: nobody dies.
    p.heartbeat(18_010, m1, m1, 0).unwrap();
    assert!(run_for(&mut p, 18_000, 21_000, beats).is_empty());
    // m2 dies for real while the others beat with a late one now and then
    // (gaps a little over half the interval): it is still declared dead.
    let late = |p: &mut Placement, t: u64| {
        for (c, phase) in [(m1, 0), (pr, 0)] {
            if t % 550 == phase {
                p.heartbeat(t, c, c, 0).unwrap();
            }
        }
    };
    let dead = run_for(&mut p, 21_000, 30_000, late);
    assert_eq!(dead, vec![m2]);
}
