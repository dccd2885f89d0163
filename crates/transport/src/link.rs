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

macro_rules! link_read {
    ($t:ty) => {
        impl LinkRead for $t {
            fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, t)
            }

            fn spin_until_readable(&self, spin: Duration) {
                if spin.is_zero() || self.set_nonblocking(true).is_err() {
                    return;
                }
                let start = std::time::Instant::now();
                let mut probe = [0u8; 1];
                while start.elapsed() < spin {
                    match self.peek(&mut probe) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                        _ => break,
                    }
                }
                let _ = self.set_nonblocking(false);
            }
        }
    };
}

link_read!(TcpStream);

impl LinkRead for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
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
}

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

impl Link for TcpLink {
    fn peer(&self) -> String {
        self.0
            .peer_addr()
            .map_or_else(|_| "tcp peer".into(), |a| a.to_string())
    }
    fn split(self: Box<Self>) -> io::Result<(ReadHalf, WriteHalf)> {
        let w = self.0.try_clone()?;
        Ok((Box::new(self.0), Box::new(w)))
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
}

impl Transport for Tcp {
    fn connect(&self, addr: &str, timeout: Duration) -> io::Result<Box<dyn Link>> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for sa in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
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
        s.set_nodelay(true)?;
        Ok(Box::new(TcpLink(s)))
    }
    fn local_addr(&self) -> String {
        TcpListener::local_addr(self).map_or_else(|e| format!("?({e})"), |a| a.to_string())
    }
}

impl Transport for Unix {
    fn connect(&self, addr: &str, _timeout: Duration) -> io::Result<Box<dyn Link>> {
        Ok(Box::new(UnixLink(UnixStream::connect(addr)?)))
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
pub fn connect(addr: &str, timeout: Duration) -> Result<Box<dyn Link>, TransportError> {
    let (t, a) = transport_for(addr);
    t.connect(a, timeout)
        .map_err(|source| TransportError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// Listens on `addr` over the transport it names.
pub fn listen(addr: &str) -> Result<Box<dyn Listener>, TransportError> {
    let (t, a) = transport_for(addr);
    t.listen(a).map_err(|source| TransportError::Listen {
        addr: addr.to_string(),
        source,
    })
}
