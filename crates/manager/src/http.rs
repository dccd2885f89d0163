//! The manager's HTTP endpoint, a small server of its own (std only):
//! `/metrics` serves Prometheus text ([`crate::metrics`]) to anyone; the
//! rest only to a holder of the cluster's HTTP token
//! ([`lego_wire::auth::Secret::http_token_hex`], printed by
//! `lego http-token`), given as `Authorization: Bearer TOKEN` or as the
//! `lego_token_PORT` cookie (PORT: this endpoint's port, so that managers
//! on one host keep cookies of their own):
//!
//! | path | what |
//! |---|---|
//! | `/state` | the whole cluster state as JSON |
//! | `/api/history` | the last minutes of use, bytes/s and faults/s ([`crate::history`]) |
//! | `/` | the dashboard (`dashboard.html`, built in; it reads the two above) |
//! | `/?token=TOKEN` | sets the cookie (HttpOnly, SameSite=Strict) and sends the browser to `/` |
//!
//! Bounds: at most [`MAX_CLIENTS`] requests are served at once (more get
//! 503 at once), a request must arrive whole within [`REQUEST_DEADLINE`]
//! and fit in [`MAX_HEAD`] bytes, an answer is written within the same
//! time, and every connection serves one request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::history::History;
use crate::service::ManagerService;
use crate::ManagerError;

/// Requests served at once.
pub const MAX_CLIENTS: usize = 16;
/// Time for a whole request to arrive (and for the answer to leave).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes of a request's line and headers.
pub const MAX_HEAD: usize = 8 << 10;

/// Binds `addr` and serves in a background thread; returns the bound address.
pub fn serve(addr: &str, svc: Arc<ManagerService>) -> Result<String, ManagerError> {
    let err = |e: std::io::Error| ManagerError::Http {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let listener = TcpListener::bind(addr).map_err(err)?;
    let history = crate::history::start(svc.clone()).map_err(ManagerError::Thread)?;
    let local = listener.local_addr().map_err(err)?;
    let bound = local.to_string();
    let cookie_name: Arc<str> = format!("lego_token_{}", local.port()).into();
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("manager-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let _ = respond(
                        &mut stream,
                        &Answer::new(503, "text/plain", "busy: try again\n"),
                        false,
                    );
                    continue;
                }
                let (svc, active, history) = (svc.clone(), active.clone(), history.clone());
                let cookie_name = cookie_name.clone();
                let spawned = std::thread::Builder::new()
                    .name("manager-http-req".into())
                    .spawn(move || {
                        let site = Site {
                            svc: &svc,
                            history: &history,
                            cookie: &cookie_name,
                        };
                        handle(stream, &site);
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    debug!("http: no thread for a request; dropped");
                }
            }
        })
        .map_err(ManagerError::Thread)?;
    Ok(bound)
}

/// The request's line and headers, read whole by the deadline.
fn read_head(stream: &mut TcpStream) -> Result<String, (u16, &'static str)> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err((431, "request head too large\n"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err((408, "request timed out\n"));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err((400, "request cut short\n")),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(_) => return Err((408, "request timed out\n")),
        }
    }
    String::from_utf8(head).map_err(|_| (400, "request is not UTF-8\n"))
}

/// The bearer token of a request's head, if it has one.
fn bearer(head: &str) -> Option<&str> {
    head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let value = value.trim();
        (name.trim().eq_ignore_ascii_case("authorization"))
            .then(|| value.strip_prefix("Bearer ").map(str::trim))
            .flatten()
    })
}

/// The cookie `name` of a request's head, if it has one.
fn cookie<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("cookie") {
            return None;
        }
        value
            .split(';')
            .find_map(|c| c.trim().strip_prefix(prefix.as_str()))
            .map(str::trim)
    })
}

/// An answer: status, content type, extra header lines, body.
struct Answer {
    status: u16,
    ctype: &'static str,
    headers: String,
    body: String,
}

impl Answer {
    fn new(status: u16, ctype: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            ctype,
            headers: String::new(),
            body: body.into(),
        }
    }
}

/// What a browser without the token is shown at `/`.
const LOGIN_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>lego</title></head>\
<body style=\"font-family:sans-serif\"><h1>lego</h1><p>This dashboard needs the cluster's HTTP token. \
Open the address <code>lego dashboard</code> prints (it ends in <code>?token=...</code>); \
<code>lego http-token</code> prints the token alone.</p></body></html>\n";

/// Where a request is served: the manager, its history, the name of the
/// cookie holding the token here.
struct Site<'a> {
    svc: &'a ManagerService,
    history: &'a History,
    cookie: &'a str,
}

fn route(head: &str, path: &str, query: &str, site: &Site) -> Answer {
    let (svc, history) = (site.svc, site.history);
    if path == "/metrics" {
        return Answer::new(
            200,
            "text/plain; version=0.0.4",
            crate::metrics::metrics(svc),
        );
    }
    if !matches!(path, "/" | "/state" | "/api/history") {
        return Answer::new(
            404,
            "text/plain",
            "not found: try /metrics, or /, /state and /api/history with the cluster's token\n",
        );
    }
    // Opening `/?token=TOKEN` trades the token for a cookie, so that the
    // page's own requests carry it and the address bar does not.
    if let Some(t) = query.split('&').find_map(|kv| kv.strip_prefix("token=")) {
        if path == "/" && svc.secret.check_http_token(t) {
            let mut a = Answer::new(303, "text/plain", "to the dashboard\n");
            a.headers = format!(
                "Location: /\r\nSet-Cookie: {}={t}; Path=/; HttpOnly; SameSite=Strict\r\n",
                site.cookie
            );
            return a;
        }
    }
    let entitled = bearer(head)
        .or_else(|| cookie(head, site.cookie))
        .is_some_and(|t| svc.secret.check_http_token(t));
    if !entitled {
        svc.counters.refused.fetch_add(1, Ordering::Relaxed);
        return match path {
            "/" => Answer::new(401, "text/html; charset=utf-8", LOGIN_PAGE),
            _ => Answer::new(
                401,
                "text/plain",
                "the cluster state needs `Authorization: Bearer TOKEN`; `lego http-token` prints TOKEN\n",
            ),
        };
    }
    match path {
        "/state" => Answer::new(
            200,
            "application/json",
            serde_json::to_string_pretty(&svc.cluster_state()).unwrap_or_default(),
        ),
        "/api/history" => Answer::new(200, "application/json", history.json()),
        _ => Answer::new(200, "text/html; charset=utf-8", DASHBOARD),
    }
}

/// The dashboard page, built in.
const DASHBOARD: &str = include_str!("dashboard.html");

fn handle(mut stream: TcpStream, site: &Site) {
    let head = match read_head(&mut stream) {
        Ok(h) => h,
        Err((status, why)) => {
            let _ = respond(&mut stream, &Answer::new(status, "text/plain", why), false);
            return;
        }
    };
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let a = Answer::new(405, "text/plain", "only GET and HEAD\n");
        let _ = respond(&mut stream, &a, false);
        return;
    }
    let a = route(&head, path, query, site);
    if let Err(e) = respond(&mut stream, &a, head_only) {
        debug!("http answer failed: {e}");
    }
}

fn respond(stream: &mut TcpStream, a: &Answer, head_only: bool) -> std::io::Result<()> {
    let status = a.status;
    let reason = match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{}",
        a.ctype,
        a.body.len(),
        a.headers
    );
    if status == 401 {
        out.push_str("WWW-Authenticate: Bearer realm=\"lego\"\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&a.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::{bearer, cookie};

    proptest::proptest! {
        /// Any head at all: the token is looked for and never panics, and
        /// is only ever found after its header's name.
        #[test]
        fn any_request_head_is_parsed_without_panic(head in "\\PC{0,300}") {
            let _ = bearer(&head);
            if let Some(t) = cookie(&head, "lego_token_1") {
                proptest::prop_assert!(head.to_ascii_lowercase().contains("cookie"));
                proptest::prop_assert!(head.contains(t));
            }
        }
    }

    #[test]
    fn the_token_cookie_is_found_among_others() {
        let head = "GET / HTTP/1.1\r\nCookie: a=1; lego_token_80=abc ; b=2\r\n\r\n";
        assert_eq!(cookie(head, "lego_token_80"), Some("abc"));
        assert_eq!(cookie(head, "lego_token_81"), None);
        assert_eq!(
            cookie("GET / HTTP/1.1\r\nCookie: a=1\r\n\r\n", "lego_token_80"),
            None
        );
    }

    #[test]
    fn the_bearer_token_is_found_in_any_case() {
        let head = "GET /state HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer abc \r\n\r\n";
        assert_eq!(bearer(head), Some("abc"));
        assert_eq!(
            bearer("GET / HTTP/1.1\r\nAuthorization: Basic x\r\n\r\n"),
            None
        );
        assert_eq!(bearer("GET / HTTP/1.1\r\n\r\n"), None);
    }
}
