//! The vNode's memory quota, as one process sees it.
//!
//! Memory the program is given (arena ranges for mmap, large mallocs and the
//! heap's pools, and the program break) is *committed*. When the vNode has a
//! quota, a process may commit only what the manager has leased to its
//! address space; it asks for more in chunks (`LeaseMemory`), and the
//! manager grants a lease only while all of the vNode's leases together stay
//! within the quota. A refused lease makes the allocation fail the way it
//! fails on Linux when memory runs out: `malloc` returns NULL, `mmap` fails
//! with ENOMEM. The refusal is counted (`quota_refusals`), and the processor
//! monitor logs it with the vNode's name.
//!
//! Leases are taken ahead of need: when less than [`CHUNK`] of lease is left
//! after a commit, the leaser thread (`lego-leaser`, woken through a pipe)
//! asks for the next chunk while the program runs on, so that an allocation
//! waits for the manager only when it outruns the leaser
//! (`leases_ahead`, `leases_waited`).
//!
//! Leases only grow during a process's life; releasing its address space
//! (exit, exec) returns them. A forked child starts with a copy of its
//! parent's lease, made by the manager with the copy of its memory, and a
//! leaser of its own.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use lego_transport::Redial;
use lego_wire::control::LeaseReq;
use lego_wire::Asid;

use crate::lock::Lock;
use crate::stats::COUNTERS;

/// Leases are asked for in chunks of at least this many bytes.
const CHUNK: u64 = 4 << 20;

static ENABLED: AtomicBool = AtomicBool::new(false);
static COMMITTED: AtomicU64 = AtomicU64::new(0);
static LEASED: AtomicU64 = AtomicU64::new(0);
/// The manager connection (made again when it broke, from the host's
/// network namespace), and the address space leases are asked for.
static LEASER: Lock<Option<(Redial, Asid)>> = Lock::new(None);
/// The pipe that wakes the leaser: (read end, write end), -1 when none.
static WAKE_R: AtomicI32 = AtomicI32::new(-1);
static WAKE_W: AtomicI32 = AtomicI32::new(-1);
/// A lease ahead is asked for and not done yet.
static AHEAD: AtomicBool = AtomicBool::new(false);
/// The last lease ahead was refused: none is asked again until a lease
/// the program waited for succeeds (the quota is full meanwhile).
static AHEAD_REFUSED: AtomicBool = AtomicBool::new(false);

/// Starts a leaser thread with a pipe of its own.
fn start_leaser() {
    match crate::sys::pipe() {
        Ok((r, w)) => {
            WAKE_R.store(r, Ordering::Release);
            WAKE_W.store(w, Ordering::Release);
            crate::start_leaser(r);
        }
        Err(_) => WAKE_W.store(-1, Ordering::Release), // leases as needed only
    }
}

/// The leaser thread: a lease ahead each time it is woken.
pub fn leaser_loop(fd: i32) {
    while crate::sys::read_byte(fd) {
        if lease_inner(CHUNK, true) {
            COUNTERS.add(&COUNTERS.leases_ahead, 1);
        } else {
            AHEAD_REFUSED.store(true, Ordering::Release);
        }
        AHEAD.store(false, Ordering::Release);
    }
}

/// Wakes the leaser when less than a chunk of lease is left.
fn maybe_lease_ahead(committed: u64) {
    let w = WAKE_W.load(Ordering::Acquire);
    if w < 0 || AHEAD_REFUSED.load(Ordering::Acquire) {
        return;
    }
    if committed + CHUNK > LEASED.load(Ordering::Acquire) && !AHEAD.swap(true, Ordering::AcqRel) {
        crate::sys::write_fd(w, &[1]);
    }
}

/// Turns the quota on for address space `asid` and leases what the program
/// was given before the runtime started. An error says why not.
pub fn init(manager: Redial, asid: Asid) -> Result<(), String> {
    *LEASER.lock() = Some((manager, asid));
    ENABLED.store(true, Ordering::Release);
    start_leaser();
    let early = COMMITTED.load(Ordering::Relaxed);
    if early > 0 && !lease(early) {
        return Err(format!(
            "the vnode's memory quota does not even cover the {early} bytes the program took before the runtime started"
        ));
    }
    Ok(())
}

/// In a forked child: the same lease (the manager copied it) for the child's space.
pub fn after_fork(asid: Asid) {
    if let Some((manager, a)) = LEASER.lock().as_mut() {
        // The parent's connection is not ours: the next lease connects anew.
        manager.abandon();
        *a = asid;
    }
    if ENABLED.load(Ordering::Acquire) {
        // The parent's leaser is not in this process; its pipe is the
        // parent's.
        for end in [&WAKE_R, &WAKE_W] {
            let fd = end.swap(-1, Ordering::AcqRel);
            if fd >= 0 {
                crate::sys::close_fd(fd);
            }
        }
        AHEAD.store(false, Ordering::Release);
        start_leaser();
    }
}

/// Asks the manager for at least `need` more bytes of lease, waiting.
fn lease(need: u64) -> bool {
    COUNTERS.add(&COUNTERS.leases_waited, 1);
    let ok = crate::section::runtime_section(|| lease_inner(need, false));
    if ok {
        AHEAD_REFUSED.store(false, Ordering::Release);
    }
    ok
}

/// One lease; a refusal of one the program waits for is counted.
fn lease_inner(need: u64, ahead: bool) -> bool {
    let mut guard = LEASER.lock();
    let Some((manager, asid)) = guard.as_mut() else {
        return false;
    };
    let req = LeaseReq {
        asid: *asid,
        bytes: need.max(CHUNK).next_multiple_of(1 << 20),
    };
    // A chunk may not fit the quota where the exact need would.
    let mut answer = manager.call(&req);
    if ahead && answer.is_err() {
        return false; // what it may still get is left for a need
    }
    if answer.is_err() && req.bytes > need {
        answer = manager.call(&LeaseReq {
            asid: *asid,
            bytes: need,
        });
    }
    match answer {
        Ok(r) => {
            LEASED.store(r.leased, Ordering::Release);
            true
        }
        Err(_) => {
            if !ahead {
                COUNTERS.add(&COUNTERS.quota_refusals, 1);
            }
            false
        }
    }
}

/// Commits `len` more bytes to the program, if the quota allows.
pub fn reserve(len: usize) -> bool {
    let len = len as u64;
    if !ENABLED.load(Ordering::Acquire) {
        COMMITTED.fetch_add(len, Ordering::Relaxed);
        return true;
    }
    loop {
        let c = COMMITTED.load(Ordering::Acquire);
        if c + len <= LEASED.load(Ordering::Acquire) {
            if COMMITTED
                .compare_exchange(c, c + len, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                maybe_lease_ahead(c + len);
                return true;
            }
            continue;
        }
        if !lease(c + len - LEASED.load(Ordering::Acquire).min(c + len)) {
            return false;
        }
    }
}

/// The program gave `len` bytes back.
pub fn release(len: usize) {
    let len = len as u64;
    let _ = COMMITTED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_sub(len))
    });
}

/// Bytes committed to the program now.
pub fn committed() -> u64 {
    COMMITTED.load(Ordering::Relaxed)
}
