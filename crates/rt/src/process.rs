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
//! creates its own address space. It releases the previous image's space,
//! found in the per-process record `$LEGO_RT_SPACES/<pid>`.

use std::sync::atomic::{AtomicU64, Ordering};

use lego_wire::control::{CreateSpaceResp, ForkSpaceReq};
use lego_wire::Op;

use crate::pager::PAGER;
use crate::stats::COUNTERS;
use crate::sys::Uffd;
use crate::{arena, heap};

/// The child's address space, set by the prepare handler (0: the copy failed).
static CHILD_ASID: AtomicU64 = AtomicU64::new(0);
static FORK_ERROR: crate::lock::Lock<Option<String>> = crate::lock::Lock::new(None);

extern "C" fn prepare() {
    heap::lock_for_fork();
    arena::lock_for_fork();
    heap::runtime_section(prepare_locked);
}

fn prepare_locked() {
    let guard = PAGER.lock();
    let asid = guard.as_ref().map(|p| {
        p.remote.manager().call_json::<_, CreateSpaceResp>(
            Op::ForkSpace,
            &ForkSpaceReq {
                asid: p.remote.asid,
            },
        )
    });
    match asid {
        Some(Ok(r)) => CHILD_ASID.store(r.asid, Ordering::Relaxed),
        Some(Err(e)) => {
            CHILD_ASID.store(0, Ordering::Relaxed);
            *FORK_ERROR.lock() = Some(e.to_string());
        }
        None => CHILD_ASID.store(0, Ordering::Relaxed),
    }
    std::mem::forget(guard);
    heap::lock_private_for_fork();
    // Nothing may allocate from here until the fork returns.
    crate::ALLOC.lock_for_fork();
}

fn unlock_all() {
    // SAFETY: the prepare handler of this same fork locked the pager and
    // forgot the guard; this thread (or its copy in the child) owns it.
    unsafe { PAGER.force_unlock() };
    arena::unlock_after_fork();
    heap::unlock_after_fork();
}

extern "C" fn parent() {
    crate::ALLOC.unlock_after_fork();
    COUNTERS.add(&COUNTERS.forks, 1);
    heap::unlock_private_after_fork();
    unlock_all();
}

extern "C" fn child() {
    crate::ALLOC.unlock_after_fork();
    heap::unlock_private_after_fork();
    heap::runtime_section(child_locked);
    crate::CHILD.store(true, Ordering::Relaxed);
    unlock_all();
}

fn child_locked() {
    // SAFETY: this thread holds the pager lock (taken in prepare); we use the
    // state through the lock's data pointer without locking again.
    let pager = unsafe { &mut *PAGER.get_unlocked() };
    if let Some(p) = pager.as_mut() {
        let asid = CHILD_ASID.load(Ordering::Relaxed);
        if asid == 0 {
            let why = FORK_ERROR.lock().take().unwrap_or_default();
            crate::fatal_lost_msg(&format!("fork could not copy the parent's memory: {why}"));
        }
        let old = p.uffd.fd;
        let rearmed = Uffd::open()
            .map_err(|e| std::io::Error::new(e.kind(), format!("open: {e}")))
            .and_then(|u| p.rearm_after_fork(u));
        if let Err(e) = rearmed {
            crate::fatal_lost_msg(&format!(
                "the forked child cannot take over its memory: {e}"
            ));
        }
        // SAFETY: the parent's userfaultfd copy is unused in the child.
        unsafe { libc::close(old) };
        if let Err(e) = p.remote.reset_after_fork(asid) {
            crate::fatal_lost_msg(&format!("the forked child cannot reach the manager: {e}"));
        }
        record_space(asid);
        let fd = p.uffd.fd;
        crate::start_handler(fd);
    }
}

/// Registers the fork handlers; called once at start.
pub fn install() {
    // SAFETY: registers plain extern "C" functions that live forever.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Records `asid` as this process's address space in `$LEGO_RT_SPACES/<pid>`
/// and returns the previous record for this pid (an exec'd image's), if any.
pub fn record_space(asid: u64) -> Option<u64> {
    let dir = crate::SPACES_DIR.get()?.as_ref()?;
    let path = format!("{dir}/{}", std::process::id());
    let prev = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
    let _ = std::fs::write(&path, format!("{asid:x}"));
    prev.filter(|&p| p != asid)
}
