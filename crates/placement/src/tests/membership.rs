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

/// With the isolation guard (the manager daemon's setting), no component
/// heard for half the dead interval is the manager cut off: none is
/// declared dead, and when one is heard again the silence is forgiven all.
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
    p.take_events();
    // Heard at staggered times, then nothing: isolated before the first
    // would be due, and nobody dies however long it lasts.
    p.heartbeat(10, m1, 1, 0).unwrap();
    p.heartbeat(20, m2, 2, 0).unwrap();
    assert!(p.tick(DEAD_AFTER / 2).is_empty());
    assert_eq!(
        p.tick(20 + DEAD_AFTER / 2 + 1),
        vec![Event::Isolated { components: 3 }]
    );
    assert!(p.tick(20 + 5 * DEAD_AFTER).is_empty());
    for c in [m1, m2, pr] {
        assert_eq!(p.component(c).unwrap().health, Health::Alive);
    }
    // One is heard again: the 6-interval gap is forgiven all.
    let back = 20 + 6 * DEAD_AFTER;
    p.heartbeat(back, m1, 1, 0).unwrap();
    assert!(p.take_events().contains(&Event::Reconnected {
        after_ms: 6 * DEAD_AFTER
    }));
    assert_eq!(p.component(m2).unwrap().last_heard_ms, back);
    assert_eq!(p.component(pr).unwrap().last_heard_ms, back - 20);
    // m1 goes on beating, the others stay silent: they die as usual.
    let mut dead = Vec::new();
    let mut t = back;
    while t <= back + 2 * DEAD_AFTER {
        t += DEAD_AFTER / 4;
        p.heartbeat(t, m1, 1, 0).unwrap();
        for e in p.tick(t) {
            if let Event::ComponentDead { id, .. } = e {
                dead.push(id);
            }
        }
    }
    // The processor, silent the longest, first.
    assert_eq!(dead, vec![pr, m2]);
}
