//! The application's heap: the malloc family, served from the arena.
//!
//! Small blocks come from a TLSF allocator (`rlsf`) whose pools are page
//! ranges of the arena, 1 MiB at first and twice as large each time up to
//! 64 MiB (so a small process commits little memory against its vNode's
//! quota); blocks of 256 KiB and more are page ranges of
//! their own, returned to the arena (and freed on the memory monitors) when
//! freed, as glibc does with mmap'd chunks. Blocks aligned beyond 16 bytes are
//! carved out of larger blocks and remembered in a side table.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use crate::lock::Lock as Mutex;
use rlsf::Tlsf;

use crate::arena::{self, PAGE};

/// Blocks of at least this size are page ranges of their own.
pub const LARGE: usize = 256 << 10;
const POOL: usize = 64 << 20;
/// The first pool of a heap.
const FIRST_POOL: usize = 1 << 20;
const ALIGN: usize = 16;

type Small = Tlsf<'static, u32, u32, 24, 16>;

struct Heap {
    /// Private heaps take pools outside the arena (see `in_runtime`).
    private: bool,
    /// Pools of a private heap, to recognise its pointers.
    pools: Vec<(usize, usize)>,
    small: Small,
    /// Large blocks: user pointer -> (range start, range length).
    large: BTreeMap<usize, (usize, usize)>,
    /// Over-aligned small blocks: user pointer -> block returned by TLSF.
    aligned: BTreeMap<usize, usize>,
    /// Size of the next pool.
    next_pool: usize,
}

static HEAP: Mutex<Heap> = Mutex::new(Heap::new(false));
/// The heap for allocations made by the runtime's own code paths (Rust std
/// allocating through `malloc`, in the handler thread or under the pager
/// lock): they must never touch pageable memory.
static PRIVATE: Mutex<Heap> = Mutex::new(Heap::new(true));

fn heap_for_alloc() -> &'static Mutex<Heap> {
    if crate::section::in_runtime() {
        &PRIVATE
    } else {
        &HEAP
    }
}

/// The heap that owns `p`, if any.
fn owner(p: usize) -> Option<&'static Mutex<Heap>> {
    if arena::contains(p) {
        return Some(&HEAP);
    }
    let h = PRIVATE.lock();
    let ours = h.large.contains_key(&p) || h.pools.iter().any(|&(s, l)| p >= s && p < s + l);
    ours.then_some(&PRIVATE)
}

fn pages(len: usize, private: bool) -> Option<usize> {
    if private {
        crate::sys::private_pages(len).ok()
    } else {
        arena::alloc_pages(len)
    }
}

fn round_pages(n: usize) -> Option<usize> {
    n.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

impl Heap {
    const fn new(private: bool) -> Heap {
        Heap {
            private,
            pools: Vec::new(),
            small: Tlsf::new(),
            large: BTreeMap::new(),
            aligned: BTreeMap::new(),
            next_pool: FIRST_POOL,
        }
    }

    fn small_alloc(&mut self, size: usize) -> Option<usize> {
        let layout = Layout::from_size_align(size.max(1), ALIGN).ok()?;
        if let Some(p) = self.small.allocate(layout) {
            return Some(p.as_ptr() as usize);
        }
        let pool_len = if self.private {
            POOL / 16
        } else {
            // Room for the block whatever the pool's size (blocks here are
            // smaller than LARGE).
            let len = self.next_pool.max(2 * LARGE);
            self.next_pool = (self.next_pool * 2).min(POOL);
            len
        };
        let pool = pages(pool_len, self.private)?;
        if self.private {
            self.pools.push((pool, pool_len));
        }
        let block = NonNull::slice_from_raw_parts(NonNull::new(pool as *mut u8)?, pool_len);
        // SAFETY: the pool is a fresh, exclusively owned range of the arena
        // that lives as long as the process.
        unsafe { self.small.insert_free_block_ptr(block) }?;
        self.small.allocate(layout).map(|p| p.as_ptr() as usize)
    }

    fn large_alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        let len = round_pages(size.checked_add(align.saturating_sub(PAGE))?)?;
        let start = pages(len, self.private)?;
        let user = start.next_multiple_of(align.max(PAGE));
        self.large.insert(user, (start, len));
        Some(user)
    }

    fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        if size >= LARGE || align > PAGE {
            return self.large_alloc(size, align);
        }
        if align <= ALIGN {
            return self.small_alloc(size);
        }
        let block = self.small_alloc(size.checked_add(align)?)?;
        let user = (block + 1).next_multiple_of(align);
        self.aligned.insert(user, block);
        Some(user)
    }

    /// Usable bytes at `p`, and whether it is a large block.
    fn usable(&self, p: usize) -> Option<(usize, bool)> {
        if let Some(&(start, len)) = self.large.get(&p) {
            return Some((start + len - p, true));
        }
        let block = self.aligned.get(&p).copied().unwrap_or(p);
        // SAFETY: `block` was returned by `self.small` and is still allocated.
        let n = unsafe { Small::allocation_usable_size(NonNull::new(block as *mut u8)?) };
        Some((n - (p - block), false))
    }

    /// Frees `p`; returns a page range to zap and return to the arena, if any.
    fn free(&mut self, p: usize) -> Option<(usize, usize)> {
        if let Some(range) = self.large.remove(&p) {
            return Some(range);
        }
        let block = self.aligned.remove(&p).unwrap_or(p);
        // SAFETY: `block` was allocated by `self.small` with alignment ALIGN.
        unsafe {
            self.small
                .deallocate(NonNull::new(block as *mut u8)?, ALIGN)
        };
        None
    }
}

fn release_range(heap: &Mutex<Heap>, (start, len): (usize, usize)) {
    if std::ptr::eq(heap, &PRIVATE) {
        // SAFETY: a range of the private heap's own mapping that it gives
        // back: the allocator no longer hands out anything in it.
        let _ = unsafe { crate::sys::raw_munmap(start, len) };
    } else {
        crate::pager::zap(start, len);
        arena::free_pages(start, len);
    }
}

pub fn malloc(size: usize) -> *mut u8 {
    aligned_alloc(ALIGN, size)
}

pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    heap_for_alloc().lock().alloc(size, align).unwrap_or(0) as *mut u8
}

pub fn free(p: *mut u8) {
    let p = p as usize;
    if p == 0 {
        return;
    }
    // Memory not ours (allocated before we were loaded) is left alone.
    let Some(heap) = owner(p) else { return };
    let range = heap.lock().free(p);
    if let Some(r) = range {
        release_range(heap, r);
    }
}

pub fn usable_size(p: *mut u8) -> usize {
    let p = p as usize;
    match owner(p) {
        Some(h) if p != 0 => h.lock().usable(p).map_or(0, |(n, _)| n),
        _ => 0,
    }
}

pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(total) = n.checked_mul(size) else {
        return std::ptr::null_mut();
    };
    let mut h = heap_for_alloc().lock();
    let Some(p) = h.alloc(total, ALIGN) else {
        return std::ptr::null_mut();
    };
    let fresh = h.large.contains_key(&p);
    drop(h);
    if !fresh {
        // SAFETY: `p` is a fresh allocation of at least `total` bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, total) };
    }
    // Large blocks are fresh page ranges: they read as zeros already, and
    // writing zeros would only make them dirty.
    p as *mut u8
}

pub fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    let old = p as usize;
    if old == 0 {
        return malloc(size);
    }
    let Some(heap) = owner(old) else {
        // Not ours: we cannot know its size; refuse rather than corrupt.
        return std::ptr::null_mut();
    };
    let mut h = heap.lock();
    let Some((usable, large)) = h.usable(old) else {
        return std::ptr::null_mut();
    };
    if size <= usable && (large || size + LARGE > usable) {
        return p; // fits where it is
    }
    if large && size >= LARGE {
        let (start, len) = h.large[&old];
        if old == start {
            if let Some(new_len) = round_pages(size) {
                if !h.private && arena::grow_in_place(start, len, new_len) {
                    h.large.insert(old, (start, new_len));
                    return p;
                }
            }
        }
    }
    if !large && size < LARGE && !h.aligned.contains_key(&old) {
        let layout = Layout::from_size_align(size.max(1), ALIGN).expect("valid layout");
        // SAFETY: `old` was allocated by `h.small` with alignment ALIGN.
        if let Some(n) = unsafe {
            h.small
                .reallocate(NonNull::new(old as *mut u8).expect("non-null"), layout)
        } {
            return n.as_ptr();
        }
    }
    drop(h);
    let new = malloc(size) as usize;
    if new == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: both blocks are live, disjoint allocations; we copy the smaller size.
    unsafe { std::ptr::copy_nonoverlapping(old as *const u8, new as *mut u8, usable.min(size)) };
    free(p);
    new as *mut u8
}

/// Locks the application heap across fork (see `process`).
pub fn lock_for_fork() {
    std::mem::forget(HEAP.lock());
}

/// In a forked child, first thing: frees the private heap's lock, which a
/// runtime thread of the parent may have held at the instant of the fork.
pub fn unlock_private_after_fork() {
    // SAFETY: in the child only the forking thread exists, and it is not
    // inside the private heap; a holder in the parent does not exist here.
    unsafe { PRIVATE.force_unlock() };
}

/// Unlocks the application heap after fork, in the parent and in the child.
pub fn unlock_after_fork() {
    // SAFETY: called only after `lock_for_fork` by the thread that owns it.
    unsafe { HEAP.force_unlock() };
}
