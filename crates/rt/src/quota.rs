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
//! Leases only grow during a process's life; releasing its address space
//! (exit, exec) returns them. A forked child starts with a copy of its
//! parent's lease, made by the manager with the copy of its memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Turns the quota on for address space `asid` and leases what the program
/// was given before the runtime started. An error says why not.
pub fn init(manager: Redial, asid: Asid) -> Result<(), String> {
    *LEASER.lock() = Some((manager, asid));
    ENABLED.store(true, Ordering::Release);
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
}

/// Asks the manager for at least `need` more bytes of lease.
fn lease(need: u64) -> bool {
    crate::section::runtime_section(|| lease_inner(need))
}

fn lease_inner(need: u64) -> bool {
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
            COUNTERS.add(&COUNTERS.quota_refusals, 1);
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
