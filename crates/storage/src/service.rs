//! The storage monitor's request handler.
//!
//! Entitlement: a connection that authenticated as a vNode may only touch
//! that vNode's files, and only through handles it opened; one that
//! authenticated as a component (holding the cluster secret: the manager,
//! the CLI) may touch any vNode, and only it may destroy a vNode's files.
//! A refusal is an error frame and a counted, logged line; a failed file
//! operation is an ordinary answer carrying the errno.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use lego_transport::{Handler, PeerInfo, Reject, ServerCounters};
use lego_wire::auth::Claim;
use lego_wire::fs::{FsCall, FsReply, FsRequest, MAX_IO};
use lego_wire::{ErrorCode, Op};

use crate::store::{FileStore, FsResult};

/// Serves file requests from a [`FileStore`].
pub struct StorageService {
    pub store: Arc<FileStore>,
    pub not_entitled: AtomicU64,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    /// Set once the server runs, for the counters it keeps.
    pub server: OnceLock<Arc<ServerCounters>>,
}

impl StorageService {
    pub fn new(store: Arc<FileStore>) -> Self {
        StorageService {
            store,
            not_entitled: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            server: OnceLock::new(),
        }
    }

    fn check(&self, peer: &PeerInfo, vnode: u32, call: &FsCall) -> Result<(), Reject> {
        let ok = match peer.claim {
            Claim::Component | Claim::Member(_) => true,
            Claim::Vnode(v) => v == vnode && v != 0 && !matches!(call, FsCall::Destroy),
            Claim::Join(_) => false,
        };
        if ok {
            return Ok(());
        }
        self.not_entitled.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(conn = peer.conn, vnode, claim = %peer.claim, "refused a file request for another vnode");
        Err(Reject::new(
            ErrorCode::NotEntitled,
            match peer.claim {
                Claim::Vnode(v) if v == vnode => {
                    "only a component may destroy a vnode's files".to_string()
                }
                _ => format!(
                    "the files of vnode {vnode} are not this connection's ({})",
                    peer.claim
                ),
            },
        ))
    }

    /// All counters, by Prometheus-style name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let c = &self.store.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (total, free) = self.store.disk();
        let mut m: BTreeMap<String, u64> = [
            ("fs_calls_total", g(&self.calls)),
            ("fs_errors_total", g(&self.errors)),
            ("bytes_out_total", g(&c.bytes_read)),
            ("bytes_in_total", g(&c.bytes_written)),
            ("fsyncs_total", g(&c.fsyncs)),
            ("stale_handles_total", g(&c.stale_handles)),
            ("open_handles", self.store.open_handles()),
            ("disk_bytes", total),
            ("disk_free_bytes", free),
            ("not_entitled_total", g(&self.not_entitled)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(sc) = self.server.get() {
            m.extend(sc.snapshot().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        m
    }

    /// Runs one call; file-system errors become [`FsReply::Err`].
    fn call(
        &self,
        vnode: u32,
        conn: u64,
        call: FsCall<'_>,
        data: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) {
        let s = &*self.store;
        let done = |r: FsResult<()>| r.map(|()| FsReply::Done);
        let r: FsResult<FsReply<'_>> = match call {
            FsCall::Stat { path } => s.stat(vnode, path).map(FsReply::Attr),
            FsCall::Setattr {
                path,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => s
                .setattr(vnode, path, mode, uid, gid, size, atime, mtime)
                .map(FsReply::Attr),
            FsCall::Create { path, mode, flags } => s
                .create(vnode, conn, path, mode, flags)
                .map(|(handle, attr)| FsReply::Opened { handle, attr }),
            FsCall::Open { path, flags } => s
                .open_file(vnode, conn, path, flags)
                .map(|(handle, attr)| FsReply::Opened { handle, attr }),
            FsCall::Read {
                handle,
                offset,
                len,
            } => s
                .read(vnode, handle, offset, len.min(MAX_IO), data)
                .map(|()| FsReply::Data(data)),
            FsCall::Write {
                handle,
                offset,
                data,
            } => s.write(vnode, handle, offset, data).map(FsReply::Written),
            FsCall::Release { handle } => done(s.release(vnode, handle)),
            FsCall::Fsync { handle, datasync } => done(s.fsync(vnode, handle, datasync)),
            FsCall::FsyncDir { path } => done(s.fsync_dir(vnode, path)),
            FsCall::Mkdir { path, mode } => s.mkdir(vnode, path, mode).map(FsReply::Attr),
            FsCall::Unlink { path } => done(s.unlink(vnode, path, false)),
            FsCall::Rmdir { path } => done(s.unlink(vnode, path, true)),
            FsCall::Rename { from, to, flags } => done(s.rename(vnode, from, to, flags)),
            FsCall::Symlink { path, target } => s.symlink(vnode, path, target).map(FsReply::Attr),
            FsCall::Readlink { path } => s.readlink(vnode, path).map(FsReply::Target),
            FsCall::Link { from, to } => s.link(vnode, from, to).map(FsReply::Attr),
            FsCall::Readdir { path, cookie } => s
                .readdir(vnode, path, cookie)
                .map(|(entries, next)| FsReply::Entries { entries, next }),
            FsCall::Statfs => s.statfs(vnode).map(FsReply::Statfs),
            FsCall::Destroy => {
                tracing::info!(vnode, "destroying the vnode's files");
                done(s.destroy(vnode))
            }
        };
        let answer = r.unwrap_or_else(|e| {
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(vnode, "{e}");
            FsReply::Err {
                errno: e.errno.raw_os_error(),
                message: e.to_string(),
            }
        });
        answer.encode_into(reply);
    }
}

impl Handler for StorageService {
    fn handle(
        &self,
        peer: &PeerInfo,
        op: Op,
        body: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        match op {
            Op::Ping => Ok(()),
            Op::Fs => {
                let req = FsRequest::decode(body)?;
                self.check(peer, req.vnode, &req.call)?;
                self.calls.fetch_add(1, Ordering::Relaxed);
                let mut data = Vec::new();
                self.call(req.vnode, peer.conn, req.call, &mut data, reply);
                Ok(())
            }
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("a storage monitor does not serve {other}"),
            )),
        }
    }

    fn disconnected(&self, peer: &PeerInfo) {
        let closed = self.store.drop_conn(peer.conn);
        if closed > 0 {
            tracing::debug!(
                conn = peer.conn,
                closed,
                "closed the files of a connection that went away"
            );
        }
    }
}
