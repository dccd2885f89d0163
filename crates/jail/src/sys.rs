//! The calls the jail needs that no safe wrapper offers: `fork` (safe only
//! while one thread runs), `mount_setattr` (not in rustix or nix yet, and
//! the only way to make a whole tree of mounts read-only at once), and
//! setting a signal's disposition (unsafe in nix because of handlers; we
//! only ignore or default), each in one small unsafe block.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{ForkResult, Pid};

/// `fork(2)`, refused unless this process runs one thread (so that in the
/// child no lock can be left held by a thread that does not exist there).
pub fn fork() -> io::Result<Option<Pid>> {
    let threads = std::fs::read_dir("/proc/thread-self/..")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork a process of {threads} threads safely"
        )));
    }
    // SAFETY: one thread (checked above): the child is a consistent copy.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => Ok(Some(child)),
        ForkResult::Child => Ok(None),
    }
}

/// Ignores `sig` (its disposition survives exec).
pub fn set_ignored(sig: Signal) {
    // SAFETY: SIG_IGN installs no handler code.
    let _ = unsafe { signal(sig, SigHandler::SigIgn) };
}

/// Gives `sig` its default disposition back.
pub fn set_default(sig: Signal) {
    // SAFETY: SIG_DFL installs no handler code.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
}

/// Marks every descriptor from 3 on close-on-exec: what the helper
/// inherited (from the processor monitor, or whoever started that) never
/// reaches the program unless kept on purpose afterwards.
pub fn cloexec_from_3() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets a flag on descriptors, which no Rust object's validity depends on.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `AT_RECURSIVE`: every mount of the tree.
const AT_RECURSIVE: i32 = 0x8000;

const _: () = assert!(std::mem::size_of::<MountAttr>() == 32);

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, {attr_set: set})`:
/// sets attributes on every mount of a detached tree from `open_tree`.
pub fn mount_setattr(tree: BorrowedFd<'_>, set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the syscall reads `attr` (a live #[repr(C)] struct of the
    // size given) and an empty NUL-terminated path; the descriptor is
    // borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
