//! The server side: accept, and serve each connection on its own thread
//! ([`crate::conn`]), surviving whatever peers send and however many come.
//!
//! Limits: at most [`ServerConfig::max_connections`] connections at once, and
//! [`ServerConfig::max_per_peer`] from one address; a connection past either
//! gets an error frame in place of the challenge and is closed. Each
//! connection has a deadline for its whole handshake, for each whole frame
//! once started, and for the wait between requests (idle). Refusals and
//! failed handshakes are counted; their log lines are rate-limited.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lego_wire::auth::Claim;
use lego_wire::frame::write_error;
use lego_wire::{ErrorBody, ErrorCode, Op, Request, WireError, DEFAULT_MAX_BODY};
use tracing::warn;

use crate::keys::Keyring;
use crate::link::{Closer, Listener};
use crate::sync::lock;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub conn: u64,
    pub addr: String,
    pub claim: Claim,
}

impl PeerInfo {
    /// Refuses `op` (`NotEntitled`) unless the peer is a lego component
    /// (holds the cluster secret, or its own member key) rather than a
    /// vNode's process or a joining daemon.
    pub fn require_component(&self, op: Op) -> Result<(), Reject> {
        match self.claim {
            Claim::Component | Claim::Member(_) => Ok(()),
            other => Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("{op} is for lego components; this connection speaks for {other}"),
            )),
        }
    }

    /// Refuses `op` (`NotEntitled`) unless the peer holds the cluster
    /// secret (the operator's CLI, or a daemon of an embedded cluster): a
    /// member may not make tokens or revoke others.
    pub fn require_secret(&self, op: Op) -> Result<(), Reject> {
        match self.claim {
            Claim::Component => Ok(()),
            other => Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("{op} needs the cluster secret; this connection speaks for {other}"),
            )),
        }
    }
}

/// A refusal: becomes an error frame to the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: ErrorCode,
    pub message: String,
}

impl Reject {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(e: impl std::fmt::Display) -> Self {
        Reject::new(ErrorCode::BadRequest, e.to_string())
    }
}

impl From<WireError> for Reject {
    fn from(e: WireError) -> Self {
        Reject::bad_request(e)
    }
}

/// Serves one typed request: decodes its body as `R` (a malformed one is
/// `BadRequest`), runs `f`, and encodes the answer into `reply`. A handler's
/// dispatch is one line per op: `Op::X => answer(body, reply, |r: XReq| ..)`.
pub fn answer<R: Request>(
    body: &[u8],
    reply: &mut Vec<u8>,
    f: impl FnOnce(R) -> Result<R::Reply, Reject>,
) -> Result<(), Reject> {
    let answer = f(R::decode(body)?)?;
    *reply = R::encode_reply(answer);
    Ok(())
}

/// What a component does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request. The answer's body goes into `reply` (empty on entry).
    fn handle(
        &self,
        peer: &PeerInfo,
        op: Op,
        body: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), Reject>;

    /// Called once when a connection ends, for per-connection cleanup.
    fn disconnected(&self, _peer: &PeerInfo) {}
}

/// Server knobs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names the server's threads and log lines.
    pub name: String,
    /// The key each claim must prove, and the members revoked.
    pub keys: Keyring,
    pub max_body: u32,
    /// How long a peer may take for the whole handshake.
    pub handshake_timeout: Duration,
    /// How long a peer may take for a whole frame, once its first byte came.
    pub frame_timeout: Duration,
    /// How long a vNode's process may leave its connection idle between
    /// requests (clients make a connection anew after
    /// [`crate::client::MAX_IDLE`]).
    pub idle_vnode: Duration,
    /// The same for a component's connection.
    pub idle_component: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address (IP, or all Unix peers).
    pub max_per_peer: usize,
    /// After answering, busy-wait this long for the peer's next request
    /// before sleeping (0: never): a request that comes within it is served
    /// without the cost of waking a sleeping thread.
    pub spin: Duration,
    /// Seal every connection: encrypt and authenticate each frame after the
    /// handshake ([`crate::seal`]); a client that asks for plaintext is refused.
    pub seal: bool,
}

impl ServerConfig {
    pub fn new(name: impl Into<String>, keys: impl Into<Keyring>) -> Self {
        ServerConfig {
            name: name.into(),
            keys: keys.into(),
            max_body: DEFAULT_MAX_BODY,
            handshake_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            idle_vnode: Duration::from_secs(120),
            idle_component: Duration::from_secs(600),
            max_connections: 4096,
            max_per_peer: 1024,
            spin: Duration::ZERO,
            seal: false,
        }
    }
}

/// Counters of a server, for `/metrics` and `lego status`.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub connections: AtomicU64,
    pub open_connections: AtomicU64,
    pub auth_failures: AtomicU64,
    pub bad_frames: AtomicU64,
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    /// Connections closed at once: too many open, in all or from one peer.
    pub over_limit: AtomicU64,
    /// Connections closed for a deadline: a slow handshake or frame, or idle.
    pub timed_out: AtomicU64,
    /// Connections sealed after their handshake.
    pub sealed: AtomicU64,
    /// Sealed connections closed for a record that failed authentication.
    pub tampered: AtomicU64,
    /// Connections closed because their member's key was revoked.
    pub revoked: AtomicU64,
}

impl ServerCounters {
    /// Name/value pairs for export.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("connections_total", g(&self.connections)),
            ("connections_open", g(&self.open_connections)),
            ("auth_failures_total", g(&self.auth_failures)),
            ("bad_frames_total", g(&self.bad_frames)),
            ("requests_total", g(&self.requests)),
            ("requests_refused_total", g(&self.refused)),
            ("connections_over_limit_total", g(&self.over_limit)),
            ("connections_timed_out_total", g(&self.timed_out)),
            ("connections_sealed_total", g(&self.sealed)),
            ("records_tampered_total", g(&self.tampered)),
            ("connections_revoked_total", g(&self.revoked)),
        ]
    }
}

/// A running server.
pub struct ServerHandle {
    pub local_addr: String,
    pub counters: Arc<ServerCounters>,
}

/// Starts accepting on `listener` in a background thread.
pub fn spawn_server(
    listener: Box<dyn Listener>,
    cfg: ServerConfig,
    handler: Arc<dyn Handler>,
) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr();
    let counters = Arc::new(ServerCounters::default());
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        handler,
        counters: counters.clone(),
        per_peer: Mutex::new(HashMap::new()),
        open: Mutex::new(HashMap::new()),
        log_handshake: LogLimit::new(),
        log_frames: LogLimit::new(),
        log_limits: LogLimit::new(),
    });
    // A member revoked: its connections end now, not at their next handshake.
    let weak = Arc::downgrade(&shared);
    cfg.keys.revoked.watch(move |set| {
        if let Some(s) = weak.upgrade() {
            let n = s.close_where(|c| matches!(c, Claim::Member(m) if set.contains(m)));
            if n > 0 {
                warn!(server = %s.cfg.name, connections = n, "closed the connections of revoked members");
            }
        }
    });
    std::thread::Builder::new()
        .name(format!("{}-accept", cfg.name))
        .spawn(move || accept_loop(listener, shared))?;
    Ok(ServerHandle {
        local_addr,
        counters,
    })
}

/// At most a few lines of one kind per window, then one line saying how
/// many were left out: a peer cannot flood the log.
pub(crate) struct LogLimit {
    state: Mutex<(Instant, u32, u64)>,
}

/// Lines of one kind per window.
const LINES_PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);

impl LogLimit {
    pub(crate) fn new() -> Self {
        LogLimit {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// Whether to log this one; `Some(n)`: yes, and `n` were left out
    /// since the last line.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut s = lock(&self.state);
        if s.0.elapsed() >= WINDOW {
            *s = (Instant::now(), 0, s.2);
        }
        if s.1 < LINES_PER_WINDOW {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

/// What the connections of a server share.
pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) counters: Arc<ServerCounters>,
    /// Open connections by peer address.
    per_peer: Mutex<HashMap<String, usize>>,
    /// Authenticated connections: their claim, and how to end them.
    open: Mutex<HashMap<u64, (Claim, Closer)>>,
    pub(crate) log_handshake: LogLimit,
    pub(crate) log_frames: LogLimit,
    log_limits: LogLimit,
}

impl Shared {
    /// Connection `conn` is authenticated as `claim`: it can be closed by
    /// claim from now on.
    pub(crate) fn opened(&self, conn: u64, claim: Claim, closer: Closer) {
        lock(&self.open).insert(conn, (claim, closer));
    }

    pub(crate) fn closed(&self, conn: u64) {
        lock(&self.open).remove(&conn);
    }

    /// Ends every connection whose claim matches; returns how many.
    fn close_where(&self, pred: impl Fn(&Claim) -> bool) -> usize {
        let open = lock(&self.open);
        let mut n = 0;
        for (claim, closer) in open.values() {
            if pred(claim) {
                closer.close();
                n += 1;
            }
        }
        self.counters.revoked.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// A connection from `key` is gone: its place is free again.
    fn leave(&self, key: &str) {
        self.counters
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
        let mut per_peer = lock(&self.per_peer);
        if let Some(n) = per_peer.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(key);
            }
        }
    }
}

/// The address a peer's connections are counted under: its IP (all Unix
/// peers are one).
fn peer_key(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((ip, port)) if port.parse::<u16>().is_ok() => ip.to_string(),
        _ => addr.to_string(),
    }
}

fn accept_loop(listener: Box<dyn Listener>, shared: Arc<Shared>) {
    let cfg = &shared.cfg;
    let mut next_conn = 0u64;
    loop {
        let link = match listener.accept() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        next_conn += 1;
        let conn = next_conn;
        let addr = link.peer();
        let key = peer_key(&addr);
        let over = {
            let mut per_peer = lock(&shared.per_peer);
            let open = shared.counters.open_connections.load(Ordering::Relaxed) as usize;
            let mine = per_peer.get(&key).copied().unwrap_or(0);
            if open >= cfg.max_connections {
                Some(format!(
                    "{open} connections open, the most this server takes"
                ))
            } else if mine >= cfg.max_per_peer {
                Some(format!(
                    "{mine} connections open from {key}, the most one peer may have"
                ))
            } else {
                *per_peer.entry(key.clone()).or_insert(0) += 1;
                shared
                    .counters
                    .open_connections
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if let Some(why) = over {
            shared.counters.over_limit.fetch_add(1, Ordering::Relaxed);
            if let Some(left_out) = shared.log_limits.allow() {
                warn!(%addr, left_out, "connection refused: {why}");
            }
            refuse(link, &why);
            continue;
        }
        let (s, k) = (shared.clone(), key.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("{}-conn{conn}", cfg.name))
            .spawn(move || {
                s.counters.connections.fetch_add(1, Ordering::Relaxed);
                crate::conn::serve(conn, link, &s);
                s.leave(&k);
            });
        if let Err(e) = spawned {
            shared.leave(&key);
            warn!(error = %e, "cannot start a connection thread; connection dropped");
        }
    }
}

/// Tells a peer over the limit why, in place of the challenge, and closes.
fn refuse(link: Box<dyn crate::link::Link>, why: &str) {
    if let Ok((_, w)) = link.split() {
        let mut w = std::io::BufWriter::new(w);
        let body = ErrorBody::new(ErrorCode::Unavailable, why.to_string());
        let _ = write_error(&mut w, Op::Challenge, 0, &body);
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::{peer_key, LogLimit, LINES_PER_WINDOW};

    #[test]
    fn a_flood_of_log_lines_is_cut_to_a_few_per_window() {
        let l = LogLimit::new();
        let logged = (0..1000).filter(|_| l.allow().is_some()).count();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
    }

    #[test]
    fn peers_are_counted_by_address() {
        assert_eq!(peer_key("10.0.0.1:5000"), "10.0.0.1");
        assert_eq!(peer_key("[::1]:5000"), "[::1]");
        assert_eq!(peer_key("unix peer"), "unix peer");
    }
}
