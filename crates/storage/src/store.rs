//! The file store: each vNode's files as a directory tree on the storage
//! monitor's local disk, `DIR/vnodes/<vid>/`, and the handles of open files.
//!
//! Confinement: every path of a request is resolved under the vNode's root
//! directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, and a final name is acted on
//! with the `*at` calls relative to its parent without following a symlink.
//! So no path, `..`, symlink (absolute or relative) or mount point can lead
//! out of the vNode's tree: symlinks are stored and read back as data and
//! resolved by the client, in the client's own namespace.
//!
//! Durability: the tree is plain files on the host's file system, whose
//! journal keeps the metadata consistent; `Fsync`/`FsyncDir` are `fsync(2)`.
//! Nothing acknowledged lives only in this process, so killing it loses no
//! written data; what was fsynced survives a crash of the machine too.
//!
//! Limits ([`crate::limits`]): files belong to the vNode's identity, never
//! setuid or setgid; each vNode's disk use and open handles are bounded.
//! The store's directory and each vNode's tree are `0700`.
//!
//! Handles carry the store's random epoch in their high 32 bits: a handle
//! from before a restart is refused as stale (ESTALE), never confused with
//! a new one.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lego_transport::lock;
use lego_wire::fs::{check_path, Attr, DirEntry, Kind, SetTime, StatFs, Time, MAX_LISTING};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::limits::{self, Limits, Usage, INODE_BYTES};

/// A failed file operation: the errno for the client and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct FsError {
    pub errno: Errno,
    pub what: String,
}

pub type FsResult<T> = Result<T, FsError>;

fn fail(errno: Errno, what: impl Into<String>) -> FsError {
    FsError {
        errno,
        what: what.into(),
    }
}

/// Adds what was being done to an errno.
trait Ctx<T> {
    fn ctx(self, what: &str, path: &[u8]) -> FsResult<T>;
}

impl<T> Ctx<T> for Result<T, Errno> {
    fn ctx(self, what: &str, path: &[u8]) -> FsResult<T> {
        self.map_err(|e| fail(e, format!("{what} {}", String::from_utf8_lossy(path))))
    }
}

impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &[u8]) -> FsResult<T> {
        self.map_err(|e| {
            let errno = Errno::from_io_error(&e).unwrap_or(Errno::IO);
            fail(errno, format!("{what} {}", String::from_utf8_lossy(path)))
        })
    }
}

/// Resolution that never leaves the vNode's tree.
fn confined() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

struct Handle {
    vnode: u32,
    /// The connection that opened it: its handles close when it goes.
    conn: u64,
    file: Arc<File>,
}

/// Counters of the store.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub stale_handles: AtomicU64,
}

/// All vNodes' files on this storage monitor.
pub struct FileStore {
    dir: PathBuf,
    epoch: u64,
    next: AtomicU64,
    handles: Mutex<HashMap<u64, Handle>>,
    limits: Limits,
    usage: Usage,
    pub counters: StoreCounters,
}

fn time(secs: i64, nanos: u64) -> Time {
    Time {
        secs,
        nanos: nanos as u32,
    }
}

fn kind_of(mode: u32) -> Option<Kind> {
    Some(match mode & libc_mode::S_IFMT {
        libc_mode::S_IFREG => Kind::File,
        libc_mode::S_IFDIR => Kind::Dir,
        libc_mode::S_IFLNK => Kind::Symlink,
        libc_mode::S_IFIFO => Kind::Fifo,
        libc_mode::S_IFSOCK => Kind::Socket,
        libc_mode::S_IFCHR => Kind::CharDevice,
        libc_mode::S_IFBLK => Kind::BlockDevice,
        _ => return None,
    })
}

/// The file-type bits of `st_mode` (Linux values).
mod libc_mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFIFO: u32 = 0o010000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFBLK: u32 = 0o060000;
}

fn attr_of(st: &rustix::fs::Stat) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => Timespec {
            tv_sec: t.secs,
            tv_nsec: t.nanos.min(999_999_999) as _,
        },
    }
}

/// Open flags a client may pass: the access mode and O_SYNC/O_DSYNC.
/// O_APPEND is dropped: every write comes with its offset.
fn open_flags(flags: i32) -> OFlags {
    let f = OFlags::from_bits_retain(flags as u32);
    (f & (OFlags::RWMODE | OFlags::SYNC | OFlags::DSYNC)) | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

impl FileStore {
    /// A store under `dir` (created if missing; made `0700`).
    pub fn open(dir: PathBuf, limits: Limits) -> std::io::Result<FileStore> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.join("vnodes"))?;
        for d in [dir.clone(), dir.join("vnodes")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        }
        let seed =
            lego_wire::auth::random_bytes().map_err(|e| std::io::Error::other(e.to_string()))?;
        let seed = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]);
        Ok(FileStore {
            dir,
            epoch: u64::from(seed | 1) << 32,
            next: AtomicU64::new(1),
            handles: Mutex::new(HashMap::new()),
            limits,
            usage: Usage::default(),
            counters: StoreCounters::default(),
        })
    }

    fn vnode_dir(&self, vnode: u32) -> PathBuf {
        self.dir.join("vnodes").join(vnode.to_string())
    }

    /// Takes `grow` bytes of the vNode's quota, or refuses (EDQUOT).
    fn take(&self, vnode: u32, grow: u64) -> FsResult<()> {
        if grow == 0 {
            return Ok(());
        }
        self.usage
            .take(vnode, &self.vnode_dir(vnode), grow, self.limits.disk_quota)
    }

    /// What removing the entry `name` of `dir` gives back: its data and
    /// inode when this is its last link.
    fn held_by(&self, dir: &OwnedFd, name: &[u8]) -> u64 {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc_mode::S_IFMT == libc_mode::S_IFDIR => INODE_BYTES,
            Ok(st) if st.st_nlink <= 1 => {
                let data = if st.st_mode & libc_mode::S_IFMT == libc_mode::S_IFREG {
                    st.st_size as u64
                } else {
                    0
                };
                data + INODE_BYTES
            }
            _ => 0,
        }
    }

    /// Gives a new entry to the vNode's identity.
    fn own(&self, vnode: u32, dir: &OwnedFd, name: &[u8], path: &[u8]) -> FsResult<()> {
        let Some(id) = limits::owner_of(vnode) else {
            return Ok(());
        };
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(id)),
            Some(rustix::fs::Gid::from_raw(id)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .ctx("chown", path)
    }

    /// The directory of the store (for its size).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The root directory of a vNode's tree, created on first use.
    fn root(&self, vnode: u32) -> FsResult<OwnedFd> {
        use std::os::unix::fs::DirBuilderExt;
        let p = self.vnode_dir(vnode);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => {
                if let Some(id) = limits::owner_of(vnode) {
                    std::os::unix::fs::chown(&p, Some(id), Some(id)).map_err(|e| {
                        fail(
                            Errno::IO,
                            format!("cannot give {} to vnode {vnode}: {e}", p.display()),
                        )
                    })?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(fail(
                    Errno::IO,
                    format!("cannot create {}: {e}", p.display()),
                ))
            }
        }
        rustix::fs::open(
            &p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(e, format!("cannot open {}", p.display())))
    }

    /// Opens `path` under the vNode's root, confined.
    fn open_in(&self, vnode: u32, path: &[u8], flags: OFlags, mode: Mode) -> FsResult<OwnedFd> {
        check_path(path).map_err(|e| fail(Errno::INVAL, e.to_string()))?;
        let root = self.root(vnode)?;
        let p: &[u8] = if path.is_empty() { b"." } else { path };
        rustix::fs::openat2(&root, p, flags | OFlags::CLOEXEC, mode, confined()).ctx("open", path)
    }

    /// The parent directory of `path` (opened O_PATH) and its last name.
    fn parent<'p>(&self, vnode: u32, path: &'p [u8]) -> FsResult<(OwnedFd, &'p [u8])> {
        let names = check_path(path).map_err(|e| fail(Errno::INVAL, e.to_string()))?;
        let Some(name) = names.last().copied() else {
            return Err(fail(Errno::INVAL, "the root has no parent"));
        };
        let parent = &path[..path.len() - name.len()];
        let parent = parent.strip_suffix(b"/").unwrap_or(parent);
        let fd = self.open_in(
            vnode,
            parent,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok((fd, name))
    }

    /// Where `path` is named: its parent directory and last name, or the
    /// root and `.` for the root itself.
    fn entry<'p>(&self, vnode: u32, path: &'p [u8]) -> FsResult<(OwnedFd, &'p [u8])> {
        if path.is_empty() {
            return Ok((self.root(vnode)?, b"."));
        }
        self.parent(vnode, path)
    }

    pub fn stat(&self, vnode: u32, path: &[u8]) -> FsResult<Attr> {
        let (dir, name) = self.entry(vnode, path)?;
        rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .ctx("stat", path)
            .map(|s| attr_of(&s))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        vnode: u32,
        path: &[u8],
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> FsResult<Attr> {
        // A symlink itself cannot be opened confined; only its times and
        // owner can change, through its parent.
        let (dir, name) = self.entry(vnode, path)?;
        let is_link = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .ctx("stat", path)?
            .st_mode
            & libc_mode::S_IFMT
            == libc_mode::S_IFLNK;
        if let Some(m) = mode {
            limits::check_chmod(m)?;
        }
        limits::check_chown(vnode, uid, gid)?;
        if let Some(m) = mode.filter(|_| !is_link) {
            // Through a confined open, never by name: the name could be
            // swapped for a symlink between the check and the change.
            let fd = self.open_in(
                vnode,
                path,
                OFlags::RDONLY | OFlags::NONBLOCK,
                Mode::empty(),
            )?;
            rustix::fs::fchmod(&fd, Mode::from_bits_truncate(m & 0o7777)).ctx("chmod", path)?;
        }
        if uid.is_some() || gid.is_some() {
            rustix::fs::chownat(
                &dir,
                name,
                uid.map(rustix::fs::Uid::from_raw),
                gid.map(rustix::fs::Gid::from_raw),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .ctx("chown", path)?;
        }
        if let Some(len) = size {
            let fd = self.open_in(
                vnode,
                path,
                OFlags::WRONLY | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
            let old = rustix::fs::fstat(&fd).ctx("stat", path)?.st_size as u64;
            self.take(vnode, len.saturating_sub(old))?;
            rustix::fs::ftruncate(&fd, len).ctx("truncate", path)?;
            self.usage.give(vnode, old.saturating_sub(len));
        }
        if atime.is_some() || mtime.is_some() {
            let ts = Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            rustix::fs::utimensat(&dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)
                .ctx("utimens", path)?;
        }
        self.stat(vnode, path)
    }

    fn new_handle(&self, vnode: u32, conn: u64, fd: OwnedFd) -> FsResult<u64> {
        self.usage.open(vnode, self.limits.max_open)?;
        let h = self.epoch | (self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        lock(&self.handles).insert(
            h,
            Handle {
                vnode,
                conn,
                file: Arc::new(File::from(fd)),
            },
        );
        Ok(h)
    }

    /// Closes every handle a connection opened (it is gone).
    pub fn drop_conn(&self, conn: u64) -> usize {
        let mut handles = lock(&self.handles);
        let before = handles.len();
        handles.retain(|_, h| {
            if h.conn == conn {
                self.usage.closed(h.vnode, 1);
            }
            h.conn != conn
        });
        before - handles.len()
    }

    /// The file behind a handle of `vnode`.
    fn file(&self, vnode: u32, handle: u64) -> FsResult<Arc<File>> {
        let handles = lock(&self.handles);
        match handles.get(&handle) {
            Some(h) if h.vnode == vnode => Ok(h.file.clone()),
            Some(_) => Err(fail(
                Errno::BADF,
                format!("handle {handle:#x} belongs to another vnode"),
            )),
            None if handle & !0xffff_ffff != self.epoch => {
                self.counters.stale_handles.fetch_add(1, Ordering::Relaxed);
                Err(fail(
                    Errno::STALE,
                    format!("handle {handle:#x} is from before this storage monitor restarted"),
                ))
            }
            None => Err(fail(
                Errno::BADF,
                format!("no open file has handle {handle:#x}"),
            )),
        }
    }

    pub fn create(
        &self,
        vnode: u32,
        conn: u64,
        path: &[u8],
        mode: u32,
        flags: i32,
    ) -> FsResult<(u64, Attr)> {
        let f = OFlags::from_bits_retain(flags as u32);
        let oflags = open_flags(flags) | OFlags::CREATE | (f & (OFlags::EXCL | OFlags::TRUNC));
        let (dir, name) = self.parent(vnode, path)?;
        let existed = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        if !existed {
            self.take(vnode, INODE_BYTES)?;
        }
        let opened = self.open_handle(
            vnode,
            conn,
            path,
            oflags,
            Mode::from_bits_truncate(limits::creation_mode(mode)),
        );
        match &opened {
            Ok(_) if !existed => self.own(vnode, &dir, name, path)?,
            Err(_) if !existed => self.usage.give(vnode, INODE_BYTES),
            _ => {}
        }
        opened
    }

    pub fn open_file(
        &self,
        vnode: u32,
        conn: u64,
        path: &[u8],
        flags: i32,
    ) -> FsResult<(u64, Attr)> {
        let f = OFlags::from_bits_retain(flags as u32);
        let oflags = open_flags(flags) | (f & OFlags::TRUNC);
        self.open_handle(vnode, conn, path, oflags, Mode::empty())
    }

    /// Opens `path` confined and gives it a handle of `conn`.
    fn open_handle(
        &self,
        vnode: u32,
        conn: u64,
        path: &[u8],
        oflags: OFlags,
        mode: Mode,
    ) -> FsResult<(u64, Attr)> {
        if oflags.contains(OFlags::TRUNC) {
            // What the truncation gives back (a missing file: nothing).
            if let Ok(fd) = self.open_in(vnode, path, OFlags::PATH, Mode::empty()) {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    if st.st_mode & libc_mode::S_IFMT == libc_mode::S_IFREG {
                        self.usage.give(vnode, st.st_size as u64);
                    }
                }
            }
        }
        let fd = self.open_in(vnode, path, oflags, mode)?;
        let attr = attr_of(&rustix::fs::fstat(&fd).ctx("stat", path)?);
        Ok((self.new_handle(vnode, conn, fd)?, attr))
    }

    /// Reads at most `len` bytes at `offset` into `out` (cleared first).
    pub fn read(
        &self,
        vnode: u32,
        handle: u64,
        offset: u64,
        len: u32,
        out: &mut Vec<u8>,
    ) -> FsResult<()> {
        let file = self.file(vnode, handle)?;
        out.clear();
        out.resize(len as usize, 0);
        let mut got = 0;
        while got < out.len() {
            match file.read_at(&mut out[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).ctx("read", b"(open file)"),
            }
        }
        out.truncate(got);
        self.counters
            .bytes_read
            .fetch_add(got as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn write(&self, vnode: u32, handle: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.file(vnode, handle)?;
        let size = file.metadata().ctx("stat", b"(open file)")?.len();
        let end = offset.saturating_add(data.len() as u64);
        self.take(vnode, end.saturating_sub(size))?;
        file.write_all_at(data, offset)
            .ctx("write", b"(open file)")?;
        self.counters
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data.len() as u32)
    }

    pub fn release(&self, vnode: u32, handle: u64) -> FsResult<()> {
        self.file(vnode, handle)?;
        if lock(&self.handles).remove(&handle).is_some() {
            self.usage.closed(vnode, 1);
        }
        Ok(())
    }

    pub fn fsync(&self, vnode: u32, handle: u64, datasync: bool) -> FsResult<()> {
        let file = self.file(vnode, handle)?;
        let r = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        r.ctx("fsync", b"(open file)")?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn fsync_dir(&self, vnode: u32, path: &[u8]) -> FsResult<()> {
        let fd = self.open_in(
            vnode,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        rustix::fs::fsync(&fd).ctx("fsync", path)?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn mkdir(&self, vnode: u32, path: &[u8], mode: u32) -> FsResult<Attr> {
        let (dir, name) = self.parent(vnode, path)?;
        self.take(vnode, INODE_BYTES)?;
        rustix::fs::mkdirat(
            &dir,
            name,
            Mode::from_bits_truncate(limits::creation_mode(mode)),
        )
        .ctx("mkdir", path)
        .inspect_err(|_| self.usage.give(vnode, INODE_BYTES))?;
        self.own(vnode, &dir, name, path)?;
        self.stat(vnode, path)
    }

    pub fn unlink(&self, vnode: u32, path: &[u8], dir_too: bool) -> FsResult<()> {
        let (dir, name) = self.parent(vnode, path)?;
        let flags = if dir_too {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let held = self.held_by(&dir, name);
        rustix::fs::unlinkat(&dir, name, flags)
            .ctx(if dir_too { "rmdir" } else { "unlink" }, path)?;
        self.usage.give(vnode, held);
        Ok(())
    }

    pub fn rename(&self, vnode: u32, from: &[u8], to: &[u8], flags: u32) -> FsResult<()> {
        let (fdir, fname) = self.parent(vnode, from)?;
        let (tdir, tname) = self.parent(vnode, to)?;
        let flags = RenameFlags::from_bits(flags)
            .ok_or_else(|| fail(Errno::INVAL, format!("unknown rename flags {flags:#x}")))?;
        // A replaced target is removed (unless the two are swapped).
        let replaced = if flags.contains(RenameFlags::EXCHANGE) {
            0
        } else {
            self.held_by(&tdir, tname)
        };
        rustix::fs::renameat_with(&fdir, fname, &tdir, tname, flags).ctx("rename", from)?;
        self.usage.give(vnode, replaced);
        Ok(())
    }

    pub fn symlink(&self, vnode: u32, path: &[u8], target: &[u8]) -> FsResult<Attr> {
        if target.is_empty() || target.len() > lego_wire::fs::MAX_PATH || target.contains(&0) {
            return Err(fail(
                Errno::INVAL,
                "a symlink target is 1 to 4096 bytes, without NUL",
            ));
        }
        let (dir, name) = self.parent(vnode, path)?;
        self.take(vnode, INODE_BYTES)?;
        rustix::fs::symlinkat(target, &dir, name)
            .ctx("symlink", path)
            .inspect_err(|_| self.usage.give(vnode, INODE_BYTES))?;
        self.own(vnode, &dir, name, path)?;
        self.stat(vnode, path)
    }

    pub fn readlink(&self, vnode: u32, path: &[u8]) -> FsResult<Vec<u8>> {
        let (dir, name) = self.parent(vnode, path)?;
        rustix::fs::readlinkat(&dir, name, Vec::new())
            .ctx("readlink", path)
            .map(|c| c.into_bytes())
    }

    pub fn link(&self, vnode: u32, from: &[u8], to: &[u8]) -> FsResult<Attr> {
        let (fdir, fname) = self.parent(vnode, from)?;
        let (tdir, tname) = self.parent(vnode, to)?;
        rustix::fs::linkat(&fdir, fname, &tdir, tname, AtFlags::empty()).ctx("link", to)?;
        self.stat(vnode, to)
    }

    /// Entries from the `cookie`-th on, at most [`MAX_LISTING`] bytes of
    /// them; `.` and `..` are left out.
    pub fn readdir(
        &self,
        vnode: u32,
        path: &[u8],
        cookie: u64,
    ) -> FsResult<(Vec<DirEntry>, Option<u64>)> {
        let fd = self.open_in(
            vnode,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        let mut dir = rustix::fs::Dir::read_from(&fd).ctx("readdir", path)?;
        let (mut out, mut bytes, mut index) = (Vec::new(), 0usize, 0u64);
        for entry in &mut dir {
            let entry = entry.ctx("readdir", path)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            index += 1;
            if index <= cookie {
                continue;
            }
            if bytes + name.len() + 24 > MAX_LISTING {
                return Ok((out, Some(index - 1)));
            }
            bytes += name.len() + 24;
            use rustix::fs::FileType as T;
            let kind = match entry.file_type() {
                T::RegularFile => Some(Kind::File),
                T::Directory => Some(Kind::Dir),
                T::Symlink => Some(Kind::Symlink),
                T::Fifo => Some(Kind::Fifo),
                T::Socket => Some(Kind::Socket),
                T::CharacterDevice => Some(Kind::CharDevice),
                T::BlockDevice => Some(Kind::BlockDevice),
                _ => None,
            };
            out.push(DirEntry {
                name: name.to_vec(),
                ino: entry.ino(),
                kind,
            });
        }
        Ok((out, None))
    }

    pub fn statfs(&self, vnode: u32) -> FsResult<StatFs> {
        let root = self.root(vnode)?;
        let s = rustix::fs::fstatvfs(&root).ctx("statfs", b"")?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    /// Removes every file of a vNode and closes its handles.
    pub fn destroy(&self, vnode: u32) -> FsResult<()> {
        lock(&self.handles).retain(|_, h| h.vnode != vnode);
        self.usage.forget(vnode);
        let p = self.vnode_dir(vnode);
        match std::fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", p.as_os_str().as_encoded_bytes()),
        }
    }

    /// Open handles.
    pub fn open_handles(&self) -> u64 {
        lock(&self.handles).len() as u64
    }

    /// (bytes in all, bytes free) of the disk under the store.
    pub fn disk(&self) -> (u64, u64) {
        rustix::fs::statvfs(&self.dir)
            .map(|s| (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
            .unwrap_or((0, 0))
    }
}
