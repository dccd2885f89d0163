//! The server side: accept, authenticate, and serve each connection on its own
//! thread, surviving whatever a peer sends.
//!
//! Per connection: send a challenge, check the hello (wrong key: an
//! `AuthFailed` error frame and close), then read requests one after another
//! and write each answer, flushing when no further request is already buffered
//! (so pipelined requests are answered in few writes). A frame that cannot be
//! decoded gets a `BadFrame`/`TooLarge` error frame and the connection is
//! closed; a well-framed request with a bad body gets an error answer and the
//! connection goes on. A peer that stalls inside a frame is dropped after the
//! frame timeout.

use std::io::{BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lego_wire::auth::{random_bytes, Claim, Hello, Secret};
use lego_wire::frame::{read_body, read_header, write_error, write_frame};
use lego_wire::{ErrorBody, ErrorCode, Op, Request, WireError, DEFAULT_MAX_BODY, FLAG_RESPONSE};
use tracing::{debug, info, warn};

use crate::link::{Link, Listener};

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub conn: u64,
    pub addr: String,
    pub claim: Claim,
}

impl PeerInfo {
    /// Refuses `op` (`NotEntitled`) unless the peer is a lego component
    /// (holds the cluster secret) rather than a vNode's process.
    pub fn require_component(&self, op: Op) -> Result<(), Reject> {
        match self.claim {
            Claim::Component => Ok(()),
            Claim::Vnode(v) => Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("{op} is for lego components; this connection speaks for vnode {v}"),
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
    pub secret: Secret,
    pub max_body: u32,
    /// How long a peer may take to complete the handshake, or a frame once started.
    pub frame_timeout: Duration,
    /// After answering, busy-wait this long for the peer's next request
    /// before sleeping (0: never): a request that comes within it is served
    /// without the cost of waking a sleeping thread.
    pub spin: Duration,
}

impl ServerConfig {
    pub fn new(name: impl Into<String>, secret: Secret) -> Self {
        ServerConfig {
            name: name.into(),
            secret,
            max_body: DEFAULT_MAX_BODY,
            frame_timeout: Duration::from_secs(10),
            spin: Duration::ZERO,
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
    let cfg = Arc::new(cfg);
    let c = counters.clone();
    std::thread::Builder::new()
        .name(format!("{}-accept", cfg.name))
        .spawn(move || accept_loop(listener, cfg, handler, c))?;
    Ok(ServerHandle {
        local_addr,
        counters,
    })
}

fn accept_loop(
    listener: Box<dyn Listener>,
    cfg: Arc<ServerConfig>,
    handler: Arc<dyn Handler>,
    counters: Arc<ServerCounters>,
) {
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
        let (cfg, handler, counters) = (cfg.clone(), handler.clone(), counters.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("{}-conn{conn}", cfg.name))
            .spawn(move || {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                counters.open_connections.fetch_add(1, Ordering::Relaxed);
                serve_connection(conn, link, &cfg, &*handler, &counters);
                counters.open_connections.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a connection thread; connection dropped");
        }
    }
}

fn serve_connection(
    conn: u64,
    link: Box<dyn Link>,
    cfg: &ServerConfig,
    handler: &dyn Handler,
    counters: &ServerCounters,
) {
    let addr = link.peer();
    let (r, w) = match link.split() {
        Ok(halves) => halves,
        Err(e) => {
            warn!(%addr, error = %e, "cannot split connection");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(64 << 10, r);
    let mut writer = BufWriter::with_capacity(64 << 10, w);
    let peer = match handshake(conn, &addr, &mut reader, &mut writer, cfg) {
        Ok(p) => p,
        Err(why) => {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            warn!(conn, %addr, "handshake failed: {why}");
            return;
        }
    };
    debug!(conn, %addr, claim = %peer.claim, "peer authenticated");
    let mut reply = Vec::with_capacity(64 << 10);
    loop {
        if reader.buffer().is_empty() {
            reader.get_ref().spin_until_readable(cfg.spin);
        }
        // Idle connections may wait forever between requests.
        let _ = reader.get_ref().set_read_timeout(None);
        let header = match read_header(&mut reader, cfg.max_body) {
            Ok(h) => h,
            Err(WireError::Closed) => {
                debug!(conn, %addr, "peer closed the connection");
                break;
            }
            Err(e) => {
                counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                let code = match e {
                    WireError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::BadFrame,
                };
                warn!(conn, %addr, "dropping connection: {e}");
                let body = ErrorBody::new(code, e.to_string());
                let _ = write_error(&mut writer, Op::Ping, 0, &body);
                let _ = writer.flush();
                break;
            }
        };
        let _ = reader.get_ref().set_read_timeout(Some(cfg.frame_timeout));
        let body = match read_body(&mut reader, &header) {
            Ok(b) => b,
            Err(e) => {
                counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                warn!(conn, %addr, op = %header.op, "dropping connection in the middle of a frame: {e}");
                break;
            }
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        reply.clear();
        let outcome = if header.is_response() {
            Err(Reject::new(
                ErrorCode::BadRequest,
                "a response was sent where a request was expected",
            ))
        } else {
            handler.handle(&peer, header.op, &body, &mut reply)
        };
        let written = match outcome {
            Ok(()) => write_frame(
                &mut writer,
                header.op,
                FLAG_RESPONSE,
                header.req_id,
                &[&reply],
            ),
            Err(rej) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                debug!(conn, %addr, op = %header.op, code = %rej.code, "refused: {}", rej.message);
                write_error(
                    &mut writer,
                    header.op,
                    header.req_id,
                    &ErrorBody::new(rej.code, rej.message),
                )
            }
        };
        let flushed = written.and_then(|()| {
            if reader.buffer().is_empty() {
                writer.flush()?;
            }
            Ok(())
        });
        if let Err(e) = flushed {
            debug!(conn, %addr, "peer went away while being answered: {e}");
            break;
        }
    }
    handler.disconnected(&peer);
}

fn handshake(
    conn: u64,
    addr: &str,
    reader: &mut BufReader<crate::link::ReadHalf>,
    writer: &mut BufWriter<crate::link::WriteHalf>,
    cfg: &ServerConfig,
) -> Result<PeerInfo, String> {
    reader
        .get_ref()
        .set_read_timeout(Some(cfg.frame_timeout))
        .map_err(|e| e.to_string())?;
    let nonce = random_bytes().map_err(|e| e.to_string())?;
    write_frame(writer, Op::Challenge, 0, 0, &[&nonce]).map_err(|e| e.to_string())?;
    writer.flush().map_err(|e| e.to_string())?;
    let refuse = |writer: &mut BufWriter<_>, code, msg: String| {
        let _ = write_error(writer, Op::Hello, 0, &ErrorBody::new(code, msg.clone()));
        let _ = writer.flush();
        msg
    };
    let header = match read_header(reader, 4096) {
        Ok(h) => h,
        Err(e) => return Err(refuse(writer, ErrorCode::BadFrame, e.to_string())),
    };
    let body = read_body(reader, &header).map_err(|e| e.to_string())?;
    if header.op != Op::Hello {
        let msg = format!("expected a hello, got {}", header.op);
        return Err(refuse(writer, ErrorCode::AuthFailed, msg));
    }
    let hello = match Hello::decode(&body) {
        Ok(h) => h,
        Err(e) => return Err(refuse(writer, ErrorCode::AuthFailed, e.to_string())),
    };
    if !hello.verify(&cfg.secret, &nonce) {
        let msg = format!(
            "wrong key for claim '{}': the peer does not hold this cluster's secret",
            hello.claim
        );
        return Err(refuse(writer, ErrorCode::AuthFailed, msg));
    }
    let welcome = hello.welcome(&cfg.secret, &nonce);
    write_frame(
        writer,
        Op::Welcome,
        FLAG_RESPONSE,
        header.req_id,
        &[&welcome],
    )
    .and_then(|()| Ok(writer.flush()?))
    .map_err(|e| e.to_string())?;
    if matches!(hello.claim, Claim::Vnode(_)) {
        info!(conn, %addr, claim = %hello.claim, "vnode process connected");
    }
    Ok(PeerInfo {
        conn,
        addr: addr.to_string(),
        claim: hello.claim,
    })
}
