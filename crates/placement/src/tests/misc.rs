//! Small pure helpers: asid encoding, role and health names, error messages.

use super::*;

#[test]
fn asid_encoding() {
    let table: [(VnodeId, u32, u64); 4] = [
        (1, 1, 0x1_0000_0001),
        (2, 7, 0x2_0000_0007),
        (0, 0, 0),
        (u32::MAX, u32::MAX, u64::MAX),
    ];
    for (vnode, seq, raw) in table {
        let asid = Asid::new(vnode, seq);
        assert_eq!(asid, Asid(raw), "Asid::new({vnode}, {seq})");
        assert_eq!(asid.vnode(), vnode, "{asid}.vnode()");
        assert_eq!(asid.seq(), seq, "{asid}.seq()");
    }
}

#[test]
fn role_and_health_names() {
    for (text, expect) in [
        ("memory", Some(Role::Memory)),
        ("processor", Some(Role::Processor)),
        ("storage", Some(Role::Storage)),
        ("Memory", Some(Role::Memory)),
        ("cpu", None),
        ("", None),
    ] {
        assert_eq!(text.parse::<Role>().ok(), expect, "{text:?}");
    }
    for role in Role::ALL {
        assert_eq!(role.to_string().parse::<Role>(), Ok(*role));
    }
    let health = [
        (Health::Alive, "alive"),
        (Health::Dead, "dead"),
        (Health::Unknown, "unknown"),
    ];
    for (health, text) in health {
        assert_eq!(health.to_string(), text);
    }
}

#[test]
fn error_messages() {
    use PlacementError::*;
    let table = [
        (
            StaleInstance {
                id: 3,
                instance: 0x10,
                registered: 0x20,
            },
            "stale instance 0x10 for component 3 (registered instance is 0x20); re-register",
        ),
        (
            NotEnoughMemoryMonitors {
                alive: 1,
                needed: 2,
            },
            "need 2 alive memory monitors to place a vregion, 1 alive",
        ),
        (
            InvalidVnodeName {
                name: ".x".into(),
                reason: "must not start with '.' or '-'",
            },
            "invalid vnode name \".x\": must not start with '.' or '-'",
        ),
        (
            NotAReplica {
                key: key(2, 3, 4),
                id: 9,
            },
            "component 9 holds no replica of vregion 4 of space 2.3",
        ),
        (UnknownVnode("web".into()), "unknown vnode \"web\""),
    ];
    for (error, message) in table {
        assert_eq!(error.to_string(), message);
    }
}
