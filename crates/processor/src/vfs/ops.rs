//! The kernel's requests for one mount, each turned into one request to
//! the storage monitor (see the parent module).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use lego_wire::fs::{FsCall, FsReply};

use super::{file_type, lock, set_time, VnodeFs, MAX_WRITE, TTL};

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
