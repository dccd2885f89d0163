//! Rebuilding a vRegion's second copy on another memory monitor.
//!
//! When a vRegion loses a copy, the manager asks the surviving monitor to
//! `Replicate` it onto a new one. The survivor first starts a mirror: every
//! later write of those pages that the writer did not also send to the new
//! copy (its `peer` is someone else) is forwarded there before it is
//! answered. Then it copies the pages it holds, with their versions. Copies
//! and forwarded writes may cross on the way, which is why pages carry
//! versions: the new copy keeps the newest of each page it receives. A
//! forward that fails ends the mirror and fails the copy, and the writer is
//! told (`WriteReply::missed`) so it never trusts that copy.
//!
//! A mirror stays until the writer shows it knows of the new copy (a write
//! whose `peer` is the target, after the copy is complete), its address
//! space is freed, or another copy replaces it, so writers that learn of the
//! new copy late lose nothing meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lego_transport::{lock, Client, ClientOptions, Credentials, TransportError};
use lego_wire::control::{ReplicateReq, ReplicateResp};
use lego_wire::elastic::PageVersionsReq;
use lego_wire::pages::{CopyPages, FreeRange, FreeSpace};
use lego_wire::{Asid, ComponentId, Op, PageNo, PAGE_SIZE};
use tracing::{info, warn};

use crate::store::PageStore;

/// Pages per copy message.
const COPY_BATCH: usize = 256;
/// Copy messages sent before the first answer is waited for.
const COPIES_IN_FLIGHT: usize = 4;
/// The nice value of a thread copying a vRegion (serving threads are 0).
const COPY_NICE: i32 = 19;

/// Lowers the calling thread's priority to [`COPY_NICE`]: it copies in
/// bulk, and programs' requests come first. Best effort.
pub(crate) fn background() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), COPY_NICE);
}

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot reach the new copy {id} at {addr}")]
    Connect {
        id: ComponentId,
        addr: String,
        #[source]
        source: TransportError,
    },
    #[error("the new copy {id} at {addr} did not take the pages")]
    Copy {
        id: ComponentId,
        addr: String,
        #[source]
        source: TransportError,
    },
    #[error("a write forwarded to the new copy {0} failed; the copy is incomplete")]
    ForwardFailed(ComponentId),
}

struct Mirror {
    /// Tells this mirror from another of the same space and target.
    id: u64,
    first: PageNo,
    count: u64,
    target: ComponentId,
    /// For forwards: a short timeout, well under a writer's own, so that a
    /// hung target makes the write `missed` rather than the writer give up.
    client: Client,
    failed: Arc<AtomicBool>,
    /// The copy is complete (only forwards remain to do).
    done: Arc<AtomicBool>,
}

/// How long a forwarded write may take before the target counts as having
/// missed it (a runtime waits 3 s for its own write).
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1000);

/// Where one write must also go.
/// Where one write is forwarded: looked up before the write is checked
/// (see [`Mirrors::forward_of`]).
pub struct Forward {
    mirror: u64,
    target: ComponentId,
    client: Client,
    failed: Arc<AtomicBool>,
}

/// The mirrors of this monitor, by address space.
#[derive(Default)]
pub struct Mirrors {
    by_space: Mutex<HashMap<Asid, Vec<Mirror>>>,
    next_id: AtomicU64,
    pub forwarded_pages: AtomicU64,
    pub copied_pages: AtomicU64,
    pub copies_done: AtomicU64,
    pub copies_failed: AtomicU64,
}

impl Mirrors {
    /// Where a write of `pages` of `asid` must also go, unless the writer
    /// sent it to the target itself (`peer`). Looked up *before* the write
    /// is checked against the grants: a `Withdraw` refuses writes first and
    /// forgets the mirror after, so a write that passed the check was
    /// looked up while the mirror was there, and is forwarded.
    pub fn forward_of(&self, asid: Asid, pages: &[PageNo], peer: ComponentId) -> Option<Forward> {
        self.target_of(asid, *pages.first()?, peer)
    }

    /// Where a write of `page` of `asid` must also go: (target, client),
    /// unless the writer sent it to the target itself (`peer`).
    fn target_of(&self, asid: Asid, page: PageNo, peer: ComponentId) -> Option<Forward> {
        let mut spaces = lock(&self.by_space);
        let mirrors = spaces.get_mut(&asid)?;
        let i = mirrors
            .iter()
            .position(|m| page >= m.first && page.0 - m.first.0 < m.count)?;
        let m = &mirrors[i];
        if m.target == peer {
            // The writer knows of the new copy and writes to it itself:
            // once the copy is complete, the mirror has done its job.
            if m.done.load(Ordering::Relaxed) {
                mirrors.remove(i);
            }
            return None;
        }
        Some(Forward {
            mirror: m.id,
            target: m.target,
            client: m.client.clone(),
            failed: m.failed.clone(),
        })
    }

    fn drop_mirror(&self, asid: Asid, mirror: u64) {
        if let Some(v) = lock(&self.by_space).get_mut(&asid) {
            v.retain(|m| m.id != mirror);
        }
    }

    /// Forwards a write just stored here; returns the id of a new copy that
    /// did not take it (0: none, or no mirror).
    pub fn forward_write(
        &self,
        forward: Option<Forward>,
        asid: Asid,
        pages: &[PageNo],
        data: &[u8],
        version: u64,
    ) -> ComponentId {
        let Some(Forward {
            mirror,
            target,
            client,
            failed,
        }) = forward
        else {
            return 0;
        };
        let versioned: Vec<(PageNo, u64)> = pages.iter().map(|&p| (p, version)).collect();
        let head = CopyPages::encode_head(asid, &versioned);
        match client.call_raw(Op::CopyPages, &[&head, data]) {
            Ok(_) => {
                self.forwarded_pages
                    .fetch_add(pages.len() as u64, Ordering::Relaxed);
                0
            }
            Err(e) => {
                warn!(
                    %asid,
                    target, "a write forwarded to a new copy failed, dropping the mirror: {e}"
                );
                failed.store(true, Ordering::Relaxed);
                self.drop_mirror(asid, mirror);
                target
            }
        }
    }

    /// Forwards a free (best effort: a page left behind on the copy is
    /// never read, since the writer frees before it writes again).
    pub fn forward_free(&self, r: &FreeRange) {
        if let Some(f) = self.target_of(r.asid, r.first, 0) {
            let _ = f.client.call(r);
        }
    }

    /// Forgets the mirror of the vRegion starting at `first` (its copy here
    /// moved away: nothing is written here any more).
    pub fn forget_range(&self, asid: Asid, first: PageNo) {
        if let Some(v) = lock(&self.by_space).get_mut(&asid) {
            for m in v.iter().filter(|m| m.first == first) {
                m.failed.store(true, Ordering::Relaxed);
            }
            v.retain(|m| m.first != first);
        }
    }

    /// Forwards the end of an address space and forgets its mirrors.
    pub fn forget_space(&self, asid: Asid) {
        let gone = lock(&self.by_space).remove(&asid).unwrap_or_default();
        for m in gone {
            let _ = m.client.call(&FreeSpace { asid });
        }
    }

    /// Copies a vRegion onto `req.target`, mirroring writes first.
    pub fn replicate(
        &self,
        store: &PageStore,
        creds: &Credentials,
        req: &ReplicateReq,
    ) -> Result<ReplicateResp, MirrorError> {
        let t = Instant::now();
        let (id, addr) = (req.target.id, req.target.addr.clone());
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let connect = |opts: &ClientOptions| {
            Client::connect(&addr, creds, opts).map_err(|source| MirrorError::Connect {
                id,
                addr: addr.clone(),
                source,
            })
        };
        // The copy is bulk traffic; forwarded writes are not (a program
        // waits for each).
        let client = connect(&ClientOptions {
            bulk: true,
            ..opts.clone()
        })?;
        let forwards = connect(&ClientOptions {
            request_timeout: FORWARD_TIMEOUT,
            ..opts.clone()
        })?;
        let failed = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let mirror = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut spaces = lock(&self.by_space);
            let v = spaces.entry(req.asid).or_default();
            // A newer copy of the same vRegion replaces an older one, whose
            // Replicate then fails (its flag is set).
            for old in v.iter().filter(|m| m.first == req.first_page) {
                old.failed.store(true, Ordering::Relaxed);
            }
            v.retain(|m| m.first != req.first_page);
            v.push(Mirror {
                id: mirror,
                first: req.first_page,
                count: req.pages,
                target: id,
                client: forwards,
                failed: failed.clone(),
                done: done.clone(),
            });
        }
        let result = self.copy_pages(store, &client, req, &failed);
        match &result {
            Ok(n) => {
                done.store(true, Ordering::Relaxed);
                self.copies_done.fetch_add(1, Ordering::Relaxed);
                info!(
                    asid = %req.asid,
                    first_page = req.first_page.0,
                    target = id,
                    pages = n,
                    took_ms = t.elapsed().as_millis() as u64,
                    "copied a vregion onto a new memory monitor"
                );
            }
            Err(e) => {
                self.copies_failed.fetch_add(1, Ordering::Relaxed);
                self.drop_mirror(req.asid, mirror);
                warn!(
                    asid = %req.asid,
                    target = id,
                    "copy failed: {e}"
                );
            }
        }
        result.map(|pages| ReplicateResp { pages })
    }

    fn copy_pages(
        &self,
        store: &PageStore,
        client: &Client,
        req: &ReplicateReq,
        failed: &AtomicBool,
    ) -> Result<u64, MirrorError> {
        let copy_err = |source| MirrorError::Copy {
            id: req.target.id,
            addr: req.target.addr.clone(),
            source,
        };
        let held = if req.sync {
            // Only what the target lacks or holds older: after a move's
            // copy from the other copy, the writes that reached only this
            // one. Later writes are forwarded by the mirror.
            let theirs: HashMap<u64, u64> = client
                .call(&PageVersionsReq {
                    asid: req.asid,
                    first: req.first_page,
                    count: req.pages,
                })
                .map_err(copy_err)?
                .held
                .into_iter()
                .collect();
            store
                .versions_in(req.asid, req.first_page, req.pages)
                .into_iter()
                .filter(|(p, v)| theirs.get(&p.0).is_none_or(|t| t < v))
                .map(|(p, _)| p)
                .collect()
        } else {
            store.held_in(req.asid, req.first_page, req.pages)
        };
        // Programs reading from either monitor meanwhile come first: the
        // copy threads at both ends (this connection's, for this one
        // request, and the target's for the copy connection) yield the CPU
        // to them, and take what they leave.
        background();
        client.call_raw(Op::Background, &[]).map_err(copy_err)?;
        let started = Instant::now();
        let mut copied = 0u64;
        let mut data = Vec::with_capacity(COPY_BATCH * PAGE_SIZE);
        // A few batches in flight: the copy is not one round trip a batch.
        let mut in_flight = std::collections::VecDeque::new();
        for chunk in held.chunks(COPY_BATCH) {
            data.clear();
            let versions = store.read_versions(req.asid, chunk, &mut data);
            // Pages freed since they were listed are simply not copied.
            let pages: Vec<(PageNo, u64)> = chunk
                .iter()
                .zip(&versions)
                .filter_map(|(&p, v)| v.map(|v| (p, v)))
                .collect();
            if pages.is_empty() {
                continue;
            }
            if in_flight.len() >= COPIES_IN_FLIGHT {
                let id = in_flight.pop_front().expect("non-empty");
                client.wait(id).map_err(copy_err)?;
            }
            let head = CopyPages::encode_head(req.asid, &pages);
            let id = client
                .send(Op::CopyPages, &[&head, &data])
                .map_err(copy_err)?;
            in_flight.push_back(id);
            copied += pages.len() as u64;
            self.copied_pages
                .fetch_add(pages.len() as u64, Ordering::Relaxed);
            if failed.load(Ordering::Relaxed) {
                return Err(MirrorError::ForwardFailed(req.target.id));
            }
            // Paced: no faster than the rate, batch by batch, so that the
            // programs reading from this monitor meanwhile are not starved.
            if let Some(rate) = req.rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64((copied * PAGE_SIZE as u64) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        for id in in_flight {
            client.wait(id).map_err(copy_err)?;
        }
        if failed.load(Ordering::Relaxed) {
            return Err(MirrorError::ForwardFailed(req.target.id));
        }
        Ok(copied)
    }
}
