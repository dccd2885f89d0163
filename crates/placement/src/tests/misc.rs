//! Small pure helpers: asid encoding, role and health names, error messages.

use super::*;

#[test]
fn asid_encoding() {
    let table: [(VnodeId, u32, Asid); 4] = [
        (1, 1, 0x1_0000_0001),
        (2, 7, 0x2_0000_0007),
        (0, 0, 0),
        (u32::MAX, u32::MAX, u64::MAX),
    ];
    for (vnode, seq, asid) in table {
        assert_eq!(make_asid(vnode, seq), asid, "make_asid({vnode}, {seq})");
        assert_eq!(asid_vnode(asid), vnode, "asid_vnode({asid:#x})");
        assert_eq!(asid_seq(asid), seq, "asid_seq({asid:#x})");
    }
}

#[test]
fn role_and_health_names() {
    let roles = [
        ("memory", Ok(Role::Memory)),
        ("processor", Ok(Role::Processor)),
        ("storage", Ok(Role::Storage)),
        ("Memory", Ok(Role::Memory)),
        ("cpu", Err(PlacementError::UnknownRole("cpu".into()))),
        ("", Err(PlacementError::UnknownRole(String::new()))),
    ];
    for (text, expect) in roles {
        assert_eq!(text.parse::<Role>(), expect, "{text:?}");
    }
    for role in Role::ALL {
        assert_eq!(role.to_string().parse::<Role>(), Ok(role));
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
