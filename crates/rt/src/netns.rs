//! The runtime's own connections when the program runs in its vNode's
//! network namespace.
//!
//! A vNode with a network of its own runs its processes in a network
//! namespace that holds only its vIP; the manager and the memory monitors
//! are not reachable from there. The runtime is the processor's hardware,
//! not part of the vNode: it makes its connections from the processor
//! monitor's namespace (`LEGO_RT_HOST_NETNS`, a `/proc/PID/ns/net` path).
//! Namespaces belong to threads: [`host_net`] moves the calling thread into
//! the host's namespace for the length of a closure and back, and runtime
//! threads started inside it (the fault handler) stay there for good, so
//! every connection they open later is the host's too. Sockets keep the
//! namespace they were made in.

use crate::lock::Lock;

/// The host's network namespace, when the program runs in another one.
static HOST: Lock<Option<String>> = Lock::new(None);

/// Remembers the host namespace (read once at start, from the environment).
pub fn init(path: Option<String>) {
    *HOST.lock() = path;
}

fn open_ns(path: &str) -> std::io::Result<i32> {
    let c = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: opens a file by a NUL-terminated path; the fd is ours.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn enter(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns on a namespace fd we opened; it changes only this thread.
    let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn close(fd: i32) {
    // SAFETY: closes an fd this module opened and no one else holds.
    unsafe { libc::close(fd) };
}

/// Runs `f` with the calling thread in the host's network namespace (when
/// the program has one of its own), then moves it back.
pub fn host_net<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let host = HOST.lock().clone();
    let Some(host) = host else {
        return Ok(f());
    };
    let own = open_ns("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot open this thread's network namespace: {e}"))?;
    let target = open_ns(&host).map_err(|e| {
        close(own);
        format!("cannot open the processor monitor's network namespace {host}: {e}")
    })?;
    let entered = enter(target);
    close(target);
    if let Err(e) = entered {
        close(own);
        return Err(format!(
            "cannot enter the processor monitor's network namespace: {e}"
        ));
    }
    let r = f();
    let back = enter(own);
    close(own);
    back.map_err(|e| format!("cannot return to the vnode's network namespace: {e}"))?;
    Ok(r)
}
