//! The arena: one large reservation of virtual memory that holds all of the
//! application's anonymous memory, and the page-range allocator inside it.
//!
//! The arena is reserved on first use (possibly by a `malloc` before the
//! runtime's constructor ran) with MAP_NORESERVE, so it costs nothing until
//! touched. Its first part emulates `brk`; the rest is handed out in page
//! ranges to `mmap`, large `malloc`s and the small-object heap's pools.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::lock::Lock as Mutex;

use crate::sys::{raw_madvise, raw_mmap};

pub const PAGE: usize = 4096;
/// Default size of the arena's reservation (virtual).
pub const DEFAULT_ARENA: usize = 64 << 30;
/// Part of the arena used for the emulated program break.
pub const BRK_LEN: usize = 1 << 30;

static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static INIT: AtomicUsize = AtomicUsize::new(0); // 0 no, 1 in progress, 2 done

/// Free page ranges and the high-water mark of handed-out ranges.
struct Ranges {
    free: BTreeMap<usize, usize>,
    top: usize,
}

static RANGES: Mutex<Ranges> = Mutex::new(Ranges {
    free: BTreeMap::new(),
    top: 0,
});

fn arena_len() -> usize {
    // Read without allocating: the environment is parsed by hand.
    std::env::var_os("LEGO_RT_ARENA")
        .and_then(|v| v.to_str().and_then(|s| s.parse::<usize>().ok()))
        .map(|gib| gib << 30)
        .unwrap_or(DEFAULT_ARENA)
}

/// The arena's (base, length), reserving it on first call.
pub fn arena() -> (usize, usize) {
    if INIT.load(Ordering::Acquire) == 2 {
        return (BASE.load(Ordering::Relaxed), LEN.load(Ordering::Relaxed));
    }
    if INIT
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        let len = arena_len();
        // SAFETY: not MAP_FIXED: the kernel picks a range no one uses.
        let base = unsafe {
            raw_mmap(
                0,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        }
        .unwrap_or_else(|e| {
            crate::fatal_start(&format!(
                "cannot reserve {len} bytes of address space for the arena: {e}"
            ))
        });
        // SAFETY: advice on the range just mapped; NOHUGEPAGE keeps its contents.
        let _ = unsafe { raw_madvise(base, len, libc::MADV_NOHUGEPAGE) };
        BASE.store(base, Ordering::Relaxed);
        LEN.store(len, Ordering::Relaxed);
        RANGES.lock().top = base + BRK_LEN;
        INIT.store(2, Ordering::Release);
    } else {
        while INIT.load(Ordering::Acquire) != 2 {
            std::hint::spin_loop();
        }
    }
    (BASE.load(Ordering::Relaxed), LEN.load(Ordering::Relaxed))
}

/// Is `addr` inside the arena?
pub fn contains(addr: usize) -> bool {
    let base = BASE.load(Ordering::Relaxed);
    base != 0 && addr >= base && addr < base + LEN.load(Ordering::Relaxed)
}

/// Is the whole range inside the arena's page-range part?
pub fn contains_range(addr: usize, len: usize) -> bool {
    contains(addr) && len > 0 && contains(addr + len - 1)
}

/// Hands out `len` bytes (a multiple of the page size) of fresh pages:
/// never-touched or zapped, so they read as zeros. First fit.
pub fn alloc_pages(len: usize) -> Option<usize> {
    let (base, alen) = arena();
    if !crate::quota::reserve(len) {
        return None;
    }
    let got = alloc_range(base, alen, len);
    if got.is_none() {
        crate::quota::release(len);
    }
    got
}

fn alloc_range(base: usize, alen: usize, len: usize) -> Option<usize> {
    let mut r = RANGES.lock();
    let found = r
        .free
        .iter()
        .find(|(_, &l)| l >= len)
        .map(|(&s, &l)| (s, l));
    if let Some((s, l)) = found {
        r.free.remove(&s);
        if l > len {
            r.free.insert(s + len, l - len);
        }
        return Some(s);
    }
    if r.top + len > base + alen {
        return None;
    }
    let s = r.top;
    r.top += len;
    Some(s)
}

/// Returns a range to the allocator. The caller must have zapped it first.
pub fn free_pages(start: usize, len: usize) {
    crate::quota::release(len);
    let mut r = RANGES.lock();
    let (mut s, mut l) = (start, len);
    if let Some((&ps, &pl)) = r.free.range(..s).next_back() {
        if ps + pl == s {
            r.free.remove(&ps);
            s = ps;
            l += pl;
        }
    }
    if let Some(&nl) = r.free.get(&(s + l)) {
        r.free.remove(&(s + l));
        l += nl;
    }
    if s + l == r.top {
        r.top = s;
    } else {
        r.free.insert(s, l);
    }
}

/// Grows a range in place by taking the free pages right after it.
pub fn grow_in_place(start: usize, old: usize, new: usize) -> bool {
    if !crate::quota::reserve(new - old) {
        return false;
    }
    let grown = grow_range(start, old, new);
    if !grown {
        crate::quota::release(new - old);
    }
    grown
}

fn grow_range(start: usize, old: usize, new: usize) -> bool {
    let (base, alen) = arena();
    let mut r = RANGES.lock();
    let end = start + old;
    let extra = new - old;
    if end == r.top {
        if r.top + extra > base + alen {
            return false;
        }
        r.top += extra;
        return true;
    }
    match r.free.get(&end).copied() {
        Some(l) if l >= extra => {
            r.free.remove(&end);
            if l > extra {
                r.free.insert(end + extra, l - extra);
            }
            true
        }
        _ => false,
    }
}

/// The highest address handed out so far (for adopting early pages).
pub fn top() -> usize {
    RANGES.lock().top
}

/// Locks the range allocator across fork (see `process`).
pub fn lock_for_fork() {
    std::mem::forget(RANGES.lock());
}

/// Unlocks after fork, in the parent and in the child.
pub fn unlock_after_fork() {
    // SAFETY: called only after `lock_for_fork`, by the forking thread (or its
    // copy in the child), which owns the lock.
    unsafe { RANGES.force_unlock() };
}
