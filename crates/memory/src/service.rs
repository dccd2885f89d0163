//! The memory monitor's request handler.
//!
//! Entitlement: a connection that authenticated as a component (a daemon or
//! the CLI, holding the cluster secret) may touch any address space; one that
//! authenticated as a vNode may touch only address spaces of that vNode (the
//! vNode id is the high 32 bits of the address-space id), and may write
//! only pages of vRegions the manager placed here for that address space
//! ([`crate::grants`]), up to its vNode's quota of pages here. Anything else
//! is refused (`NotEntitled`, `OutOfMemory`) and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lego_transport::{answer, Credentials, Handler, PeerInfo, Reject, ServerCounters};
use lego_wire::auth::Claim;
use lego_wire::control::{FreeVnodeReq, GrantReq, MemStats, MemStatsReq, ReplicateReq};
use lego_wire::elastic::{PageVersions, PageVersionsReq, WithdrawReq};
use lego_wire::pages::{
    CloneSpace, CopyPages, FreeRange, FreeSpace, ReadPages, ReadPagesReply, WritePages, WriteReply,
};
use lego_wire::{Asid, ErrorCode, Op, PageNo, Ping, PAGE_SIZE};

use crate::grants::Grants;
use crate::mirror::Mirrors;
use crate::store::{PageStore, StoreError};

/// Serves page requests from a [`PageStore`].
pub struct MemoryService {
    pub store: Arc<PageStore>,
    pub not_entitled: AtomicU64,
    /// Set once the server runs, for the counters it keeps.
    pub server: std::sync::OnceLock<Arc<ServerCounters>>,
    /// Copies of vRegions being (or recently) rebuilt from here.
    pub mirrors: Mirrors,
    /// The vRegions the manager placed here, and vNodes' quotas.
    pub grants: Grants,
    /// How this monitor speaks to other memory monitors.
    creds: Credentials,
}

fn store_error(asid: Asid, e: StoreError) -> Reject {
    match e {
        StoreError::OutOfMemory { .. } => {
            tracing::warn!(%asid, "{e}");
            Reject::new(ErrorCode::OutOfMemory, e.to_string())
        }
        StoreError::VnodeQuota { .. } => {
            tracing::debug!(%asid, "{e}");
            Reject::new(ErrorCode::OutOfMemory, e.to_string())
        }
        StoreError::BadLength { .. } => Reject::bad_request(e),
    }
}

impl MemoryService {
    pub fn new(store: Arc<PageStore>, creds: Credentials) -> Self {
        MemoryService {
            store,
            not_entitled: AtomicU64::new(0),
            server: std::sync::OnceLock::new(),
            mirrors: Mirrors::default(),
            grants: Grants::default(),
            creds,
        }
    }

    fn require_component(&self, peer: &PeerInfo, op: Op) -> Result<(), Reject> {
        peer.require_component(op).inspect_err(|_| {
            self.not_entitled.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn check(&self, peer: &PeerInfo, asid: Asid) -> Result<(), Reject> {
        match peer.claim {
            Claim::Component | Claim::Member(_) => Ok(()),
            Claim::Join(_) => Err(Reject::new(
                ErrorCode::NotEntitled,
                "a joining daemon may touch no address space",
            )),
            Claim::Vnode(v) if asid.vnode() == v && v != 0 => Ok(()),
            Claim::Vnode(v) => {
                self.not_entitled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    conn = peer.conn,
                    %asid,
                    vnode = v,
                    "refused a request for another vnode's address space"
                );
                Err(Reject::new(
                    ErrorCode::NotEntitled,
                    format!(
                        "address space {asid} belongs to vnode {}; this connection may only touch vnode {v}",
                        asid.vnode()
                    ),
                ))
            }
        }
    }

    /// A vNode's write must fall in vRegions granted for its address space
    /// (a component's is not bound); returns the vNode's quota here.
    fn check_write(
        &self,
        peer: &PeerInfo,
        asid: Asid,
        pages: &[lego_wire::PageNo],
    ) -> Result<Option<u64>, Reject> {
        self.check(peer, asid)?;
        if peer.claim.is_component() {
            return Ok(None);
        }
        if let Some(p) = self.grants.ungranted(asid, pages) {
            // Its copy moved: the writer learns where from the manager.
            if self.grants.moved(asid, p) {
                return Err(Reject::new(
                    ErrorCode::Conflict,
                    format!("moved: the vRegion of {p} of address space {asid} is no longer placed on this memory monitor"),
                ));
            }
            self.not_entitled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = peer.conn, %asid, page = %p, "refused a write outside the vRegions placed here");
            return Err(Reject::new(
                ErrorCode::NotEntitled,
                format!("{p} of address space {asid} is in no vRegion the manager placed on this memory monitor"),
            ));
        }
        Ok(self.grants.quota(asid.vnode()))
    }

    /// All counters, by Prometheus-style name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let s = &self.store;
        let c = &s.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m: BTreeMap<String, u64> = [
            ("pages_held", s.pages_held()),
            ("capacity_pages", s.capacity_pages()),
            ("pages_read_total", g(&c.pages_read)),
            ("pages_written_total", g(&c.pages_written)),
            ("pages_allocated_total", g(&c.pages_allocated)),
            ("pages_freed_total", g(&c.pages_freed)),
            ("bytes_in_total", g(&c.bytes_in)),
            ("bytes_out_total", g(&c.bytes_out)),
            ("oom_refusals_total", g(&c.oom_refusals)),
            ("vnode_quota_refusals_total", g(&c.quota_refusals)),
            ("not_entitled_total", g(&self.not_entitled)),
            ("older_writes_ignored_total", g(&c.older_ignored)),
            ("pages_forwarded_total", g(&self.mirrors.forwarded_pages)),
            ("pages_copied_out_total", g(&self.mirrors.copied_pages)),
            ("copies_done_total", g(&self.mirrors.copies_done)),
            ("copies_failed_total", g(&self.mirrors.copies_failed)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(sc) = self.server.get() {
            m.extend(sc.snapshot().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        m
    }
}

impl Handler for MemoryService {
    fn handle(
        &self,
        peer: &PeerInfo,
        op: Op,
        body: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        match op {
            Op::Ping => answer(body, reply, |_: Ping| Ok(())),
            Op::ReadPages => {
                let req = ReadPages::decode(body)?;
                self.check(peer, req.asid)?;
                // A moved copy's pages are gone: the reader asks the manager
                // where they are now rather than taking them for absent.
                if !peer.claim.is_component() {
                    if let Some(p) = req.pages.iter().find(|p| self.grants.moved(req.asid, **p)) {
                        return Err(Reject::new(
                            ErrorCode::Conflict,
                            format!("moved: the vRegion of {p} of address space {} is no longer placed on this memory monitor", req.asid),
                        ));
                    }
                }
                // Room for the head and every page; the head is written last.
                let head_len = ReadPagesReply::encode_head(&vec![false; req.pages.len()]).len();
                reply.resize(head_len, 0);
                reply.reserve(req.pages.len() * PAGE_SIZE);
                let present = self.store.read(req.asid, &req.pages, reply);
                reply[..head_len].copy_from_slice(&ReadPagesReply::encode_head(&present));
                Ok(())
            }
            Op::WritePages => {
                let req = WritePages::decode(body)?;
                let forward = self.mirrors.forward_of(req.asid, &req.pages, req.peer);
                let quota = self.check_write(peer, req.asid, &req.pages)?;
                let allocated = self
                    .store
                    .write(req.asid, &req.pages, req.data, req.version, quota)
                    .map_err(|e| store_error(req.asid, e))?;
                let missed = self.mirrors.forward_write(
                    forward,
                    req.asid,
                    &req.pages,
                    req.data,
                    req.version,
                );
                reply.extend_from_slice(
                    &WriteReply {
                        stored: req.pages.len() as u32,
                        allocated: allocated as u32,
                        missed,
                    }
                    .encode(),
                );
                Ok(())
            }
            Op::CopyPages => {
                self.require_component(peer, op)?;
                let req = CopyPages::decode(body)?;
                let n = self
                    .store
                    .copy_in(req.asid, &req.pages, req.data)
                    .map_err(|e| store_error(req.asid, e))?;
                reply.extend_from_slice(&n.to_le_bytes());
                Ok(())
            }
            Op::Background => {
                self.require_component(peer, op)?;
                crate::mirror::background();
                Ok(())
            }
            Op::Replicate => {
                self.require_component(peer, op)?;
                answer(body, reply, |req: ReplicateReq| {
                    self.mirrors
                        .replicate(&self.store, &self.creds, &req)
                        .map_err(|e| Reject::new(ErrorCode::Unavailable, e.to_string()))
                })
            }
            Op::PageVersions => {
                self.require_component(peer, op)?;
                answer(body, reply, |req: PageVersionsReq| {
                    let held = self.store.versions_in(req.asid, req.first, req.count);
                    Ok(PageVersions {
                        held: held.into_iter().map(|(p, v)| (p.0, v)).collect(),
                    })
                })
            }
            Op::FreeRange => answer(body, reply, |req: FreeRange| {
                self.check(peer, req.asid)?;
                let n = self.store.free_range(req.asid, req.first, req.count);
                self.mirrors.forward_free(&req);
                Ok(n)
            }),
            Op::FreeSpace => answer(body, reply, |FreeSpace { asid }| {
                self.check(peer, asid)?;
                let n = self.store.free_space(asid);
                self.mirrors.forget_space(asid);
                self.grants.forget_space(asid);
                tracing::debug!(%asid, pages = n, "freed address space");
                Ok(n)
            }),
            Op::CloneSpace => {
                self.require_component(peer, op)?;
                answer(body, reply, |CloneSpace { from, to }| {
                    let n = self.store.clone_space(from, to).map_err(|e| {
                        tracing::warn!("{e}");
                        Reject::new(ErrorCode::OutOfMemory, e.to_string())
                    })?;
                    self.grants.clone_space(from, to);
                    Ok(n)
                })
            }
            Op::Withdraw => {
                self.require_component(peer, op)?;
                answer(body, reply, |req: WithdrawReq| {
                    let pages = req.vregion_bytes / lego_wire::PAGE_SIZE as u64;
                    if pages == 0 || !pages.is_power_of_two() {
                        return Err(Reject::bad_request(
                            "a vRegion size is a power of two of pages",
                        ));
                    }
                    // Refused first, then freed: no write lands in between.
                    self.grants.withdraw(req.asid, req.index);
                    let first = PageNo(req.index.0 * pages);
                    self.mirrors.forget_range(req.asid, first);
                    let n = self.store.free_range(req.asid, first, pages);
                    tracing::info!(asid = %req.asid, index = req.index.0, pages = n, "a vRegion's copy moved away: its pages freed");
                    Ok(n)
                })
            }
            Op::GrantVRegions => {
                self.require_component(peer, op)?;
                answer(body, reply, |req: GrantReq| {
                    self.grants.grant(&req).map_err(Reject::bad_request)?;
                    Ok(lego_wire::Empty {})
                })
            }
            Op::FreeVnode => {
                self.require_component(peer, op)?;
                answer(body, reply, |FreeVnodeReq { vnode }| {
                    let n = self.store.free_vnode(vnode);
                    self.grants.forget_vnode(vnode);
                    tracing::info!(vnode, pages = n, "freed a deleted vnode's pages");
                    Ok(n)
                })
            }
            Op::MemStats => answer(body, reply, |_: MemStatsReq| {
                Ok(MemStats {
                    capacity_pages: self.store.capacity_pages(),
                    pages_held: self.store.pages_held(),
                    address_spaces: self.store.address_spaces(),
                    counters: self.counters(),
                })
            }),
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("a memory monitor does not serve {other}"),
            )),
        }
    }
}
