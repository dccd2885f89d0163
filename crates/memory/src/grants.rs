//! What the manager placed on this memory monitor: for each address space,
//! the vRegions it granted ([`lego_wire::control::GrantReq`]), and each
//! vNode's quota in pages. A vNode's process may write only pages of
//! granted vRegions of its address spaces; components (the manager, other
//! memory monitors rebuilding a copy) are not bound by grants.
//!
//! Grants are not durable: they live as long as the pages they let in. A
//! restarted memory monitor holds no pages, and gets grants again with each
//! vRegion the manager places on it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use lego_transport::lock;
use lego_wire::control::GrantReq;
use lego_wire::{Asid, PageNo, VRegionIdx, VnodeId, PAGE_SIZE};

#[derive(Default)]
struct Inner {
    /// log2 of the vRegion size in pages (0: not told yet).
    shift: u32,
    spaces: HashMap<Asid, HashSet<VRegionIdx>>,
    quotas: HashMap<VnodeId, u64>,
    /// vRegions whose copy moved away from here (withdrawn).
    moved: HashMap<Asid, HashSet<VRegionIdx>>,
}

/// The grants of this monitor.
#[derive(Default)]
pub struct Grants {
    inner: Mutex<Inner>,
}

impl Grants {
    /// Records a grant from the manager.
    pub fn grant(&self, req: &GrantReq) -> Result<(), String> {
        let pages = req.vregion_bytes / PAGE_SIZE as u64;
        if !pages.is_power_of_two() {
            return Err(format!(
                "a vRegion of {} bytes is not a power of two of pages",
                req.vregion_bytes
            ));
        }
        let mut g = lock(&self.inner);
        g.shift = pages.trailing_zeros();
        g.spaces
            .entry(req.asid)
            .or_default()
            .extend(req.indices.iter().copied());
        if let Some(m) = g.moved.get_mut(&req.asid) {
            m.retain(|i| !req.indices.contains(i));
        }
        match req.vnode_quota_pages {
            Some(q) => g.quotas.insert(req.asid.vnode(), q),
            None => g.quotas.remove(&req.asid.vnode()),
        };
        Ok(())
    }

    /// The first page of `pages` outside the vRegions granted for `asid`.
    pub fn ungranted(&self, asid: Asid, pages: &[PageNo]) -> Option<PageNo> {
        let g = lock(&self.inner);
        let Some(granted) = g.spaces.get(&asid) else {
            return pages.first().copied();
        };
        pages
            .iter()
            .copied()
            .find(|p| !granted.contains(&VRegionIdx(p.0 >> g.shift)))
    }

    /// The most pages this monitor holds of `vnode`, if it has a quota.
    pub fn quota(&self, vnode: VnodeId) -> Option<u64> {
        lock(&self.inner).quotas.get(&vnode).copied()
    }

    /// A forked child's space gets its parent's grants (its vRegions live
    /// where the parent's do).
    pub fn clone_space(&self, from: Asid, to: Asid) {
        let mut g = lock(&self.inner);
        if let Some(regions) = g.spaces.get(&from).cloned() {
            g.spaces.entry(to).or_default().extend(regions);
        }
    }

    /// vRegion `index` of `asid` moved away: its writes are refused from
    /// now on.
    pub fn withdraw(&self, asid: Asid, index: VRegionIdx) {
        let mut g = lock(&self.inner);
        if let Some(s) = g.spaces.get_mut(&asid) {
            s.remove(&index);
        }
        g.moved.entry(asid).or_default().insert(index);
    }

    /// Whether `page` of `asid` is in a vRegion whose copy moved away.
    pub fn moved(&self, asid: Asid, page: PageNo) -> bool {
        let g = lock(&self.inner);
        g.moved
            .get(&asid)
            .is_some_and(|m| m.contains(&VRegionIdx(page.0 >> g.shift)))
    }

    /// The address space is gone.
    pub fn forget_space(&self, asid: Asid) {
        let mut g = lock(&self.inner);
        g.spaces.remove(&asid);
        g.moved.remove(&asid);
    }

    /// The vNode is gone: every grant of it.
    pub fn forget_vnode(&self, vnode: VnodeId) {
        let mut g = lock(&self.inner);
        g.spaces.retain(|a, _| a.vnode() != vnode);
        g.moved.retain(|a, _| a.vnode() != vnode);
        g.quotas.remove(&vnode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_inside_granted_vregions() {
        let g = Grants::default();
        let asid = Asid::new(3, 1);
        let pages = |v: &[u64]| v.iter().map(|&p| PageNo(p)).collect::<Vec<_>>();
        assert_eq!(g.ungranted(asid, &pages(&[0])), Some(PageNo(0)));
        g.grant(&GrantReq {
            asid,
            indices: vec![VRegionIdx(1)],
            vregion_bytes: 1 << 20, // 256 pages
            vnode_quota_pages: Some(100),
        })
        .unwrap();
        assert_eq!(g.ungranted(asid, &pages(&[256, 511])), None);
        assert_eq!(g.ungranted(asid, &pages(&[256, 512])), Some(PageNo(512)));
        assert_eq!(g.ungranted(asid, &pages(&[255])), Some(PageNo(255)));
        assert_eq!(g.quota(3), Some(100));
        let child = Asid::new(3, 2);
        g.clone_space(asid, child);
        assert_eq!(g.ungranted(child, &pages(&[300])), None);
        g.forget_space(asid);
        assert_eq!(g.ungranted(asid, &pages(&[300])), Some(PageNo(300)));
        g.forget_vnode(3);
        assert_eq!(g.ungranted(child, &pages(&[300])), Some(PageNo(300)));
        assert_eq!(g.quota(3), None);
        assert!(g
            .grant(&GrantReq {
                asid,
                indices: vec![],
                vregion_bytes: 3 << 12,
                vnode_quota_pages: None,
            })
            .is_err());
    }
}
