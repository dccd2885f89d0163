//! What a vNode may do with its files beyond reaching them: who owns them,
//! which modes they may have, how much disk and how many open files it may
//! hold on this storage monitor.
//!
//! - Ownership: every file of vNode `v` belongs to its host identity
//!   ([`lego_wire::types::identity`]), the same unprivileged uid and gid its
//!   confined processes run as (when the monitor runs as root; otherwise the
//!   monitor's own user). A `chown` to anyone else is refused with EPERM.
//! - Modes: no setuid or setgid bit, ever: refused on `chmod` (EPERM) and
//!   dropped on create and mkdir, so no file here can raise anyone's
//!   privileges on the storage host.
//! - Disk: the bytes of a vNode's tree (regular files by size, every inode
//!   one block more) are counted from a walk of the tree on first use and
//!   kept up to date by each call; a call that would pass the quota is
//!   refused with EDQUOT before it changes anything.
//! - Open files: at most [`Limits::max_open`] handles per vNode (EMFILE).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use lego_transport::lock;
use rustix::io::Errno;

use crate::store::{FsError, FsResult};

/// What one inode costs besides its data.
pub const INODE_BYTES: u64 = 4096;
/// Handles a vNode may have open by default.
pub const DEFAULT_MAX_OPEN: usize = 4096;

/// Per-vNode limits of a storage monitor.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes a vNode's tree may hold (`None`: the disk is the limit).
    pub disk_quota: Option<u64>,
    /// Handles a vNode may have open at once.
    pub max_open: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            disk_quota: None,
            max_open: DEFAULT_MAX_OPEN,
        }
    }
}

/// The uid and gid files of vNode `vnode` get: its identity when this
/// monitor may give files away (it runs as root), else none (its own).
pub fn owner_of(vnode: u32) -> Option<u32> {
    rustix::process::geteuid()
        .is_root()
        .then(|| lego_wire::types::identity(vnode))
        .flatten()
}

/// A mode to create a file or directory with: permission bits and the
/// sticky bit, never setuid or setgid.
pub fn creation_mode(mode: u32) -> u32 {
    mode & 0o1777
}

/// Refuses a `chmod` to setuid or setgid.
pub fn check_chmod(mode: u32) -> FsResult<()> {
    if mode & 0o6000 != 0 {
        return Err(FsError {
            errno: Errno::PERM,
            what: format!("mode {mode:o}: no setuid or setgid file may live on lego storage"),
        });
    }
    Ok(())
}

/// Refuses a `chown` to anyone but the vNode's own identity.
pub fn check_chown(vnode: u32, uid: Option<u32>, gid: Option<u32>) -> FsResult<()> {
    let own = owner_of(vnode);
    let ok = |id: Option<u32>| id.is_none() || id == own;
    if ok(uid) && ok(gid) {
        return Ok(());
    }
    Err(FsError {
        errno: Errno::PERM,
        what: format!("vnode {vnode}'s files belong to it alone: no chown to {uid:?}:{gid:?}"),
    })
}

/// Bytes used by each vNode, and its open handles.
#[derive(Default)]
pub struct Usage {
    bytes: Mutex<HashMap<u32, u64>>,
    open: Mutex<HashMap<u32, usize>>,
}

/// Bytes a tree holds, as [`Usage`] counts them.
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total += INODE_BYTES;
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

impl Usage {
    /// Bytes used by `vnode`, counted from its tree (`root`) the first time.
    pub fn used(&self, vnode: u32, root: &Path) -> u64 {
        if let Some(&b) = lock(&self.bytes).get(&vnode) {
            return b;
        }
        let walked = tree_bytes(root);
        *lock(&self.bytes).entry(vnode).or_insert(walked)
    }

    /// Takes `grow` more bytes for `vnode`, or refuses with EDQUOT.
    pub fn take(&self, vnode: u32, root: &Path, grow: u64, quota: Option<u64>) -> FsResult<()> {
        let used = self.used(vnode, root);
        let mut bytes = lock(&self.bytes);
        let now = bytes.entry(vnode).or_insert(used);
        if let Some(q) = quota {
            if now.saturating_add(grow) > q {
                return Err(FsError {
                    errno: Errno::DQUOT,
                    what: format!(
                        "vnode {vnode} is at its disk quota: {} of {q} bytes used, {grow} more asked",
                        *now
                    ),
                });
            }
        }
        *now = now.saturating_add(grow);
        Ok(())
    }

    /// Gives back `n` bytes of `vnode`.
    pub fn give(&self, vnode: u32, n: u64) {
        if let Some(b) = lock(&self.bytes).get_mut(&vnode) {
            *b = b.saturating_sub(n);
        }
    }

    /// Counts a handle opened by `vnode`, or refuses with EMFILE.
    pub fn open(&self, vnode: u32, max: usize) -> FsResult<()> {
        let mut open = lock(&self.open);
        let n = open.entry(vnode).or_insert(0);
        if *n >= max {
            return Err(FsError {
                errno: Errno::MFILE,
                what: format!("vnode {vnode} has {max} files open, the most it may"),
            });
        }
        *n += 1;
        Ok(())
    }

    /// A handle of `vnode` was closed (`n` of them).
    pub fn closed(&self, vnode: u32, n: usize) {
        if let Some(c) = lock(&self.open).get_mut(&vnode) {
            *c = c.saturating_sub(n);
        }
    }

    /// The vNode's files are gone.
    pub fn forget(&self, vnode: u32) {
        lock(&self.bytes).remove(&vnode);
        lock(&self.open).remove(&vnode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_owners_quota_and_handles() {
        assert_eq!(creation_mode(0o4755), 0o755);
        assert_eq!(creation_mode(0o3777), 0o1777);
        assert_eq!(check_chmod(0o4755).unwrap_err().errno, Errno::PERM);
        assert_eq!(check_chmod(0o2755).unwrap_err().errno, Errno::PERM);
        assert!(check_chmod(0o1777).is_ok());
        assert!(check_chown(5, None, None).is_ok());
        assert!(check_chown(5, owner_of(5), owner_of(5)).is_ok());
        assert_eq!(
            check_chown(5, Some(0), None).unwrap_err().errno,
            Errno::PERM
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), vec![0u8; 10]).unwrap();
        assert_eq!(tree_bytes(dir.path()), 1010 + 3 * INODE_BYTES);
        let u = Usage::default();
        let q = Some(1010 + 3 * INODE_BYTES + 100);
        u.take(1, dir.path(), 100, q).unwrap();
        assert_eq!(u.take(1, dir.path(), 1, q).unwrap_err().errno, Errno::DQUOT);
        u.give(1, 50);
        u.take(1, dir.path(), 50, q).unwrap();
        u.open(1, 2).unwrap();
        u.open(1, 2).unwrap();
        assert_eq!(u.open(1, 2).unwrap_err().errno, Errno::MFILE);
        u.closed(1, 1);
        u.open(1, 2).unwrap();
        assert!(u.open(2, 2).is_ok(), "per vnode");
    }
}
