//! The symbols this library interposes on the application (LD_PRELOAD): the
//! malloc family, anonymous private mmap/munmap/mremap/madvise, brk/sbrk.
//! What is not ours (file and shared mappings, fixed addresses outside the
//! arena) goes straight to the kernel.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::arena::{self, PAGE};
use crate::heap;
use crate::stats::COUNTERS;
use crate::sys::{raw_madvise, raw_mmap, raw_mremap, raw_munmap};

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn nomem<T>(v: *mut T) -> *mut T {
    if v.is_null() {
        set_errno(libc::ENOMEM);
    }
    v
}

#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    nomem(heap::malloc(size)).cast()
}

#[no_mangle]
pub extern "C" fn free(p: *mut c_void) {
    heap::free(p.cast())
}

#[no_mangle]
pub extern "C" fn cfree(p: *mut c_void) {
    heap::free(p.cast())
}

#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    nomem(heap::calloc(n, size)).cast()
}

#[no_mangle]
pub extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if !p.is_null() && size == 0 {
        heap::free(p.cast());
        return std::ptr::null_mut();
    }
    nomem(heap::realloc(p.cast(), size)).cast()
}

#[no_mangle]
pub extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => realloc(p, total),
        None => nomem(std::ptr::null_mut::<c_void>()),
    }
}

#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    nomem(heap::aligned_alloc(align, size)).cast()
}

#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

/// # Safety
/// `out` must point to writable storage for a pointer (C's contract).
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = heap::aligned_alloc(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid place to store the pointer.
    unsafe { *out = p.cast() };
    0
}

#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign(PAGE, size)
}

#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    memalign(PAGE, size.next_multiple_of(PAGE))
}

#[no_mangle]
pub extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    heap::usable_size(p.cast())
}

/// Anonymous private read/write memory at no particular address: ours.
fn managed(addr: usize, prot: c_int, flags: c_int, fd: c_int) -> bool {
    let anon_private = flags & libc::MAP_ANONYMOUS != 0
        && flags & libc::MAP_SHARED == 0
        && flags & libc::MAP_PRIVATE != 0;
    let special = libc::MAP_FIXED
        | libc::MAP_32BIT
        | libc::MAP_FIXED_NOREPLACE
        | libc::MAP_GROWSDOWN
        | libc::MAP_STACK
        | libc::MAP_HUGETLB;
    anon_private
        && fd == -1
        && addr == 0
        && flags & special == 0
        && prot == libc::PROT_READ | libc::PROT_WRITE
}

#[no_mangle]
pub extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let a = addr as usize;
    if len == 0 || len > isize::MAX as usize {
        set_errno(if len == 0 { libc::EINVAL } else { libc::ENOMEM });
        return libc::MAP_FAILED;
    }
    if managed(a, prot, flags, fd) {
        if let Some(p) = arena::alloc_pages(len.next_multiple_of(PAGE)) {
            return p as *mut c_void;
        }
    } else if flags & libc::MAP_FIXED != 0 && arena::contains_range(a, len) {
        if flags & libc::MAP_ANONYMOUS != 0 && flags & libc::MAP_PRIVATE != 0 {
            // Fresh anonymous memory over part of the arena: zeros.
            crate::pager::zap(a, len.next_multiple_of(PAGE));
            return addr;
        }
    } else if flags & libc::MAP_SHARED != 0 && flags & libc::MAP_ANONYMOUS != 0 {
        COUNTERS.add(&COUNTERS.local_shared_maps, 1);
    }
    // SAFETY: the program's own mmap outside the arena, with its own
    // arguments: what it replaces is the program's to decide, as with libc.
    match unsafe { raw_mmap(a, len, prot, flags, fd, off) } {
        Ok(p) => p as *mut c_void,
        Err(e) => {
            set_errno(e.raw_os_error().unwrap_or(libc::ENOMEM));
            libc::MAP_FAILED
        }
    }
}

#[no_mangle]
pub extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    mmap(addr, len, prot, flags, fd, off)
}

#[no_mangle]
pub extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let a = addr as usize;
    if !a.is_multiple_of(PAGE) || len == 0 || len > isize::MAX as usize {
        set_errno(libc::EINVAL);
        return -1;
    }
    let len = len.next_multiple_of(PAGE);
    if arena::contains_range(a, len) {
        crate::pager::zap(a, len);
        arena::free_pages(a, len);
        return 0;
    }
    // SAFETY: the program's own munmap of memory outside the arena.
    match unsafe { raw_munmap(a, len) } {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e.raw_os_error().unwrap_or(libc::EINVAL));
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let a = old as usize;
    if !arena::contains(a) {
        // SAFETY: the program's own mremap of memory outside the arena.
        return match unsafe { raw_mremap(a, old_len, new_len, flags, new_addr as usize) } {
            Ok(p) => p as *mut c_void,
            Err(e) => {
                set_errno(e.raw_os_error().unwrap_or(libc::ENOMEM));
                libc::MAP_FAILED
            }
        };
    }
    if old_len > isize::MAX as usize || new_len > isize::MAX as usize {
        set_errno(libc::ENOMEM);
        return libc::MAP_FAILED;
    }
    let (old_len, new_len) = (
        old_len.next_multiple_of(PAGE),
        new_len.next_multiple_of(PAGE),
    );
    const MREMAP_DONTUNMAP: c_int = 4;
    if flags & (libc::MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
        || !a.is_multiple_of(PAGE)
        || new_len == 0
    {
        set_errno(libc::EINVAL);
        return libc::MAP_FAILED;
    }
    if new_len <= old_len {
        if new_len < old_len {
            crate::pager::zap(a + new_len, old_len - new_len);
            arena::free_pages(a + new_len, old_len - new_len);
        }
        return old;
    }
    if arena::grow_in_place(a, old_len, new_len) {
        return old;
    }
    if flags & libc::MREMAP_MAYMOVE == 0 {
        set_errno(libc::ENOMEM);
        return libc::MAP_FAILED;
    }
    let Some(n) = arena::alloc_pages(new_len) else {
        set_errno(libc::ENOMEM);
        return libc::MAP_FAILED;
    };
    // SAFETY: both ranges are ours and disjoint; faults on either are served
    // by the pager like any access of the application.
    unsafe { std::ptr::copy_nonoverlapping(a as *const u8, n as *mut u8, old_len) };
    crate::pager::zap(a, old_len);
    arena::free_pages(a, old_len);
    n as *mut c_void
}

#[no_mangle]
pub extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let a = addr as usize;
    if arena::contains_range(a, len.max(1)) {
        if !a.is_multiple_of(PAGE) || len > isize::MAX as usize {
            set_errno(libc::EINVAL);
            return -1;
        }
        if matches!(
            advice,
            libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE
        ) {
            crate::pager::zap(a, len.next_multiple_of(PAGE));
        }
        // Other advice (hugepages, sequential, ...) does not apply to our pages.
        return 0;
    }
    // SAFETY: the program's own madvise of memory outside the arena.
    match unsafe { raw_madvise(a, len, advice) } {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e.raw_os_error().unwrap_or(libc::EINVAL));
            -1
        }
    }
}

static BRK: AtomicUsize = AtomicUsize::new(0);

fn brk_base() -> usize {
    arena::arena().0
}

#[no_mangle]
pub extern "C" fn sbrk(incr: isize) -> *mut c_void {
    let base = brk_base();
    let cur = match BRK.load(Ordering::Relaxed) {
        0 => base,
        c => c,
    };
    let new = cur as isize + incr;
    if new < base as isize || new as usize > base + arena::BRK_LEN {
        set_errno(libc::ENOMEM);
        return usize::MAX as *mut c_void;
    }
    let new = new as usize;
    if new > cur && !crate::quota::reserve(new - cur) {
        set_errno(libc::ENOMEM);
        return usize::MAX as *mut c_void;
    }
    if new < cur {
        crate::quota::release(cur - new);
        let from = new.next_multiple_of(PAGE);
        if cur > from {
            crate::pager::zap(from, cur.next_multiple_of(PAGE) - from);
        }
    }
    BRK.store(new, Ordering::Relaxed);
    cur as *mut c_void
}

#[no_mangle]
pub extern "C" fn brk(addr: *mut c_void) -> c_int {
    let cur = match BRK.load(Ordering::Relaxed) {
        0 => brk_base(),
        c => c,
    };
    if sbrk(addr as isize - cur as isize) as usize == usize::MAX {
        return -1;
    }
    0
}
