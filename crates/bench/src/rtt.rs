//! The transport's floor: a bare 4 KiB TCP request/response on loopback
//! (64 bytes out, 4096 back, one in flight, Nagle off), with no lego code on
//! the path, both with blocking reads and with both ends busy-polling (as the
//! runtime and the memory monitor do while they expect an answer). `lego
//! bench` prints it beside lego's own latencies.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use crate::Result;
use lego_wire::PAGE_SIZE;

use super::stats::Samples;
use lego_cluster::cpus::{pin_current_thread, CpuList};

/// Round-trip latencies in microseconds.
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
    /// Round trips per second.
    pub per_s: f64,
}

/// Reads exactly `buf.len()` bytes; with `spin`, polls a non-blocking socket.
fn read_all(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> std::io::Result<()> {
    if !spin {
        return s.read_exact(buf);
    }
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts a server that answers every 64-byte request with 4096 bytes.
fn echo_server(cpus: Option<CpuList>, spin: bool) -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || {
            if let Some(c) = &cpus {
                let _ = pin_current_thread(&c.0);
            }
            for mut s in l.incoming().flatten() {
                let _ = s.set_nodelay(true);
                let _ = s.set_nonblocking(spin);
                let (mut req, page) = ([0u8; 64], [7u8; PAGE_SIZE]);
                while read_all(&mut s, &mut req, spin).is_ok() {
                    // A non-blocking write of 4 KiB into an empty socket
                    // buffer completes at once.
                    if s.write_all(&page).is_err() {
                        break;
                    }
                }
            }
        })?;
    Ok(addr)
}

/// Measures `ops` round trips against a fresh in-process server, whose
/// thread runs on `server_cpus` (the caller's thread stays where it is).
pub fn bare_tcp(ops: usize, server_cpus: Option<CpuList>, spin: bool) -> Result<Rtt> {
    let addr = echo_server(server_cpus, spin)?;
    let mut s = TcpStream::connect(&addr)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(spin)?;
    let (req, mut page) = ([1u8; 64], [0u8; PAGE_SIZE]);
    let mut lat = Samples::with_capacity(ops);
    let t0 = Instant::now();
    for _ in 0..ops.max(1) {
        let t = Instant::now();
        s.write_all(&req)?;
        read_all(&mut s, &mut page, spin)?;
        lat.push(t.elapsed());
    }
    Ok(Rtt {
        p50_us: lat.percentile_us(50.0),
        p99_us: lat.percentile_us(99.0),
        per_s: ops.max(1) as f64 / t0.elapsed().as_secs_f64(),
    })
}
