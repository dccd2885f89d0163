//! The page store: every page held by this memory monitor.
//!
//! Pages are keyed by (address space, page number) and allocated on first
//! write; a page never written reads as absent (the reader zero-fills it).
//! Each page keeps the version of the write that stored it, and a write
//! older than the held version is ignored (see `lego_wire::pages`). The
//! total number of pages is bounded by the capacity: a write that would pass it
//! is refused whole with [`StoreError::OutOfMemory`], leaving the store as it
//! was. Pages are also counted by vNode, and a write may be bounded by its
//! vNode's quota ([`StoreError::VnodeQuota`]). The map is split into shards
//! by address space and page so that connections rarely contend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lego_transport::lock;

use lego_wire::{Asid, PageNo, VnodeId, PAGE_SIZE};

const SHARDS: usize = 16;

/// A held page: the version of the write that stored it, and its 4 KiB.
struct Page {
    version: u64,
    data: Box<[u8]>,
}

/// Why the store refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("out of memory: capacity is {capacity} pages, {held} held, {wanted} more needed")]
    OutOfMemory {
        capacity: u64,
        held: u64,
        wanted: u64,
    },
    #[error("page data is {got} bytes for {pages} pages")]
    BadLength { got: usize, pages: usize },
    #[error("vnode {vnode} is at its quota on this memory monitor: {quota} pages, {held} held, {wanted} more needed")]
    VnodeQuota {
        vnode: VnodeId,
        quota: u64,
        held: u64,
        wanted: u64,
    },
}

/// Counters of the store.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub pages_read: AtomicU64,
    pub pages_written: AtomicU64,
    pub pages_allocated: AtomicU64,
    pub pages_freed: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub oom_refusals: AtomicU64,
    /// Writes refused because their vNode was at its quota here.
    pub quota_refusals: AtomicU64,
    /// Page writes ignored because a newer version was held.
    pub older_ignored: AtomicU64,
}

/// A capacity-bounded page store.
pub struct PageStore {
    capacity: u64,
    held: AtomicU64,
    shards: Vec<Mutex<HashMap<(Asid, PageNo), Page>>>,
    /// Address spaces freed whole: they are gone for good (ids are never
    /// reused), so a late copy from another monitor must not bring pages back.
    released: Mutex<std::collections::HashSet<Asid>>,
    /// vNodes deleted: their pages never come back either.
    released_vnodes: Mutex<std::collections::HashSet<VnodeId>>,
    /// Pages held of each vNode.
    by_vnode: Mutex<HashMap<VnodeId, u64>>,
    pub counters: StoreCounters,
}

fn shard_of(asid: Asid, page: PageNo) -> usize {
    // Runs of 16 pages share a shard, so batches of neighbours take few locks.
    let h = (page.0 >> 4) ^ asid.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h as usize) % SHARDS
}

impl PageStore {
    pub fn new(capacity_bytes: u64) -> Self {
        PageStore {
            capacity: capacity_bytes / PAGE_SIZE as u64,
            held: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            released: Mutex::new(std::collections::HashSet::new()),
            released_vnodes: Mutex::new(std::collections::HashSet::new()),
            by_vnode: Mutex::new(HashMap::new()),
            counters: StoreCounters::default(),
        }
    }

    pub fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    pub fn pages_held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Pages held of `vnode`.
    pub fn vnode_pages(&self, vnode: VnodeId) -> u64 {
        lock(&self.by_vnode).get(&vnode).copied().unwrap_or(0)
    }

    /// Adds `n` (or takes `-n`) to the pages held of `vnode`.
    fn count_vnode(&self, vnode: VnodeId, delta: i64) {
        let mut m = lock(&self.by_vnode);
        let held = m.entry(vnode).or_insert(0);
        *held = held.saturating_add_signed(delta);
        if *held == 0 {
            m.remove(&vnode);
        }
    }

    /// Number of distinct address spaces with at least one page.
    pub fn address_spaces(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        for s in &self.shards {
            seen.extend(lock(s).keys().map(|k| k.0));
        }
        seen.len() as u64
    }

    /// Appends each requested page that is held to `out` and returns the
    /// presence flags in request order.
    pub fn read(&self, asid: Asid, pages: &[PageNo], out: &mut Vec<u8>) -> Vec<bool> {
        self.read_versions(asid, pages, out)
            .iter()
            .map(Option::is_some)
            .collect()
    }

    /// Like [`PageStore::read`], with the version of each page held.
    pub fn read_versions(
        &self,
        asid: Asid,
        pages: &[PageNo],
        out: &mut Vec<u8>,
    ) -> Vec<Option<u64>> {
        let mut present = Vec::with_capacity(pages.len());
        for &p in pages {
            let shard = lock(&self.shards[shard_of(asid, p)]);
            match shard.get(&(asid, p)) {
                Some(page) => {
                    out.extend_from_slice(&page.data);
                    present.push(Some(page.version));
                }
                None => present.push(None),
            }
        }
        let n = present.iter().filter(|p| p.is_some()).count() as u64;
        self.counters.pages_read.fetch_add(n, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(n * PAGE_SIZE as u64, Ordering::Relaxed);
        present
    }

    /// Stores the pages (4 KiB of `data` each) as written at `version`. All
    /// or nothing: refused whole when the new pages do not fit, in the
    /// capacity or in `quota` (pages of the vNode, when bounded). A page
    /// held at a newer version keeps it. Returns the number newly allocated.
    pub fn write(
        &self,
        asid: Asid,
        pages: &[PageNo],
        data: &[u8],
        version: u64,
        quota: Option<u64>,
    ) -> Result<u64, StoreError> {
        let versioned: Vec<(PageNo, u64)> = pages.iter().map(|&p| (p, version)).collect();
        self.put(asid, &versioned, data, quota)
    }

    /// Stores pages copied from another memory monitor, each at its own
    /// version (see [`PageStore::write`]). Copies into an address space
    /// already freed here are dropped.
    pub fn copy_in(
        &self,
        asid: Asid,
        pages: &[(PageNo, u64)],
        data: &[u8],
    ) -> Result<u64, StoreError> {
        // Held across the insert, so a FreeSpace either comes after (and
        // frees these pages) or before (and they are dropped here).
        let released = lock(&self.released);
        if released.contains(&asid) || lock(&self.released_vnodes).contains(&asid.vnode()) {
            return Ok(0);
        }
        self.put(asid, pages, data, None)
    }

    fn put(
        &self,
        asid: Asid,
        pages: &[(PageNo, u64)],
        data: &[u8],
        quota: Option<u64>,
    ) -> Result<u64, StoreError> {
        if data.len() != pages.len() * PAGE_SIZE {
            return Err(StoreError::BadLength {
                got: data.len(),
                pages: pages.len(),
            });
        }
        // Reserve room for pages not yet held before touching anything.
        let new = pages
            .iter()
            .enumerate()
            .filter(|&(i, (p, _))| {
                !lock(&self.shards[shard_of(asid, *p)]).contains_key(&(asid, *p))
                    && !pages[..i].iter().any(|(q, _)| q == p)
            })
            .count() as u64;
        if let Some(quota) = quota {
            let held = self.vnode_pages(asid.vnode());
            if held + new > quota {
                self.counters.quota_refusals.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::VnodeQuota {
                    vnode: asid.vnode(),
                    quota,
                    held,
                    wanted: new,
                });
            }
        }
        self.reserve(new)?;
        let (mut allocated, mut ignored) = (0u64, 0u64);
        for (i, &(p, version)) in pages.iter().enumerate() {
            let src = &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            let mut shard = lock(&self.shards[shard_of(asid, p)]);
            match shard.get_mut(&(asid, p)) {
                Some(page) if page.version > version => ignored += 1,
                Some(page) => {
                    page.data.copy_from_slice(src);
                    page.version = version;
                }
                None => {
                    shard.insert(
                        (asid, p),
                        Page {
                            version,
                            data: src.into(),
                        },
                    );
                    allocated += 1;
                }
            }
        }
        // Another writer may have allocated some of the same pages meanwhile
        // (fewer new here), or freed some (more new here).
        if allocated < new {
            self.held.fetch_sub(new - allocated, Ordering::Relaxed);
        } else if allocated > new {
            self.held.fetch_add(allocated - new, Ordering::Relaxed);
        }
        self.count_vnode(asid.vnode(), allocated as i64);
        let c = &self.counters;
        c.pages_written
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        c.pages_allocated.fetch_add(allocated, Ordering::Relaxed);
        c.older_ignored.fetch_add(ignored, Ordering::Relaxed);
        c.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(allocated)
    }

    /// The page numbers held of `asid` in `first..first + count`, in order.
    pub fn held_in(&self, asid: Asid, first: PageNo, count: u64) -> Vec<PageNo> {
        let mut held = Vec::new();
        for s in &self.shards {
            held.extend(
                lock(s)
                    .keys()
                    .filter(|&&(a, p)| a == asid && p >= first && p.0 - first.0 < count)
                    .map(|&(_, p)| p),
            );
        }
        held.sort_unstable();
        held
    }

    /// Like [`PageStore::held_in`], with the version of each page.
    pub fn versions_in(&self, asid: Asid, first: PageNo, count: u64) -> Vec<(PageNo, u64)> {
        let mut held = Vec::new();
        for s in &self.shards {
            held.extend(
                lock(s)
                    .iter()
                    .filter(|(&(a, p), _)| a == asid && p >= first && p.0 - first.0 < count)
                    .map(|(&(_, p), page)| (p, page.version)),
            );
        }
        held.sort_unstable();
        held
    }

    /// Drops every page: what this monitor held belongs to an identity the
    /// cluster no longer trusts. Returns how many there were.
    pub fn wipe(&self) -> u64 {
        let mut n = 0;
        for s in &self.shards {
            let mut s = lock(s);
            n += s.len() as u64;
            s.clear();
        }
        lock(&self.by_vnode).clear();
        self.release(n);
        n
    }

    fn reserve(&self, n: u64) -> Result<(), StoreError> {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            if held + n > self.capacity {
                self.counters.oom_refusals.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::OutOfMemory {
                    capacity: self.capacity,
                    held,
                    wanted: n,
                });
            }
            match self.held.compare_exchange_weak(
                held,
                held + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => held = now,
            }
        }
    }

    /// Copies every page of `from` into `to` (a forked child's space). All or
    /// nothing: refused whole when the copies do not fit. Returns pages copied.
    pub fn clone_space(&self, from: Asid, to: Asid) -> Result<u64, StoreError> {
        let mut copies: Vec<(PageNo, Page)> = Vec::new();
        for s in &self.shards {
            let s = lock(s);
            copies.extend(s.iter().filter(|(k, _)| k.0 == from).map(|(k, v)| {
                (
                    k.1,
                    Page {
                        version: v.version,
                        data: v.data.clone(),
                    },
                )
            }));
        }
        let new = copies.len() as u64;
        self.reserve(new)?;
        let mut replaced = 0;
        for (p, data) in copies {
            if lock(&self.shards[shard_of(to, p)])
                .insert((to, p), data)
                .is_some()
            {
                replaced += 1;
            }
        }
        self.held.fetch_sub(replaced, Ordering::Relaxed);
        self.count_vnode(to.vnode(), (new - replaced) as i64);
        self.counters
            .pages_allocated
            .fetch_add(new - replaced, Ordering::Relaxed);
        Ok(new)
    }

    /// Frees `count` pages from `first`; returns how many were held.
    pub fn free_range(&self, asid: Asid, first: PageNo, count: u64) -> u64 {
        let mut freed = 0;
        if count <= 4 * self.pages_held().max(1024) {
            for p in (first.0..first.0 + count).map(PageNo) {
                if lock(&self.shards[shard_of(asid, p)])
                    .remove(&(asid, p))
                    .is_some()
                {
                    freed += 1;
                }
            }
        } else {
            // A huge range: walk what is held instead of every page number.
            for s in &self.shards {
                let mut s = lock(s);
                let before = s.len();
                s.retain(|&(a, p), _| !(a == asid && p >= first && p.0 - first.0 < count));
                freed += (before - s.len()) as u64;
            }
        }
        self.count_vnode(asid.vnode(), -(freed as i64));
        self.release(freed);
        freed
    }

    /// Frees every page of an address space, for good; returns how many
    /// there were.
    pub fn free_space(&self, asid: Asid) -> u64 {
        let mut released = lock(&self.released);
        released.insert(asid);
        let mut freed = 0;
        for s in &self.shards {
            let mut s = lock(s);
            let before = s.len();
            s.retain(|&(a, _), _| a != asid);
            freed += (before - s.len()) as u64;
        }
        self.count_vnode(asid.vnode(), -(freed as i64));
        self.release(freed);
        freed
    }

    /// Frees every page of every address space of `vnode`, for good
    /// (the vNode was deleted); returns how many there were.
    pub fn free_vnode(&self, vnode: VnodeId) -> u64 {
        let _released = lock(&self.released);
        lock(&self.released_vnodes).insert(vnode);
        let mut freed = 0;
        for s in &self.shards {
            let mut s = lock(s);
            let before = s.len();
            s.retain(|&(a, _), _| a.vnode() != vnode);
            freed += (before - s.len()) as u64;
        }
        lock(&self.by_vnode).remove(&vnode);
        self.release(freed);
        freed
    }

    fn release(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::Relaxed);
        self.counters.pages_freed.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(v: &[u64]) -> Vec<PageNo> {
        v.iter().copied().map(PageNo).collect()
    }

    fn pv(v: &[(u64, u64)]) -> Vec<(PageNo, u64)> {
        v.iter().map(|&(p, n)| (PageNo(p), n)).collect()
    }

    fn page(b: u8) -> Vec<u8> {
        vec![b; PAGE_SIZE]
    }

    #[test]
    fn write_read_free_accounting() {
        let s = PageStore::new(4 * PAGE_SIZE as u64);
        assert_eq!(
            s.write(
                Asid(1),
                &pn(&[10, 11]),
                &[page(1), page(2)].concat(),
                0,
                None
            ),
            Ok(2)
        );
        assert_eq!(
            s.write(Asid(1), &pn(&[11]), &page(3), 0, None),
            Ok(0),
            "overwrite allocates nothing"
        );
        let mut out = Vec::new();
        assert_eq!(
            s.read(Asid(1), &pn(&[10, 12, 11]), &mut out),
            vec![true, false, true]
        );
        assert_eq!(out, [page(1), page(3)].concat());
        assert_eq!(s.pages_held(), 2);
        assert_eq!(s.free_range(Asid(1), PageNo(11), 5), 1);
        assert_eq!(s.free_space(Asid(1)), 1);
        assert_eq!(s.pages_held(), 0);
    }

    #[test]
    fn capacity_is_all_or_nothing() {
        let s = PageStore::new(3 * PAGE_SIZE as u64);
        s.write(Asid(7), &pn(&[1, 2]), &[page(1), page(2)].concat(), 0, None)
            .unwrap();
        let err = s.write(
            Asid(7),
            &pn(&[2, 3, 4]),
            &[page(9), page(9), page(9)].concat(),
            0,
            None,
        );
        assert_eq!(
            err,
            Err(StoreError::OutOfMemory {
                capacity: 3,
                held: 2,
                wanted: 2
            })
        );
        let mut out = Vec::new();
        s.read(Asid(7), &pn(&[2]), &mut out);
        assert_eq!(out, page(2), "a refused batch changes nothing");
        assert_eq!(s.write(Asid(7), &pn(&[3]), &page(3), 0, None), Ok(1));
        assert_eq!(s.pages_held(), 3);
    }

    #[test]
    fn duplicate_pages_in_one_batch_count_once() {
        let s = PageStore::new(PAGE_SIZE as u64);
        assert_eq!(
            s.write(Asid(1), &pn(&[5, 5]), &[page(1), page(2)].concat(), 0, None),
            Ok(1)
        );
        assert_eq!(s.pages_held(), 1);
    }

    #[test]
    fn clone_copies_and_diverges() {
        let s = PageStore::new(5 * PAGE_SIZE as u64);
        s.write(Asid(1), &pn(&[1, 2]), &[page(1), page(2)].concat(), 0, None)
            .unwrap();
        assert_eq!(s.clone_space(Asid(1), Asid(9)), Ok(2));
        s.write(Asid(9), &pn(&[1]), &page(7), 0, None).unwrap();
        let mut out = Vec::new();
        s.read(Asid(1), &pn(&[1]), &mut out);
        s.read(Asid(9), &pn(&[1, 2]), &mut out);
        assert_eq!(out, [page(1), page(7), page(2)].concat());
        assert_eq!(s.pages_held(), 4);
        assert!(matches!(
            s.clone_space(Asid(1), Asid(10)),
            Err(StoreError::OutOfMemory { .. })
        ));
        assert_eq!(s.pages_held(), 4);
    }

    #[test]
    fn older_versions_never_replace_newer_ones() {
        let s = PageStore::new(8 * PAGE_SIZE as u64);
        s.write(Asid(1), &pn(&[1, 2]), &[page(5), page(5)].concat(), 5, None)
            .unwrap();
        // A stale copy of page 1 and a new page 3 cross a newer write.
        s.copy_in(
            Asid(1),
            &pv(&[(1, 4), (3, 4)]),
            &[page(4), page(4)].concat(),
        )
        .unwrap();
        s.write(Asid(1), &pn(&[2]), &page(6), 6, None).unwrap();
        s.copy_in(Asid(1), &pv(&[(2, 5)]), &page(5)).unwrap();
        let mut out = Vec::new();
        let v = s.read_versions(Asid(1), &pn(&[1, 2, 3]), &mut out);
        assert_eq!(v, vec![Some(5), Some(6), Some(4)]);
        assert_eq!(out, [page(5), page(6), page(4)].concat());
        assert_eq!(s.counters.older_ignored.load(Ordering::Relaxed), 2);
        assert_eq!(s.held_in(Asid(1), PageNo(2), 10), pn(&[2, 3]));
        // Once the space is freed, late copies are dropped.
        assert_eq!(s.free_space(Asid(1)), 3);
        assert_eq!(s.copy_in(Asid(1), &pv(&[(1, 9)]), &page(9)), Ok(0));
        assert_eq!(s.pages_held(), 0);
        s.write(Asid(2), &pn(&[1]), &page(1), 0, None).unwrap();
        assert_eq!(s.wipe(), 1);
        assert_eq!(s.pages_held(), 0);
    }

    #[test]
    fn spaces_are_separate() {
        let s = PageStore::new(16 * PAGE_SIZE as u64);
        s.write(Asid(1), &pn(&[1]), &page(1), 0, None).unwrap();
        s.write(Asid(2), &pn(&[1]), &page(2), 0, None).unwrap();
        assert_eq!(s.address_spaces(), 2);
        assert_eq!(s.free_space(Asid(1)), 1);
        let mut out = Vec::new();
        assert_eq!(s.read(Asid(2), &pn(&[1]), &mut out), vec![true]);
        assert_eq!(out, page(2));
        assert_eq!(
            s.free_range(Asid(2), PageNo(0), u64::MAX / 2),
            1,
            "huge range walks what is held"
        );
    }

    #[test]
    fn pages_are_counted_by_vnode_and_bounded_by_its_quota() {
        let s = PageStore::new(64 * PAGE_SIZE as u64);
        let (a, b) = (Asid::new(1, 1), Asid::new(2, 1));
        let data = |n: usize| vec![7u8; n * PAGE_SIZE];
        assert_eq!(s.write(a, &pn(&[1, 2, 3]), &data(3), 0, Some(4)), Ok(3));
        assert_eq!(s.vnode_pages(1), 3);
        assert_eq!(
            s.write(a, &pn(&[4, 5]), &data(2), 0, Some(4)),
            Err(StoreError::VnodeQuota {
                vnode: 1,
                quota: 4,
                held: 3,
                wanted: 2
            }),
            "refused whole"
        );
        assert_eq!(s.write(a, &pn(&[1, 4]), &data(2), 0, Some(4)), Ok(1));
        assert_eq!(s.write(b, &pn(&[1, 2]), &data(2), 0, None), Ok(2));
        assert_eq!(s.clone_space(a, Asid::new(1, 2)), Ok(4));
        assert_eq!(s.vnode_pages(1), 8);
        assert_eq!(s.free_range(a, PageNo(1), 1), 1);
        assert_eq!(s.vnode_pages(1), 7);
        assert_eq!(s.free_vnode(1), 7);
        assert_eq!(
            (s.vnode_pages(1), s.vnode_pages(2), s.pages_held()),
            (0, 2, 2)
        );
        // A late copy into a deleted vNode brings nothing back.
        assert_eq!(s.copy_in(a, &pv(&[(9, 1)]), &data(1)), Ok(0));
        assert_eq!(s.pages_held(), 2);
    }
}
