//! A vNode's files as a FUSE file system: every operation the kernel sends
//! for a mount point of the vNode becomes one request to the storage monitor
//! that holds them ([`lego_wire::fs`]), on a connection that authenticates
//! with the vNode's own key, so the storage monitor itself refuses anything
//! outside that vNode.
//!
//! Each mount point shows its own subtree of the vNode's files (`/data` is
//! `data/` in the vNode's tree). Inode numbers are the storage monitor's
//! plus one (1 is the mount's root); this side remembers the path of every
//! inode it has seen and keeps it right across renames and removals.
//! Attributes and entries are cached by the kernel for one second; file
//! data is not cached across opens, and writes go to the storage monitor as
//! they are made (no write-back cache), so a write that returns has reached
//! it. While the storage monitor cannot be reached, operations fail with
//! EIO; handles opened before it restarted fail with ESTALE.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Request, TimeOrNow};
use lego_transport::lock;
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::fs::{Attr, FsCall, FsReply, FsRequest, Kind, SetTime, Time};
use lego_wire::Op;

mod ops;

const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel may send in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// Inode numbers and the paths (relative to the mount's subtree) they stand for.
#[derive(Default)]
struct Paths {
    by_ino: HashMap<u64, Vec<u8>>,
    by_path: HashMap<Vec<u8>, u64>,
}

impl Paths {
    fn insert(&mut self, ino: u64, path: Vec<u8>) {
        if let Some(old) = self.by_ino.insert(ino, path.clone()) {
            if old != path {
                self.by_path.remove(&old);
            }
        }
        self.by_path.insert(path, ino);
    }

    fn remove_path(&mut self, path: &[u8]) {
        if let Some(ino) = self.by_path.remove(path) {
            self.by_ino.remove(&ino);
        }
    }

    /// `from` (and everything under it) is now `to`.
    fn rename(&mut self, from: &[u8], to: &[u8]) {
        self.remove_path(to);
        let mut under = from.to_vec();
        under.push(b'/');
        let moved: Vec<(Vec<u8>, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_slice() == from || p.starts_with(&under))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, ino) in moved {
            self.by_path.remove(&p);
            let mut n = to.to_vec();
            n.extend_from_slice(&p[from.len()..]);
            self.insert(ino, n);
        }
    }
}

/// Asks where the vNode's storage monitor is now (it may have restarted on
/// another address).
pub type Resolver = std::sync::Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The file system of one mount point of one vNode.
pub struct VnodeFs {
    vnode: u32,
    name: String,
    /// The subtree of the vNode's files this mount shows, e.g. `data`.
    prefix: Vec<u8>,
    storage: Mutex<String>,
    resolve: Option<Resolver>,
    creds: Credentials,
    client: Mutex<Option<Client>>,
    paths: Mutex<Paths>,
    /// The mount namespace of the job's processes (`mnt:[N]`): requests
    /// from any other process are refused.
    mnt_ns: Option<std::ffi::OsString>,
    /// Every file shows this owner (the vNode's identity, root in its jails).
    owner: Option<u32>,
}

fn system_time(t: Time) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let (secs, nanos) = match st.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            SetTime::At(Time { secs, nanos })
        }
    })
}

fn file_type(kind: Option<Kind>) -> FileType {
    match kind {
        Some(Kind::Dir) => FileType::Directory,
        Some(Kind::Symlink) => FileType::Symlink,
        Some(Kind::Fifo) => FileType::NamedPipe,
        Some(Kind::Socket) => FileType::Socket,
        Some(Kind::CharDevice) => FileType::CharDevice,
        Some(Kind::BlockDevice) => FileType::BlockDevice,
        Some(Kind::File) | None => FileType::RegularFile,
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() && !name.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl VnodeFs {
    /// The file system of mount point `mount` (absolute) of the vNode of
    /// `plan`, serving only processes in mount namespace `mnt_ns`.
    pub fn new(
        plan: &crate::mounts::MountPlan,
        mount: &str,
        mnt_ns: Option<std::ffi::OsString>,
    ) -> VnodeFs {
        VnodeFs {
            vnode: plan.vnode_id,
            name: plan.vnode.clone(),
            prefix: mount.trim_start_matches('/').as_bytes().to_vec(),
            storage: Mutex::new(plan.storage.clone()),
            resolve: plan.resolve.clone(),
            creds: plan.creds.clone(),
            client: Mutex::new(None),
            paths: Mutex::new(Paths::default()),
            mnt_ns,
            owner: plan.owner,
        }
    }

    /// Only the job's own processes may use its files: a process elsewhere
    /// (another vNode's, reaching in through `/proc/PID/root`) is refused.
    fn admit(&self, req: &Request) -> Result<(), Errno> {
        let Some(ns) = &self.mnt_ns else {
            return Ok(());
        };
        let pid = req.pid();
        if pid == 0 {
            return Ok(()); // the kernel itself
        }
        match std::fs::read_link(format!("/proc/{pid}/ns/mnt")) {
            Ok(link) if link.as_os_str() == ns.as_os_str() => Ok(()),
            _ => {
                tracing::warn!(vnode = %self.name, pid, "refused a file request from a process outside the vnode");
                Err(Errno::EACCES)
            }
        }
    }

    fn connect(&self) -> Result<Client, Errno> {
        let mut c = lock(&self.client);
        if let Some(c) = c.as_ref().filter(|c| c.is_fresh()) {
            return Ok(c.clone());
        }
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        let addr = lock(&self.storage).clone();
        let first = Client::connect(&addr, &self.creds, &opts);
        // A storage monitor that restarted may listen elsewhere: ask once.
        let result = match (first, &self.resolve) {
            (Err(e), Some(resolve)) => match resolve().filter(|a| *a != addr) {
                Some(new) => {
                    tracing::info!(vnode = %self.name, from = %addr, to = %new, "the storage monitor moved");
                    *lock(&self.storage) = new.clone();
                    Client::connect(&new, &self.creds, &opts)
                }
                None => Err(e),
            },
            (r, _) => r,
        };
        match result {
            Ok(new) => {
                *c = Some(new.clone());
                Ok(new)
            }
            Err(e) => {
                tracing::warn!(vnode = %self.name, storage = %addr, "cannot reach the storage monitor: {e}");
                Err(Errno::EIO)
            }
        }
    }

    /// One request; `f` reads the answer. File-system errors come back as
    /// their errno, an unreachable storage monitor as EIO.
    fn call<T>(
        &self,
        call: FsCall<'_>,
        f: impl FnOnce(FsReply<'_>) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let body = FsRequest {
            vnode: self.vnode,
            call,
        }
        .encode();
        let client = self.connect()?;
        let frame = client.call_raw(Op::Fs, &[&body]).map_err(|e| {
            tracing::warn!(vnode = %self.name, "file request failed: {e}");
            Errno::EIO
        })?;
        match FsReply::decode(&frame.body) {
            Ok(FsReply::Err { errno, .. }) => Err(Errno::from_i32(errno)),
            Ok(r) => f(r),
            Err(e) => {
                tracing::warn!(vnode = %self.name, "undecodable answer from the storage monitor: {e}");
                Err(Errno::EIO)
            }
        }
    }

    /// The vNode-relative path of a mount-relative one.
    fn full(&self, rel: &[u8]) -> Vec<u8> {
        join(&self.prefix, rel)
    }

    fn rel_of(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        if ino.0 == 1 {
            return Ok(Vec::new());
        }
        lock(&self.paths)
            .by_ino
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<Vec<u8>, Errno> {
        Ok(join(&self.rel_of(parent)?, name.as_bytes()))
    }

    /// The kernel's view of `attr` for the mount-relative `rel`.
    fn file_attr(&self, rel: &[u8], a: &Attr) -> FileAttr {
        let ino = if rel.is_empty() {
            1
        } else {
            let ino = a.ino + 1;
            lock(&self.paths).insert(ino, rel.to_vec());
            ino
        };
        FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.blocks,
            atime: system_time(a.atime),
            mtime: system_time(a.mtime),
            ctime: system_time(a.ctime),
            crtime: UNIX_EPOCH,
            kind: file_type(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: self.owner.unwrap_or(a.uid),
            gid: self.owner.unwrap_or(a.gid),
            rdev: a.rdev,
            blksize: a.blksize.max(512),
            flags: 0,
        }
    }

    fn attr_reply(&self, rel: &[u8]) -> impl FnOnce(FsReply<'_>) -> Result<FileAttr, Errno> + '_ {
        let rel = rel.to_vec();
        move |r| match r {
            FsReply::Attr(a) => Ok(self.file_attr(&rel, &a)),
            _ => Err(Errno::EIO),
        }
    }

    fn stat(&self, rel: &[u8]) -> Result<FileAttr, Errno> {
        let path = self.full(rel);
        self.call(FsCall::Stat { path: &path }, self.attr_reply(rel))
    }

    /// Creates the mount's subtree in the vNode's files if it is missing.
    pub fn ensure_root(&self) -> Result<(), Errno> {
        let mut at = Vec::new();
        for name in self.prefix.split(|&b| b == b'/') {
            at = join(&at, name);
            match self.call(
                FsCall::Mkdir {
                    path: &at,
                    mode: 0o755,
                },
                |_| Ok(()),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn done(r: FsReply<'_>) -> Result<(), Errno> {
        match r {
            FsReply::Done => Ok(()),
            _ => Err(Errno::EIO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Paths;

    #[test]
    fn renames_carry_what_is_under_them() {
        let mut p = Paths::default();
        p.insert(2, b"a".to_vec());
        p.insert(3, b"a/b".to_vec());
        p.insert(4, b"ab".to_vec());
        p.insert(5, b"c".to_vec());
        p.rename(b"a", b"c");
        assert_eq!(p.by_ino[&2], b"c");
        assert_eq!(p.by_ino[&3], b"c/b");
        assert_eq!(p.by_ino[&4], b"ab", "a sibling with the same prefix stays");
        assert!(!p.by_ino.contains_key(&5), "the replaced target is gone");
        assert_eq!(p.by_path[&b"c/b".to_vec()], 3);
        p.remove_path(b"c/b");
        assert!(!p.by_ino.contains_key(&3));
    }
}
