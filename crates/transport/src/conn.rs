//! One connection of a server, on its own thread: the handshake, then
//! requests one after another, each answered by the [`Handler`].
//!
//! Per connection: send a challenge, check the hello (wrong key: an
//! `AuthFailed` error frame and close), then read requests and write each
//! answer, flushing when no further request is already buffered (so
//! pipelined requests are answered in few writes). A frame that cannot be
//! decoded gets a `BadFrame`/`TooLarge` error frame and the connection is
//! closed; a well-framed request with a bad body gets an error answer and
//! the connection goes on.
//!
//! A server with [`ServerConfig::seal`] says so in its challenge and refuses
//! a hello that does not ask for sealing; a sealed connection's halves are
//! wrapped in [`crate::seal`] after the welcome, and a record that fails
//! authentication closes it at once (counted as `tampered`).
//!
//! Deadlines are for wholes, not for each read: the handshake must be done
//! within [`ServerConfig::handshake_timeout`], a frame whose first byte came
//! within [`ServerConfig::frame_timeout`], and the next request must start
//! within the idle timeout of the peer's kind. A peer that trickles a byte
//! every few seconds is dropped as surely as a silent one.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lego_wire::auth::{encode_challenge, random_bytes, Claim, Hello, SessionKeys};
use lego_wire::frame::{read_body, read_header, write_error, write_frame};
use lego_wire::{ErrorBody, ErrorCode, Op, WireError, FLAG_RESPONSE};
use tracing::{debug, warn};

use crate::link::{Link, ReadHalf, WriteHalf};
use crate::seal::{Ephemeral, SealedRead, SealedWrite};
use crate::server::{PeerInfo, Reject, ServerConfig, Shared};

/// A read half whose reads all end by one deadline.
pub(crate) struct Timed {
    inner: ReadHalf,
    deadline: Option<Instant>,
}

impl Timed {
    fn new(inner: ReadHalf) -> Self {
        Timed {
            inner,
            deadline: None,
        }
    }

    /// Every read from now on must be done within `d`.
    fn within(&mut self, d: Duration) {
        self.deadline = Some(Instant::now() + d);
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            self.inner.set_read_timeout(Some(left))?;
        }
        self.inner.read(buf)
    }
}

/// Whether a read failed because a sealed record did not authenticate.
fn tampered(e: &WireError) -> bool {
    matches!(e, WireError::Io(io) if io.kind() == io::ErrorKind::InvalidData)
}

fn timed_out(e: &WireError) -> bool {
    matches!(e, WireError::Io(io) if matches!(io.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
}

/// Serves one connection until it ends.
pub(crate) fn serve(conn: u64, link: Box<dyn Link>, shared: &Shared) {
    let (cfg, counters) = (&shared.cfg, &*shared.counters);
    let addr = link.peer();
    let closer = link.closer();
    let (r, w) = match link.split() {
        Ok(halves) => halves,
        Err(e) => {
            warn!(%addr, error = %e, "cannot split connection");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(64 << 10, Timed::new(r));
    let mut writer = BufWriter::with_capacity(64 << 10, w);
    reader.get_mut().within(cfg.handshake_timeout);
    let peer = match handshake(conn, &addr, &mut reader, &mut writer, cfg) {
        Ok((p, None)) => p,
        Ok((p, Some(keys))) => {
            // Everything from here on is sealed: wrap both halves, keeping
            // any bytes the peer sent early.
            let early = reader.buffer().to_vec();
            let mut timed = reader.into_inner();
            timed.inner = Box::new(SealedRead::new(timed.inner, &keys.to_server, &early));
            reader = BufReader::with_capacity(64 << 10, timed);
            let w = match writer.into_inner() {
                Ok(w) => w,
                Err(e) => {
                    debug!(conn, %addr, "peer went away after the handshake: {}", e.error());
                    return;
                }
            };
            writer =
                BufWriter::with_capacity(64 << 10, Box::new(SealedWrite::new(w, &keys.to_client)));
            counters.sealed.fetch_add(1, Ordering::Relaxed);
            p
        }
        Err(Unshaken::Probe) => {
            // Connected and closed without a word: a reachability check
            // (the manager dialling a registering monitor back), not an attack.
            debug!(conn, %addr, "connection closed before the handshake (a probe)");
            return;
        }
        Err(Unshaken::Failed(why)) => {
            counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(left_out) = shared.log_handshake.allow() {
                warn!(conn, %addr, left_out, "handshake failed: {why}");
            }
            return;
        }
    };
    debug!(conn, %addr, claim = %peer.claim, "peer authenticated");
    if let Ok(c) = closer {
        shared.opened(conn, peer.claim, c);
    }
    // Revoked between the handshake and now: the watcher may have missed it.
    if matches!(peer.claim, Claim::Member(m) if cfg.keys.revoked.contains(m)) {
        shared.closed(conn);
        return;
    }
    let idle = match peer.claim {
        Claim::Component | Claim::Member(_) => cfg.idle_component,
        Claim::Vnode(_) | Claim::Join(_) => cfg.idle_vnode,
    };
    let mut reply = Vec::with_capacity(64 << 10);
    loop {
        if reader.buffer().is_empty() {
            reader.get_ref().inner.spin_until_readable(cfg.spin);
        }
        reader.get_mut().within(idle);
        let header = match read_header(&mut reader, cfg.max_body) {
            Ok(h) => h,
            Err(WireError::Closed) => {
                debug!(conn, %addr, "peer closed the connection");
                break;
            }
            Err(e) if timed_out(&e) => {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                debug!(conn, %addr, "closing a connection idle for {idle:?}");
                break;
            }
            Err(e) if tampered(&e) => {
                counters.tampered.fetch_add(1, Ordering::Relaxed);
                warn!(conn, %addr, claim = %peer.claim, "closing the connection: {e}");
                break;
            }
            Err(e) => {
                counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                let code = match e {
                    WireError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::BadFrame,
                };
                if let Some(left_out) = shared.log_frames.allow() {
                    warn!(conn, %addr, left_out, "dropping connection: {e}");
                }
                let body = ErrorBody::new(code, e.to_string());
                let _ = write_error(&mut writer, Op::Ping, 0, &body);
                let _ = writer.flush();
                break;
            }
        };
        reader.get_mut().within(cfg.frame_timeout);
        let body = match read_body(&mut reader, &header) {
            Ok(b) => b,
            Err(e) if tampered(&e) => {
                counters.tampered.fetch_add(1, Ordering::Relaxed);
                warn!(conn, %addr, claim = %peer.claim, op = %header.op, "closing the connection: {e}");
                break;
            }
            Err(e) => {
                if timed_out(&e) {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(left_out) = shared.log_frames.allow() {
                    warn!(conn, %addr, op = %header.op, left_out, "dropping connection in the middle of a frame: {e}");
                }
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
            shared.handler.handle(&peer, header.op, &body, &mut reply)
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
    shared.closed(conn);
    shared.handler.disconnected(&peer);
}

/// Why a connection ended before its handshake completed.
enum Unshaken {
    /// The peer closed without sending anything.
    Probe,
    Failed(String),
}

impl From<String> for Unshaken {
    fn from(why: String) -> Self {
        Unshaken::Failed(why)
    }
}

fn handshake(
    conn: u64,
    addr: &str,
    reader: &mut BufReader<Timed>,
    writer: &mut BufWriter<WriteHalf>,
    cfg: &ServerConfig,
) -> Result<(PeerInfo, Option<SessionKeys>), Unshaken> {
    let nonce = random_bytes().map_err(|e| e.to_string())?;
    let must_seal = cfg.seal || cfg.keys.must_seal();
    let challenge = encode_challenge(&nonce, must_seal, cfg.keys.server_id());
    write_frame(writer, Op::Challenge, 0, 0, &[&challenge]).map_err(|e| e.to_string())?;
    writer.flush().map_err(|e| e.to_string())?;
    let refuse = |writer: &mut BufWriter<_>, code, msg: String| {
        let _ = write_error(writer, Op::Hello, 0, &ErrorBody::new(code, msg.clone()));
        let _ = writer.flush();
        msg
    };
    let header = match read_header(reader, 4096) {
        Ok(h) => h,
        Err(WireError::Closed) => return Err(Unshaken::Probe),
        Err(e) => return Err(refuse(writer, ErrorCode::BadFrame, e.to_string()).into()),
    };
    let body = read_body(reader, &header).map_err(|e| e.to_string())?;
    if header.op != Op::Hello {
        let msg = format!("expected a hello, got {}", header.op);
        return Err(refuse(writer, ErrorCode::AuthFailed, msg).into());
    }
    let hello = match Hello::decode(&body) {
        Ok(h) => h,
        Err(e) => return Err(refuse(writer, ErrorCode::AuthFailed, e.to_string()).into()),
    };
    let key = match cfg.keys.key_for(hello.claim) {
        Ok(k) => k,
        Err(why) => return Err(refuse(writer, ErrorCode::AuthFailed, why).into()),
    };
    if !hello.verify(&key, &nonce) {
        let msg = format!(
            "wrong key for claim '{}': the peer does not hold this cluster's key for it",
            hello.claim
        );
        return Err(refuse(writer, ErrorCode::AuthFailed, msg).into());
    }
    if must_seal && hello.seal.is_none() {
        let msg = format!(
            "this server seals its links (--encrypt, or its cluster has members that joined with tokens) and the peer (claim '{}') asked for plaintext",
            hello.claim
        );
        return Err(refuse(writer, ErrorCode::AuthFailed, msg).into());
    }
    let mut keys = None;
    let welcome = match &hello.seal {
        None => hello.welcome(&key, &nonce, None),
        Some(client_public) => {
            let mine = Ephemeral::generate().map_err(|e| e.to_string())?;
            let public = mine.public;
            let shared = mine.agree(client_public).map_err(|e| e.to_string())?;
            keys = Some(hello.session_keys(&key, &nonce, &public, &shared));
            hello.welcome(&key, &nonce, Some(&public))
        }
    };
    write_frame(
        writer,
        Op::Welcome,
        FLAG_RESPONSE,
        header.req_id,
        &[&welcome],
    )
    .and_then(|()| Ok(writer.flush()?))
    .map_err(|e| e.to_string())?;
    let peer = PeerInfo {
        conn,
        addr: addr.to_string(),
        claim: hello.claim,
    };
    Ok((peer, keys))
}
