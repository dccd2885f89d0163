//! The manager's vNode requests: create (mount points, memory quota), list,
//! show, mount (places the vNode's storage with the GSM for a processor
//! monitor about to start one of its processes), delete (refused while its
//! processes run, unless forced, which stops them first; frees its memory
//! and its files), and memory leases within the quota.
//!
//! A vNode's vIP is the base of the manager's `--vip-range` plus its id, so
//! it needs no record and is never handed out twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lego_placement::{asid_vnode, Health, Placement, PlacementError, Vnode};
use lego_transport::{PeerInfo, Reject};
use lego_wire::auth::Claim;
use lego_wire::control::*;
use lego_wire::fs::{FsCall, FsRequest};
use lego_wire::{ErrorCode, Op};
use tracing::{info, warn};

use crate::db::Change;
use crate::service::{lock, reject, ManagerService};

/// How long a forced delete waits for the vNode's jobs to be gone.
const FORCE_WAIT: Duration = Duration::from_secs(15);

/// A range of virtual IPv4 addresses, `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: u32,
    size: u64,
}

impl std::str::FromStr for VipRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 range like 10.77.0.0/16");
        let (addr, bits) = s.split_once('/').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{s:?}: the prefix must be /8 to /30"));
        }
        let size = 1u64 << (32 - bits);
        let base = u32::from(addr) & !((size - 1) as u32);
        Ok(VipRange { base, size })
    }
}

impl VipRange {
    /// The vIP of vNode `id`: the range's base plus the id (the network and
    /// broadcast addresses are never used).
    pub fn vip(&self, id: u32) -> Option<std::net::Ipv4Addr> {
        (u64::from(id) < self.size - 1).then(|| std::net::Ipv4Addr::from(self.base + id))
    }
}

impl ManagerService {
    /// Jobs of vNode `id` that some processor monitor reported running.
    fn running_jobs(&self, id: u32) -> Vec<u64> {
        let owners: BTreeSet<u64> = lock(&self.owners)
            .iter()
            .filter(|(&a, _)| asid_vnode(a) == id)
            .map(|(_, &o)| o)
            .collect();
        let jobs = lock(&self.jobs);
        let running: BTreeSet<u64> = jobs.values().flatten().copied().collect();
        owners.intersection(&running).copied().collect()
    }

    pub(crate) fn vnode_info(&self, st: &Placement, v: &Vnode) -> VnodeInfo {
        let spaces = lock(&self.owners)
            .keys()
            .filter(|&&a| asid_vnode(a) == v.id)
            .count() as u64;
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
            spaces,
            jobs: self.running_jobs(v.id),
        }
    }

    fn find(st: &Placement, name: &str) -> Result<Vnode, Reject> {
        st.vnode_by_name(name)
            .cloned()
            .ok_or_else(|| reject(PlacementError::UnknownVnode(name.to_string())))
    }

    pub(crate) fn vnode_op(&self, peer: &PeerInfo, op: Op, body: &[u8]) -> Result<Vec<u8>, Reject> {
        match op {
            Op::VnodeCreate => {
                peer.require_component(op)?;
                let req: VnodeReq = from_body(body)?;
                if let Some(n) = req.replicas.filter(|n| !(1..=2).contains(n)) {
                    return Err(reject(PlacementError::InvalidReplicas(n)));
                }
                let mut st = lock(&self.state);
                let mut v = st
                    .create_vnode_with(&req.name, req.mounts, req.memory_quota)
                    .map_err(reject)?;
                if req.host_network {
                    v = st.set_host_network(v.id, true).map_err(reject)?;
                }
                if let Some(n) = req.replicas {
                    v = st.set_replicas(v.id, n).map_err(reject)?;
                }
                // Its files go to a storage monitor now if one is up, else
                // when its first process starts.
                if let Ok((placed, _)) = st.place_storage(v.id) {
                    v = placed;
                }
                self.persist(&[Change::Vnode(&v), Change::next_ids(&st)])?;
                info!(id = v.id, name = %v.name, mounts = ?v.mounts, quota = ?v.memory_quota,
                    storage = ?v.storage, "vnode created");
                Ok(to_body(&self.vnode_info(&st, &v)))
            }
            Op::VnodeList => {
                let st = lock(&self.state);
                let list: Vec<VnodeInfo> = st
                    .vnodes()
                    .filter(|v| {
                        matches!(peer.claim, Claim::Component) || peer.claim == Claim::Vnode(v.id)
                    })
                    .map(|v| self.vnode_info(&st, v))
                    .collect();
                Ok(to_body(&list))
            }
            Op::VnodeShow => {
                let req: VnodeReq = from_body(body)?;
                let st = lock(&self.state);
                let v = Self::find(&st, &req.name)?;
                Self::require_vnode(peer, v.id)?;
                Ok(to_body(&self.vnode_info(&st, &v)))
            }
            Op::VnodeMount => {
                peer.require_component(op)?;
                let req: VnodeReq = from_body(body)?;
                let mut st = lock(&self.state);
                let v = Self::find(&st, &req.name)?;
                let (v, placed) = st.place_storage(v.id).map_err(reject)?;
                if placed {
                    self.persist(&[Change::Vnode(&v)])?;
                    info!(id = v.id, name = %v.name, storage = ?v.storage, "vnode storage placed");
                }
                Ok(to_body(&self.vnode_info(&st, &v)))
            }
            Op::VnodeDelete => {
                peer.require_component(op)?;
                let req: VnodeReq = from_body(body)?;
                self.delete_vnode(&req)
            }
            Op::LeaseMemory => {
                let req: LeaseReq = from_body(body)?;
                Self::require_vnode(peer, asid_vnode(req.asid))?;
                let mut st = lock(&self.state);
                match st.lease(req.asid, req.bytes) {
                    Ok(leased) => {
                        self.persist(&[Change::Lease {
                            asid: req.asid,
                            bytes: leased,
                        }])?;
                        Ok(to_body(&LeaseResp { leased }))
                    }
                    Err(e @ PlacementError::QuotaExceeded { .. }) => {
                        warn!(asid = format_args!("{:#x}", req.asid), "{e}");
                        Err(Reject::new(ErrorCode::OutOfMemory, e.to_string()))
                    }
                    Err(e) => Err(reject(e)),
                }
            }
            other => Err(Reject::new(
                ErrorCode::UnknownOp,
                format!("the manager does not serve {other}"),
            )),
        }
    }

    fn delete_vnode(&self, req: &VnodeReq) -> Result<Vec<u8>, Reject> {
        let id = Self::find(&lock(&self.state), &req.name)?.id;
        let jobs = self.running_jobs(id);
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
            self.stop_jobs(&req.name, &jobs)?;
        }
        let (v, removed) = {
            let mut st = lock(&self.state);
            let (v, removed) = st.delete_vnode(&req.name).map_err(reject)?;
            let spaces: Vec<u64> = lock(&self.owners)
                .keys()
                .copied()
                .filter(|&a| asid_vnode(a) == v.id)
                .collect();
            let mut changes: Vec<Change> = removed
                .iter()
                .map(|(k, _)| Change::DeleteVRegion(*k))
                .collect();
            changes.extend(spaces.iter().map(|&a| Change::DeleteOwner(a)));
            changes.extend(spaces.iter().map(|&a| Change::DeleteLease(a)));
            changes.push(Change::DeleteVnode(v.id));
            self.persist(&changes)?;
            let mut owners = lock(&self.owners);
            for a in spaces {
                owners.remove(&a);
            }
            (v, removed)
        };
        let (freed, _) = self.free_on_monitors(&removed);
        let files = self.destroy_files(&v);
        info!(id = v.id, name = %v.name, vregions = removed.len(), freed, files = %files, "vnode deleted");
        let mut info = VnodeInfo {
            id: v.id,
            name: v.name.clone(),
            mounts: v.mounts.clone(),
            ..VnodeInfo::default()
        };
        info.jobs = jobs;
        Ok(to_body(&info))
    }

    /// Kills the jobs at their processor monitors and waits until none reports them.
    fn stop_jobs(&self, name: &str, jobs: &[u64]) -> Result<(), Reject> {
        let targets: Vec<(u64, String)> = {
            let st = lock(&self.state);
            let reported = lock(&self.jobs);
            jobs.iter()
                .filter_map(|j| {
                    let (&p, _) = reported.iter().find(|(_, js)| js.contains(j))?;
                    let addr = st
                        .component(p)
                        .filter(|c| c.health == Health::Alive)?
                        .addr
                        .clone();
                    Some((*j, addr))
                })
                .collect()
        };
        for (job, addr) in &targets {
            let r = self.client(addr).and_then(|c| {
                c.call_json::<_, serde_json::Value>(
                    Op::Signal,
                    &SignalReq {
                        job: *job,
                        signal: 9,
                    },
                )
            });
            match r {
                Ok(_) => {
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
        let id = Self::find(&lock(&self.state), name)?.id;
        while !self.running_jobs(id).is_empty() {
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
        let addr = {
            let st = lock(&self.state);
            st.component(s)
                .filter(|c| c.health == Health::Alive)
                .map(|c| c.addr.clone())
        };
        let Some(addr) = addr else {
            warn!(vnode = %v.name, storage = s, "the storage monitor holding the vnode's files is down: its files stay there");
            return format!("left on storage monitor {s} (down)");
        };
        let body = FsRequest {
            vnode: v.id,
            call: FsCall::Destroy,
        }
        .encode();
        match self.client(&addr).and_then(|c| c.call(Op::Fs, &[&body])) {
            Ok(_) => format!("removed from storage monitor {s}"),
            Err(e) => {
                warn!(vnode = %v.name, storage = s, "cannot remove the vnode's files: {e}");
                format!("left on storage monitor {s} ({e})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VipRange;

    #[test]
    fn vips_come_from_the_range() {
        let r: VipRange = "10.77.0.0/16".parse().unwrap();
        assert_eq!(r.vip(1).unwrap().to_string(), "10.77.0.1");
        assert_eq!(r.vip(300).unwrap().to_string(), "10.77.1.44");
        assert!(r.vip(65535).is_none());
        let r: VipRange = "192.168.5.77/30".parse().unwrap();
        assert_eq!(r.vip(1).unwrap().to_string(), "192.168.5.77");
        assert_eq!(r.vip(2).unwrap().to_string(), "192.168.5.78");
        assert!(r.vip(3).is_none());
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/16", "10.0.0.0/4"] {
            assert!(bad.parse::<VipRange>().is_err(), "{bad}");
        }
    }
}
