//! The transport's floor: a bare 4 KiB TCP request/response on loopback
//! (64 bytes out, 4096 back, one in flight, Nagle off), with no lego code on
//! the path. `lego bench excache` prints it beside the runtime's remote-fault
//! latency.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::Result;
use lego_wire::PAGE_SIZE;

use super::stats::Samples;

/// Round-trip latencies in microseconds.
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
    /// Round trips per second.
    pub per_s: f64,
}

/// Starts a server that answers every 64-byte request with 4096 bytes.
fn echo_server() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_nodelay(true);
                    let (mut req, page) = ([0u8; 64], [7u8; PAGE_SIZE]);
                    while s.read_exact(&mut req).is_ok() {
                        if s.write_all(&page).is_err() {
                            break;
                        }
                    }
                });
            }
        })?;
    Ok(addr)
}

/// Measures `ops` round trips against a fresh in-process server.
pub fn bare_tcp(ops: usize) -> Result<Rtt> {
    let addr = echo_server()?;
    let mut s = TcpStream::connect(&addr)?;
    s.set_nodelay(true)?;
    let (req, mut page) = ([1u8; 64], [0u8; PAGE_SIZE]);
    let mut lat = Samples::with_capacity(ops);
    let t0 = Instant::now();
    for _ in 0..ops.max(1) {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut page)?;
        lat.push(t.elapsed());
    }
    Ok(Rtt {
        p50_us: lat.percentile_us(50.0),
        p99_us: lat.percentile_us(99.0),
        per_s: ops.max(1) as f64 / t0.elapsed().as_secs_f64(),
    })
}
