//! Bodies of the file protocol: what a processor monitor (serving a vNode's
//! mount with FUSE) asks a storage monitor, and the answers.
//!
//! One operation code, [`crate::Op::Fs`], carries an [`FsRequest`]: the vNode
//! and one [`FsCall`]. The answer is an [`FsReply`]; a file-system error
//! (no such file, not empty, ...) is an ordinary answer,
//! [`FsReply::Err`] with a Linux errno, while a request that is malformed or
//! not entitled gets an error frame. Bodies are postcard (compact serde
//! binary): names are raw bytes, as on Linux, and file data travels as one
//! length-prefixed payload, up to [`MAX_IO`] bytes a message.
//!
//! Paths are relative to the vNode's root, with `/` between names and no
//! leading `/`; the empty path is the root. [`check_path`] says what a path
//! may hold: no empty, `.` or `..` names, no NUL, names of at most
//! [`MAX_NAME`] bytes, at most [`MAX_PATH`] bytes in all.

use serde::{Deserialize, Serialize};

use crate::WireError;

/// Longest name, in bytes (as Linux's NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Longest path, in bytes (as Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Most bytes one read or write carries.
pub const MAX_IO: u32 = 4 << 20;
/// Most bytes of entries one directory listing carries (then it continues).
pub const MAX_LISTING: usize = 256 << 10;

/// A time, as seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Time),
}

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// The attributes of a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// The storage monitor's inode number: stable while the file exists.
    pub ino: u64,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub kind: Option<Kind>,
    /// Permission bits (and setuid, setgid, sticky).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Option<Kind>,
}

/// The file system's size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// One request to a storage monitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest<'a> {
    /// The vNode whose files are meant; must be the connection's own.
    pub vnode: u32,
    #[serde(borrow)]
    pub call: FsCall<'a>,
}

/// File operations. `flags` are Linux `open(2)` flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsCall<'a> {
    /// The attributes of a path, not following a final symlink.
    Stat {
        path: &'a [u8],
    },
    /// Changes attributes; each `Some` is applied. Answers the new ones.
    Setattr {
        path: &'a [u8],
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    },
    /// Creates and opens a regular file (fails if it exists and `flags`
    /// holds O_EXCL). Answers [`FsReply::Opened`].
    Create {
        path: &'a [u8],
        mode: u32,
        flags: i32,
    },
    /// Opens an existing file. Answers [`FsReply::Opened`].
    Open {
        path: &'a [u8],
        flags: i32,
    },
    /// Reads up to `len` bytes at `offset`. Answers [`FsReply::Data`].
    Read {
        handle: u64,
        offset: u64,
        len: u32,
    },
    /// Writes at `offset`. Answers [`FsReply::Written`].
    Write {
        handle: u64,
        offset: u64,
        data: &'a [u8],
    },
    /// Closes a handle.
    Release {
        handle: u64,
    },
    /// Makes a file's data (and, without `datasync`, its metadata) durable.
    Fsync {
        handle: u64,
        datasync: bool,
    },
    /// Makes a directory's entries durable.
    FsyncDir {
        path: &'a [u8],
    },
    Mkdir {
        path: &'a [u8],
        mode: u32,
    },
    Unlink {
        path: &'a [u8],
    },
    Rmdir {
        path: &'a [u8],
    },
    /// Linux `renameat2` flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
    Rename {
        from: &'a [u8],
        to: &'a [u8],
        flags: u32,
    },
    /// Creates a symlink at `path` holding `target` (any bytes; resolved by
    /// the client, never by the storage monitor).
    Symlink {
        path: &'a [u8],
        target: &'a [u8],
    },
    Readlink {
        path: &'a [u8],
    },
    /// A hard link `to` of the file at `from`.
    Link {
        from: &'a [u8],
        to: &'a [u8],
    },
    /// Entries of a directory from `cookie` on (0: the start). Answers
    /// [`FsReply::Entries`]; `next` continues the listing.
    Readdir {
        path: &'a [u8],
        cookie: u64,
    },
    Statfs,
    /// Removes every file of the vNode (only a component may).
    Destroy,
}

/// The answer to an [`FsRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply<'a> {
    Attr(Attr),
    Opened {
        handle: u64,
        attr: Attr,
    },
    Data(&'a [u8]),
    Written(u32),
    Done,
    Entries {
        entries: Vec<DirEntry>,
        next: Option<u64>,
    },
    Target(Vec<u8>),
    Statfs(StatFs),
    /// A file-system error: a Linux errno and what happened.
    Err {
        errno: i32,
        message: String,
    },
}

impl<'a> FsRequest<'a> {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("file requests always serialize")
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        postcard::from_bytes(body).map_err(|e| WireError::malformed("fs request", e.to_string()))
    }
}

impl<'a> FsReply<'a> {
    /// Appends the encoded answer to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let bytes = postcard::to_allocvec(self).expect("file answers always serialize");
        out.extend_from_slice(&bytes);
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        postcard::from_bytes(body).map_err(|e| WireError::malformed("fs reply", e.to_string()))
    }
}

/// Why a path is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is {0} bytes; at most {MAX_PATH} are allowed")]
    TooLong(usize),
    #[error("a name is {0} bytes; at most {MAX_NAME} are allowed")]
    NameTooLong(usize),
    #[error("the path holds a NUL byte")]
    Nul,
    #[error("the path holds an empty name (a leading, trailing or doubled '/')")]
    Empty,
    #[error("the path holds '.' or '..'")]
    Dots,
}

/// Checks a vNode-relative path (see the module documentation) and returns
/// its names.
pub fn check_path(path: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for n in &names {
        if n.is_empty() {
            return Err(PathError::Empty);
        }
        if *n == b"." || *n == b".." {
            return Err(PathError::Dots);
        }
        if n.len() > MAX_NAME {
            return Err(PathError::NameTooLong(n.len()));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let data = vec![7u8; 100_000];
        for call in [
            FsCall::Stat { path: b"a/b" },
            FsCall::Write {
                handle: 9,
                offset: 1 << 40,
                data: &data,
            },
            FsCall::Rename {
                from: b"x",
                to: b"y/z",
                flags: 1,
            },
            FsCall::Statfs,
        ] {
            let r = FsRequest { vnode: 3, call };
            assert_eq!(FsRequest::decode(&r.encode()).unwrap(), r);
        }
        let reply = FsReply::Entries {
            entries: vec![DirEntry {
                name: b"f\xff".to_vec(),
                ino: 5,
                kind: Some(Kind::File),
            }],
            next: Some(2),
        };
        let mut out = Vec::new();
        reply.encode_into(&mut out);
        assert_eq!(FsReply::decode(&out).unwrap(), reply);
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(check_path(b"").unwrap().len(), 0);
        assert_eq!(check_path(b"a/b/c").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(check_path(b"../x"), Err(PathError::Dots));
        assert_eq!(check_path(b"a/./x"), Err(PathError::Dots));
        assert_eq!(check_path(b"/etc"), Err(PathError::Empty));
        assert_eq!(check_path(b"a//b"), Err(PathError::Empty));
        assert_eq!(check_path(b"a\0b"), Err(PathError::Nul));
        assert_eq!(check_path(&[b'n'; 256]), Err(PathError::NameTooLong(256)));
        let long: Vec<u8> = std::iter::repeat_n(&b"abcdefgh/"[..], 600)
            .flatten()
            .copied()
            .collect();
        assert!(matches!(check_path(&long), Err(PathError::TooLong(_))));
    }
}
