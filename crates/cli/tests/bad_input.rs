//! Bad input against the real daemons: wrong secrets, malformed and oversized
//! frames, forged requests for another vNode's memory, peers that vanish in the
//! middle of a frame, and random garbage. Each is refused or dropped with a
//! clear error, and the daemon goes on serving a well-behaved client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::auth::{decode_challenge, Claim, Hello, Secret};
use lego_wire::control::{AssignReq, VnodeDeleteReq};
use lego_wire::frame::{read_frame, write_frame, Header};
use lego_wire::pages::{CopyPages, FreeRange, FreeSpace, ReadPages, ReadPagesReply, WritePages};
use lego_wire::{Asid, ErrorCode, Op, PageNo, Request, VRegionIdx};

/// A raw TCP connection that has completed the handshake as `claim`.
fn raw_authed(addr: &str, key: &[u8; 32], claim: Claim) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ch = read_frame(&mut s, 4096).unwrap();
    let nonce = decode_challenge(&ch.body).unwrap();
    let hello = Hello::new(key, claim, &nonce).unwrap();
    write_frame(&mut s, Op::Hello, 0, 0, &[&hello.encode()]).unwrap();
    let w = read_frame(&mut s, 4096).unwrap();
    assert_eq!(w.header.op, Op::Welcome);
    s
}

/// Reads the error frame the daemon sends before closing, then expects EOF.
fn expect_error_then_close(s: &mut TcpStream, code: ErrorCode) -> String {
    let f = read_frame(s, 1 << 20).expect("an error frame before the close");
    let e = f.error().expect("an error frame");
    assert_eq!(e.code, code, "{e}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "connection closed after the error");
    e.message
}

fn well_behaved_round_trip(c: &Client, asid: Asid, byte: u8) {
    c.call_raw(
        Op::WritePages,
        &[&WritePages {
            asid,
            version: 0,
            peer: 0,
            pages: vec![PageNo(42)],
            data: &[byte; 4096],
        }
        .encode()],
    )
    .unwrap();
    let f = c
        .call_raw(
            Op::ReadPages,
            &[&ReadPages {
                asid,
                pages: vec![PageNo(42)],
            }
            .encode()],
        )
        .unwrap();
    assert_eq!(
        ReadPagesReply::decode(&f.body).unwrap().data,
        &[byte; 4096][..]
    );
}

#[test]
fn daemons_survive_bad_peers() {
    let mut cluster = TestCluster::start(2, "64MiB", 200);
    let (va, asid_a) = cluster.vnode_space("a");
    let (vb, asid_b) = cluster.vnode_space("b");
    let mem_addr = cluster.assign(asid_a, 0).primary.addr;
    let good = cluster.vnode_client(&mem_addr, va);
    well_behaved_round_trip(&good, asid_a, 1);

    for addr in [mem_addr.clone(), cluster.manager_addr.clone()] {
        // 1. Wrong cluster secret.
        let other = Secret::generate().unwrap();
        let err = Client::connect(
            &addr,
            &Credentials::component(&other),
            &ClientOptions::default(),
        )
        .err()
        .expect("wrong secret refused");
        assert!(err.to_string().contains("wrong key"), "{err}");
        // A vNode key used to claim another vNode.
        let err = Client::connect(
            &addr,
            &Credentials::vnode(vb, cluster.secret.vnode_key(va)),
            &ClientOptions::default(),
        )
        .err()
        .expect("forged vnode claim refused");
        assert!(err.to_string().contains("refused the handshake"), "{err}");

        // 2. Garbage instead of a hello.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        read_frame(&mut s, 4096).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let msg = expect_error_then_close(&mut s, ErrorCode::BadFrame);
        assert!(msg.contains("magic"), "{msg}");

        // 3. A malformed frame after the handshake (bad magic).
        let key = cluster.secret.vnode_key(va);
        let mut s = raw_authed(&addr, &key, Claim::Vnode(va));
        s.write_all(&[0xffu8; 24]).unwrap();
        let msg = expect_error_then_close(&mut s, ErrorCode::BadFrame);
        assert!(msg.contains("bad magic"), "{msg}");
        // An unknown operation code.
        let mut s = raw_authed(&addr, &key, Claim::Vnode(va));
        let mut h = Header {
            op: Op::Ping,
            flags: 0,
            req_id: 5,
            len: 0,
        }
        .encode();
        h[4] = 0xee;
        s.write_all(&h).unwrap();
        let msg = expect_error_then_close(&mut s, ErrorCode::BadFrame);
        assert!(msg.contains("unknown operation"), "{msg}");

        // 4. An oversized frame: refused before its body is read.
        let mut s = raw_authed(&addr, &key, Claim::Vnode(va));
        s.write_all(
            &Header {
                op: Op::WritePages,
                flags: 0,
                req_id: 1,
                len: 1 << 30,
            }
            .encode(),
        )
        .unwrap();
        let msg = expect_error_then_close(&mut s, ErrorCode::TooLarge);
        assert!(msg.contains("exceeds the maximum"), "{msg}");

        // 5. A peer that disconnects in the middle of a frame.
        let mut s = raw_authed(&addr, &key, Claim::Vnode(va));
        s.write_all(
            &Header {
                op: Op::WritePages,
                flags: 0,
                req_id: 1,
                len: 4096 + 24,
            }
            .encode(),
        )
        .unwrap();
        s.write_all(&[0u8; 100]).unwrap();
        drop(s);
        // A peer that vanishes in the middle of the handshake.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(
            &Header {
                op: Op::Hello,
                flags: 0,
                req_id: 0,
                len: 72,
            }
            .encode()[..10],
        )
        .unwrap();
        drop(s);

        // 6. Random garbage, many times.
        let mut x = 0x1234_5678u64;
        for i in 0..40 {
            let mut s = TcpStream::connect(&addr).unwrap();
            let _ = s.write_all(&junk(&mut x, i * 37 % 300));
        }
    }

    // 7. Forged requests for another vNode's memory, over a valid vNode-a connection.
    let err = good
        .call_raw(
            Op::ReadPages,
            &[&ReadPages {
                asid: asid_b,
                pages: vec![PageNo(1)],
            }
            .encode()],
        )
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotEntitled), "{err}");
    assert!(
        err.to_string().contains(&format!("belongs to vnode {vb}")),
        "{err}"
    );
    for op in [Op::WritePages, Op::FreeRange, Op::FreeSpace] {
        let body = match op {
            Op::WritePages => WritePages {
                version: 0,
                peer: 0,
                asid: asid_b,
                pages: vec![PageNo(1)],
                data: &[0; 4096],
            }
            .encode(),
            Op::FreeRange => FreeRange {
                asid: asid_b,
                first: PageNo(0),
                count: 10,
            }
            .encode()
            .to_vec(),
            _ => Request::encode(&FreeSpace { asid: asid_b }),
        };
        let err = good.call_raw(op, &[&body]).unwrap_err();
        assert_eq!(
            err.remote_code(),
            Some(ErrorCode::NotEntitled),
            "{op}: {err}"
        );
    }
    // Copies between memory monitors and rebuild orders are for components
    // only, even for the vNode's own memory; a malformed copy is refused.
    let own = CopyPages {
        asid: asid_b,
        pages: vec![(PageNo(1), 1)],
        data: &[0; 4096],
    }
    .encode();
    let err = good.call_raw(Op::CopyPages, &[&own]).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotEntitled), "{err}");
    let err = good.call_raw(Op::Replicate, &[b"{}"]).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotEntitled), "{err}");
    let admin = Client::connect(
        &cluster.memories[0].addr,
        &Credentials::component(&cluster.secret),
        &ClientOptions::default(),
    )
    .unwrap();
    let err = admin.call_raw(Op::CopyPages, &[&own[..20]]).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BadRequest), "{err}");
    let err = admin
        .call_raw(Op::Replicate, &[b"{\"asid\": 1}"])
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BadRequest), "{err}");
    // A rebuild onto a monitor that does not exist fails with a clear error.
    let bad_target = format!(
        r#"{{"asid":{},"first_page":0,"pages":16,"target":{{"id":99,"addr":"127.0.0.1:1"}}}}"#,
        asid_b.0
    );
    let err = admin
        .call_raw(Op::Replicate, &[bad_target.as_bytes()])
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable), "{err}");
    assert!(
        err.to_string().contains("cannot reach the new copy 99"),
        "{err}"
    );
    // ... and at the manager: a vNode process may not place another vNode's memory or manage vNodes.
    let key = cluster.secret.vnode_key(va);
    let mgr_as_a = Client::connect(
        &cluster.manager_addr,
        &Credentials::vnode(va, key),
        &ClientOptions::default(),
    )
    .unwrap();
    let err = mgr_as_a
        .call(&AssignReq {
            asid: asid_b,
            index: VRegionIdx(0),
        })
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotEntitled), "{err}");
    let err = mgr_as_a
        .call(&VnodeDeleteReq {
            name: "b".into(),
            force: false,
        })
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotEntitled), "{err}");
    // A malformed body in a well-framed request is refused, and the connection goes on.
    let err = good.call_raw(Op::ReadPages, &[&[1, 2, 3]]).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::BadRequest), "{err}");
    let err = good.call_raw(Op::Register, &[b"{}"]).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::UnknownOp), "{err}");

    // The well-behaved client, connected all along, is still served; nothing was lost.
    well_behaved_round_trip(&good, asid_a, 2);
    let stats = mem_stats(&good);
    assert!(stats.counters["auth_failures_total"] >= 3, "{stats:?}");
    assert!(stats.counters["bad_frames_total"] >= 4, "{stats:?}");
    assert!(stats.counters["not_entitled_total"] >= 4, "{stats:?}");
    assert_eq!(stats.pages_held, 1);
    for d in cluster.daemons_mut() {
        assert!(d.running(), "{} is still running", d.name);
    }
    let st = cluster.cluster_state();
    assert_eq!(alive_memory(&st).len(), 2);
    assert_eq!(st.vnodes.len(), 2);
    let log = cluster.memories[0].log_text() + &cluster.memories[1].log_text();
    assert!(
        log.contains("in the middle of a frame"),
        "mid-frame disconnects are logged"
    );
}
