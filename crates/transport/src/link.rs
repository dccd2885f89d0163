//! Links and transports: how bytes get between two components.
//!
//! Addresses name their transport: `unix:/path/to/sock` is a Unix socket,
//! anything else (`127.0.0.1:7000`, `tcp:host:port`) is TCP.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::TransportError;

/// The read half of a link: a stream whose reads can be bounded in time.
pub trait LinkRead: Read + Send {
    /// Bounds how long a read may block (`None`: forever).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;

    /// Busy-waits up to `spin` for bytes to arrive, so that a reply expected
    /// within microseconds is read without the cost of a sleeping thread's
    /// wakeup. Returns early when data is there; a no-op by default.
    fn spin_until_readable(&self, _spin: Duration) {}
}

/// Busy-waits up to `spin` until `sock` has bytes to read (or an error or
/// end of stream to report), peeking without blocking. Between peeks it
/// yields the CPU, so that a spinning thread never keeps a runnable one off
/// its CPU (two memory monitors that share a CPU would otherwise take turns
/// only when the scheduler preempts one).
fn spin_socket(sock: socket2::SockRef<'_>, spin: Duration) {
    if spin.is_zero() {
        return;
    }
    let start = std::time::Instant::now();
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    while start.elapsed() < spin {
        match sock.recv_with_flags(&mut probe, libc_flags::PEEK_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            _ => break,
        }
    }
}

/// MSG_PEEK | MSG_DONTWAIT (Linux values).
mod libc_flags {
    pub const PEEK_DONTWAIT: i32 = 0x02 | 0x40;
}

impl LinkRead for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }

    fn spin_until_readable(&self, spin: Duration) {
        spin_socket(socket2::SockRef::from(self), spin)
    }
}

impl LinkRead for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }

    fn spin_until_readable(&self, spin: Duration) {
        spin_socket(socket2::SockRef::from(self), spin)
    }
}

/// The read half of a link.
pub type ReadHalf = Box<dyn LinkRead>;
/// The write half of a link.
pub type WriteHalf = Box<dyn Write + Send>;

/// A connected, reliable, ordered byte stream between two components.
pub trait Link: Send {
    /// The peer's address, for logs and errors.
    fn peer(&self) -> String;
    /// Splits into halves that two threads may use at once.
    fn split(self: Box<Self>) -> io::Result<(ReadHalf, WriteHalf)>;
    /// The socket itself (to pass it to another process, which takes it
    /// back with [`adopt`]).
    fn into_fd(self: Box<Self>) -> std::os::fd::OwnedFd;
    /// A handle that can end the connection from another thread.
    fn closer(&self) -> io::Result<Closer>;
    /// Marks what this end sends as bulk traffic (DSCP CS1, "lower effort
    /// than best effort"), so that links shaped with traffic classes (the
    /// rack's, or a datacenter's switches) send programs' requests first. A
    /// no-op where there is no IP header.
    fn mark_bulk(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The IP TOS byte of bulk traffic: DSCP CS1 (8) shifted past the two ECN
/// bits. The rack's shaping sends it in its own, lower class.
pub const BULK_TOS: u32 = 0x20;

/// A bound endpoint that accepts links.
pub trait Listener: Send {
    fn accept(&self) -> io::Result<Box<dyn Link>>;
    /// The address peers should connect to (with the real port when bound to 0).
    fn local_addr(&self) -> String;
}

/// A way to move bytes: TCP, Unix sockets, and later shared-memory rings.
pub trait Transport: Send + Sync {
    fn connect(&self, addr: &str, timeout: Duration) -> io::Result<Box<dyn Link>>;
    fn listen(&self, addr: &str) -> io::Result<Box<dyn Listener>>;
}

/// TCP with TCP_NODELAY.
pub struct Tcp;
/// Unix domain stream sockets.
pub struct Unix;

struct TcpLink(TcpStream);
struct UnixLink(UnixStream);

/// Socket buffer size of links: a whole batch of pages (1 MiB and more)
/// fits, so a sender is never stalled waiting for a busy receiver to drain
/// its socket (each stall costs a cross-CPU wakeup).
const SOCKET_BUFFER: usize = 4 << 20;

/// Best effort: the kernel caps the sizes at net.core.{r,w}mem_max.
fn size_buffers(sock: socket2::SockRef<'_>) {
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
}

fn tune_tcp(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    size_buffers(socket2::SockRef::from(s));
    Ok(())
}

/// Ends a connection from another thread (its reads and writes fail at
/// once): how a revoked member's connections are closed.
pub struct Closer(socket2::Socket);

impl Closer {
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl Link for TcpLink {
    fn mark_bulk(&self) -> io::Result<()> {
        let sock = socket2::SockRef::from(&self.0);
        match self.0.peer_addr()? {
            std::net::SocketAddr::V4(_) => sock.set_tos(BULK_TOS),
            std::net::SocketAddr::V6(_) => sock.set_tclass_v6(BULK_TOS),
        }
    }
    fn peer(&self) -> String {
        self.0
            .peer_addr()
            .map_or_else(|_| "tcp peer".into(), |a| a.to_string())
    }
    fn split(self: Box<Self>) -> io::Result<(ReadHalf, WriteHalf)> {
        let w = self.0.try_clone()?;
        Ok((Box::new(self.0), Box::new(w)))
    }
    fn into_fd(self: Box<Self>) -> std::os::fd::OwnedFd {
        self.0.into()
    }
    fn closer(&self) -> io::Result<Closer> {
        Ok(Closer(
            std::os::fd::OwnedFd::from(self.0.try_clone()?).into(),
        ))
    }
}

impl Link for UnixLink {
    fn peer(&self) -> String {
        "unix peer".into()
    }
    fn split(self: Box<Self>) -> io::Result<(ReadHalf, WriteHalf)> {
        let w = self.0.try_clone()?;
        Ok((Box::new(self.0), Box::new(w)))
    }
    fn into_fd(self: Box<Self>) -> std::os::fd::OwnedFd {
        self.0.into()
    }
    fn closer(&self) -> io::Result<Closer> {
        Ok(Closer(
            std::os::fd::OwnedFd::from(self.0.try_clone()?).into(),
        ))
    }
}

impl Transport for Tcp {
    fn connect(&self, addr: &str, timeout: Duration) -> io::Result<Box<dyn Link>> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for sa in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    tune_tcp(&s)?;
                    return Ok(Box::new(TcpLink(s)));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn listen(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(TcpListener::bind(addr)?))
    }
}

impl Listener for TcpListener {
    fn accept(&self) -> io::Result<Box<dyn Link>> {
        let (s, _) = TcpListener::accept(self)?;
        tune_tcp(&s)?;
        Ok(Box::new(TcpLink(s)))
    }
    fn local_addr(&self) -> String {
        TcpListener::local_addr(self).map_or_else(|e| format!("?({e})"), |a| a.to_string())
    }
}

impl Transport for Unix {
    fn connect(&self, addr: &str, _timeout: Duration) -> io::Result<Box<dyn Link>> {
        let s = UnixStream::connect(addr)?;
        size_buffers(socket2::SockRef::from(&s));
        Ok(Box::new(UnixLink(s)))
    }

    fn listen(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        // A stale socket file from a previous run would make bind fail.
        if std::fs::metadata(addr).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(addr)?;
        }
        Ok(Box::new(UnixListenerAt(
            UnixListener::bind(addr)?,
            addr.to_string(),
        )))
    }
}

struct UnixListenerAt(UnixListener, String);

impl Listener for UnixListenerAt {
    fn accept(&self) -> io::Result<Box<dyn Link>> {
        let (s, _) = self.0.accept()?;
        size_buffers(socket2::SockRef::from(&s));
        Ok(Box::new(UnixLink(s)))
    }
    fn local_addr(&self) -> String {
        format!("unix:{}", self.1)
    }
}

/// Picks the transport an address names and strips its scheme.
pub fn transport_for(addr: &str) -> (&'static dyn Transport, &str) {
    if let Some(path) = addr.strip_prefix("unix:") {
        (&Unix, path)
    } else {
        (&Tcp, addr.strip_prefix("tcp:").unwrap_or(addr))
    }
}

/// Connects to `addr` over the transport it names.
///
/// `addr` may list several addresses, `A,B,C` (the managers of a cluster
/// whose leader is elected on etcd: only the leader listens): they are
/// tried in turn, from the one that answered last, and the first that
/// connects is used.
pub fn connect(addr: &str, timeout: Duration) -> Result<Box<dyn Link>, TransportError> {
    if !addr.contains(',') {
        return connect_one(addr, timeout);
    }
    let list: Vec<&str> = addr.split(',').filter(|a| !a.is_empty()).collect();
    let start = crate::lock(&LAST_GOOD).get(addr).copied().unwrap_or(0);
    let mut last = None;
    for i in 0..list.len() {
        let n = (start + i) % list.len();
        match connect_one(list[n], timeout) {
            Ok(l) => {
                crate::lock(&LAST_GOOD).insert(addr.to_string(), n);
                return Ok(l);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| TransportError::Connect {
        addr: addr.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "no address in the list"),
    }))
}

/// For each list of addresses, the one that connected last.
static LAST_GOOD: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

fn connect_one(addr: &str, timeout: Duration) -> Result<Box<dyn Link>, TransportError> {
    let (t, a) = transport_for(addr);
    t.connect(a, timeout)
        .map_err(|source| TransportError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// A link over a socket connected elsewhere (by a broker that passed the
/// descriptor): TCP or Unix, whichever it is.
pub fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<Box<dyn Link>> {
    let sock = socket2::Socket::from(fd);
    if sock.local_addr()?.domain() == socket2::Domain::UNIX {
        let s = UnixStream::from(std::os::fd::OwnedFd::from(sock));
        size_buffers(socket2::SockRef::from(&s));
        Ok(Box::new(UnixLink(s)))
    } else {
        let s = TcpStream::from(std::os::fd::OwnedFd::from(sock));
        tune_tcp(&s)?;
        Ok(Box::new(TcpLink(s)))
    }
}

/// Listens on `addr` over the transport it names.
pub fn listen(addr: &str) -> Result<Box<dyn Listener>, TransportError> {
    let (t, a) = transport_for(addr);
    t.listen(a).map_err(|source| TransportError::Listen {
        addr: addr.to_string(),
        source,
    })
}

/// Aborts every TCP connection of this host (its network namespace) to
/// `addr`, whoever holds it, with the kernel's socket destroy (`ss -K`,
/// needs CAP_NET_ADMIN): how a revoked server is cut off from the
/// processes and daemons already connected to it, including a confined
/// job's connections that the processor monitor made for it. Returns how
/// many were aborted; a Unix socket address aborts none.
pub fn sever(addr: &str) -> io::Result<usize> {
    let (_, a) = transport_for(addr);
    if addr.starts_with("unix:") {
        return Ok(0);
    }
    let sa: std::net::SocketAddr = a
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not IP:PORT: {addr}")))?;
    let ip = match sa.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let out = std::process::Command::new("ss")
        .args([
            "-K",
            "-n",
            "-t",
            "dst",
            &ip,
            "dport",
            "=",
            &sa.port().to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ss -K failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // One line per socket aborted, after the header.
    Ok(String::from_utf8_lossy(&out.stdout).lines().skip(1).count())
}
