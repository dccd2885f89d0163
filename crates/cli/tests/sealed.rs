//! Sealed links between hosts of a rack (issue 13, item 6): daemons on
//! hosts other than loopback seal their links by default. A relay between
//! hosts that flips one byte of a page write is caught: the connection is
//! closed and nothing is stored. A wrong key, and a hello that asks for
//! plaintext, are refused with the reason.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use lego_transport::{Client, ClientOptions, Credentials, TransportError};
use lego_wire::auth::{decode_challenge, Claim, Hello, Secret};
use lego_wire::frame::{read_frame, write_frame};
use lego_wire::pages::WritePages;
use lego_wire::{ErrorCode, Op, PageNo};

/// A relay on the rack's first host to `server` that flips one bit of the
/// client's stream at byte `flip`; returns its address.
fn flipping_relay(server: String, flip: usize) -> String {
    let l = TcpListener::bind("10.99.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut client, _) = l.accept().unwrap();
        let mut up = TcpStream::connect(server).unwrap();
        let (mut c2, mut up2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut up2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Both);
        });
        let (mut buf, mut at) = ([0u8; 8192], 0usize);
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (at..at + n).contains(&flip) {
                buf[flip - at] ^= 0x01;
            }
            at += n;
            if up.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = up.shutdown(std::net::Shutdown::Both);
    });
    addr
}

fn write_pages(
    c: &Client,
    asid: lego_wire::Asid,
    pages: std::ops::Range<u64>,
) -> Result<(), TransportError> {
    let data: Vec<u8> = (0..(pages.end - pages.start) * 4096)
        .map(|i| i as u8)
        .collect();
    let req = WritePages {
        asid,
        version: 0,
        peer: 0,
        pages: pages.map(PageNo).collect(),
        data: &data,
    };
    c.call_raw(Op::WritePages, &[&req.encode()]).map(|_| ())
}

#[test]
fn links_between_hosts_are_sealed_and_tampering_is_caught() {
    let c = TestCluster::rack_of(3, None, 2, "64MiB", &[], false);
    let (vnode, asid) = c.vnode_space("sealed");
    let placed = c.assign(asid, 0);
    let target = placed.primary.addr.clone();
    assert!(
        target.starts_with("10.99.0."),
        "a monitor on a rack host: {target}"
    );
    let monitor = Client::connect(&target, &c.creds(), &ClientOptions::default()).unwrap();
    let counter = |name: &str| mem_stats(&monitor).counters[name];
    let tampered_before = counter("records_tampered_total");

    // One bit flipped inside the first sealed record (after the client's
    // 24-byte frame header and 105-byte hello, the record's 4-byte length).
    let via = flipping_relay(target.clone(), 24 + 105 + 4 + 200);
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let creds = Credentials::vnode(vnode, c.secret.vnode_key(vnode));
    let attacked = Client::connect(&via, &creds, &opts).expect("the handshake passes the relay");
    let err = write_pages(&attacked, asid, 0..4).unwrap_err();
    assert!(
        matches!(err, TransportError::Broken { .. }),
        "the connection is closed: {err}"
    );
    assert_eq!(
        mem_stats(&monitor).pages_held,
        0,
        "nothing of the altered write is stored"
    );
    assert_eq!(counter("records_tampered_total"), tampered_before + 1);

    // The monitor goes on: the same write sent unaltered is stored.
    let direct = Client::connect(&target, &creds, &opts).unwrap();
    write_pages(&direct, asid, 0..4).unwrap();
    assert_eq!(mem_stats(&monitor).pages_held, 4);
    assert!(counter("connections_sealed_total") >= 2);

    // A wrong key is refused with the reason.
    let wrong = Secret::generate().unwrap();
    let err = Client::connect(&target, &Credentials::component(&wrong), &opts)
        .err()
        .expect("a wrong key is refused");
    assert!(
        matches!(&err, TransportError::AuthRefused { message, .. } if message.contains("wrong key")),
        "{err}"
    );
    // So is a hello with the right key that asks for plaintext.
    let mut s = TcpStream::connect(&target).unwrap();
    let challenge = read_frame(&mut s, 4096).unwrap();
    let nonce = decode_challenge(&challenge.body).unwrap();
    let hello = Hello::new(
        &c.secret.key_for(Claim::Component).unwrap(),
        Claim::Component,
        &nonce,
    )
    .unwrap();
    write_frame(&mut s, Op::Hello, 0, 0, &[&hello.encode()]).unwrap();
    let e = read_frame(&mut s, 4096).unwrap().error().expect("refused");
    assert_eq!(e.code, ErrorCode::AuthFailed);
    assert!(e.message.contains("asked for plaintext"), "{}", e.message);
    assert_eq!(mem_stats(&monitor).pages_held, 4, "nothing else stored");
}
