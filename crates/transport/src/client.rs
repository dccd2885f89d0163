//! An authenticated client connection with many requests in flight.
//!
//! Any number of threads may call [`Client::call`] (or [`Client::send`] then
//! [`Client::wait`]) at once. Requests are written under a mutex; answers are
//! read by whichever waiter currently holds the read half (leader/follower):
//! it delivers answers meant for others into a table and wakes them, and when
//! its own answer arrives it hands the read half on. With one request in flight
//! the caller reads its own answer: no thread hop on the reply path.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use lego_wire::auth::{
    challenge_requires_seal, challenge_server, decode_challenge, welcome_seal, Hello,
};
use lego_wire::frame::{read_body, read_body_into, read_frame, read_header, write_frame, Header};
use lego_wire::{Frame, Op, Request, WireError, DEFAULT_MAX_BODY};

pub use crate::keys::Credentials;
use crate::link::{connect, ReadHalf, WriteHalf};
use crate::seal::{Ephemeral, SealedRead, SealedWrite};
use crate::sync::lock;
use crate::TransportError;

/// Knobs of a client connection.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// How long a request may wait for its answer before the connection is
    /// declared broken.
    pub request_timeout: Duration,
    pub max_body: u32,
    /// Busy-wait this long for an answer before sleeping (0: never spin).
    pub spin: Duration,
    /// [`Redial`](crate::Redial) and [`Pool`](crate::Pool) make a
    /// connection unused this long anew before using it (servers drop idle
    /// ones; see [`crate::server::ServerConfig::idle_vnode`]).
    pub max_idle: Duration,
    /// Ask for a sealed link even if the server does not require one (a
    /// server that requires it is always obeyed).
    pub seal: bool,
    /// Send as bulk traffic ([`crate::Link::mark_bulk`]): copies of whole
    /// vRegions, which programs' requests should overtake on a shaped link.
    pub bulk: bool,
}

/// Whether this process's clients ask for sealing by default (see
/// [`seal_by_default`]).
static SEAL_BY_DEFAULT: AtomicBool = AtomicBool::new(false);

/// Makes every [`ClientOptions::default`] of this process ask for sealed
/// links: a daemon started with `--encrypt on` seals its outgoing links
/// too, even to a server that does not require it.
pub fn seal_by_default(on: bool) {
    SEAL_BY_DEFAULT.store(on, Ordering::Relaxed);
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_body: DEFAULT_MAX_BODY,
            spin: Duration::ZERO,
            max_idle: MAX_IDLE,
            seal: SEAL_BY_DEFAULT.load(Ordering::Relaxed),
            bulk: false,
        }
    }
}

type Answer = Result<Frame, String>;

/// The default [`ClientOptions::max_idle`]: less than any server's idle
/// timeout.
pub const MAX_IDLE: Duration = Duration::from_secs(60);

/// Milliseconds on a clock of this process.
fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

struct Inner {
    peer: String,
    /// Whether the link is sealed ([`crate::seal`]).
    sealed: bool,
    /// When a request was last sent ([`now_ms`]).
    last_used: AtomicU64,
    max_idle_ms: u64,
    max_body: u32,
    timeout_ms: u64,
    spin: Duration,
    next_id: AtomicU64,
    writer: Mutex<BufWriter<WriteHalf>>,
    reader: Mutex<BufReader<ReadHalf>>,
    /// Answers read by a leader for other waiters, and the reason the
    /// connection broke, if it did.
    table: Mutex<Table>,
    wake: Condvar,
}

#[derive(Default)]
struct Table {
    answers: HashMap<u64, Answer>,
    broken: Option<String>,
}

/// A connection to one component. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to `addr` and authenticates with `creds`.
    pub fn connect(
        addr: &str,
        creds: &Credentials,
        opts: &ClientOptions,
    ) -> Result<Client, TransportError> {
        let link = connect(addr, opts.connect_timeout)?;
        if opts.bulk {
            // Best effort: an unmarked copy is only slower for programs.
            let _ = link.mark_bulk();
        }
        Client::over(link, addr, creds, opts)
    }

    /// Authenticates with `creds` over a link already connected to `addr`.
    pub fn over(
        link: Box<dyn crate::Link>,
        addr: &str,
        creds: &Credentials,
        opts: &ClientOptions,
    ) -> Result<Client, TransportError> {
        let peer = addr.to_string();
        let hs_err = |source| TransportError::Handshake {
            peer: peer.clone(),
            source,
        };
        let (r, w) = link.split().map_err(|e| hs_err(WireError::Io(e)))?;
        r.set_read_timeout(Some(opts.connect_timeout))
            .map_err(|e| hs_err(WireError::Io(e)))?;
        let mut reader = BufReader::with_capacity(64 << 10, r);
        let mut writer = BufWriter::with_capacity(64 << 10, w);

        let challenge = read_frame(&mut reader, 4096).map_err(hs_err)?;
        if let Some(e) = challenge.error() {
            return Err(TransportError::AuthRefused {
                peer,
                message: e.message,
            });
        }
        if challenge.header.op != Op::Challenge {
            return Err(hs_err(WireError::malformed(
                "handshake",
                "expected a challenge",
            )));
        }
        let server_nonce = decode_challenge(&challenge.body).map_err(hs_err)?;
        let server = challenge_server(&challenge.body);
        let key = creds
            .key_for_server(server)
            .map_err(|why| TransportError::NoKey {
                peer: peer.clone(),
                server,
                why,
            })?;
        let io_err = |e| hs_err(WireError::Io(e));
        let mine = if opts.seal || challenge_requires_seal(&challenge.body) {
            Some(Ephemeral::generate().map_err(io_err)?)
        } else {
            None
        };
        let hello = Hello::with_seal(
            &key,
            creds.claim,
            &server_nonce,
            mine.as_ref().map(|e| e.public),
        )
        .map_err(hs_err)?;
        write_frame(&mut writer, Op::Hello, 0, 0, &[&hello.encode()]).map_err(hs_err)?;
        writer.flush().map_err(|e| hs_err(WireError::Io(e)))?;
        let welcome = read_frame(&mut reader, 4096).map_err(hs_err)?;
        if let Some(e) = welcome.error() {
            return Err(TransportError::AuthRefused {
                peer,
                message: e.message,
            });
        }
        if welcome.header.op != Op::Welcome
            || !hello.check_welcome(&key, &server_nonce, &welcome.body)
        {
            return Err(TransportError::ServerNotAuthentic { peer });
        }
        let sealed = mine.is_some();
        if let (Some(mine), Some(theirs)) = (mine, welcome_seal(&welcome.body)) {
            let shared = mine.agree(&theirs).map_err(io_err)?;
            let keys = hello.session_keys(&key, &server_nonce, &theirs, &shared);
            let early = reader.buffer().to_vec();
            let r: ReadHalf = Box::new(SealedRead::new(
                reader.into_inner(),
                &keys.to_client,
                &early,
            ));
            reader = BufReader::with_capacity(64 << 10, r);
            let w = writer.into_inner().map_err(|e| io_err(e.into_error()))?;
            let w: WriteHalf = Box::new(SealedWrite::new(w, &keys.to_server));
            writer = BufWriter::with_capacity(64 << 10, w);
        }
        // From now on this bounds every wait for an answer.
        reader
            .get_ref()
            .set_read_timeout(Some(opts.request_timeout))
            .map_err(|e| hs_err(WireError::Io(e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                peer,
                sealed,
                last_used: AtomicU64::new(now_ms()),
                max_idle_ms: opts.max_idle.as_millis() as u64,
                max_body: opts.max_body,
                spin: opts.spin,
                timeout_ms: opts.request_timeout.as_millis() as u64,
                next_id: AtomicU64::new(1),
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                table: Mutex::new(Table::default()),
                wake: Condvar::new(),
            }),
        })
    }

    /// Whether the link is sealed: encrypted and authenticated after the
    /// handshake (asked for by [`ClientOptions::seal`] or required by the server).
    pub fn sealed(&self) -> bool {
        self.inner.sealed
    }

    /// The address this client is connected to.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// Sends a request without waiting; returns its id for [`Client::wait`].
    /// The request is flushed at once.
    pub fn send(&self, op: Op, parts: &[&[u8]]) -> Result<u64, TransportError> {
        self.send_inner(op, parts, true)
    }

    /// Like [`Client::send`] but leaves the request in the write buffer until
    /// the next flushing send or [`Client::flush`]: batches many small requests
    /// into few system calls.
    pub fn send_buffered(&self, op: Op, parts: &[&[u8]]) -> Result<u64, TransportError> {
        self.send_inner(op, parts, false)
    }

    /// Flushes requests queued by [`Client::send_buffered`].
    pub fn flush(&self) -> Result<(), TransportError> {
        let mut w = lock(&self.inner.writer);
        w.flush()
            .map_err(|e| self.break_with(format!("write failed: {e}")))
    }

    fn send_inner(&self, op: Op, parts: &[&[u8]], flush: bool) -> Result<u64, TransportError> {
        if let Some(reason) = &lock(&self.inner.table).broken {
            return Err(self.broken(reason.clone()));
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.inner.max_body as usize {
            return Err(TransportError::Protocol {
                peer: self.inner.peer.clone(),
                source: WireError::TooLarge {
                    len: len.min(u32::MAX as usize) as u32,
                    max: self.inner.max_body,
                },
            });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.last_used.store(now_ms(), Ordering::Relaxed);
        let mut w = lock(&self.inner.writer);
        let res = write_frame(&mut *w, op, 0, id, parts).and_then(|()| {
            if flush {
                w.flush()?;
            }
            Ok(())
        });
        drop(w);
        res.map_err(|e| self.break_with(format!("write failed: {e}")))?;
        Ok(id)
    }

    /// Waits for the answer to request `id`. An error answer becomes
    /// [`TransportError::Remote`].
    pub fn wait(&self, id: u64) -> Result<Frame, TransportError> {
        let frame = self.wait_frame(id, None)?;
        self.remote_error(&frame)?;
        Ok(frame)
    }

    /// Like [`Client::wait`], but the answer's body goes into `buf` from
    /// byte `at` on (resized to fit, never zeroed again once large enough):
    /// a caller that reuses one buffer moves large answers with no
    /// allocation, and can choose where in it they land.
    pub fn wait_into(
        &self,
        id: u64,
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<Header, TransportError> {
        let mut frame = self.wait_frame(id, Some((buf, at)))?;
        if frame.header.is_error() {
            frame.body = buf[at..].to_vec();
            self.remote_error(&frame)?;
        }
        Ok(frame.header)
    }

    /// Sends a raw request and waits for its answer into `buf` (see [`Client::wait_into`]).
    pub fn call_into(
        &self,
        op: Op,
        parts: &[&[u8]],
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<Header, TransportError> {
        let id = self.send(op, parts)?;
        self.wait_into(id, buf, at)
    }

    fn remote_error(&self, frame: &Frame) -> Result<(), TransportError> {
        match frame.error() {
            Some(e) => Err(TransportError::Remote {
                peer: self.inner.peer.clone(),
                op: frame.header.op,
                code: e.code,
                message: e.message,
            }),
            None => Ok(()),
        }
    }

    /// Waits for the frame answering `id`. With `into` (a buffer and an
    /// offset), the body of that frame is read into the buffer at the offset
    /// and the returned frame's body is empty.
    fn wait_frame(
        &self,
        id: u64,
        mut into: Option<(&mut Vec<u8>, usize)>,
    ) -> Result<Frame, TransportError> {
        let inner = &*self.inner;
        let mut table = lock(&inner.table);
        loop {
            if let Some(answer) = table.answers.remove(&id) {
                let mut f = answer.map_err(|r| self.broken(r))?;
                if let Some((buf, at)) = into {
                    buf.truncate(at);
                    buf.resize(at, 0);
                    buf.extend_from_slice(&f.body);
                    f.body = Vec::new();
                }
                return Ok(f);
            }
            if let Some(reason) = &table.broken {
                return Err(self.broken(reason.clone()));
            }
            let Ok(mut reader) = inner.reader.try_lock() else {
                // Someone else is reading; they will wake us.
                table = inner.wake.wait(table).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            drop(table);
            // We lead: read until our own answer comes.
            let result = loop {
                if reader.buffer().is_empty() {
                    reader.get_ref().spin_until_readable(inner.spin);
                }
                let frame = read_header(&mut *reader, inner.max_body).and_then(|header| match into
                    .as_mut()
                {
                    Some((buf, at)) if header.req_id == id => {
                        read_body_into(&mut *reader, &header, buf, *at)?;
                        Ok(Frame {
                            header,
                            body: Vec::new(),
                        })
                    }
                    _ => Ok(Frame {
                        body: read_body(&mut *reader, &header)?,
                        header,
                    }),
                });
                match frame {
                    Ok(f) if f.header.req_id == id => break Ok(f),
                    Ok(f) => {
                        let mut t = lock(&inner.table);
                        t.answers.insert(f.header.req_id, Ok(f));
                        inner.wake.notify_all();
                    }
                    Err(WireError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break Err(format!("no answer within {} ms", inner.timeout_ms));
                    }
                    Err(e) => break Err(e.to_string()),
                }
            };
            drop(reader);
            let mut t = lock(&inner.table);
            if let Err(reason) = &result {
                t.broken.get_or_insert_with(|| reason.clone());
            }
            // Hand the read half on to another waiter.
            inner.wake.notify_all();
            drop(t);
            return result.map_err(|r| {
                if r.starts_with("no answer within") {
                    TransportError::Timeout {
                        peer: inner.peer.clone(),
                        after_ms: inner.timeout_ms,
                    }
                } else {
                    self.broken(r)
                }
            });
        }
    }

    /// Sends a request and waits for its typed answer.
    pub fn call<R: Request>(&self, req: &R) -> Result<R::Reply, TransportError> {
        let frame = self.call_raw(R::OP, &[&req.encode()])?;
        R::decode_reply(&frame.body).map_err(|source| TransportError::Protocol {
            peer: self.inner.peer.clone(),
            source,
        })
    }

    /// Sends a raw request (a body in parts, written without copying them
    /// together) and waits for its answer: for the data path's page bodies.
    pub fn call_raw(&self, op: Op, parts: &[&[u8]]) -> Result<Frame, TransportError> {
        let id = self.send(op, parts)?;
        self.wait(id)
    }

    /// True once the connection has failed; every later call fails at once.
    pub fn is_broken(&self) -> bool {
        lock(&self.inner.table).broken.is_some()
    }

    /// Whether the connection is worth using: not broken, and not idle for
    /// so long that the server may be closing it ([`ClientOptions::max_idle`]).
    pub fn is_fresh(&self) -> bool {
        let idle = now_ms().saturating_sub(self.inner.last_used.load(Ordering::Relaxed));
        !self.is_broken() && idle < self.inner.max_idle_ms
    }

    fn broken(&self, reason: String) -> TransportError {
        TransportError::Broken {
            peer: self.inner.peer.clone(),
            reason,
        }
    }

    fn break_with(&self, reason: String) -> TransportError {
        let mut t = lock(&self.inner.table);
        t.broken.get_or_insert_with(|| reason.clone());
        self.inner.wake.notify_all();
        self.broken(reason)
    }
}
