//! Bad input against a real storage monitor, through its protocol: paths
//! that try to leave a vNode (`..`, absolute paths, symlinks out of it),
//! names too long or holding NUL or `/`, forged requests and handles for
//! another vNode's files, malformed bodies and vanishing peers. Each is
//! refused with a clear error, and the monitor goes on serving.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use lego_transport::{Client, ClientOptions, Credentials, TransportError};
use lego_wire::fs::{FsCall, FsReply, FsRequest};
use lego_wire::{ErrorCode, Op};

/// One call; the answer, or the error frame's code and message.
fn call(c: &Client, vnode: u32, call: FsCall<'_>) -> Result<FsReply<'static>, (ErrorCode, String)> {
    let body = FsRequest { vnode, call }.encode();
    match c.call_raw(Op::Fs, &[&body]) {
        Ok(f) => {
            let r = FsReply::decode(&f.body).expect("a decodable answer");
            // Keep what the tests look at; data answers are not needed here.
            Ok(match r {
                FsReply::Data(_) => FsReply::Done,
                FsReply::Attr(a) => FsReply::Attr(a),
                FsReply::Opened { handle, attr } => FsReply::Opened { handle, attr },
                FsReply::Written(n) => FsReply::Written(n),
                FsReply::Done => FsReply::Done,
                FsReply::Entries { entries, next } => FsReply::Entries { entries, next },
                FsReply::Target(t) => FsReply::Target(t),
                FsReply::Statfs(s) => FsReply::Statfs(s),
                FsReply::Err { errno, message } => FsReply::Err { errno, message },
            })
        }
        Err(TransportError::Remote { code, message, .. }) => Err((code, message)),
        Err(e) => panic!("transport failed: {e}"),
    }
}

fn errno(r: Result<FsReply<'static>, (ErrorCode, String)>) -> (i32, String) {
    match r {
        Ok(FsReply::Err { errno, message }) => (errno, message),
        other => panic!("expected a file-system error, got {other:?}"),
    }
}

const EINVAL: i32 = 22;
const ELOOP: i32 = 40;
const EBADF: i32 = 9;

#[test]
fn paths_links_names_and_forged_requests_are_refused() {
    let mut c = TestCluster::start(2, "64MiB", 200);
    let addr = c.start_storage();
    let key = |v: u32| c.secret.vnode_key(v);
    let opts = ClientOptions::default();
    let a = Client::connect(&addr, &Credentials::vnode(1, key(1)), &opts).unwrap();
    let b = Client::connect(&addr, &Credentials::vnode(2, key(2)), &opts).unwrap();
    // vnode b keeps a secret file; the host has one beside the store.
    let Ok(FsReply::Opened { handle: hb, .. }) = call(
        &b,
        2,
        FsCall::Create {
            path: b"secret",
            mode: 0o600,
            flags: 2,
        },
    ) else {
        panic!("create failed")
    };
    assert!(matches!(
        call(
            &b,
            2,
            FsCall::Write {
                handle: hb,
                offset: 0,
                data: b"b's data"
            }
        ),
        Ok(FsReply::Written(8))
    ));
    std::fs::write(c.path().join("storage/host-secret"), b"host").unwrap();

    // Traversal and absolute paths: refused before any lookup.
    for bad in [
        &b"../2/secret"[..],
        b"../../host-secret",
        b"/etc/passwd",
        b"x/../../2",
        b"./secret",
        b"a//b",
    ] {
        let (e, msg) = errno(call(&a, 1, FsCall::Stat { path: bad }));
        assert_eq!(e, EINVAL, "{bad:?}: {msg}");
        let (e, _) = errno(call(
            &a,
            1,
            FsCall::Open {
                path: bad,
                flags: 0,
            },
        ));
        assert_eq!(e, EINVAL);
    }
    // Names: too long, with NUL, with '/' where one name is meant.
    let (e, msg) = errno(call(
        &a,
        1,
        FsCall::Mkdir {
            path: &[b'n'; 256],
            mode: 0o755,
        },
    ));
    assert_eq!(e, EINVAL, "{msg}");
    assert!(msg.contains("255"), "{msg}");
    let (e, msg) = errno(call(
        &a,
        1,
        FsCall::Create {
            path: b"a\0b",
            mode: 0o644,
            flags: 2,
        },
    ));
    assert_eq!(e, EINVAL, "{msg}");
    assert!(msg.contains("NUL"), "{msg}");
    let long: Vec<u8> = std::iter::repeat_n(&b"d/"[..], 2100)
        .flatten()
        .copied()
        .collect();
    let (e, msg) = errno(call(
        &a,
        1,
        FsCall::Stat {
            path: &long[..long.len() - 1],
        },
    ));
    assert_eq!(e, EINVAL, "{msg}");
    // A name with '/' is a path: its parent must exist inside the vNode.
    assert!(matches!(
        call(
            &a,
            1,
            FsCall::Mkdir {
                path: b"x/y",
                mode: 0o755
            }
        ),
        Ok(FsReply::Err { errno: 2, .. })
    ));

    // Symlinks out of the vNode are kept as data, never followed.
    for target in [&b"/etc"[..], b"../2", b"../../"] {
        assert!(matches!(
            call(
                &a,
                1,
                FsCall::Symlink {
                    path: b"out",
                    target
                }
            ),
            Ok(FsReply::Attr(_))
        ));
        assert!(
            matches!(call(&a, 1, FsCall::Readlink { path: b"out" }), Ok(FsReply::Target(t)) if t == target)
        );
        assert_eq!(
            errno(call(
                &a,
                1,
                FsCall::Readdir {
                    path: b"out",
                    cookie: 0
                }
            ))
            .0,
            ELOOP
        );
        assert_eq!(
            errno(call(
                &a,
                1,
                FsCall::Open {
                    path: b"out",
                    flags: 0
                }
            ))
            .0,
            ELOOP
        );
        assert_ne!(
            errno(call(
                &a,
                1,
                FsCall::Stat {
                    path: b"out/secret"
                }
            ))
            .0,
            0
        );
        assert!(matches!(
            call(&a, 1, FsCall::Unlink { path: b"out" }),
            Ok(FsReply::Done)
        ));
    }

    // Forged requests: vnode a's connection naming vnode b's files ...
    let (code, msg) = call(&a, 2, FsCall::Stat { path: b"secret" }).unwrap_err();
    assert_eq!(code, ErrorCode::NotEntitled, "{msg}");
    let (code, _) = call(
        &a,
        2,
        FsCall::Read {
            handle: hb,
            offset: 0,
            len: 100,
        },
    )
    .unwrap_err();
    assert_eq!(code, ErrorCode::NotEntitled);
    // ... or using b's handle under its own name; or destroying b.
    assert_eq!(
        errno(call(
            &a,
            1,
            FsCall::Read {
                handle: hb,
                offset: 0,
                len: 100
            }
        ))
        .0,
        EBADF
    );
    let (code, _) = call(&a, 2, FsCall::Destroy).unwrap_err();
    assert_eq!(code, ErrorCode::NotEntitled);
    let (code, _) = call(&a, 1, FsCall::Destroy).unwrap_err();
    assert_eq!(
        code,
        ErrorCode::NotEntitled,
        "only a component may destroy files"
    );
    // A malformed body is a clear error; the connection goes on.
    let e = a.call_raw(Op::Fs, &[b"\xff\xff\xff garbage"]).unwrap_err();
    assert!(e.to_string().contains("fs request"), "{e}");
    assert!(matches!(
        call(&a, 1, FsCall::Statfs),
        Ok(FsReply::Statfs(_))
    ));

    // Peers that vanish in the middle of a request, and raw garbage.
    for junk in [
        &b"LG\x01\x00\x00\x04"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 64],
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(junk);
    }
    // Nothing of b's was touched, and the monitor still serves both.
    let Ok(FsReply::Opened { handle, .. }) = call(
        &b,
        2,
        FsCall::Open {
            path: b"secret",
            flags: 0,
        },
    ) else {
        panic!("open failed")
    };
    let body = FsRequest {
        vnode: 2,
        call: FsCall::Read {
            handle,
            offset: 0,
            len: 100,
        },
    }
    .encode();
    let f = b.call_raw(Op::Fs, &[&body]).unwrap();
    assert_eq!(
        FsReply::decode(&f.body).unwrap(),
        FsReply::Data(b"b's data")
    );
    assert_eq!(
        std::fs::read(c.path().join("storage/host-secret")).unwrap(),
        b"host"
    );
    let log = c.storage.as_ref().unwrap().log_text();
    assert!(
        log.contains("refused a file request for another vnode"),
        "{log}"
    );
}
