//! The runtime's own allocator (`#[global_allocator]` of this library).
//!
//! The runtime must never keep its own data in the application's managed
//! memory: the fault handler would then fault on itself. So Rust code in this
//! library allocates from private pages obtained with the raw mmap system call:
//! power-of-two size classes up to 32 KiB carved from 256 KiB slabs, larger
//! blocks mapped directly, and a few freed large blocks kept for reuse.

use std::alloc::{GlobalAlloc, Layout};

use crate::lock::Lock as Mutex;

use crate::sys::{private_pages, raw_munmap};

const CLASSES: usize = 12; // 16 B .. 32 KiB
const MIN_SHIFT: usize = 4;
const SLAB: usize = 256 << 10;
const PAGE: usize = 4096;
/// Large blocks kept mapped after they are freed, for the next allocation of
/// the same size (the fault handler's page buffers come and go per request).
const CACHED: usize = 8;
/// Largest block the cache keeps.
const CACHE_MAX: usize = 16 << 20;

struct FreeLists {
    heads: [usize; CLASSES],
    /// Freed large blocks: (address, mapped length); 0 is an empty slot.
    cache: [(usize, usize); CACHED],
}

/// The allocator; see the module documentation.
pub struct RtAlloc {
    lists: Mutex<FreeLists>,
}

impl Default for RtAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl RtAlloc {
    /// In a forked child, first thing: frees the lock, which a runtime
    /// thread of the parent may have held at the instant of the fork.
    pub fn unlock_after_fork(&self) {
        // SAFETY: in the child only the forking thread exists, and it is not
        // inside the allocator.
        unsafe { self.lists.force_unlock() };
    }

    pub const fn new() -> Self {
        RtAlloc {
            lists: Mutex::new(FreeLists {
                heads: [0; CLASSES],
                cache: [(0, 0); CACHED],
            }),
        }
    }
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = size.next_power_of_two().trailing_zeros() as usize;
    (shift - MIN_SHIFT < CLASSES && layout.align() <= PAGE).then_some(shift - MIN_SHIFT)
}

// SAFETY: blocks handed out are disjoint, aligned to their power-of-two size
// (slabs are page aligned and carved at multiples of the class size), and
// only returned to the free list they came from.
unsafe impl GlobalAlloc for RtAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            Some(c) => {
                let size = 1usize << (c + MIN_SHIFT);
                let mut l = self.lists.lock();
                if l.heads[c] == 0 {
                    let Ok(slab) = private_pages(SLAB) else {
                        return std::ptr::null_mut();
                    };
                    // Thread the new slab's blocks onto the free list.
                    let n = SLAB / size;
                    for i in (0..n).rev() {
                        let b = slab + i * size;
                        // SAFETY: `b` is inside the fresh, writable slab and aligned.
                        unsafe { *(b as *mut usize) = l.heads[c] };
                        l.heads[c] = b;
                    }
                }
                let b = l.heads[c];
                // SAFETY: `b` is a free block of this class; its first word links the list.
                l.heads[c] = unsafe { *(b as *const usize) };
                b as *mut u8
            }
            None => {
                let align = layout.align().max(PAGE);
                let len = layout.size().next_multiple_of(PAGE) + align - PAGE;
                if align == PAGE {
                    let mut l = self.lists.lock();
                    if let Some(slot) = l.cache.iter_mut().find(|s| s.0 != 0 && s.1 == len) {
                        let p = slot.0;
                        *slot = (0, 0);
                        return p as *mut u8;
                    }
                }
                match private_pages(len) {
                    Ok(p) => p.next_multiple_of(align) as *mut u8,
                    Err(_) => std::ptr::null_mut(),
                }
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(&layout) {
            Some(c) => {
                let mut l = self.lists.lock();
                // SAFETY: `ptr` came from this class's list and is at least a word long.
                unsafe { *(ptr as *mut usize) = l.heads[c] };
                l.heads[c] = ptr as usize;
            }
            None => {
                let len = layout.size().next_multiple_of(PAGE);
                if layout.align() <= PAGE && len <= CACHE_MAX {
                    let mut l = self.lists.lock();
                    if let Some(slot) = l.cache.iter_mut().find(|s| s.0 == 0) {
                        *slot = (ptr as usize, len);
                        return;
                    }
                }
                // SAFETY: the allocation being freed: its own mapping, no
                // longer referred to.
                let _ = unsafe { raw_munmap(ptr as usize, len) };
            }
        }
    }
}
