//! vNode names, ids, deletion and address-space ids.

use super::*;

fn invalid(name: &str, reason: &'static str) -> Op {
    vnode(
        name,
        Err(PlacementError::InvalidVnodeName {
            name: name.to_string(),
            reason,
        }),
    )
}

#[test]
fn vnodes() {
    use PlacementError::*;
    const CHARS: &str = "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed";
    run(vec![
        (
            "valid names",
            vec![
                vnode("a", Ok(1)),
                vnode("web-1", Ok(2)),
                vnode("A_b.c", Ok(3)),
                vnode("_x", Ok(4)),
                vnode("9", Ok(5)),
                vnode(&"x".repeat(64), Ok(6)),
                vnode("a.", Ok(7)),
            ],
        ),
        (
            "invalid names are refused without using an id",
            vec![
                invalid("", "must not be empty"),
                invalid(&"x".repeat(65), "longer than 64 characters"),
                invalid(".hidden", "must not start with '.' or '-'"),
                invalid("-flag", "must not start with '.' or '-'"),
                invalid("a b", CHARS),
                invalid("a/b", CHARS),
                invalid("ü", CHARS),
                invalid("a\n", CHARS),
                Op::NextIds(1, 1),
                vnode("ok", Ok(1)),
            ],
        ),
        (
            "duplicates are refused; ids are never reused",
            vec![
                vnode("a", Ok(1)),
                vnode("a", Err(VnodeExists("a".into()))),
                vnode("A", Ok(2)),
                Op::DeleteVnode("a", Ok((1, vec![]))),
                vnode("a", Ok(3)),
            ],
        ),
        (
            "deleting an unknown vnode",
            vec![
                vnode("a", Ok(1)),
                Op::DeleteVnode("nope", Err(UnknownVnode("nope".into()))),
                Op::DeleteVnode("a", Ok((1, vec![]))),
                Op::DeleteVnode("a", Err(UnknownVnode("a".into()))),
            ],
        ),
        (
            "delete_vnode removes its vregions and no others",
            vec![
                join(0, Role::Memory, 1),
                join(0, Role::Memory, 2),
                vnode("a", Ok(1)),
                vnode("b", Ok(2)),
                Op::CreateSpace(1, Ok(Asid::new(1, 1))),
                Op::CreateSpace(2, Ok(Asid::new(2, 1))),
                Op::CreateSpace(1, Ok(Asid::new(1, 2))),
                Op::Assign(key(1, 1, 0), Ok((1, 2, true))),
                Op::Assign(key(2, 1, 0), Ok((1, 2, true))),
                Op::Assign(key(1, 2, 3), Ok((1, 2, true))),
                Op::DeleteVnode("a", Ok((1, vec![key(1, 1, 0), key(1, 2, 3)]))),
                Op::VRegions(vec![key(2, 1, 0)]),
                Op::Assign(key(1, 1, 0), Err(UnknownVnodeId(1))),
                Op::CreateSpace(1, Err(UnknownVnodeId(1))),
            ],
        ),
        (
            "create_space asids encode the vnode and count from 1 per vnode",
            vec![
                vnode("a", Ok(1)),
                vnode("b", Ok(2)),
                Op::CreateSpace(1, Ok(Asid(0x1_0000_0001))),
                Op::CreateSpace(1, Ok(Asid(0x1_0000_0002))),
                Op::CreateSpace(2, Ok(Asid(0x2_0000_0001))),
                Op::CreateSpace(3, Err(UnknownVnodeId(3))),
            ],
        ),
    ]);
}
