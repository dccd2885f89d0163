//! Thin bindings to the kernel: raw system calls that bypass our own
//! interposed symbols (a call to `libc::mmap` from inside this library would
//! resolve to our `mmap`), and the userfaultfd ioctls with their structs.
//!
//! Unsafety stays at this edge: the calls that can change memory the
//! program or the runtime still refers to (`raw_mmap` at a fixed address,
//! `raw_munmap`, `raw_mremap`, `raw_madvise`) are `unsafe fn`s whose callers
//! promise what they touch; [`Uffd`] owns its descriptor (closed on drop)
//! and installs pages from slices.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// ---- raw memory system calls -------------------------------------------------

fn check(ret: libc::c_long) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// mmap through the system call, never through our interposed `mmap`.
///
/// # Safety
/// With `MAP_FIXED`, the range must be one the caller owns and that nothing
/// else refers to: the new mapping replaces whatever was there.
pub unsafe fn raw_mmap(
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    off: i64,
) -> io::Result<usize> {
    // SAFETY: a plain system call; the kernel validates every argument and
    // the caller decides what the returned mapping is used for.
    let r = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) };
    check(r)
}

/// munmap through the system call.
///
/// # Safety
/// The range must be the caller's, with no live reference into it.
pub unsafe fn raw_munmap(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range (see above); the kernel checks the rest.
    let r = unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
    check(r).map(|_| ())
}

/// mremap through the system call.
///
/// # Safety
/// The old range must be the caller's, with no live reference into it (it
/// may move); with `MREMAP_FIXED`, so must the new one.
pub unsafe fn raw_mremap(
    old: usize,
    old_len: usize,
    new_len: usize,
    flags: i32,
    new_addr: usize,
) -> io::Result<usize> {
    // SAFETY: the caller owns both ranges (see above).
    let r = unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) };
    check(r)
}

/// madvise through the system call.
///
/// # Safety
/// The range must be the caller's; with `MADV_DONTNEED` its contents are
/// gone (zeros, or a fault to the pager), so nothing may rely on them.
pub unsafe fn raw_madvise(addr: usize, len: usize, advice: i32) -> io::Result<()> {
    // SAFETY: the caller owns the range (see above).
    let r = unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) };
    check(r).map(|_| ())
}

/// Anonymous private read/write memory for the runtime's own use (outside the arena).
pub fn private_pages(len: usize) -> io::Result<usize> {
    // SAFETY: not MAP_FIXED: the kernel picks a range no one uses.
    unsafe {
        raw_mmap(
            0,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    }
}

/// A pipe, both ends close-on-exec, the write end non-blocking: (read, write).
pub fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sets a flag on the descriptor just made.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
    Ok((fds[0], fds[1]))
}

/// Closes a descriptor this process owns and no one else refers to.
pub fn close_fd(fd: i32) {
    // SAFETY: the caller gives up the descriptor; nothing uses it after.
    unsafe { libc::close(fd) };
}

/// Reads one byte from a blocking descriptor; false at its end or on error
/// (other than an interruption).
pub fn read_byte(fd: i32) -> bool {
    let mut b = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let r = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if r == 1 {
            return true;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return false;
    }
}

/// Writes all of `buf` to a file descriptor (for messages on stderr that must
/// not allocate or take locks).
pub fn write_fd(fd: i32, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes from a valid slice; the kernel checks the descriptor.
        let r = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if r <= 0 {
            return;
        }
        done += r as usize;
    }
}

// ---- userfaultfd --------------------------------------------------------------

const UFFDIO: u64 = 0xAA;
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}

pub const UFFD_API: u64 = 0xAA;
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 2;
const REGISTER_MODE_MISSING: u64 = 1;
const REGISTER_MODE_WP: u64 = 2;
const COPY_MODE_WP: u64 = 2;
const WRITEPROTECT_MODE_WP: u64 = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// A message read from a userfaultfd (`struct uffd_msg`).
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct UffdMsg {
    pub event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    /// For page faults: flags.
    pub flags: u64,
    /// For page faults: the faulting address.
    pub address: u64,
    pub ptid: u32,
    _pad: u32,
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioWriteprotect>() == 24);

const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, std::mem::size_of::<UffdioWriteprotect>());

/// An open userfaultfd, closed when dropped.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

/// A userfaultfd's messages, for the fault handler thread: it reads the
/// descriptor of a [`Uffd`] it does not own (the pager does). Reading a
/// descriptor that was closed meanwhile fails with EBADF, nothing worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UffdEvents {
    fd: RawFd,
}

fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, properly sized #[repr(C)] struct matching `req`.
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An open `/dev/userfaultfd` the helper left to a confined job (-1: none).
static UFFD_DEV: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Remembers the inherited `/dev/userfaultfd` (`LEGO_RT_UFFD_DEV`): in its
/// jail the program can neither open the device nor make the system call
/// for kernel-mode faults, but the ioctl on an open device works.
pub fn init_uffd_dev(fd: Option<i32>) {
    UFFD_DEV.store(fd.unwrap_or(-1), std::sync::atomic::Ordering::Relaxed);
}

const USERFAULTFD_IOC_NEW: u64 = 0xAA00;

impl Uffd {
    /// Opens a userfaultfd with write-protect faults enabled: from the
    /// inherited device if there is one, else the system call
    /// (user-mode-only faults unless we are privileged), then
    /// /dev/userfaultfd.
    pub fn open() -> io::Result<Uffd> {
        let flags = libc::O_CLOEXEC;
        let inherited = UFFD_DEV.load(std::sync::atomic::Ordering::Relaxed);
        let mut fd = -1;
        if inherited >= 0 {
            // SAFETY: the documented ioctl on /dev/userfaultfd; on a
            // descriptor that is something else the kernel refuses it.
            fd = unsafe { libc::ioctl(inherited, USERFAULTFD_IOC_NEW as _, flags) };
        }
        if fd < 0 {
            // SAFETY: a plain system call returning a new descriptor or an error.
            fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
        }
        if fd < 0 {
            // Without the privilege for kernel-mode faults, /dev/userfaultfd
            // may still give them. A user-mode-only descriptor is not enough:
            // system calls writing into missing pages would fail with EFAULT.
            // SAFETY: opening a device node with a NUL-terminated path.
            let dev =
                unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if dev < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the documented ioctl on /dev/userfaultfd; returns a descriptor.
            fd = unsafe { libc::ioctl(dev, USERFAULTFD_IOC_NEW as _, flags) };
            // SAFETY: closing the device descriptor we opened.
            unsafe { libc::close(dev) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let uffd = Uffd { fd };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID,
            ioctls: 0,
        };
        ioctl(uffd.raw(), UFFDIO_API, &mut api)?;
        Ok(uffd)
    }

    /// Registers a range for missing-page and write-protect faults.
    pub fn register(&self, start: usize, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: REGISTER_MODE_MISSING | REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(self.raw(), UFFDIO_REGISTER, &mut reg)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// What the fault handler thread reads.
    pub fn events(&self) -> UffdEvents {
        UffdEvents { fd: self.raw() }
    }

    /// Installs `src` (whole pages) at `dst` (page aligned), write-protected
    /// if `wp`, waking the threads faulting there. The kernel fills only
    /// missing pages of ranges registered here, so no memory anyone refers
    /// to can change. EEXIST (the page appeared meanwhile) is not an error.
    pub fn copy(&self, dst: usize, src: &[u8], wp: bool) -> io::Result<()> {
        let mut c = UffdioCopy {
            dst: dst as u64,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: if wp { COPY_MODE_WP } else { 0 },
            copy: 0,
        };
        match ioctl(self.raw(), UFFDIO_COPY, &mut c) {
            // Part of a run may be installed (EAGAIN after a page that was
            // already there) or the run may cross into another mapping
            // (ENOENT): install the rest one page at a time.
            Err(_) if src.len() > 4096 => {
                for (k, page) in src.chunks(4096).enumerate() {
                    self.copy(dst + k * 4096, page, wp)?;
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Sets (`wp`) or clears write protection on a range; clearing wakes
    /// threads waiting on write-protect faults there.
    pub fn write_protect(&self, start: usize, len: usize, wp: bool) -> io::Result<()> {
        let mut w = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if wp { WRITEPROTECT_MODE_WP } else { 0 },
        };
        ioctl(self.raw(), UFFDIO_WRITEPROTECT, &mut w)
    }

    /// Wakes threads waiting on faults in a range (they retry the access).
    pub fn wake(&self, start: usize, len: usize) -> io::Result<()> {
        let mut r = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        ioctl(self.raw(), UFFDIO_WAKE, &mut r)
    }
}

impl UffdEvents {
    /// The events of the descriptor `fd` (handed to the handler thread as
    /// a number, see [`UffdEvents::raw`]).
    pub fn from_raw(fd: RawFd) -> UffdEvents {
        UffdEvents { fd }
    }

    pub fn raw(&self) -> RawFd {
        self.fd
    }

    /// Whether these are `uffd`'s events.
    pub fn of(&self, uffd: &Uffd) -> bool {
        self.fd == uffd.raw()
    }

    /// Busy-waits up to `spin` for a message to be queued.
    pub fn spin_until_readable(&self, spin: std::time::Duration) {
        let start = std::time::Instant::now();
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        while start.elapsed() < spin {
            // SAFETY: polls one valid pollfd without blocking.
            if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
                return;
            }
            // Let a runnable thread of this CPU go first (see the transport's spin).
            std::thread::yield_now();
        }
    }

    /// Blocks until at least one message; reads as many as are queued.
    pub fn read_msgs(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        let size = std::mem::size_of::<UffdMsg>();
        loop {
            // SAFETY: reads at most buf.len() messages into `buf`.
            let r =
                unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), std::mem::size_of_val(buf)) };
            if r > 0 {
                return Ok(r as usize / size);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
