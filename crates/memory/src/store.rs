//! The page store: every page held by this memory monitor.
//!
//! Pages are keyed by (address space, page number) and allocated on first
//! write; a page never written reads as absent (the reader zero-fills it). The
//! total number of pages is bounded by the capacity: a write that would pass it
//! is refused whole with [`StoreError::OutOfMemory`], leaving the store as it
//! was. The map is split into shards by address space and page so that
//! connections rarely contend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use lego_wire::PAGE_SIZE;

const SHARDS: usize = 16;

type Page = Box<[u8]>;

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
}

/// A capacity-bounded page store.
pub struct PageStore {
    capacity: u64,
    held: AtomicU64,
    shards: Vec<Mutex<HashMap<(u64, u64), Page>>>,
    pub counters: StoreCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn shard_of(asid: u64, page: u64) -> usize {
    // Runs of 16 pages share a shard, so batches of neighbours take few locks.
    let h = (page >> 4) ^ asid.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h as usize) % SHARDS
}

impl PageStore {
    pub fn new(capacity_bytes: u64) -> Self {
        PageStore {
            capacity: capacity_bytes / PAGE_SIZE as u64,
            held: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            counters: StoreCounters::default(),
        }
    }

    pub fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    pub fn pages_held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
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
    pub fn read(&self, asid: u64, pages: &[u64], out: &mut Vec<u8>) -> Vec<bool> {
        let mut present = Vec::with_capacity(pages.len());
        for &p in pages {
            let shard = lock(&self.shards[shard_of(asid, p)]);
            match shard.get(&(asid, p)) {
                Some(data) => {
                    out.extend_from_slice(data);
                    present.push(true);
                }
                None => present.push(false),
            }
        }
        let n = present.iter().filter(|&&p| p).count() as u64;
        self.counters.pages_read.fetch_add(n, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(n * PAGE_SIZE as u64, Ordering::Relaxed);
        present
    }

    /// Stores the pages (4 KiB of `data` each). All or nothing: refused whole
    /// when the new pages do not fit. Returns the number newly allocated.
    pub fn write(&self, asid: u64, pages: &[u64], data: &[u8]) -> Result<u64, StoreError> {
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
            .filter(|&(i, p)| {
                !lock(&self.shards[shard_of(asid, *p)]).contains_key(&(asid, *p))
                    && !pages[..i].contains(p)
            })
            .count() as u64;
        self.reserve(new)?;
        let mut allocated = 0u64;
        for (i, &p) in pages.iter().enumerate() {
            let src = &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            let mut shard = lock(&self.shards[shard_of(asid, p)]);
            match shard.get_mut(&(asid, p)) {
                Some(page) => page.copy_from_slice(src),
                None => {
                    shard.insert((asid, p), src.into());
                    allocated += 1;
                }
            }
        }
        // Another writer may have allocated some of the same pages meanwhile.
        if allocated < new {
            self.held.fetch_sub(new - allocated, Ordering::Relaxed);
        }
        let c = &self.counters;
        c.pages_written
            .fetch_add(pages.len() as u64, Ordering::Relaxed);
        c.pages_allocated.fetch_add(allocated, Ordering::Relaxed);
        c.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(allocated)
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
    pub fn clone_space(&self, from: u64, to: u64) -> Result<u64, StoreError> {
        let mut copies: Vec<(u64, Page)> = Vec::new();
        for s in &self.shards {
            let s = lock(s);
            copies.extend(
                s.iter()
                    .filter(|(k, _)| k.0 == from)
                    .map(|(k, v)| (k.1, v.clone())),
            );
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
        self.counters
            .pages_allocated
            .fetch_add(new - replaced, Ordering::Relaxed);
        Ok(new)
    }

    /// Frees `count` pages from `first`; returns how many were held.
    pub fn free_range(&self, asid: u64, first: u64, count: u64) -> u64 {
        let mut freed = 0;
        if count <= 4 * self.pages_held().max(1024) {
            for p in first..first + count {
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
                s.retain(|&(a, p), _| !(a == asid && p >= first && p - first < count));
                freed += (before - s.len()) as u64;
            }
        }
        self.release(freed);
        freed
    }

    /// Frees every page of an address space; returns how many there were.
    pub fn free_space(&self, asid: u64) -> u64 {
        let mut freed = 0;
        for s in &self.shards {
            let mut s = lock(s);
            let before = s.len();
            s.retain(|&(a, _), _| a != asid);
            freed += (before - s.len()) as u64;
        }
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

    fn page(b: u8) -> Vec<u8> {
        vec![b; PAGE_SIZE]
    }

    #[test]
    fn write_read_free_accounting() {
        let s = PageStore::new(4 * PAGE_SIZE as u64);
        assert_eq!(s.write(1, &[10, 11], &[page(1), page(2)].concat()), Ok(2));
        assert_eq!(
            s.write(1, &[11], &page(3)),
            Ok(0),
            "overwrite allocates nothing"
        );
        let mut out = Vec::new();
        assert_eq!(s.read(1, &[10, 12, 11], &mut out), vec![true, false, true]);
        assert_eq!(out, [page(1), page(3)].concat());
        assert_eq!(s.pages_held(), 2);
        assert_eq!(s.free_range(1, 11, 5), 1);
        assert_eq!(s.free_space(1), 1);
        assert_eq!(s.pages_held(), 0);
    }

    #[test]
    fn capacity_is_all_or_nothing() {
        let s = PageStore::new(3 * PAGE_SIZE as u64);
        s.write(7, &[1, 2], &[page(1), page(2)].concat()).unwrap();
        let err = s.write(7, &[2, 3, 4], &[page(9), page(9), page(9)].concat());
        assert_eq!(
            err,
            Err(StoreError::OutOfMemory {
                capacity: 3,
                held: 2,
                wanted: 2
            })
        );
        let mut out = Vec::new();
        s.read(7, &[2], &mut out);
        assert_eq!(out, page(2), "a refused batch changes nothing");
        assert_eq!(s.write(7, &[3], &page(3)), Ok(1));
        assert_eq!(s.pages_held(), 3);
    }

    #[test]
    fn duplicate_pages_in_one_batch_count_once() {
        let s = PageStore::new(PAGE_SIZE as u64);
        assert_eq!(s.write(1, &[5, 5], &[page(1), page(2)].concat()), Ok(1));
        assert_eq!(s.pages_held(), 1);
    }

    #[test]
    fn clone_copies_and_diverges() {
        let s = PageStore::new(5 * PAGE_SIZE as u64);
        s.write(1, &[1, 2], &[page(1), page(2)].concat()).unwrap();
        assert_eq!(s.clone_space(1, 9), Ok(2));
        s.write(9, &[1], &page(7)).unwrap();
        let mut out = Vec::new();
        s.read(1, &[1], &mut out);
        s.read(9, &[1, 2], &mut out);
        assert_eq!(out, [page(1), page(7), page(2)].concat());
        assert_eq!(s.pages_held(), 4);
        assert!(matches!(
            s.clone_space(1, 10),
            Err(StoreError::OutOfMemory { .. })
        ));
        assert_eq!(s.pages_held(), 4);
    }

    #[test]
    fn spaces_are_separate() {
        let s = PageStore::new(16 * PAGE_SIZE as u64);
        s.write(1, &[1], &page(1)).unwrap();
        s.write(2, &[1], &page(2)).unwrap();
        assert_eq!(s.address_spaces(), 2);
        assert_eq!(s.free_space(1), 1);
        let mut out = Vec::new();
        assert_eq!(s.read(2, &[1], &mut out), vec![true]);
        assert_eq!(out, page(2));
        assert_eq!(
            s.free_range(2, 0, u64::MAX / 2),
            1,
            "huge range walks what is held"
        );
    }
}
