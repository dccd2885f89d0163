//! Connections that come back, and how long to wait for a peer: the one
//! home of the retry logic every client of the cluster needs.
//!
//! - [`Redial`]: one peer; the connection is made on first use and again
//!   whenever it broke (a peer that restarted, a request that timed out).
//! - [`Pool`]: one connection per address, each made again when broken (a
//!   manager talking to its memory monitors, a runtime to its vRegions').
//! - [`Patience`]: how long a call goes on trying while the peer cannot be
//!   reached (or, if asked, answers `Unavailable`), pausing between tries.
//!   Any other answer, a refusal above all, is final at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lego_wire::{ErrorCode, Request};

use crate::sync::lock;
use crate::{Client, ClientOptions, Credentials, TransportError};

/// How a connection is made: [`Client::connect`], or a caller's own (the
/// runtime dials from its host's network namespace).
pub type DialFn = fn(&str, &Credentials, &ClientOptions) -> Result<Client, TransportError>;

/// How long to keep trying, and how to pause between tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// Give up once this much time has passed since the first try.
    pub within: Duration,
    /// The first pause; each next one doubles, up to `max_pause`.
    pub pause: Duration,
    pub max_pause: Duration,
    /// Also try again when the peer answers `Unavailable` (it is there but
    /// cannot serve yet: a manager just restarted, its monitors not back).
    pub unavailable: bool,
}

impl Patience {
    /// One try.
    pub const NONE: Patience = Patience {
        within: Duration::ZERO,
        pause: Duration::ZERO,
        max_pause: Duration::ZERO,
        unavailable: false,
    };

    /// Tries every `pause` for up to `within` while the peer cannot be reached.
    pub fn steady(within: Duration, pause: Duration) -> Patience {
        Patience {
            within,
            pause,
            max_pause: pause,
            unavailable: false,
        }
    }

    /// Like `self`, pausing twice as long after each try, up to `max`.
    pub fn backing_off(self, max: Duration) -> Patience {
        Patience {
            max_pause: max,
            ..self
        }
    }

    /// Like `self`, also waiting out `Unavailable` answers.
    pub fn and_unavailable(self) -> Patience {
        Patience {
            unavailable: true,
            ..self
        }
    }

    /// Whether `e` is worth another try under this patience.
    pub fn retries(&self, e: &TransportError) -> bool {
        e.is_unreachable() || (self.unavailable && e.remote_code() == Some(ErrorCode::Unavailable))
    }

    /// Runs `f` until it succeeds, fails for good, or time is up; calls
    /// `on_retry` with each error that is tried again and the pause before
    /// the next try.
    pub fn run<T>(
        &self,
        mut f: impl FnMut() -> Result<T, TransportError>,
        mut on_retry: impl FnMut(&TransportError, Duration),
    ) -> Result<T, TransportError> {
        let deadline = Instant::now() + self.within;
        let mut pause = self.pause;
        loop {
            match f() {
                Err(e) if self.retries(&e) && Instant::now() + pause < deadline => {
                    on_retry(&e, pause);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(self.max_pause.max(self.pause));
                }
                other => return other,
            }
        }
    }
}

/// One connection to one peer, made again when it broke.
pub struct Redial {
    addr: String,
    creds: Credentials,
    opts: ClientOptions,
    dial: DialFn,
    conn: Mutex<Option<Client>>,
}

impl Redial {
    /// Connects on first use.
    pub fn new(addr: impl Into<String>, creds: Credentials, opts: ClientOptions) -> Redial {
        Redial {
            addr: addr.into(),
            creds,
            opts,
            dial: Client::connect,
            conn: Mutex::new(None),
        }
    }

    /// Makes its connections with `dial`.
    pub fn with_dial(mut self, dial: DialFn) -> Redial {
        self.dial = dial;
        self
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The credentials it connects with.
    pub fn creds(&self) -> &Credentials {
        &self.creds
    }

    /// The connection, made now if there is none or it broke.
    pub fn client(&self) -> Result<Client, TransportError> {
        let mut conn = lock(&self.conn);
        if let Some(c) = conn.as_ref().filter(|c| c.is_fresh()) {
            return Ok(c.clone());
        }
        let c = (self.dial)(&self.addr, &self.creds, &self.opts)?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// One typed call (connecting first if needed).
    pub fn call<R: Request>(&self, req: &R) -> Result<R::Reply, TransportError> {
        self.client()?.call(req)
    }

    /// A typed call that goes on trying as `patience` says, reconnecting.
    pub fn call_patiently<R: Request>(
        &self,
        req: &R,
        patience: &Patience,
    ) -> Result<R::Reply, TransportError> {
        patience.run(|| self.call(req), |_, _| {})
    }

    /// Another handle on the same peer, with its own connection.
    pub fn fresh(&self) -> Redial {
        Redial {
            addr: self.addr.clone(),
            creds: self.creds.clone(),
            opts: self.opts.clone(),
            dial: self.dial,
            conn: Mutex::new(None),
        }
    }

    /// After fork, in the child: the parent's connection is not ours. It is
    /// left untouched, not even closed (its buffered writer would flush into
    /// the parent's stream), and the next call connects anew.
    pub fn abandon(&self) {
        if let Some(c) = lock(&self.conn).take() {
            std::mem::forget(c);
        }
    }
}

/// One connection per address, each made again when it broke.
pub struct Pool {
    creds: Credentials,
    opts: ClientOptions,
    dial: DialFn,
    conns: Mutex<HashMap<String, Client>>,
}

impl Pool {
    pub fn new(creds: Credentials, opts: ClientOptions) -> Pool {
        Pool {
            creds,
            opts,
            dial: Client::connect,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Makes its connections with `dial`.
    pub fn with_dial(mut self, dial: DialFn) -> Pool {
        self.dial = dial;
        self
    }

    /// The connection to `addr`, made now if there is none or it broke.
    pub fn client(&self, addr: &str) -> Result<Client, TransportError> {
        if let Some(c) = lock(&self.conns).get(addr).filter(|c| c.is_fresh()) {
            return Ok(c.clone());
        }
        let c = (self.dial)(addr, &self.creds, &self.opts)?;
        lock(&self.conns).insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// One typed call to `addr`; a connection that failed is dropped, so
    /// that the next call connects anew.
    pub fn call<R: Request>(&self, addr: &str, req: &R) -> Result<R::Reply, TransportError> {
        let r = self.client(addr)?.call(req);
        if r.as_ref().is_err_and(TransportError::is_unreachable) {
            lock(&self.conns).remove(addr);
        }
        r
    }

    /// After fork, in the child: every connection is the parent's (see
    /// [`Redial::abandon`]).
    pub fn abandon(&self) {
        for (_, c) in lock(&self.conns).drain() {
            std::mem::forget(c);
        }
    }
}
