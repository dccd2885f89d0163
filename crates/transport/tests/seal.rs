//! Sealed links: requests and answers of every size cross a sealed
//! connection intact; a server that seals refuses a plaintext hello; a relay
//! that flips one byte after the handshake is caught, the connection closed,
//! and the altered request never reaches the handler.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lego_transport::{
    listen, spawn_server, Client, ClientOptions, Credentials, Handler, PeerInfo, Reject,
    ServerConfig, ServerCounters, TransportError,
};
use lego_wire::auth::{decode_challenge, Claim, Hello, Secret};
use lego_wire::frame::{read_frame, write_frame};
use lego_wire::{ErrorCode, Op};

/// Keeps every ping body it is given (the "store"), and echoes it reversed.
#[derive(Default)]
struct Store(Mutex<Vec<Vec<u8>>>);

impl Handler for Store {
    fn handle(&self, _: &PeerInfo, op: Op, body: &[u8], reply: &mut Vec<u8>) -> Result<(), Reject> {
        if op != Op::Ping {
            return Err(Reject::new(ErrorCode::UnknownOp, "ping only"));
        }
        self.0.lock().unwrap().push(body.to_vec());
        reply.extend(body.iter().rev());
        Ok(())
    }
}

fn serve(secret: &Secret, seal: bool) -> (String, Arc<Store>, Arc<ServerCounters>) {
    let store = Arc::new(Store::default());
    let cfg = ServerConfig {
        seal,
        ..ServerConfig::new("sealed", secret.clone())
    };
    let h = spawn_server(listen("127.0.0.1:0").unwrap(), cfg, store.clone()).unwrap();
    (h.local_addr, store, h.counters)
}

#[test]
fn every_size_crosses_a_sealed_link_intact() {
    let secret = Secret::generate().unwrap();
    let (addr, store, counters) = serve(&secret, true);
    let c = Client::connect(
        &addr,
        &Credentials::component(&secret),
        &ClientOptions::default(),
    )
    .unwrap();
    // Sizes around the record limit (64 KiB) and the buffers', and a
    // pipelined burst that shares records.
    for len in [0usize, 1, 4096, 65535, 65536, 65537, 200_000, 1 << 20] {
        let body: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let f = c.call_raw(Op::Ping, &[&body]).unwrap();
        let want: Vec<u8> = body.iter().rev().copied().collect();
        assert!(f.body == want, "{len}-byte body came back altered");
    }
    let ids: Vec<u64> = (0..50u8)
        .map(|i| c.send_buffered(Op::Ping, &[&[i; 100]]).unwrap())
        .collect();
    c.flush().unwrap();
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(c.wait(id).unwrap().body, vec![i as u8; 100]);
    }
    assert_eq!(store.0.lock().unwrap().len(), 58);
    assert_eq!(counters.sealed.load(Ordering::Relaxed), 1);
    // A client may ask for sealing from a server that does not require it.
    let (plain_addr, _, plain_counters) = serve(&secret, false);
    let opts = ClientOptions {
        seal: true,
        ..ClientOptions::default()
    };
    let c = Client::connect(&plain_addr, &Credentials::component(&secret), &opts).unwrap();
    assert_eq!(c.call_raw(Op::Ping, &[b"abc"]).unwrap().body, b"cba");
    assert_eq!(plain_counters.sealed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_sealing_server_refuses_a_plaintext_hello() {
    let secret = Secret::generate().unwrap();
    let (addr, store, counters) = serve(&secret, true);
    let mut s = TcpStream::connect(&addr).unwrap();
    let challenge = read_frame(&mut s, 4096).unwrap();
    let nonce = decode_challenge(&challenge.body).unwrap();
    let hello = Hello::new(
        &secret.key_for(Claim::Component).unwrap(),
        Claim::Component,
        &nonce,
    )
    .unwrap();
    write_frame(&mut s, Op::Hello, 0, 0, &[&hello.encode()]).unwrap();
    let answer = read_frame(&mut s, 4096).unwrap();
    let e = answer.error().expect("an error frame");
    assert_eq!(e.code, ErrorCode::AuthFailed);
    assert!(e.message.contains("asked for plaintext"), "{}", e.message);
    assert!(store.0.lock().unwrap().is_empty());
    // Counted once the refusal is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counters.auth_failures.load(Ordering::Relaxed) == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(counters.auth_failures.load(Ordering::Relaxed), 1);
}

/// When a relay's server closed its side (`None`: not yet).
type Closed = Arc<Mutex<Option<std::time::Instant>>>;

/// A TCP relay to `server` for one client: the server's bytes go back as
/// they come; the client's go through `forward(client, server)`. Returns
/// the relay's address and when the server closed.
fn relay(
    server: String,
    forward: impl FnOnce(TcpStream, &mut TcpStream) + Send + 'static,
) -> (String, Closed) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let closed: Closed = Arc::default();
    let when = closed.clone();
    std::thread::spawn(move || {
        let (client, _) = l.accept().unwrap();
        let mut up = TcpStream::connect(server).unwrap();
        let (mut c2, mut up2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut up2, &mut c2);
            *when.lock().unwrap() = Some(std::time::Instant::now());
            let _ = c2.shutdown(std::net::Shutdown::Both);
        });
        forward(client, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Both);
    });
    (addr, closed)
}

/// A relay that flips one bit of the client's stream at byte `flip`
/// (counted from the connection's start).
fn flipping_relay(server: String, flip: u64) -> String {
    relay(server, move |mut client, up| {
        let mut buf = [0u8; 4096];
        let mut at = 0u64;
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if (at..at + n as u64).contains(&flip) {
                buf[(flip - at) as usize] ^= 0x10;
            }
            at += n as u64;
            if up.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
    .0
}

#[test]
fn a_byte_flipped_on_the_wire_is_caught_and_nothing_is_stored() {
    let secret = Secret::generate().unwrap();
    let (addr, store, counters) = serve(&secret, true);
    // The client's handshake is a 24-byte header + 105-byte hello; its first
    // sealed record follows. Flip a byte inside that record's ciphertext.
    let via = flipping_relay(addr.clone(), 24 + 105 + 4 + 30);
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let c = Client::connect(&via, &Credentials::component(&secret), &opts).unwrap();
    let err = c.call_raw(Op::Ping, &[&[0xab; 512]]).unwrap_err();
    assert!(
        matches!(err, TransportError::Broken { .. }),
        "expected the connection to be closed, got {err}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        store.0.lock().unwrap().is_empty(),
        "an altered request was served"
    );
    assert_eq!(counters.tampered.load(Ordering::Relaxed), 1);
    // On plaintext the same flip goes unnoticed: what sealing is for.
    let (plain, store, _) = serve(&secret, false);
    let via = flipping_relay(plain, 24 + 73 + 24 + 30);
    let c = Client::connect(&via, &Credentials::component(&secret), &opts).unwrap();
    let f = c.call_raw(Op::Ping, &[&[0xab; 512]]).unwrap();
    assert_eq!(store.0.lock().unwrap().len(), 1);
    assert!(
        f.body.contains(&(0xab ^ 0x10)),
        "the flip reached the handler"
    );
}

/// Random bytes where sealed records should be: the reader says so with an
/// error (or a clean end) and never panics or holds more than one record.
#[test]
fn random_bytes_on_a_sealed_link_are_refused_without_panic() {
    use lego_transport::link::ReadHalf;
    use lego_transport::seal::SealedRead;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let key = [7u8; 32];
    for case in 0..300 {
        let len = (next() % 3000) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Some cases get a plausible length prefix, so the body is read and
        // must fail authentication.
        if case % 3 == 0 && len >= 4 {
            let l = ((len - 4) as u32).to_le_bytes();
            bytes[..4].copy_from_slice(&l);
        }
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (early, rest) = bytes.split_at(len.min((next() % 8) as usize));
        let writer = std::thread::spawn({
            let rest = rest.to_vec();
            let mut a = a;
            move || {
                let _ = a.write_all(&rest);
            }
        });
        let inner: ReadHalf = Box::new(b);
        let mut r = SealedRead::new(inner, &key, early);
        let mut out = [0u8; 4096];
        let got = r.read(&mut out);
        match got {
            Ok(0) => assert!(len < 4, "case {case}: {len} bytes read as a clean end"),
            Ok(n) => panic!("case {case}: {n} bytes of random data passed as a sealed record"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ),
                "case {case}: {e}"
            ),
        }
        writer.join().unwrap();
    }
}

/// A peer that trickles a sealed record a byte at a time cannot hold a
/// server thread past the deadline of the whole read: a relay passes the
/// handshake, then one byte every 100 ms.
#[test]
fn a_trickled_sealed_record_is_cut_off_at_the_deadline() {
    let secret = Secret::generate().unwrap();
    let store = Arc::new(Store::default());
    let cfg = ServerConfig {
        seal: true,
        idle_component: Duration::from_millis(800),
        frame_timeout: Duration::from_millis(800),
        ..ServerConfig::new("trickle", secret.clone())
    };
    let h = spawn_server(listen("127.0.0.1:0").unwrap(), cfg, store.clone()).unwrap();
    // The hello (24 + 105 bytes) at once, then a byte at a time.
    let (via, closed) = relay(h.local_addr.clone(), |mut client, up| {
        let mut hello = [0u8; 129];
        client.read_exact(&mut hello).unwrap();
        up.write_all(&hello).unwrap();
        let mut b = [0u8; 1];
        while client.read_exact(&mut b).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
            if up.write_all(&b).is_err() {
                break;
            }
        }
    });
    let c = Client::connect(
        &via,
        &Credentials::component(&secret),
        &ClientOptions::default(),
    )
    .unwrap();
    let sent = std::time::Instant::now();
    let id = c.send(Op::Ping, &[&[1u8; 300]]).unwrap();
    let deadline = sent + Duration::from_secs(10);
    while closed.lock().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = closed
        .lock()
        .unwrap()
        .expect("the server closed the connection")
        - sent;
    // The record is 320 bytes: trickled whole it would take 32 s.
    assert!(took < Duration::from_secs(3), "held for {took:?}");
    assert!(c.wait(id).is_err());
    assert!(store.0.lock().unwrap().is_empty());
    assert_eq!(h.counters.timed_out.load(Ordering::Relaxed), 1);
}
