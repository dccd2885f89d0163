//! The ExCache's policy: what each page of the arena is, and what to do on
//! a fault, which pages to fetch with it, which to evict and how. A pure
//! state machine: no system call and no message. It decides; the pager
//! ([`crate::pager`]) carries out its decisions against userfaultfd and the
//! memory monitors and reports back what happened. It counts what a user
//! asks about ([`COUNTERS`]).
//!
//! Per page one byte of flags:
//!
//! | flag | meaning |
//! |---|---|
//! | `RES` | resident: installed in the arena |
//! | `DIRTY` | written since it was installed (a write-protect fault said so) |
//! | `REMOTE` | a copy lives on the memory monitors |
//! | `PREF` | installed ahead of use, not used yet |
//! | `ZF` | installed writable as zeros: dirty exactly when no longer all zeros |
//! | `HOT` | written back when last evicted: likely written again |
//! | `HASHED` | installed writable with a hash of its contents (a HOT page a write stream prefetched): dirty when the hash changed |
//! | `VICTIM` | chosen by the eviction in progress (the FIFO may hold an index twice) |
//!
//! Replacement is FIFO over resident pages (LegoOS found FIFO beats LRU
//! here), in batches of at least [`EVICT_BATCH`], with refault detection
//! (as Linux's workingset code does) unless [`Replacement::Fifo`] is asked
//! for: the last `quota` pages evicted are remembered, and a page fetched
//! on demand while remembered (so its reuse distance is within twice the
//! ExCache) gets one second chance when it comes up for eviction: it goes
//! to the back of the FIFO instead. A scan larger than twice the ExCache is
//! never remembered long enough, so scans stay FIFO. Prefetch follows a
//! sequential stream of misses in either direction, doubling its window up
//! to [`MAX_WINDOW`] (and a quarter of the quota); a stream of first touches
//! gets up to [`MAX_ZERO_WINDOW`] zero pages at once.

use std::collections::{HashMap, VecDeque};

use lego_wire::{PageNo, VRegionIdx, PAGE_SIZE as PAGE};

use crate::stats::COUNTERS;

pub const RES: u8 = 1;
pub const DIRTY: u8 = 2;
pub const REMOTE: u8 = 4;
pub const PREF: u8 = 8;
pub const ZF: u8 = 16;
pub const HOT: u8 = 32;
pub const HASHED: u8 = 64;
pub const VICTIM: u8 = 128;

/// Pages evicted per batch.
pub const EVICT_BATCH: usize = 128;
/// Largest prefetch window, in pages.
pub const MAX_WINDOW: usize = 256;
/// Reads of at most this many pages are answered in less than any socket
/// buffer holds, so writes may be sent while they are in flight.
pub const SMALL_READ: usize = 16;
/// Largest run of zero pages installed ahead of a sequential first-touch stream.
pub const MAX_ZERO_WINDOW: usize = 64;

/// Which replacement the policy uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// FIFO over resident pages.
    Fifo,
    /// FIFO, with a second chance for pages refaulted within twice the
    /// ExCache's reuse distance.
    Refault,
}

/// A bit per page.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn put(&mut self, i: usize, v: bool) {
        match v {
            true => self.0[i / 64] |= 1 << (i % 64),
            false => self.0[i / 64] &= !(1 << (i % 64)),
        }
    }
}

/// What to do about a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing to install: wake the faulting thread (the page is resident,
    /// or it was evicted while a writer waited and the retry fetches it).
    Wake,
    /// A write to a resident, write-protected page: it is dirty now; lift
    /// the protection.
    Unprotect,
    /// A first touch: install `n` zero pages from the faulting one on, then
    /// call [`Policy::zero_filled`].
    ZeroFill { n: usize },
    /// A page with a remote copy: fetch it (see [`Policy::fetch_plan`]).
    Fetch,
}

/// One copy into the arena: `len` pages from `first`, taken from the
/// fetched data's `k`-th page on, write-protected or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRun {
    pub first: usize,
    pub k: usize,
    pub len: usize,
    pub protect: bool,
}

/// The ExCache's state.
pub struct Policy {
    flags: &'static mut [u8],
    fifo: VecDeque<u32>,
    resident: usize,
    quota: usize,
    /// The page number of the arena's first page.
    base_page: u64,
    vregion_shift: u32,
    /// The sequential stream of misses: last miss, direction, window.
    last: usize,
    dir: isize,
    window: usize,
    /// The sequential stream of first touches.
    last_zero: usize,
    zero_window: usize,
    /// Hashes of HASHED pages.
    hashes: HashMap<u32, u64>,
    replacement: Replacement,
    /// The last `quota` pages evicted, oldest first, and a bit for each.
    ghosts: VecDeque<u32>,
    ghost: Bits,
    /// Pages refaulted while remembered: spared once by the FIFO.
    chance: Bits,
}

impl Policy {
    /// A policy over `flags.len()` pages from page number `base_page`,
    /// keeping at most `quota` of them resident (at least two batches).
    pub fn new(
        flags: &'static mut [u8],
        quota: usize,
        base_page: u64,
        vregion_shift: u32,
    ) -> Policy {
        let quota = quota.max(2 * EVICT_BATCH);
        COUNTERS.set(&COUNTERS.excache_pages, quota as u64);
        let flags_len = flags.len();
        Policy {
            flags,
            fifo: VecDeque::new(),
            resident: 0,
            quota,
            base_page,
            vregion_shift,
            last: usize::MAX,
            dir: 0,
            window: 0,
            last_zero: usize::MAX,
            zero_window: 0,
            hashes: HashMap::new(),
            replacement: Replacement::Refault,
            ghosts: VecDeque::new(),
            ghost: Bits::new(flags_len),
            chance: Bits::new(flags_len),
        }
    }

    /// Uses `r` for replacement from now on.
    pub fn set_replacement(&mut self, r: Replacement) {
        self.replacement = r;
    }

    pub fn npages(&self) -> usize {
        self.flags.len()
    }

    pub fn f(&self, idx: usize) -> u8 {
        self.flags[idx]
    }

    fn set(&mut self, idx: usize, v: u8) {
        self.flags[idx] = v;
    }

    pub fn resident(&self) -> usize {
        self.resident
    }

    pub fn quota(&self) -> usize {
        self.quota
    }

    /// The stream's window and direction.
    pub fn window(&self) -> usize {
        self.window
    }

    pub fn page_no(&self, idx: usize) -> PageNo {
        PageNo(self.base_page + idx as u64)
    }

    pub fn vregion_of(&self, idx: usize) -> VRegionIdx {
        self.page_no(idx).vregion(self.vregion_shift)
    }

    fn note_resident(&mut self, idx: usize, flags: u8) {
        self.set(idx, flags | RES);
        self.fifo.push_back(idx as u32);
        self.resident += 1;
        COUNTERS.set(&COUNTERS.resident_pages, self.resident as u64);
        if self.resident as u64
            > COUNTERS
                .resident_peak_pages
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            COUNTERS.set(&COUNTERS.resident_peak_pages, self.resident as u64);
        }
    }

    /// Takes in pages found resident from `first` on (`resident[k]`: page
    /// `first + k` is), made before the pager existed: dirty, since nothing
    /// of them is anywhere else.
    pub fn adopt(&mut self, first: usize, resident: &[bool]) {
        for (k, &r) in resident.iter().enumerate() {
            if r {
                self.note_resident(first + k, DIRTY);
            }
        }
    }

    /// Remembers an evicted page among the last `quota` evicted.
    fn remember(&mut self, i: usize) {
        self.ghosts.push_back(i as u32);
        self.ghost.put(i, true);
        while self.ghosts.len() > self.quota {
            // A page evicted twice within the window is forgotten when its
            // earlier eviction leaves it (rare; it costs a second chance).
            if let Some(old) = self.ghosts.pop_front() {
                self.ghost.put(old as usize, false);
            }
        }
    }

    /// What to do about a fault at `idx` (`wp`: a write-protect fault).
    pub fn on_fault(&mut self, idx: usize, wp: bool) -> Fault {
        let fl = self.f(idx);
        if wp {
            if fl & RES == 0 {
                return Fault::Wake;
            }
            COUNTERS.add(&COUNTERS.faults_write_protect, 1);
            if fl & PREF != 0 {
                COUNTERS.add(&COUNTERS.prefetch_used, 1);
            }
            self.set(idx, (fl | DIRTY) & !PREF);
            return Fault::Unprotect;
        }
        if fl & RES != 0 {
            return Fault::Wake;
        }
        if fl & REMOTE != 0 {
            return Fault::Fetch;
        }
        // A first touch: a sequential stream of them gets the next pages
        // installed ahead, in one copy.
        if self.last_zero != usize::MAX
            && idx > self.last_zero
            && idx - self.last_zero <= self.zero_window + 1
        {
            self.zero_window = (self.zero_window * 2).clamp(8, MAX_ZERO_WINDOW);
        } else {
            self.zero_window = 0;
        }
        let mut n = 1;
        while n < MAX_ZERO_WINDOW.min(self.zero_window + 1)
            && idx + n < self.npages()
            && self.f(idx + n) == 0
        {
            n += 1;
        }
        self.last_zero = idx + n - 1;
        Fault::ZeroFill { n }
    }

    /// `n` zero pages from `idx` on were installed, writable.
    pub fn zero_filled(&mut self, idx: usize, n: usize) {
        for i in idx..idx + n {
            self.note_resident(i, ZF);
        }
        COUNTERS.add(&COUNTERS.faults_zero_filled, 1);
        COUNTERS.add(&COUNTERS.zero_pages_ahead, n as u64 - 1);
    }

    /// Follows the fault stream: a miss at `idx` continues a sequential
    /// stream (either direction) when it lands within the last window past
    /// the last miss, and then the window doubles. Prefetched pages the
    /// stream walked past count as used.
    pub fn stream_step(&mut self, idx: usize) {
        let step = idx as isize - self.last as isize;
        let sequential = self.last != usize::MAX
            && step != 0
            && step.unsigned_abs() <= self.window + 1
            && (self.dir == 0 || step.signum() == self.dir);
        if sequential {
            self.dir = step.signum();
            self.window = (self.window * 2).clamp(4, MAX_WINDOW.min(self.quota / 4));
            let (lo, hi) = if step > 0 {
                (self.last + 1, idx)
            } else {
                (idx + 1, self.last)
            };
            for i in lo..hi {
                let fl = self.f(i);
                if fl & PREF != 0 {
                    self.set(i, fl & !PREF);
                    COUNTERS.add(&COUNTERS.prefetch_used, 1);
                }
            }
        } else {
            self.dir = 0;
            self.window = 0;
        }
        self.last = idx;
    }

    /// Up to `n` pages from `from` on in the stream's direction, within the
    /// vRegion of `from`, that have a remote copy and are not resident;
    /// ascending.
    pub fn window_from(&self, from: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        if from >= self.npages() {
            return out;
        }
        let vregion = self.vregion_of(from);
        for k in 0..n {
            let j = from as isize + self.dir * k as isize;
            if j < 0 || j as usize >= self.npages() {
                break;
            }
            let j = j as usize;
            if self.vregion_of(j) != vregion {
                break;
            }
            let fl = self.f(j);
            if fl & REMOTE != 0 && fl & RES == 0 {
                out.push(j);
            }
        }
        out.sort_unstable();
        out
    }

    /// The pages to fetch for a miss at `idx` (after [`Self::stream_step`]):
    /// it and the stream's window after it, ascending.
    pub fn fetch_plan(&self, idx: usize) -> Vec<usize> {
        let mut want = vec![idx];
        if self.window > 0 {
            let from = idx as isize + self.dir;
            if from >= 0 {
                want.extend(self.window_from(from as usize, self.window));
            }
        }
        want.sort_unstable();
        want.dedup();
        want
    }

    /// The window to read ahead after `pages` (ascending) in the stream's
    /// direction, to be installed when the stream gets there.
    pub fn ahead_plan(&self, pages: &[usize]) -> Vec<usize> {
        let (Some(&lo), Some(&hi)) = (pages.first(), pages.last()) else {
            return Vec::new();
        };
        let next = match self.dir {
            1 => hi + 1,
            -1 if lo > 0 => lo - 1,
            _ => return Vec::new(),
        };
        self.window_from(next, self.window)
    }

    /// Takes in fetched pages: `data[at..]` holds `want`'s pages in order
    /// (`idx` the faulting one, `write` whether it faulted writing).
    /// Returns the copies to make: runs of neighbours that share the
    /// write-protect mode. A page that changed state while its read was in
    /// flight is left out.
    pub fn install(
        &mut self,
        idx: usize,
        write: bool,
        want: &[usize],
        data: &[u8],
        at: usize,
    ) -> Vec<CopyRun> {
        let mut modes = Vec::with_capacity(want.len());
        let mut install = Vec::with_capacity(want.len());
        for (k, &i) in want.iter().enumerate() {
            let old = self.f(i);
            if old & RES != 0 || old & REMOTE == 0 {
                continue;
            }
            let faulting = i == idx;
            if faulting && self.replacement == Replacement::Refault && self.ghost.get(i) {
                self.chance.put(i, true);
                COUNTERS.add(&COUNTERS.refaults, 1);
            }
            let mut fl = old & (REMOTE | HOT);
            if faulting && write {
                fl |= DIRTY;
            } else if old & HOT != 0 && write && !faulting {
                fl |= HASHED;
                let src = &data[at + k * PAGE..at + (k + 1) * PAGE];
                self.hashes.insert(i as u32, page_hash(src));
            }
            if !faulting {
                fl |= PREF;
            }
            modes.push(fl & (DIRTY | HASHED) == 0);
            install.push((k, i));
            self.note_resident(i, fl);
        }
        let mut out = Vec::new();
        let mut r = 0;
        while r < install.len() {
            let (k0, i0) = install[r];
            let mut end = r + 1;
            while end < install.len()
                && install[end].1 == install[end - 1].1 + 1
                && modes[end] == modes[r]
            {
                end += 1;
            }
            out.push(CopyRun {
                first: i0,
                k: k0,
                len: end - r,
                protect: modes[r],
            });
            r = end;
        }
        COUNTERS.add(&COUNTERS.faults_fetched, 1);
        COUNTERS.add(
            &COUNTERS.prefetched_pages,
            install.len().saturating_sub(1) as u64,
        );
        out
    }

    /// How many pages to evict next so that `incoming` more fit in the
    /// quota (call until `None`).
    pub fn to_evict(&self, incoming: usize) -> Option<usize> {
        (self.resident + incoming > self.quota && self.resident > 0)
            .then(|| (self.resident + incoming - self.quota).max(EVICT_BATCH))
    }

    /// Takes up to `n` victims from the FIFO, marked VICTIM; ascending.
    pub fn pick_victims(&mut self, n: usize) -> Vec<usize> {
        let mut victims = Vec::with_capacity(n);
        while victims.len() < n {
            let Some(i) = self.fifo.pop_front() else {
                break;
            };
            let i = i as usize;
            let fl = self.f(i);
            if fl & RES == 0 || fl & VICTIM != 0 {
                continue;
            }
            if self.chance.get(i) {
                // Spared once: it was refaulted soon after its last eviction.
                self.chance.put(i, false);
                self.fifo.push_back(i as u32);
                COUNTERS.add(&COUNTERS.second_chances, 1);
                continue;
            }
            self.set(i, fl | VICTIM);
            victims.push(i);
        }
        victims.sort_unstable();
        victims
    }

    /// The victims that may have been written: to write-protect before
    /// their contents are looked at.
    pub fn maybe_written(&self, victims: &[usize]) -> Vec<usize> {
        victims
            .iter()
            .copied()
            .filter(|&i| self.f(i) & (DIRTY | ZF | HASHED) != 0)
            .collect()
    }

    /// Whether a maybe-written victim must be written back, given its
    /// contents now (write-protected): a zero-filled page still all zeros,
    /// and one fetched writable whose hash did not change, need not be.
    pub fn must_write(&mut self, i: usize, page: &[u8]) -> bool {
        let fl = self.f(i);
        let dirty = if fl & DIRTY != 0 {
            true
        } else if fl & HASHED != 0 {
            self.hashes.remove(&(i as u32)) != Some(page_hash(page))
        } else {
            page.iter().any(|&b| b != 0)
        };
        if !dirty {
            self.set(i, fl & !(HOT | HASHED));
        }
        dirty
    }

    /// These pages' contents are on the memory monitors now.
    pub fn written_back(&mut self, pages: &[usize]) {
        for &i in pages {
            let fl = self.f(i);
            self.set(i, (fl | REMOTE | HOT) & !(DIRTY | ZF | HASHED));
        }
    }

    /// Of victims cleaned ahead of need (written back while they stayed
    /// resident, write-protected), those that may be dropped now. One
    /// written again meanwhile (a write-protect fault made it DIRTY) stays
    /// resident, at the FIFO's tail; one zapped meanwhile is gone already.
    pub fn settle_victims(&mut self, victims: &[usize]) -> Vec<usize> {
        let mut drop = Vec::with_capacity(victims.len());
        for &i in victims {
            let fl = self.f(i);
            if fl & RES == 0 || fl & VICTIM == 0 {
                continue;
            }
            if fl & DIRTY != 0 {
                self.set(i, fl & !VICTIM);
                self.fifo.push_back(i as u32);
            } else {
                drop.push(i);
            }
        }
        drop
    }

    /// The victims were dropped from the arena, `dirty` of them written
    /// back first.
    pub fn dropped(&mut self, victims: &[usize], dirty: usize) {
        for &i in victims {
            let fl = self.f(i);
            if fl & PREF != 0 {
                COUNTERS.add(&COUNTERS.prefetch_wasted, 1);
            }
            // Zero pages dropped as zeros stay without a remote copy.
            self.set(i, fl & (REMOTE | HOT));
            if self.replacement == Replacement::Refault && fl & REMOTE != 0 {
                self.remember(i);
            }
            if fl & HASHED != 0 {
                self.hashes.remove(&(i as u32));
            }
        }
        self.resident -= victims.len();
        COUNTERS.set(&COUNTERS.resident_pages, self.resident as u64);
        COUNTERS.add(&COUNTERS.evictions_dirty, dirty as u64);
        COUNTERS.add(&COUNTERS.evictions_clean, (victims.len() - dirty) as u64);
        if self.fifo.len() > 2 * self.resident + 4096 {
            let flags = &*self.flags;
            self.fifo.retain(|&i| flags[i as usize] & RES != 0);
        }
    }

    /// Forgets `n` pages from `first`: they read as zeros from now on.
    /// Returns the runs of their remote copies to free, each within one
    /// vRegion.
    pub fn zap(&mut self, first: usize, n: usize) -> Vec<(PageNo, u64)> {
        let mut remote_runs: Vec<(PageNo, u64)> = Vec::new();
        for i in first..(first + n).min(self.npages()) {
            let fl = self.f(i);
            if fl & RES != 0 {
                self.resident -= 1;
            }
            if fl & HASHED != 0 {
                self.hashes.remove(&(i as u32));
            }
            // A freed page's history is not its next owner's.
            self.chance.put(i, false);
            self.ghost.put(i, false);
            if fl & REMOTE != 0 {
                let p = self.page_no(i);
                match remote_runs.last_mut() {
                    Some((s, c))
                        if *s + *c == p
                            && s.vregion(self.vregion_shift) == p.vregion(self.vregion_shift) =>
                    {
                        *c += 1
                    }
                    _ => remote_runs.push((p, 1)),
                }
            }
            self.set(i, 0);
        }
        COUNTERS.set(&COUNTERS.resident_pages, self.resident as u64);
        remote_runs
    }

    /// Makes the resident flags agree with the page tables (`present[k]`:
    /// page `k` is there): a page marked resident but not present loses
    /// the mark (its data is remote or it was never written).
    pub fn resync(&mut self, present: &[bool]) {
        let mut resident = 0;
        for (i, &p) in present.iter().enumerate().take(self.npages()) {
            let fl = self.f(i);
            if fl & RES != 0 {
                if p {
                    resident += 1;
                } else {
                    self.set(i, fl & (REMOTE | HOT));
                    if fl & HASHED != 0 {
                        self.hashes.remove(&(i as u32));
                    }
                }
            }
        }
        self.resident = resident;
    }
}

/// A 64-bit hash of a page's contents.
pub fn page_hash(page: &[u8]) -> u64 {
    page.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        (h.rotate_left(5) ^ u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .wrapping_mul(0x517c_c1b7_2722_0a95)
    })
}

/// Runs of consecutive indices in a sorted list: (first, length).
pub fn runs(sorted: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &i in sorted {
        match out.last_mut() {
            Some((s, l)) if *s + *l == i => *l += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
