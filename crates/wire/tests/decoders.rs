//! Round trips and random-input robustness of every decoder (proptest).

use lego_wire::{
    auth::{challenge_server, decode_challenge, Claim, Hello, Secret},
    control::{from_body, ClusterState, RegisterReq, ReplicateReq, UnreachableReq},
    frame::{read_frame, write_frame, Header, HEADER_LEN},
    jobs::{OutputReq, StdinReq},
    pages::{
        CloneSpace, CopyPages, FreeRange, FreeSpace, ReadPages, ReadPagesReply, WritePages,
        WriteReply,
    },
    Asid, ErrorBody, ErrorCode, Op, PageNo, Request, WireError, PAGE_SIZE,
};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    prop::sample::select(Op::ALL)
}

proptest! {
    #[test]
    fn frame_round_trip(op in op(), flags in 0u8..4, req_id: u64, body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = Vec::new();
        write_frame(&mut buf, op, flags, req_id, &[&body[..body.len() / 2], &body[body.len() / 2..]]).unwrap();
        let f = read_frame(&mut &buf[..], 1 << 20).unwrap();
        prop_assert_eq!(f.header, Header { op, flags, req_id, len: body.len() as u32 });
        prop_assert_eq!(f.body, body);
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_frame(&mut &bytes[..], 1 << 16);
        let _ = ReadPages::decode(&bytes);
        let _ = ReadPagesReply::decode(&bytes);
        let _ = WritePages::decode(&bytes);
        let _ = WriteReply::decode(&bytes);
        let _ = CopyPages::decode(&bytes);
        let _ = from_body::<ReplicateReq>(&bytes);
        let _ = from_body::<UnreachableReq>(&bytes);
        let _ = FreeRange::decode(&bytes);
        let _ = ErrorBody::decode(&bytes);
        let _ = Hello::decode(&bytes);
        let _ = decode_challenge(&bytes);
        let _ = from_body::<ClusterState>(&bytes);
        let _ = from_body::<RegisterReq>(&bytes);
        let _ = challenge_server(&bytes);
        let _ = std::str::from_utf8(&bytes).map(|t| t.parse::<lego_wire::auth::JoinToken>());
        let _ = from_body::<lego_wire::identity::JoinReq>(&bytes);
        let _ = from_body::<lego_wire::identity::JoinResp>(&bytes);
        let _ = from_body::<lego_wire::identity::PeerKeyReq>(&bytes);
        let _ = from_body::<lego_wire::identity::HeartbeatResp>(&bytes);
        let _ = from_body::<lego_wire::identity::TokenCreateReq>(&bytes);
        // Requests with bodies of their own, and their replies.
        for r in [FreeSpace::decode(&bytes).map(|r| r.encode()), CloneSpace::decode(&bytes).map(|r| r.encode())].into_iter().flatten() {
            prop_assert_eq!(&r[..], &bytes[..]);
        }
        let _ = <FreeRange as Request>::decode_reply(&bytes);
        if let Ok(s) = StdinReq::decode(&bytes) {
            prop_assert_eq!(s.encode(), bytes.clone());
        }
        if let Ok(out) = OutputReq::decode_reply(&bytes) {
            let _ = out.chunks().unwrap();
        }
        if let Ok(r) = lego_wire::fs::FsRequest::decode(&bytes) {
            let again = r.encode();
            prop_assert_eq!(lego_wire::fs::FsRequest::decode(&again).unwrap(), r);
        }
        let _ = lego_wire::fs::FsReply::decode(&bytes);
        let _ = lego_wire::fs::check_path(&bytes);
    }

    #[test]
    fn valid_header_with_random_tail(op in op(), req_id: u64, tail in prop::collection::vec(any::<u8>(), 0..64), len in 0u32..100) {
        let mut buf = Header { op, flags: 0, req_id, len }.encode().to_vec();
        buf.extend_from_slice(&tail);
        match read_frame(&mut &buf[..], 1 << 16) {
            Ok(f) => prop_assert_eq!(f.body.len(), len as usize),
            Err(WireError::Truncated) => prop_assert!(tail.len() < len as usize),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn pages_round_trip(asid: u64, version: u64, peer: u64, pages in prop::collection::vec(any::<u64>(), 1..20), seed: u8) {
        let asid = Asid(asid);
        let pages: Vec<PageNo> = pages.into_iter().map(PageNo).collect();
        let r = ReadPages { asid, pages: pages.clone() };
        prop_assert_eq!(ReadPages::decode(&r.encode()).unwrap(), r);
        let data: Vec<u8> = (0..pages.len() * PAGE_SIZE).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let w = WritePages { asid, version, peer, pages: pages.clone(), data: &data };
        let enc = w.encode();
        prop_assert_eq!(WritePages::decode(&enc).unwrap(), w);
        let versioned: Vec<(PageNo, u64)> = pages.iter().map(|&p| (p, p.0 ^ version)).collect();
        let c = CopyPages { asid, pages: versioned, data: &data };
        let cenc = c.encode();
        prop_assert_eq!(CopyPages::decode(&cenc).unwrap(), c);
        let r = WriteReply { stored: pages.len() as u32, allocated: seed as u32, missed: peer };
        prop_assert_eq!(WriteReply::decode(&r.encode()).unwrap(), r);
        let present: Vec<bool> = pages.iter().map(|p| p.0 % 3 != 0).collect();
        let mut body = ReadPagesReply::encode_head(&present);
        let n = present.iter().filter(|&&p| p).count();
        body.extend_from_slice(&data[..n * PAGE_SIZE]);
        let reply = ReadPagesReply::decode(&body).unwrap();
        let got: Vec<bool> = reply.pages().map(|p| p.is_some()).collect();
        prop_assert_eq!(got, present);
    }

    #[test]
    fn free_range_round_trip(asid: u64, first in 0u64..1 << 40, count in 0u64..1 << 20) {
        let f = FreeRange { asid: Asid(asid), first: PageNo(first), count };
        prop_assert_eq!(FreeRange::decode(&f.encode()).unwrap(), f);
    }
}

#[test]
fn oversized_frame_is_refused_before_reading_the_body() {
    let buf = Header {
        op: Op::Ping,
        flags: 0,
        req_id: 1,
        len: 1 << 30,
    }
    .encode();
    match read_frame(&mut &buf[..], 1 << 20) {
        Err(WireError::TooLarge { len, max }) => assert_eq!((len, max), (1 << 30, 1 << 20)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn bad_magic_and_version_are_refused() {
    let mut b = Header {
        op: Op::Ping,
        flags: 0,
        req_id: 1,
        len: 0,
    }
    .encode();
    b[0] = b'X';
    assert!(matches!(
        Header::decode(&b, 10),
        Err(WireError::BadMagic(_))
    ));
    let mut b = Header {
        op: Op::Ping,
        flags: 0,
        req_id: 1,
        len: 0,
    }
    .encode();
    b[2] = 9;
    assert!(matches!(
        Header::decode(&b, 10),
        Err(WireError::BadVersion(9))
    ));
    assert_eq!(HEADER_LEN, 24);
}

#[test]
fn error_body_round_trip() {
    for &code in ErrorCode::ALL {
        let e = ErrorBody::new(code, "no room: 12 pages");
        assert_eq!(ErrorBody::decode(&e.encode()).unwrap(), e);
    }
}

/// The key that proves `claim` to a holder of `secret`.
fn k(secret: &Secret, claim: Claim) -> [u8; 32] {
    secret.key_for(claim).expect("a derived key")
}

#[test]
fn handshake_proves_both_sides_and_rejects_wrong_keys() {
    let secret = Secret::generate().unwrap();
    let other = Secret::generate().unwrap();
    let sn = lego_wire::auth::random_bytes().unwrap();
    for claim in [Claim::Component, Claim::Vnode(7), Claim::Member(3)] {
        let hello = Hello::new(&k(&secret, claim), claim, &sn).unwrap();
        let decoded = Hello::decode(&hello.encode()).unwrap();
        assert_eq!(decoded.claim, claim);
        assert!(decoded.verify(&k(&secret, claim), &sn));
        assert!(
            !decoded.verify(&k(&other, claim), &sn),
            "wrong secret must fail"
        );
        let w = decoded.welcome(&k(&secret, claim), &sn, None);
        assert!(hello.check_welcome(&k(&secret, claim), &sn, &w));
        assert!(!hello.check_welcome(&k(&other, claim), &sn, &w));
        let bad = Hello::new(&k(&other, claim), claim, &sn).unwrap();
        assert!(!bad.verify(&k(&secret, claim), &sn));
    }
    // A vNode key cannot pass as another vNode or as a component; a
    // member's key cannot pass as another member.
    let k7 = secret.vnode_key(7);
    let forged = Hello::new(&k7, Claim::Vnode(8), &sn).unwrap();
    assert!(!forged.verify(&k(&secret, Claim::Vnode(8)), &sn));
    let forged = Hello::new(&k7, Claim::Component, &sn).unwrap();
    assert!(!forged.verify(&k(&secret, Claim::Component), &sn));
    let m3 = secret.member_key(3);
    let forged = Hello::new(&m3, Claim::Member(4), &sn).unwrap();
    assert!(!forged.verify(&k(&secret, Claim::Member(4)), &sn));
}

#[test]
fn a_member_server_derives_each_claims_key_from_its_own_alone() {
    use lego_wire::auth::peer_key;
    let secret = Secret::generate().unwrap();
    let k5 = secret.member_key(5);
    for claim in [Claim::Component, Claim::Vnode(2), Claim::Member(9)] {
        // What the manager (or a holder of the secret) hands out for server
        // 5 is what server 5 derives from its own key.
        assert_eq!(secret.key_at(5, claim), Some(peer_key(&k5, claim)));
        assert_ne!(secret.key_at(5, claim), secret.key_at(6, claim));
        assert_ne!(secret.key_at(5, claim), secret.key_at(0, claim));
    }
    assert_ne!(
        peer_key(&k5, Claim::Member(9)),
        peer_key(&k5, Claim::Member(8))
    );
    // A join token's key is its own, never derived.
    assert_eq!(secret.key_for(Claim::Join(1)), None);
}

#[test]
fn join_tokens_parse_and_wrap_a_key_only_their_holder_can_open() {
    use lego_wire::auth::JoinToken;
    let t = JoinToken {
        id: 12,
        key: [0xab; 32],
    };
    let text = t.to_string();
    assert!(text.starts_with("lego-join-12-abab"));
    assert_eq!(text.parse::<JoinToken>().unwrap(), t);
    for bad in [
        "",
        "lego-join-12",
        "lego-join-0-",
        "lego-join-x-00",
        "join-12-abab",
    ] {
        assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
    }
    assert!(format!("lego-join-0-{}", "ab".repeat(32))
        .parse::<JoinToken>()
        .is_err());
    let key = [7u8; 32];
    let wrapped = t.wrap(3, &key);
    assert_ne!(wrapped, key);
    assert_eq!(t.wrap(3, &wrapped), key, "the holder unwraps it");
    let other = JoinToken {
        id: 12,
        key: [1; 32],
    };
    assert_ne!(other.wrap(3, &wrapped), key);
    // Every claim survives the wire; the invalid ones are refused.
    for claim in [Claim::Member(1), Claim::Join(u32::MAX)] {
        let h = Hello::new(&[0; 32], claim, &[0; 32]).unwrap();
        assert_eq!(Hello::decode(&h.encode()).unwrap().claim, claim);
    }
    let mut body = Hello::new(&[0; 32], Claim::Member(1), &[0; 32])
        .unwrap()
        .encode();
    body[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert!(Hello::decode(&body).is_err(), "member 0 is no member");
    body[0] = 5;
    assert!(Hello::decode(&body).is_err(), "unknown claim kind");
}

#[test]
fn a_relay_cannot_strip_or_swap_the_seal_of_a_hello() {
    let secret = Secret::generate().unwrap();
    let sn = lego_wire::auth::random_bytes().unwrap();
    let key = k(&secret, Claim::Component);
    let cp = [7u8; 32];
    let hello = Hello::with_seal(&key, Claim::Component, &sn, Some(cp)).unwrap();
    let decoded = Hello::decode(&hello.encode()).unwrap();
    assert_eq!(decoded.seal, Some(cp));
    assert!(decoded.verify(&key, &sn));
    // Stripped of its seal request, or with the relay's key in place of the
    // client's, the proof no longer holds.
    let stripped = Hello {
        seal: None,
        ..decoded.clone()
    };
    assert!(!stripped.verify(&key, &sn));
    let swapped = Hello {
        seal: Some([9u8; 32]),
        ..decoded.clone()
    };
    assert!(!swapped.verify(&key, &sn));
    // The welcome carries the server's key under its proof; a swapped one fails.
    let sp = [5u8; 32];
    let mut w = decoded.welcome(&key, &sn, Some(&sp));
    assert_eq!(lego_wire::auth::welcome_seal(&w), Some(sp));
    assert!(hello.check_welcome(&key, &sn, &w));
    w[40] ^= 1;
    assert!(!hello.check_welcome(&key, &sn, &w));
    // A welcome without a key does not answer a sealed hello.
    let plain = decoded.welcome(&key, &sn, None);
    assert!(!hello.check_welcome(&key, &sn, &plain));
    // Both sides derive the same keys, different per direction and per session.
    let k = hello.session_keys(&key, &sn, &sp, &[1; 32]);
    let k2 = decoded.session_keys(&key, &sn, &sp, &[1; 32]);
    assert_eq!(k.to_server, k2.to_server);
    assert_ne!(k.to_server, k.to_client);
    assert_ne!(
        k.to_server,
        hello.session_keys(&key, &sn, &sp, &[2; 32]).to_server
    );
}

#[test]
fn secret_hex_round_trip_and_errors() {
    let s = Secret::generate().unwrap();
    assert_eq!(Secret::from_hex(&format!("{}\n", s.to_hex())).unwrap(), s);
    assert!(Secret::from_hex("abc").is_err());
    assert!(Secret::from_hex(&"zz".repeat(32)).is_err());
}
