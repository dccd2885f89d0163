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
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::fs::{Attr, FsCall, FsReply, FsRequest, Kind, SetTime, Time};
use lego_wire::Op;

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    /// The file system of mount point `mount` (absolute) of vNode `vnode`,
    /// whose files are on the storage monitor at `storage`.
    pub fn new(
        vnode: u32,
        name: &str,
        mount: &str,
        storage: String,
        key: [u8; 32],
        resolve: Option<Resolver>,
        mnt_ns: Option<std::ffi::OsString>,
    ) -> VnodeFs {
        VnodeFs {
            vnode,
            name: name.to_string(),
            prefix: mount.trim_start_matches('/').as_bytes().to_vec(),
            storage: Mutex::new(storage),
            resolve,
            creds: Credentials::vnode(vnode, key),
            client: Mutex::new(None),
            paths: Mutex::new(Paths::default()),
            mnt_ns,
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
        if let Some(c) = c.as_ref().filter(|c| !c.is_broken()) {
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
        let frame = client.call(Op::Fs, &[&body]).map_err(|e| {
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
            uid: a.uid,
            gid: a.gid,
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

impl Filesystem for VnodeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        match self.child(parent, name).and_then(|rel| self.stat(&rel)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        match self.rel_of(ino).and_then(|rel| self.stat(&rel)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.rel_of(ino).and_then(|rel| {
            let path = self.full(&rel);
            let call = FsCall::Setattr {
                path: &path,
                mode: mode.map(|m| m & 0o7777),
                uid,
                gid,
                size,
                atime: set_time(atime),
                mtime: set_time(mtime),
            };
            self.call(call, self.attr_reply(&rel))
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.rel_of(ino).and_then(|rel| {
            let path = self.full(&rel);
            self.call(FsCall::Readlink { path: &path }, |r| match r {
                FsReply::Target(t) => Ok(t),
                _ => Err(Errno::EIO),
            })
        });
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        // Device nodes, fifos and sockets are not kept on storage monitors.
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.child(parent, name).and_then(|rel| {
            let path = self.full(&rel);
            self.call(
                FsCall::Mkdir {
                    path: &path,
                    mode: mode & !umask & 0o7777,
                },
                self.attr_reply(&rel),
            )
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        self.remove(parent, name, false, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        self.remove(parent, name, true, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.child(parent, link_name).and_then(|rel| {
            let path = self.full(&rel);
            let call = FsCall::Symlink {
                path: &path,
                target: target.as_os_str().as_bytes(),
            };
            self.call(call, self.attr_reply(&rel))
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.child(parent, name).and_then(|from| {
            let to = self.child(newparent, newname)?;
            let (f, t) = (self.full(&from), self.full(&to));
            self.call(
                FsCall::Rename {
                    from: &f,
                    to: &t,
                    flags: flags.bits(),
                },
                Self::done,
            )?;
            lock(&self.paths).rename(&from, &to);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.rel_of(ino).and_then(|from| {
            let to = self.child(newparent, newname)?;
            let (f, t) = (self.full(&from), self.full(&to));
            self.call(FsCall::Link { from: &f, to: &t }, self.attr_reply(&to))
        });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.rel_of(ino).and_then(|rel| {
            let path = self.full(&rel);
            self.call(
                FsCall::Open {
                    path: &path,
                    flags: flags.0,
                },
                |r| match r {
                    FsReply::Opened { handle, .. } => Ok(handle),
                    _ => Err(Errno::EIO),
                },
            )
        });
        match r {
            Ok(h) => reply.opened(FileHandle(h), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.child(parent, name).and_then(|rel| {
            let path = self.full(&rel);
            let call = FsCall::Create {
                path: &path,
                mode: mode & !umask & 0o7777,
                flags,
            };
            self.call(call, |r| match r {
                FsReply::Opened { handle, attr } => Ok((handle, self.file_attr(&rel, &attr))),
                _ => Err(Errno::EIO),
            })
        });
        match r {
            Ok((h, a)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(h), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let call = FsCall::Read {
            handle: fh.0,
            offset,
            len: size,
        };
        let r = self.call(call, |r| match r {
            FsReply::Data(d) => Ok(d.to_vec()),
            _ => Err(Errno::EIO),
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let call = FsCall::Write {
            handle: fh.0,
            offset,
            data,
        };
        match self.call(call, |r| match r {
            FsReply::Written(n) => Ok(n),
            _ => Err(Errno::EIO),
        }) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Closing never fails for the program; a handle the storage monitor
        // forgot (it restarted) is gone anyway.
        let _ = self.call(FsCall::Release { handle: fh.0 }, Self::done);
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.call(
            FsCall::Fsync {
                handle: fh.0,
                datasync,
            },
            Self::done,
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let r = self.rel_of(ino).and_then(|rel| {
            let path = self.full(&rel);
            self.call(FsCall::FsyncDir { path: &path }, Self::done)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        let rel = match self.rel_of(ino) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 after ".", 2 after "..", then 3 + the storage cookie.
        if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset <= 1 && reply.add(INodeNo(1), 2, FileType::Directory, "..") {
            return reply.ok();
        }
        let path = self.full(&rel);
        let mut cookie = offset.saturating_sub(2);
        loop {
            let r = self.call(
                FsCall::Readdir {
                    path: &path,
                    cookie,
                },
                |r| match r {
                    FsReply::Entries { entries, next } => Ok((entries, next)),
                    _ => Err(Errno::EIO),
                },
            );
            let (entries, next) = match r {
                Ok(x) => x,
                Err(e) => return reply.error(e),
            };
            for e in entries {
                cookie += 1;
                let name = OsStr::from_bytes(&e.name);
                if reply.add(INodeNo(e.ino + 1), cookie + 2, file_type(e.kind), name) {
                    return reply.ok();
                }
            }
            if next.is_none() {
                return reply.ok();
            }
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        if let Err(e) = self.admit(req) {
            return reply.error(e);
        }
        match self.call(FsCall::Statfs, |r| match r {
            FsReply::Statfs(s) => Ok(s),
            _ => Err(Errno::EIO),
        }) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok()
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Files here are not terminals or devices (isatty asks this way).
        reply.error(Errno::ENOTTY)
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }
}

impl VnodeFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let r = self.child(parent, name).and_then(|rel| {
            let path = self.full(&rel);
            let call = if dir {
                FsCall::Rmdir { path: &path }
            } else {
                FsCall::Unlink { path: &path }
            };
            self.call(call, Self::done)?;
            lock(&self.paths).remove_path(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
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
