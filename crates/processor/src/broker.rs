//! The broker: what a job's runtime needs from outside its jail, asked over
//! the socket pair the helper set up ([`crate::enter`]). A confined job has
//! no route to the cluster and no way into the host's network namespace;
//! the processor monitor is the processor's hardware and speaks for it.
//!
//! Messages (one datagram each, `SOCK_SEQPACKET`; the kernel adds the
//! sender's pid, as this monitor sees it):
//!
//! ```text
//! C addr  + SCM_RIGHTS(reply)  connect to addr (the manager or a memory
//!                              monitor the manager knows, nothing else);
//!                              the reply socket gets "+" with the connected
//!                              socket, or "-" and why
//! S asid (u64 LE)              this process's address space (after exec: its
//!                              new one; the old one is released)
//! T json                       the job's counters
//! ```
//!
//! What a process says of its address space is a claim: the monitor frees
//! it only if the manager records it as this job's.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lego_transport::lock;
use lego_wire::Asid;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::{debug, warn};

use crate::job::Job;
use crate::shared::Shared;

/// The largest message (counters as JSON).
const MAX_MESSAGE: usize = 256 << 10;
/// How long a connection the broker makes may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the broker asks the manager about an address it does not know.
const ASK_EVERY: Duration = Duration::from_millis(250);
/// Connections a job may have made per second, on average, and at once.
const CONNECTS_PER_SEC: f64 = 50.0;
const CONNECT_BURST: f64 = 200.0;

/// Starts the job's broker on a thread of its own; it ends when every
/// process of the job has closed its end.
pub(crate) fn start(
    shared: Arc<Shared>,
    job: Arc<Job>,
    sock: OwnedFd,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("job-{:x}-broker", job.id & 0xffff))
        .spawn(move || serve(&shared, &job, sock))
}

/// A token bucket.
struct Rate {
    tokens: f64,
    at: Instant,
}

impl Rate {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * CONNECTS_PER_SEC)
            .min(CONNECT_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn serve(shared: &Shared, job: &Job, sock: OwnedFd) {
    if let Err(e) = rustix::net::sockopt::set_socket_passcred(&sock, true) {
        warn!(
            job = format_args!("{:x}", job.id),
            "the broker cannot tell who asks: {e}"
        );
        return;
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut rate = Rate {
        tokens: CONNECT_BURST,
        at: Instant::now(),
    };
    loop {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit();
            rustix::cmsg_space!(ScmRights(1), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let got = match got {
            Ok(g) => g,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                debug!(job = format_args!("{:x}", job.id), "broker: {e}");
                break;
            }
        };
        if got.bytes == 0 {
            break; // every process of the job is gone
        }
        let (mut reply, mut pid) = (None, None);
        for msg in control.drain() {
            match msg {
                RecvAncillaryMessage::ScmRights(mut fds) => reply = fds.next(),
                RecvAncillaryMessage::ScmCredentials(c) => pid = Some(c.pid.as_raw_nonzero().get()),
                _ => {}
            }
        }
        let msg = &buf[..got.bytes.min(buf.len())];
        match (msg.first(), reply) {
            (Some(b'C'), Some(reply)) => {
                let answer = match std::str::from_utf8(&msg[1..]) {
                    Err(_) => Err("the address is not UTF-8".to_string()),
                    Ok(_) if !rate.take() => Err("too many connections: slow down".to_string()),
                    Ok(addr) => connect(shared, addr),
                };
                if let Err(why) = &answer {
                    debug!(
                        job = format_args!("{:x}", job.id),
                        "broker refused a connection: {why}"
                    );
                }
                answer_connect(&reply, answer);
            }
            (Some(b'S'), _) if msg.len() == 9 => {
                let asid = Asid(u64::from_le_bytes(msg[1..9].try_into().expect("8 bytes")));
                if let Some(pid) = pid {
                    if let Some(old) = job.note_space(pid as u32, asid) {
                        release(shared, job, old);
                    }
                }
            }
            (Some(b'T'), _) => {
                if let Ok(c) =
                    serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&msg[1..])
                {
                    job.set_counters(
                        c.into_iter()
                            .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
                            .collect(),
                    );
                }
            }
            _ => debug!(
                job = format_args!("{:x}", job.id),
                "broker: a message it does not know"
            ),
        }
    }
}

/// Frees an address space a process of the job no longer uses, if the
/// manager records it as the job's.
pub(crate) fn release(shared: &Shared, job: &Job, asid: Asid) {
    job.space_gone(asid.0);
    match shared.manager.release_job_space(job.id, asid) {
        Ok(r) => debug!(
            job = format_args!("{:x}", job.id),
            %asid,
            freed = r.freed_pages,
            "an address space the job no longer uses was freed"
        ),
        Err(e) => warn!(
            job = format_args!("{:x}", job.id),
            %asid,
            "cannot free an address space of the job: {}",
            crate::chain(&e)
        ),
    }
}

/// Connects to a component of the cluster, and only to one.
fn connect(shared: &Shared, addr: &str) -> Result<OwnedFd, String> {
    if !shared.may_dial(addr) {
        return Err(format!("{addr} is not a component of this cluster"));
    }
    lego_transport::link::connect(addr, CONNECT_TIMEOUT)
        .map(|link| link.into_fd())
        .map_err(|e| lego_wire::error::chain(&e))
}

fn answer_connect(reply: &OwnedFd, answer: Result<OwnedFd, String>) {
    let sent = match answer {
        Ok(fd) => {
            let fds = [fd.as_fd()];
            let mut space =
                [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                reply,
                &[IoSlice::new(b"+")],
                &mut control,
                SendFlags::NOSIGNAL,
            )
        }
        Err(why) => {
            let msg = [b"-".as_slice(), why.as_bytes()].concat();
            rustix::net::send(reply, &msg, SendFlags::NOSIGNAL)
        }
    };
    if let Err(e) = sent {
        debug!("broker: the asker went away: {e}");
    }
}

impl Shared {
    /// Whether the broker may connect a job to `addr`: the manager, or a
    /// memory monitor the manager knows. An address not known yet is
    /// asked about, at most every [`ASK_EVERY`]: a monitor that registered
    /// since the last ask (the replacement of a dead one, just given a
    /// vRegion) waits out the rest of the interval and is found, never
    /// refused; a job naming addresses at random costs the manager at most
    /// a few questions a second (its broker serves one request at a time).
    /// What the manager last said stands while it is away (a restart): no
    /// memory monitor can join meanwhile.
    pub(crate) fn may_dial(&self, addr: &str) -> bool {
        if addr == self.cfg.manager {
            return true;
        }
        {
            let known = lock(&self.dialable);
            if known.1.alive.iter().any(|a| a == addr) {
                return true;
            }
            // A monitor the manager declared dead is refused at once: a
            // process tries a dead copy until it learns better, and every
            // try waiting out the interval would slow each of its faults.
            if known.1.dead.iter().any(|a| a == addr) {
                return false;
            }
        }
        let since = lock(&self.dialable).0.map(|t| t.elapsed());
        if let Some(wait) = since.and_then(|s| ASK_EVERY.checked_sub(s)) {
            std::thread::sleep(wait);
        }
        self.refresh_dialable(Duration::ZERO);
        lock(&self.dialable).1.alive.iter().any(|a| a == addr)
    }

    /// Asks the manager for the memory monitors, unless it was asked less
    /// than `fresh` ago. Also run by the janitor, so that the list is
    /// there before a manager goes away.
    pub(crate) fn refresh_dialable(&self, fresh: Duration) {
        {
            let mut known = lock(&self.dialable);
            if known.0.is_some_and(|t| t.elapsed() < fresh) {
                return;
            }
            known.0 = Some(Instant::now());
        }
        if let Ok(addrs) = self.manager.memory_monitors() {
            lock(&self.dialable).1 = addrs;
        }
    }
}
