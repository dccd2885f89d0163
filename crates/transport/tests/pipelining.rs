//! Many threads with requests in flight on one client, over TCP and Unix
//! sockets: every answer reaches the thread that asked, and a server that goes
//! away fails every waiter quickly instead of hanging it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_transport::{
    listen, spawn_server, Client, ClientOptions, Credentials, Handler, PeerInfo, Reject,
    ServerConfig,
};
use lego_wire::auth::Secret;
use lego_wire::{ErrorCode, Op};

/// Answers a ping with its body reversed; refuses anything else.
struct Echo;

impl Handler for Echo {
    fn handle(&self, _: &PeerInfo, op: Op, body: &[u8], reply: &mut Vec<u8>) -> Result<(), Reject> {
        match op {
            Op::Ping => {
                reply.extend(body.iter().rev());
                Ok(())
            }
            _ => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("echo serves only ping, not {op}"),
            )),
        }
    }
}

fn serve(addr: &str, secret: &Secret) -> String {
    let l = listen(addr).unwrap();
    spawn_server(l, ServerConfig::new("echo", secret.clone()), Arc::new(Echo))
        .unwrap()
        .local_addr
}

fn hammer(addr: &str, secret: &Secret) {
    let client = Client::connect(
        addr,
        &Credentials::component(secret),
        &ClientOptions::default(),
    )
    .unwrap();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let c = client.clone();
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    let body: Vec<u8> = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    // Alternate single calls with bursts of pipelined sends.
                    if i % 5 == 0 {
                        let ids: Vec<u64> = (0..4)
                            .map(|_| c.send_buffered(Op::Ping, &[&body]).unwrap())
                            .collect();
                        c.flush().unwrap();
                        for id in ids.into_iter().rev() {
                            let f = c.wait(id).unwrap();
                            assert_eq!(f.body, body.iter().rev().copied().collect::<Vec<_>>());
                        }
                    } else {
                        let f = c.call_raw(Op::Ping, &[&body]).unwrap();
                        assert_eq!(f.body, body.iter().rev().copied().collect::<Vec<_>>());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let err = client.call_raw(Op::ReadPages, &[b"x"]).unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::UnknownOp));
}

#[test]
fn pipelined_answers_reach_their_callers_over_tcp() {
    let secret = Secret::generate().unwrap();
    let addr = serve("127.0.0.1:0", &secret);
    hammer(&addr, &secret);
}

#[test]
fn pipelined_answers_reach_their_callers_over_unix_sockets() {
    let secret = Secret::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("lego-transport-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = serve(&format!("unix:{}", dir.join("s.sock").display()), &secret);
    assert!(addr.starts_with("unix:"));
    hammer(&addr, &secret);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_server_times_out_every_waiter() {
    // A listener that accepts and never speaks: the handshake times out.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let _keep = std::thread::spawn(move || {
        let _conns: Vec<_> = l.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
    });
    let opts = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let t = Instant::now();
    let err = Client::connect(
        &addr,
        &Credentials::component(&Secret::generate().unwrap()),
        &opts,
    )
    .err()
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(err.to_string().contains("handshake"), "{err}");
}

/// Answers pings, and never answers anything else within a test's patience.
struct Stuck;

impl Handler for Stuck {
    fn handle(&self, _: &PeerInfo, op: Op, _: &[u8], _: &mut Vec<u8>) -> Result<(), Reject> {
        if op != Op::Ping {
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(())
    }
}

#[test]
fn a_stuck_request_times_out_and_breaks_the_connection_for_everyone() {
    let secret = Secret::generate().unwrap();
    let l = listen("127.0.0.1:0").unwrap();
    let addr = spawn_server(
        l,
        ServerConfig::new("stuck", secret.clone()),
        Arc::new(Stuck),
    )
    .unwrap()
    .local_addr;
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let c = Client::connect(&addr, &Credentials::component(&secret), &opts).unwrap();
    c.call_raw(Op::Ping, &[]).unwrap();
    let t = Instant::now();
    let stuck = c.send(Op::MemStats, &[]).unwrap();
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.call_raw(Op::Ping, &[]))
    };
    let err = c.wait(stuck).unwrap_err();
    assert!(err.to_string().contains("answer within 300 ms"), "{err}");
    assert!(err.is_unreachable());
    assert!(
        waiter.join().unwrap().is_err(),
        "the other waiter is failed too, not left hanging"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(c.is_broken());
    assert!(
        c.call_raw(Op::Ping, &[]).is_err(),
        "a broken connection fails at once"
    );
}
