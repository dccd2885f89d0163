//! A server holds against peers that come in numbers, trickle, or idle:
//! connection caps (in all and per peer address), deadlines for the whole
//! handshake and each whole frame, idle timeouts, and a client that makes
//! an idle connection anew before the server drops it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_transport::{
    listen, spawn_server, Client, ClientOptions, Credentials, Handler, PeerInfo, Reject,
    ServerConfig, ServerCounters,
};
use lego_wire::auth::Secret;
use lego_wire::frame::Header;
use lego_wire::Op;

struct Echo;

impl Handler for Echo {
    fn handle(&self, _: &PeerInfo, _: Op, body: &[u8], reply: &mut Vec<u8>) -> Result<(), Reject> {
        reply.extend_from_slice(body);
        Ok(())
    }
}

fn serve(cfg: ServerConfig) -> (String, Arc<ServerCounters>) {
    let h = spawn_server(listen("127.0.0.1:0").unwrap(), cfg, Arc::new(Echo)).unwrap();
    (h.local_addr, h.counters)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until the server closes; returns when, measured from `since`.
fn closed_after(s: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn connections_past_the_caps_are_refused_with_a_reason() {
    let secret = Secret::generate().unwrap();
    let (addr, counters) = serve(ServerConfig {
        max_connections: 6,
        max_per_peer: 4,
        ..ServerConfig::new("caps", secret.clone())
    });
    let creds = Credentials::component(&secret);
    let opts = ClientOptions::default();
    let held: Vec<Client> = (0..4)
        .map(|_| Client::connect(&addr, &creds, &opts).unwrap())
        .collect();
    let e = Client::connect(&addr, &creds, &opts)
        .err()
        .expect("a fifth from one peer");
    assert!(e.to_string().contains("the most one peer may have"), "{e}");
    assert_eq!(counters.over_limit.load(Ordering::Relaxed), 1);
    // Room again once one goes.
    drop(held);
    wait_until("connections to close", || {
        counters.open_connections.load(Ordering::Relaxed) == 0
    });
    let again = Client::connect(&addr, &creds, &opts).unwrap();
    again.call_raw(Op::Ping, &[b"x"]).unwrap();
}

#[test]
fn a_trickling_or_idle_peer_is_dropped_on_time() {
    let secret = Secret::generate().unwrap();
    let (addr, counters) = serve(ServerConfig {
        handshake_timeout: Duration::from_millis(600),
        frame_timeout: Duration::from_millis(600),
        idle_component: Duration::from_millis(800),
        ..ServerConfig::new("deadlines", secret.clone())
    });

    // A handshake never finished, one byte every 200 ms: each read is in
    // time, the whole is not.
    let mut s = TcpStream::connect(&addr).unwrap();
    let t = Instant::now();
    let trickler = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"LG\x02\x00" {
                std::thread::sleep(Duration::from_millis(200));
                if w.write_all(&[*b]).is_err() {
                    return;
                }
            }
        })
    };
    let took = closed_after(&mut s, t);
    assert!(took < Duration::from_secs(2), "handshake held for {took:?}");
    trickler.join().unwrap();

    // A frame started and never finished, trickled after the handshake.
    let c = Client::connect(
        &addr,
        &Credentials::component(&secret),
        &ClientOptions::default(),
    )
    .unwrap();
    c.call_raw(Op::Ping, &[b"hi"]).unwrap();
    let before = counters.timed_out.load(Ordering::Relaxed);
    // The idle timeout drops the authenticated connection left alone.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        counters.timed_out.load(Ordering::Relaxed) > before,
        "idle dropped"
    );
    assert!(
        c.call_raw(Op::Ping, &[b"hi"]).is_err(),
        "the idle connection is gone"
    );

    // A frame started after the handshake and never finished.
    let mut raw = authenticated(&addr, &secret);
    let t = Instant::now();
    let header = Header {
        op: Op::Ping,
        flags: 0,
        req_id: 1,
        len: 1000,
    }
    .encode();
    raw.write_all(&header).unwrap();
    raw.write_all(b"only a little").unwrap();
    let took = closed_after(&mut raw, t);
    assert!(
        took < Duration::from_secs(2),
        "a partial frame held for {took:?}"
    );
}

/// A raw socket that did the handshake by hand.
fn authenticated(addr: &str, secret: &Secret) -> TcpStream {
    use lego_wire::auth::{decode_challenge, Claim, Hello};
    use lego_wire::frame::{read_frame, write_frame};
    let mut s = TcpStream::connect(addr).unwrap();
    let challenge = read_frame(&mut s, 4096).unwrap();
    let nonce = decode_challenge(&challenge.body).unwrap();
    let hello = Hello::new(
        &secret.key_for(Claim::Component).unwrap(),
        Claim::Component,
        &nonce,
    )
    .unwrap();
    write_frame(&mut s, Op::Hello, 0, 0, &[&hello.encode()]).unwrap();
    let welcome = read_frame(&mut s, 4096).unwrap();
    assert_eq!(welcome.header.op, Op::Welcome);
    s
}

#[test]
fn a_client_makes_an_idle_connection_anew() {
    let secret = Secret::generate().unwrap();
    let (addr, counters) = serve(ServerConfig {
        idle_component: Duration::from_millis(600),
        ..ServerConfig::new("idle", secret.clone())
    });
    let opts = ClientOptions {
        max_idle: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let r = lego_transport::Redial::new(addr, Credentials::component(&secret), opts);
    r.client().unwrap().call_raw(Op::Ping, &[b"1"]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        counters.timed_out.load(Ordering::Relaxed),
        1,
        "the server dropped it"
    );
    // Not an error: the idle connection is made anew before it is used.
    r.client().unwrap().call_raw(Op::Ping, &[b"2"]).unwrap();
    assert_eq!(counters.connections.load(Ordering::Relaxed), 2);
}
