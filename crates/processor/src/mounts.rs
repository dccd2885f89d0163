//! The monitor's half of [`crate::enter`]: for each mount point the helper
//! mounted, it receives the `/dev/fuse` descriptor, makes sure the mount's
//! subtree exists on the storage monitor, and starts a FUSE session
//! ([`crate::vfs::VnodeFs`]) on a thread of its own; then it receives the
//! broker's end ([`crate::broker`]), and tells the helper to go on. A
//! session ends when the kernel drops its connection, which happens when the
//! last process of the job's mount namespace is gone.

use std::io::{IoSliceMut, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::vfs::VnodeFs;

/// Threads serving the kernel's requests of one mount: reads ahead and
/// writes behind of one file, and several programs, go on at once.
const FUSE_THREADS: usize = 4;

/// Where a job's vNode files come from (no mounts: it has none, or it runs
/// unconfined).
#[derive(Clone)]
pub struct MountPlan {
    pub vnode_id: u32,
    pub vnode: String,
    pub mounts: Vec<String>,
    /// The storage monitor holding the vNode's files.
    pub storage: String,
    /// The owner the job's files show: the vNode's identity when confined.
    pub owner: Option<u32>,
    /// The vNode's credentials (for the storage monitor).
    pub creds: lego_transport::Credentials,
    /// Where the storage monitor is now, should it move.
    pub resolve: Option<crate::vfs::Resolver>,
    /// The vNode's network namespace here, for a vNode with a network of
    /// its own ([`crate::vnet`]).
    pub netns: Option<std::path::PathBuf>,
}

/// Receives one descriptor and the byte sent with it.
fn recv_fd(conn: &UnixStream) -> std::io::Result<(u8, OwnedFd)> {
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the helper went away",
        ));
    }
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok((byte[0], fd));
            }
        }
    }
    Err(std::io::Error::other("a message came without a descriptor"))
}

/// Waits (until `deadline`) for the helper to connect.
fn accept(listener: &UnixListener, deadline: Instant) -> Result<UnixStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match listener.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("the helper did not call back in time".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Serves every mount of `plan` that the helper connecting to `listener`
/// mounts, takes the broker's end, then tells the helper to go on. On
/// failure the helper is told so (it exits with an error) and the reason is
/// returned.
pub fn serve(
    listener: &UnixListener,
    plan: &MountPlan,
    deadline: Instant,
) -> Result<OwnedFd, String> {
    let mut conn = accept(listener, deadline)?;
    let helper = rustix::net::sockopt::socket_peercred(&conn)
        .map_err(|e| format!("cannot tell who the helper is: {e}"))?
        .pid;
    // Read once the helper sent its first FUSE descriptor: it has its own
    // mount namespace by then (not yet when it connected), and the job's
    // processes are the ones in it.
    let mnt_ns = || {
        std::fs::read_link(format!("/proc/{}/ns/mnt", helper.as_raw_nonzero()))
            .map(|p| p.into_os_string())
            .map_err(|e| format!("cannot tell the helper's mount namespace: {e}"))
    };
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    conn.set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    let served = (|| {
        for _ in 0..plan.mounts.len() {
            let (index, fd) =
                recv_fd(&conn).map_err(|e| format!("no descriptor from the helper: {e}"))?;
            if index == crate::enter::BROKER_INDEX {
                return Err("the helper sent the broker before its mounts".to_string());
            }
            let mount = plan
                .mounts
                .get(index as usize)
                .ok_or_else(|| format!("the helper named mount {index}"))?;
            let fs = VnodeFs::new(plan, mount, Some(mnt_ns()?));
            fs.ensure_root().map_err(|e| {
                format!(
                    "cannot prepare {mount} on the storage monitor {}: {e:?}",
                    plan.storage
                )
            })?;
            let mut config = fuser::Config::default();
            config.n_threads = Some(FUSE_THREADS);
            let session = fuser::Session::from_fd(fs, fd, fuser::SessionACL::All, config)
                .map_err(|e| format!("FUSE handshake for {mount}: {e}"))?;
            let (vnode, m) = (plan.vnode.clone(), mount.clone());
            std::thread::Builder::new()
                .name(format!("fuse-{}", plan.vnode_id))
                .spawn(move || {
                    if let Err(e) = session.run() {
                        tracing::debug!(vnode, mount = m, "file system session ended: {e}");
                    }
                })
                .map_err(|e| format!("cannot start a FUSE thread: {e}"))?;
        }
        match recv_fd(&conn).map_err(|e| format!("no broker from the helper: {e}"))? {
            (crate::enter::BROKER_INDEX, fd) => Ok(fd),
            (other, _) => Err(format!("the helper sent descriptor {other} for the broker")),
        }
    })();
    let _ = conn.write_all(if served.is_ok() { b"+" } else { b"-" });
    served
}
