//! Address spaces at the manager: creating one (a process starts), placing
//! its vRegions on memory monitors (GMM, on first touch), leasing memory
//! within its vNode's quota, forking it (each memory monitor holding the
//! parent's vRegions copies them locally), and releasing it (its records go
//! first, durably, then its pages are freed on every memory monitor).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use lego_placement::{Health, Placement, PlacementError, Role, VRegionAssignment, VRegionKey};
use lego_transport::{PeerInfo, Reject};
use lego_wire::control::*;
use lego_wire::{Asid, ComponentId, ErrorCode};
use tracing::{debug, info, warn};

use crate::service::ManagerService;

impl ManagerService {
    pub(crate) fn assign(&self, peer: &PeerInfo, req: AssignReq) -> Result<AssignResp, Reject> {
        Self::require_vnode(peer, req.asid.vnode())?;
        let key = VRegionKey {
            asid: req.asid,
            index: req.index,
        };
        let (a, created) = self.change(|st, _| st.assign_vregion(key))?;
        // Before the answer: the process writes there next.
        self.grant(key, a.copies());
        if created {
            self.counters
                .vregions_assigned
                .fetch_add(1, Ordering::Relaxed);
            info!(%key, primary = a.primary, backup = ?a.backup, "vregion placed");
        }
        Ok(self.state.read(|st| AssignResp {
            primary: Self::endpoint(st, a.primary),
            backup: a.backup.map(|b| b.map(|id| Self::endpoint(st, id))),
            created,
        }))
    }

    pub(crate) fn create_space(
        &self,
        peer: &PeerInfo,
        req: CreateSpaceReq,
    ) -> Result<CreateSpaceResp, Reject> {
        let vid = self
            .state
            .read(|st| st.vnode_by_name(&req.vnode).map(|v| v.id))
            .ok_or_else(|| crate::state::reject(PlacementError::UnknownVnode(req.vnode.clone())))?;
        Self::require_vnode(peer, vid)?;
        self.require_job_proof(peer, vid, &req)?;
        let (asid, _) = self.change(|st, _| st.create_space(vid, req.owner))?;
        self.counters.spaces_created.fetch_add(1, Ordering::Relaxed);
        Ok(CreateSpaceResp {
            asid,
            vnode_id: asid.vnode(),
            vregion_bytes: self.cfg.vregion_bytes,
        })
    }

    /// A vNode's process may name a job as its space's owner only with the
    /// proof its processor monitor gave that job: otherwise it could make
    /// its spaces count as another vNode's job (whose deletion would then
    /// kill the other's program) or release another job's spaces with it.
    fn require_job_proof(
        &self,
        peer: &PeerInfo,
        vid: lego_wire::VnodeId,
        req: &CreateSpaceReq,
    ) -> Result<(), Reject> {
        let (Some(job), lego_wire::auth::Claim::Vnode(_)) = (req.owner, peer.claim) else {
            return Ok(());
        };
        match &req.proof {
            Some(p) if self.secret.check_job_proof(job, vid, p) => Ok(()),
            _ => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(Reject::new(
                    ErrorCode::NotEntitled,
                    format!("job {job:#x} is not proven to run in vnode {vid}"),
                ))
            }
        }
    }

    /// Components only (a processor monitor frees the space of a job's
    /// process that is gone). With `job`, the space must be that job's: the
    /// monitor asks on the word of the job's processes, which may lie.
    pub(crate) fn release_space(&self, req: ReleaseSpaceReq) -> Result<ReleaseSpaceResp, Reject> {
        if let Some(job) = req.job {
            let owner = self.state.read(|st| st.owner(req.asid));
            if owner != Some(job) || job == lego_placement::NO_JOB {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Reject::new(
                    ErrorCode::NotEntitled,
                    format!("address space {} is not job {job:#x}'s", req.asid),
                ));
            }
        }
        self.release(&[req.asid])
    }

    pub(crate) fn release_owner(&self, req: ReleaseOwnerReq) -> Result<ReleaseSpaceResp, Reject> {
        if req.owner == lego_placement::NO_JOB {
            return Err(Reject::bad_request("job 0 is no job"));
        }
        let spaces = self.state.read(|st| st.spaces_of(req.owner));
        let resp = self.release(&spaces)?;
        info!(
            owner = req.owner,
            spaces = spaces.len(),
            freed = resp.freed_pages,
            "job's memory released"
        );
        Ok(resp)
    }

    pub(crate) fn lease(&self, peer: &PeerInfo, req: LeaseReq) -> Result<LeaseResp, Reject> {
        Self::require_vnode(peer, req.asid.vnode())?;
        let leased = self
            .change(|st, _| st.lease(req.asid, req.bytes))
            .inspect_err(|e| {
                if e.code == ErrorCode::OutOfMemory {
                    warn!(asid = %req.asid, "{}", e.message);
                }
            })?;
        Ok(LeaseResp { leased })
    }

    /// Tells memory monitors `on` that vRegion `key` is placed on them (a
    /// vNode's writes to a monitor are refused elsewhere). A monitor that
    /// cannot be told refuses the process's writes, which then go to the
    /// other copy, as with any failed copy.
    pub(crate) fn grant(&self, key: VRegionKey, on: impl IntoIterator<Item = ComponentId>) {
        let _ = self.try_grant(key, on);
    }

    /// [`ManagerService::grant`], saying which monitor could not be told: a
    /// move onto it must not commit (the process's writes would be refused
    /// there for good).
    pub(crate) fn try_grant(
        &self,
        key: VRegionKey,
        on: impl IntoIterator<Item = ComponentId>,
    ) -> Result<(), String> {
        let (req, addrs) = self.state.read(|st| {
            let quota = st
                .vnode(key.asid.vnode())
                .and_then(|v| v.memory_quota)
                .map(|q| q.div_ceil(lego_wire::PAGE_SIZE as u64));
            let req = GrantReq {
                asid: key.asid,
                indices: vec![key.index],
                vregion_bytes: self.cfg.vregion_bytes,
                vnode_quota_pages: quota,
            };
            (req, live_addrs(st, on.into_iter()))
        });
        let mut result = Ok(());
        for (id, addr) in addrs {
            let Some(addr) = addr else { continue };
            if let Err(e) = self.peers.grant(&addr, &req) {
                warn!(%key, id, "cannot tell a memory monitor of a vregion placed on it: {e}");
                result = Err(format!("cannot grant {key} on memory monitor {id}: {e}"));
            }
        }
        result
    }

    /// Releases address spaces: drops their records durably, then frees
    /// their pages on the memory monitors.
    pub(crate) fn release(&self, spaces: &[Asid]) -> Result<ReleaseSpaceResp, Reject> {
        let removed = self.change(|st, _| {
            Ok(spaces
                .iter()
                .flat_map(|&a| st.release_space(a))
                .collect::<Vec<_>>())
        })?;
        let (freed, unreachable) = self.free_on_monitors(&removed);
        self.counters
            .spaces_released
            .fetch_add(spaces.len() as u64, Ordering::Relaxed);
        for a in spaces {
            debug!(asid = %a, "address space released");
        }
        Ok(ReleaseSpaceResp {
            vregions: removed.len() as u64,
            freed_pages: freed,
            unreachable,
        })
    }

    /// Tells the memory monitors holding `removed` vRegions to free their
    /// address spaces. Returns (pages freed, monitors that could not be told).
    pub(crate) fn free_on_monitors(
        &self,
        removed: &[(VRegionKey, VRegionAssignment)],
    ) -> (u64, Vec<String>) {
        // Every live memory monitor is told, not only the copies' holders: a
        // copy being rebuilt (or one whose rebuilding was cut short) may
        // hold pages of the space too.
        let spaces: Vec<Asid> = removed
            .iter()
            .map(|(k, _)| k.asid)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let holders: BTreeSet<ComponentId> = removed.iter().flat_map(|(_, a)| a.copies()).collect();
        let targets = self.state.read(|st| {
            let alive: BTreeSet<ComponentId> = st
                .components()
                .filter(|c| c.role == Role::Memory && c.health != Health::Dead)
                .map(|c| c.id)
                .collect();
            live_addrs(st, holders.union(&alive).copied())
        });
        let (mut freed, mut unreachable) = (0, Vec::new());
        for (id, addr) in targets {
            let Some(addr) = addr else {
                unreachable.push(format!("memory monitor {id} (dead)"));
                continue;
            };
            match self.peers.free_spaces(&addr, &spaces) {
                Ok(n) => freed += n,
                Err(e) => {
                    warn!(id, %addr, "cannot free pages on memory monitor: {e}");
                    unreachable.push(format!("memory monitor {id} at {addr}"));
                }
            }
        }
        (freed, unreachable)
    }

    /// Creates a forked child's address space: same vNode and owner, same
    /// memory monitors, each of which copies the parent's pages locally.
    pub(crate) fn fork_space(
        &self,
        peer: &PeerInfo,
        req: ForkSpaceReq,
    ) -> Result<CreateSpaceResp, Reject> {
        let parent = req.asid;
        Self::require_vnode(peer, parent.vnode())?;
        let (child, _, copied) = self
            .change(|st, _| st.fork_space(parent))
            .inspect_err(|e| warn!(%parent, "fork refused: {}", e.message))?;
        let ids: BTreeSet<ComponentId> = copied.iter().flat_map(|(_, a)| a.copies()).collect();
        let monitors = self.state.read(|st| live_addrs(st, ids.into_iter()));
        // A dead copy is skipped: the child's vRegions are then degraded
        // like the parent's, and get their second copy back the same way.
        if !monitors.is_empty() && monitors.iter().all(|(_, a)| a.is_none()) {
            let _ = self.release(&[child]);
            return Err(Reject::new(
                ErrorCode::Unavailable,
                "no live memory monitor holds the parent's memory".to_string(),
            ));
        }
        for (id, addr) in monitors {
            let Some(addr) = addr else {
                warn!(%parent, id, "fork: skipping a dead copy");
                continue;
            };
            if let Err(e) = self.peers.clone_space(&addr, parent, child) {
                warn!(%parent, "fork cannot copy memory: {e}");
                let _ = self.release(&[child]);
                return Err(Reject::new(
                    ErrorCode::Unavailable,
                    format!("cannot copy the parent's memory: {e}"),
                ));
            }
        }
        info!(%parent, %child, vregions = copied.len(), "address space forked");
        Ok(CreateSpaceResp {
            asid: child,
            vnode_id: child.vnode(),
            vregion_bytes: self.cfg.vregion_bytes,
        })
    }
}

/// Each component with its address, unless it is dead.
fn live_addrs(
    st: &Placement,
    ids: impl Iterator<Item = ComponentId>,
) -> Vec<(ComponentId, Option<String>)> {
    ids.map(|id| {
        let addr = st
            .component(id)
            .filter(|c| c.health != Health::Dead)
            .map(|c| c.addr.clone());
        (id, addr)
    })
    .collect()
}
