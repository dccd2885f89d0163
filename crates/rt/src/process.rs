//! Process events: fork and exec.
//!
//! fork: the child must see all of the parent's data. The pthread_atfork
//! *prepare* handler (ours runs after the application's) takes the heap, the
//! range allocator and the pager, so nothing moves, and asks the manager for
//! the child's address space: a copy of the parent's at the memory monitors.
//! Pages resident in the parent are copied into the child by the kernel; the
//! rest is in the copied remote space. In the child, the handler re-arms a new
//! userfaultfd over the arena (fork dropped the registration), starts a new
//! fault handler thread, and connects anew (the parent's sockets are not its).
//! A failed copy makes the child exit at once with the memory-lost status,
//! never run on zeros.
//!
//! exec: the new image loads the runtime again (LD_PRELOAD is inherited) and
//! creates its own address space. Each process tells the processor monitor
//! its space through the broker; the monitor frees the previous image's
//! space (same pid) and the space of every process that is gone.

use std::sync::atomic::{AtomicU64, Ordering};

use lego_wire::Asid;

use crate::pager::PAGER;
use crate::stats::COUNTERS;
use crate::sys::Uffd;
use crate::{arena, heap, section};

/// The child's address space, set by the prepare handler (0: the copy failed).
static CHILD_ASID: AtomicU64 = AtomicU64::new(0);
static FORK_ERROR: crate::lock::Lock<Option<String>> = crate::lock::Lock::new(None);

extern "C" fn prepare() {
    heap::lock_for_fork();
    arena::lock_for_fork();
    section::runtime_section(prepare_pager);
}

/// Creates the child's address space and stops evictions until the fork is
/// done: from the clone on, a page written back and dropped by the parent
/// would be missing from the child (old in its remote copy, gone locally).
/// The pager itself stays usable: glibc touches heap memory (the NSS state,
/// stdio) after the prepare handlers, and those pages may need fetching.
fn prepare_pager() {
    let mut guard = PAGER.lock();
    let Some(p) = guard.as_mut() else {
        CHILD_ASID.store(0, Ordering::Relaxed);
        return;
    };
    p.no_evict = true;
    // The child must not inherit a read in flight on the parent's
    // connection, and the memory monitors copy the space only after every
    // free the parent sent reached them.
    p.cancel_ahead();
    p.remote.settle_frees(0);
    if let Err(lost) = p.settle_cleaning() {
        crate::fatal_lost(&lost);
    }
    let asid = p.remote.fork_space();
    match asid {
        Ok(r) => CHILD_ASID.store(r.asid.0, Ordering::Relaxed),
        Err(e) => {
            CHILD_ASID.store(0, Ordering::Relaxed);
            *FORK_ERROR.lock() = Some(e.to_string());
        }
    }
}

fn unlock_ranges_and_heap() {
    arena::unlock_after_fork();
    heap::unlock_after_fork();
}

extern "C" fn parent() {
    COUNTERS.add(&COUNTERS.forks, 1);
    section::runtime_section(|| {
        if let Some(p) = PAGER.lock().as_mut() {
            p.no_evict = false;
        }
    });
    unlock_ranges_and_heap();
}

extern "C" fn child() {
    // Locks held by the parent's other threads at the instant of the fork
    // (the fault handler serving a fault, the stats thread) are free in the
    // child: those threads do not exist here.
    crate::ALLOC.unlock_after_fork();
    heap::unlock_private_after_fork();
    // SAFETY: no thread of the child holds the pager lock.
    unsafe { PAGER.force_unlock() };
    // The heap and the range allocator were held by this thread across the
    // fork, so they are consistent.
    unlock_ranges_and_heap();
    section::runtime_section(child_locked);
    crate::CHILD.store(true, Ordering::Relaxed);
}

fn child_locked() {
    let mut guard = PAGER.lock();
    if let Some(p) = guard.as_mut() {
        p.no_evict = false;
        let asid = Asid(CHILD_ASID.load(Ordering::Relaxed));
        if asid.0 == 0 {
            let why = FORK_ERROR.lock().take().unwrap_or_default();
            crate::fatal_lost_msg(&format!("fork could not copy the parent's memory: {why}"));
        }
        // A fault being served at the instant of the fork may have marked
        // pages resident that were not installed yet: trust the page tables.
        p.resync_resident(arena::top());
        // The parent's userfaultfd copy is closed when the new one replaces it.
        let rearmed = Uffd::open()
            .map_err(|e| std::io::Error::new(e.kind(), format!("open: {e}")))
            .and_then(|u| p.rearm_after_fork(u));
        if let Err(e) = rearmed {
            crate::fatal_lost_msg(&format!(
                "the forked child cannot take over its memory: {e}"
            ));
        }
        if let Err(e) = p.remote.reset_after_fork(asid) {
            crate::fatal_lost_msg(&format!("the forked child cannot reach the manager: {e}"));
        }
        crate::quota::after_fork(asid);
        crate::broker::report_space(asid.0);
        crate::start_handler(p.uffd.events());
    }
}

/// Registers the fork handlers; called once at start.
pub fn install() {
    // SAFETY: registers plain extern "C" functions that live forever.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}
