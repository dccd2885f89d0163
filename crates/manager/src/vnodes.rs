//! The manager's vNode requests: create (mount points, memory quota,
//! network, copies), list, show, mount (places the vNode's storage with the
//! GSM for a processor monitor about to start one of its processes), and
//! delete (refused while its processes run, unless forced, which stops them
//! first; frees its memory and its files).

use std::time::{Duration, Instant};

use lego_placement::{Health, Placement, PlacementError, Role, Vnode};
use lego_transport::{PeerInfo, Reject};
use lego_wire::auth::Claim;
use lego_wire::control::*;
use lego_wire::{ComponentId, ErrorCode, VnodeId};
use tracing::{info, warn};

use crate::service::ManagerService;
use crate::state::reject;

/// How long a forced delete waits for the vNode's jobs to be gone.
const FORCE_WAIT: Duration = Duration::from_secs(15);

impl ManagerService {
    pub(crate) fn vnode_info(&self, st: &Placement, v: &Vnode) -> VnodeInfo {
        VnodeInfo {
            id: v.id,
            name: v.name.clone(),
            vip: self
                .cfg
                .vips
                .vip(v.id)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            mounts: v.mounts.clone(),
            memory_quota: v.memory_quota,
            host_network: v.host_network,
            replicas: v.replicas,
            memory_leased: st.leased(v.id),
            storage: v.storage.map(|s| Self::endpoint(st, s)),
            spaces: st.owned_spaces_of_vnode(v.id).len() as u64,
            jobs: st.running_jobs_of_vnode(v.id),
            network: v.network.clone(),
        }
    }

    fn find(st: &Placement, name: &str) -> Result<Vnode, Reject> {
        st.vnode_by_name(name)
            .cloned()
            .ok_or_else(|| reject(PlacementError::UnknownVnode(name.to_string())))
    }

    pub(crate) fn vnode_create(&self, req: VnodeCreateReq) -> Result<VnodeInfo, Reject> {
        if let Some(n) = req.replicas.filter(|n| !(1..=2).contains(n)) {
            return Err(reject(PlacementError::InvalidReplicas(n)));
        }
        let v = self.change(|st, _| {
            let mut v = st.create_vnode_with(&req.name, req.mounts, req.memory_quota)?;
            if req.host_network {
                v = st.set_host_network(v.id, true)?;
            }
            if let Some(n) = req.replicas {
                v = st.set_replicas(v.id, n)?;
            }
            if let Some(net) = &req.network {
                v = st.set_network(v.id, net)?;
            }
            // Its files go to a storage monitor now if one is up, else
            // when its first process starts.
            if let Ok((placed, _)) = st.place_storage(v.id) {
                v = placed;
            }
            Ok(v)
        })?;
        info!(id = v.id, name = %v.name, mounts = ?v.mounts, quota = ?v.memory_quota,
            storage = ?v.storage, "vnode created");
        Ok(self.state.read(|st| self.vnode_info(st, &v)))
    }

    /// Every vNode a connection may see: all for a component, its own for a vNode.
    pub(crate) fn vnode_list(&self, peer: &PeerInfo) -> Vec<VnodeInfo> {
        self.state.read(|st| {
            st.vnodes()
                .filter(|v| peer.claim.is_component() || peer.claim == Claim::Vnode(v.id))
                .map(|v| self.vnode_info(st, v))
                .collect()
        })
    }

    pub(crate) fn vnode_show(
        &self,
        peer: &PeerInfo,
        req: VnodeShowReq,
    ) -> Result<VnodeInfo, Reject> {
        self.state.read(|st| {
            let v = Self::find(st, &req.name)?;
            Self::require_vnode(peer, v.id)?;
            Ok(self.vnode_info(st, &v))
        })
    }

    /// The vNode with its storage monitor, placed now if it had none; with
    /// no storage monitor in the cluster, without one (it has no files).
    pub(crate) fn vnode_mount(&self, req: VnodeMountReq) -> Result<VnodeInfo, Reject> {
        let id = self.state.read(|st| Self::find(st, &req.name))?.id;
        let placed = self.change(|st, _| match st.place_storage(id) {
            Err(PlacementError::NoStorage(_)) => Ok(None),
            other => other.map(Some),
        })?;
        if let Some((v, true)) = &placed {
            info!(id = v.id, name = %v.name, storage = ?v.storage, "vnode storage placed");
        }
        self.state.read(|st| {
            let v = Self::find(st, &req.name)?;
            Ok(self.vnode_info(st, &v))
        })
    }

    pub(crate) fn vnode_delete(&self, req: VnodeDeleteReq) -> Result<VnodeInfo, Reject> {
        let id = self.state.read(|st| Self::find(st, &req.name))?.id;
        let jobs = self.state.read(|st| st.running_jobs_of_vnode(id));
        if !jobs.is_empty() {
            if !req.force {
                return Err(Reject::new(
                    ErrorCode::Conflict,
                    format!(
                        "vnode {:?} has {} running job(s) ({}); stop them, or delete with --force to stop them first",
                        req.name,
                        jobs.len(),
                        jobs.iter().map(|j| format!("{j:x}")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            self.stop_jobs(&req.name, id, &jobs)?;
        }
        let (v, removed) = self.change(|st, _| st.delete_vnode(&req.name))?;
        let (mut freed, _) = self.free_on_monitors(&removed);
        freed += self.free_vnode_everywhere(v.id);
        let files = self.destroy_files(&v);
        info!(id = v.id, name = %v.name, vregions = removed.len(), freed, files = %files, "vnode deleted");
        Ok(VnodeInfo {
            id: v.id,
            name: v.name.clone(),
            mounts: v.mounts.clone(),
            jobs,
            ..VnodeInfo::default()
        })
    }

    /// Frees whatever any live memory monitor still holds of a deleted vNode
    /// (pages of spaces the manager never heard of included); returns the
    /// pages freed.
    fn free_vnode_everywhere(&self, vnode: VnodeId) -> u64 {
        let monitors: Vec<(ComponentId, String)> = self.state.read(|st| {
            st.components()
                .filter(|c| c.role == Role::Memory && c.health != Health::Dead)
                .map(|c| (c.id, c.addr.clone()))
                .collect()
        });
        let mut freed = 0;
        for (id, addr) in monitors {
            match self.peers.free_vnode(&addr, vnode) {
                Ok(n) => freed += n,
                Err(e) => warn!(id, %addr, vnode, "cannot free a deleted vnode's pages: {e}"),
            }
        }
        freed
    }

    /// Kills the jobs at their processor monitors and waits until none reports them.
    fn stop_jobs(&self, name: &str, id: VnodeId, jobs: &[u64]) -> Result<(), Reject> {
        let targets: Vec<(u64, String)> = self.state.read(|st| {
            jobs.iter()
                .filter_map(|&j| {
                    let p = st.processor_of(j)?;
                    let c = st.component(p).filter(|c| c.health == Health::Alive)?;
                    Some((j, c.addr.clone()))
                })
                .collect()
        });
        for (job, addr) in &targets {
            match self.peers.kill_job(addr, *job) {
                Ok(()) => {
                    info!(vnode = name, job = format_args!("{job:x}"), %addr, "stopping the vnode's job")
                }
                Err(e) => warn!(
                    vnode = name,
                    job = format_args!("{job:x}"),
                    "cannot stop the job: {e}"
                ),
            }
        }
        let deadline = Instant::now() + FORCE_WAIT;
        while !self
            .state
            .read(|st| st.running_jobs_of_vnode(id))
            .is_empty()
        {
            if Instant::now() > deadline {
                return Err(Reject::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the jobs of vnode {name:?} did not stop within {} s",
                        FORCE_WAIT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Removes a deleted vNode's files from its storage monitor; says what happened.
    fn destroy_files(&self, v: &Vnode) -> String {
        let Some(s) = v.storage else {
            return "none placed".into();
        };
        let addr = self.state.read(|st| {
            st.component(s)
                .filter(|c| c.health == Health::Alive)
                .map(|c| c.addr.clone())
        });
        let Some(addr) = addr else {
            warn!(vnode = %v.name, storage = s, "the storage monitor holding the vnode's files is down: its files stay there");
            return format!("left on storage monitor {s} (down)");
        };
        match self.peers.destroy_files(&addr, v.id) {
            Ok(()) => format!("removed from storage monitor {s}"),
            Err(e) => {
                warn!(vnode = %v.name, storage = s, "cannot remove the vnode's files: {e}");
                format!("left on storage monitor {s} ({e})")
            }
        }
    }
}
