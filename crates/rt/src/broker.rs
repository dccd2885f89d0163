//! The runtime's way out of the job's jail: the broker channel the helper
//! left open (`LEGO_RT_BROKER`, a `SOCK_SEQPACKET` socket whose other end
//! the processor monitor holds; see `lego_processor::broker`).
//!
//! - [`connect`]: a connection to a component of the cluster. The runtime
//!   sends the address with one end of a fresh socket pair; the monitor
//!   connects from the host's network and answers on it with the connected
//!   socket. A private pair per request: concurrent requests of threads and
//!   forked processes never take each other's answers.
//! - [`report_space`]: this process's address space (the monitor frees it
//!   when the process is gone, or after an exec).
//! - [`report_counters`]: the job's counters.
//!
//! Without a broker (the library loaded by hand), connections are made
//! directly and nothing is reported.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The broker's descriptor (-1: none).
static BROKER: AtomicI32 = AtomicI32::new(-1);

/// Remembers the broker's descriptor (read once at start, from the environment).
pub fn init(fd: Option<RawFd>) {
    BROKER.store(fd.unwrap_or(-1), Ordering::Relaxed);
}

fn broker() -> Option<BorrowedFd<'static>> {
    let fd = BROKER.load(Ordering::Relaxed);
    // SAFETY: the descriptor was left open for this process by the helper
    // and is never closed by the runtime; the program closing it makes
    // every later use fail with EBADF, nothing worse.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Whether connections go through the broker.
pub fn present() -> bool {
    broker().is_some()
}

fn send(msg: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let b = broker().ok_or_else(|| std::io::Error::other("no broker"))?;
    let fds;
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(b, &[IoSlice::new(msg)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// A connection to `addr`, made by the processor monitor, within `timeout`.
pub fn connect(addr: &str, timeout: Duration) -> std::io::Result<OwnedFd> {
    let (mine, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let msg = [b"C".as_slice(), addr.as_bytes()].concat();
    send(&msg, Some(theirs.as_fd()))?;
    drop(theirs);
    rustix::net::sockopt::set_socket_timeout(
        &mine,
        rustix::net::sockopt::Timeout::Recv,
        Some(timeout.max(Duration::from_millis(1))),
    )?;
    let mut buf = [0u8; 512];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &mine,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut conn = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            conn = fds.next();
        }
    }
    match (buf.first(), conn) {
        (Some(b'+'), Some(fd)) if got.bytes >= 1 => Ok(fd),
        _ if got.bytes == 0 => Err(std::io::Error::other(
            "the processor monitor did not answer",
        )),
        _ => Err(std::io::Error::other(
            String::from_utf8_lossy(&buf[1..got.bytes.min(buf.len())]).into_owned(),
        )),
    }
}

/// Tells the processor monitor this process's address space.
pub fn report_space(asid: u64) {
    let mut msg = [0u8; 9];
    msg[0] = b'S';
    msg[1..].copy_from_slice(&asid.to_le_bytes());
    let _ = send(&msg, None);
}

/// Tells the processor monitor the job's counters (JSON).
pub fn report_counters(json: &str) {
    let msg = [b"T".as_slice(), json.as_bytes()].concat();
    let _ = send(&msg, None);
}
