//! The pager: the ExCache. Resolves the application's page faults and keeps
//! at most the quota of its pages resident.
//!
//! Per page of the arena one byte of flags (RESIDENT, DIRTY, REMOTE: a copy
//! lives on the memory monitors, PREFETCHED: installed ahead of use). A
//! missing-page fault on a page with no remote copy is zero-filled locally; on
//! one with a remote copy it is fetched from the vRegion's primary (backup on
//! failure) together with the pages a sequential stream predicts, in either
//! direction. Fetched and zero-filled pages that were only read are installed
//! write-protected, so the first write faults and marks the page DIRTY.
//! Eviction takes resident pages in FIFO order (LegoOS found FIFO beats LRU
//! here), in batches: dirty victims are write-protected (writers wait), copied,
//! written to the primary and the backup, and only then dropped with one
//! MADV_DONTNEED per run of pages.
//!
//! One handler thread owns all of this behind the `PAGER` lock; application
//! threads take the lock only to zap ranges they free. The handler never
//! touches a page it does not know to be resident, so it cannot fault itself.

use std::collections::VecDeque;
use std::time::Instant;

use crate::lock::Lock as Mutex;

use crate::arena::PAGE;
use lego_wire::PageNo;

use crate::remote::{Lost, PendingRead, Remote};
use crate::stats::COUNTERS;
use crate::sys::{
    private_pages, raw_madvise, Uffd, UffdEvents, UffdMsg, UFFD_EVENT_PAGEFAULT,
    UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE,
};

const RES: u8 = 1;
const DIRTY: u8 = 2;
const REMOTE: u8 = 4;
const PREF: u8 = 8;
/// Installed writable as a zero page: dirty exactly when no longer all zeros.
const ZF: u8 = 16;
/// Written back the last time it was evicted: likely written again. When it
/// is prefetched by a write fault's stream it is installed writable with a
/// hash of its contents (no write-protect fault), and written back at
/// eviction only if the hash changed.
const HOT: u8 = 32;
/// Fetched writable with a hash (see HOT).
const HASHED: u8 = 64;
/// Chosen as a victim by the eviction in progress (the FIFO may hold an
/// index twice).
const VICTIM: u8 = 128;

/// Pages evicted per batch.
const EVICT_BATCH: usize = 128;
/// Largest prefetch window, in pages.
const MAX_WINDOW: usize = 256;
/// Reads of at most this many pages are answered in less than any socket
/// buffer holds, so writes may be sent while they are in flight.
const SMALL_READ: usize = 16;
/// Largest run of zero pages installed ahead of a sequential first-touch stream.
const MAX_ZERO_WINDOW: usize = 64;

/// A read sent ahead of a sequential stream (see [`Pager::fetch`]).
struct Ahead {
    read: AheadRead,
    /// The pages it reads, ascending.
    pages: Vec<usize>,
}

enum AheadRead {
    InFlight(PendingRead),
    /// Answered: the page data is in `Pager::abuf` from this offset on.
    Ready(usize),
}

pub struct Pager {
    pub uffd: Uffd,
    base: usize,
    npages: usize,
    /// One byte of state per page of the arena, in a private mapping.
    flags: &'static mut [u8],
    fifo: VecDeque<u32>,
    resident: usize,
    quota: usize,
    pub remote: Remote,
    /// Zeros, read-only: the source of every zero-filled page.
    zero: &'static [u8],
    buf: Vec<u8>,
    last: usize,
    dir: isize,
    window: usize,
    last_zero: usize,
    zero_window: usize,
    hashes: std::collections::HashMap<u32, u64>,
    /// The read of a sequential stream's next window, in flight.
    ahead: Option<Ahead>,
    /// Staging for write-backs.
    wbuf: Vec<u8>,
    /// The answer of the read-ahead.
    abuf: Vec<u8>,
    /// Set while a fork is in progress: nothing is evicted (see `process`).
    pub no_evict: bool,
}

pub static PAGER: Mutex<Option<Pager>> = Mutex::new(None);

impl Pager {
    pub fn new(
        uffd: Uffd,
        base: usize,
        len: usize,
        quota_bytes: usize,
        remote: Remote,
    ) -> std::io::Result<Pager> {
        let npages = len / PAGE;
        let flags = private_pages(npages.next_multiple_of(PAGE))?;
        // SAFETY: a fresh private mapping of at least `npages` bytes that
        // only this pager refers to, for as long as the process lives.
        let flags = unsafe { std::slice::from_raw_parts_mut(flags as *mut u8, npages) };
        let zero = private_pages(MAX_ZERO_WINDOW * PAGE)?;
        // Read-only: the source of every zero-filled page must stay zeros.
        // SAFETY: changes the protection of the mapping we just made.
        if unsafe {
            libc::syscall(
                libc::SYS_mprotect,
                zero,
                MAX_ZERO_WINDOW * PAGE,
                libc::PROT_READ,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the read-only mapping of zeros just made, never unmapped.
        let zero = unsafe { std::slice::from_raw_parts(zero as *const u8, MAX_ZERO_WINDOW * PAGE) };
        let quota = (quota_bytes / PAGE).max(2 * EVICT_BATCH);
        COUNTERS.set(&COUNTERS.excache_pages, quota as u64);
        Ok(Pager {
            uffd,
            base,
            npages,
            flags,
            fifo: VecDeque::new(),
            resident: 0,
            quota,
            remote,
            zero,
            buf: Vec::new(),
            last: usize::MAX,
            dir: 0,
            window: 0,
            last_zero: usize::MAX,
            zero_window: 0,
            hashes: std::collections::HashMap::new(),
            ahead: None,
            wbuf: Vec::new(),
            abuf: Vec::new(),
            no_evict: false,
        })
    }

    fn f(&self, idx: usize) -> u8 {
        self.flags[idx]
    }

    fn set(&mut self, idx: usize, v: u8) {
        self.flags[idx] = v;
    }

    /// A page of the arena that is resident and write-protected.
    fn protected_page(&self, idx: usize) -> &[u8] {
        // SAFETY: the caller made the page resident and write-protected:
        // reading it cannot fault and no one can change it meanwhile.
        unsafe { std::slice::from_raw_parts(self.addr(idx) as *const u8, PAGE) }
    }

    /// Drops `len` bytes of the arena from `start` (they fault again on
    /// the next touch).
    fn drop_pages(&self, start: usize, len: usize) {
        // SAFETY: arena pages the pager manages: no Rust reference points
        // into the program's memory, and their next touch faults to us.
        let _ = unsafe { raw_madvise(start, len, libc::MADV_DONTNEED) };
    }

    fn addr(&self, idx: usize) -> usize {
        self.base + idx * PAGE
    }

    fn page_no(&self, idx: usize) -> PageNo {
        PageNo::of_addr(self.addr(idx))
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

    /// Adopts pages made resident before the pager existed (early mallocs).
    pub fn adopt(&mut self, start: usize, end: usize) {
        let n = (end - start) / PAGE;
        let mut vec = vec![0u8; n];
        // SAFETY: mincore reads residency of our own arena range into `vec`.
        let r = unsafe { libc::mincore(start as *mut _, end - start, vec.as_mut_ptr()) };
        if r != 0 {
            return;
        }
        for (i, v) in vec.iter().enumerate() {
            if v & 1 == 1 {
                let idx = (start - self.base) / PAGE + i;
                self.note_resident(idx, DIRTY);
            }
        }
    }

    /// Handles one userfaultfd message.
    pub fn handle(&mut self, msg: &UffdMsg) -> Result<(), Lost> {
        if msg.event != UFFD_EVENT_PAGEFAULT {
            return Ok(());
        }
        let addr = (msg.address as usize) & !(PAGE - 1);
        if addr < self.base || addr >= self.base + self.npages * PAGE {
            return Ok(());
        }
        let idx = (addr - self.base) / PAGE;
        let fl = self.f(idx);
        if msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0 {
            if fl & RES != 0 {
                COUNTERS.add(&COUNTERS.faults_write_protect, 1);
                if fl & PREF != 0 {
                    COUNTERS.add(&COUNTERS.prefetch_used, 1);
                }
                self.set(idx, (fl | DIRTY) & !PREF);
                let _ = self.uffd.write_protect(addr, PAGE, false);
            } else {
                // Evicted while the writer waited: retry, which fetches it.
                let _ = self.uffd.wake(addr, PAGE);
            }
            return Ok(());
        }
        if fl & RES != 0 {
            let _ = self.uffd.wake(addr, PAGE);
            return Ok(());
        }
        let write = msg.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0;
        if fl & REMOTE == 0 {
            return self.zero_fill(idx);
        }
        self.fetch(idx, write)
    }

    /// First touch: zeros, locally, installed writable (a page still all zeros
    /// at eviction is simply dropped). A sequential stream of first touches
    /// gets the next pages installed ahead, in one copy.
    fn zero_fill(&mut self, idx: usize) -> Result<(), Lost> {
        if self.last_zero != usize::MAX
            && idx > self.last_zero
            && idx - self.last_zero <= self.zero_window + 1
        {
            self.zero_window = (self.zero_window * 2).clamp(8, MAX_ZERO_WINDOW);
        } else {
            self.zero_window = 0;
        }
        // At most the zero buffer's length in one copy.
        let mut n = 1;
        while n < MAX_ZERO_WINDOW.min(self.zero_window + 1)
            && idx + n < self.npages
            && self.f(idx + n) == 0
        {
            n += 1;
        }
        self.last_zero = idx + n - 1;
        self.make_room(n)?;
        let _ = self
            .uffd
            .copy(self.addr(idx), &self.zero[..n * PAGE], false);
        for i in idx..idx + n {
            self.note_resident(i, ZF);
        }
        COUNTERS.add(&COUNTERS.faults_zero_filled, 1);
        COUNTERS.add(&COUNTERS.zero_pages_ahead, n as u64 - 1);
        Ok(())
    }

    /// Follows the fault stream: a miss at `idx` continues a sequential
    /// stream (either direction) when it lands within the last window past
    /// the last miss, and then the window doubles. Prefetched pages the
    /// stream walked past count as used.
    fn stream_step(&mut self, idx: usize) {
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
    fn window_from(&self, from: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        if from >= self.npages {
            return out;
        }
        let vregion = self.remote.vregion_of(self.page_no(from));
        for k in 0..n {
            let j = from as isize + self.dir * k as isize;
            if j < 0 || j as usize >= self.npages {
                break;
            }
            let j = j as usize;
            if self.remote.vregion_of(self.page_no(j)) != vregion {
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

    /// Sends the read of the window after `pages` (ascending) in the
    /// stream's direction, to be installed when the stream gets there.
    fn send_ahead(&mut self, pages: &[usize]) -> Result<(), Lost> {
        let (Some(&lo), Some(&hi)) = (pages.first(), pages.last()) else {
            return Ok(());
        };
        let next = match self.dir {
            1 => hi + 1,
            -1 if lo > 0 => lo - 1,
            _ => return Ok(()),
        };
        let ahead = self.window_from(next, self.window);
        if ahead.is_empty() {
            return Ok(());
        }
        let nos: Vec<PageNo> = ahead.iter().map(|&i| self.page_no(i)).collect();
        let read = self.remote.start_read(&nos)?;
        self.ahead = Some(Ahead {
            read: AheadRead::InFlight(read),
            pages: ahead,
        });
        Ok(())
    }

    /// Takes in the answer of the read-ahead in flight, if any, into `abuf`.
    /// Called before anything large is sent: a client that sends a large
    /// request while a large answer waits unread on the same connection
    /// deadlocks with its server, both blocked writing.
    fn settle_ahead(&mut self) {
        let Some(a) = self.ahead.take() else { return };
        match a.read {
            AheadRead::InFlight(r) => {
                let mut data = std::mem::take(&mut self.abuf);
                let done = self.remote.finish_read(r, &mut data);
                self.abuf = data;
                // A failed read-ahead is dropped: a fault on those pages
                // fetches them again, and reports what is lost.
                if let Ok(at) = done {
                    self.ahead = Some(Ahead {
                        read: AheadRead::Ready(at),
                        pages: a.pages,
                    });
                }
            }
            ready => {
                self.ahead = Some(Ahead {
                    read: ready,
                    pages: a.pages,
                })
            }
        }
    }

    /// Drops the read-ahead (an answer still in flight is waited for and
    /// thrown away).
    pub fn cancel_ahead(&mut self) {
        if let Some(a) = self.ahead.take() {
            if let AheadRead::InFlight(r) = a.read {
                let mut scratch = std::mem::take(&mut self.abuf);
                self.remote.discard_read(r, &mut scratch);
                self.abuf = scratch;
            }
            COUNTERS.add(&COUNTERS.readahead_dropped, a.pages.len() as u64);
        }
    }

    /// A miss on a page with a remote copy: fetch it with the pages the
    /// stream predicts, or take the read-ahead sent when the stream was one
    /// window behind; keep the stream's next window in flight meanwhile.
    fn fetch(&mut self, idx: usize, write: bool) -> Result<(), Lost> {
        let t = Instant::now();
        let hit = self
            .ahead
            .as_ref()
            .is_some_and(|a| a.pages.binary_search(&idx).is_ok());
        let (want, at, data) = if hit {
            self.settle_ahead();
            self.stream_step(idx);
            match self.ahead.take() {
                Some(Ahead {
                    read: AheadRead::Ready(at),
                    pages,
                }) => {
                    COUNTERS.add(&COUNTERS.readahead_hits, 1);
                    self.make_room(pages.len())?;
                    self.send_ahead(&pages)?;
                    (pages, at, std::mem::take(&mut self.abuf))
                }
                _ => return self.fetch_now(idx, write, t),
            }
        } else {
            self.cancel_ahead();
            self.stream_step(idx);
            return self.fetch_now(idx, write, t);
        };
        self.install(idx, write, &want, at, &data);
        self.abuf = data;
        COUNTERS.record_fault(t.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Fetches the page at `idx` and the stream's window after it, then sends
    /// the read-ahead of the window after that.
    fn fetch_now(&mut self, idx: usize, write: bool, t: Instant) -> Result<(), Lost> {
        let mut want = vec![idx];
        if self.window > 0 {
            let from = idx as isize + self.dir;
            if from >= 0 {
                want.extend(self.window_from(from as usize, self.window));
            }
        }
        want.sort_unstable();
        want.dedup();
        // Evicting (maybe writing back) while a small answer is on its way
        // hides the round trip; a large one must not be in flight then (see
        // `settle_ahead`).
        let small = want.len() <= SMALL_READ;
        if !small {
            self.make_room(want.len())?;
        }
        let nos: Vec<PageNo> = want.iter().map(|&i| self.page_no(i)).collect();
        let read = self.remote.start_read(&nos)?;
        if small {
            self.make_room(want.len())?;
        }
        if self.window > 0 {
            self.send_ahead(&want)?;
        }
        let mut data = std::mem::take(&mut self.buf);
        let at = self.remote.finish_read(read, &mut data)?;
        self.install(idx, write, &want, at, &data);
        self.buf = data;
        COUNTERS.record_fault(t.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Installs fetched pages: `data[at..]` holds `want`'s pages in order.
    fn install(&mut self, idx: usize, write: bool, want: &[usize], at: usize, data: &[u8]) {
        // Decide each page's flags, then install runs of neighbours that
        // share the write-protect mode with one copy each. A page that
        // changed state while its read was in flight is left alone.
        let mut modes = Vec::with_capacity(want.len());
        let mut install = Vec::with_capacity(want.len());
        for (k, &i) in want.iter().enumerate() {
            let old = self.f(i);
            if old & RES != 0 || old & REMOTE == 0 {
                continue;
            }
            let src = &data[at + k * PAGE..at + (k + 1) * PAGE];
            let faulting = i == idx;
            let mut fl = old & (REMOTE | HOT);
            if faulting && write {
                fl |= DIRTY;
            } else if old & HOT != 0 && write && !faulting {
                fl |= HASHED;
                self.hashes.insert(i as u32, page_hash(src));
            }
            if !faulting {
                fl |= PREF;
            }
            modes.push(fl & (DIRTY | HASHED) == 0);
            install.push((k, i));
            self.note_resident(i, fl);
        }
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
            let src = &data[at + k0 * PAGE..at + (k0 + end - r) * PAGE];
            let _ = self.uffd.copy(self.addr(i0), src, modes[r]);
            r = end;
        }
        COUNTERS.add(&COUNTERS.faults_fetched, 1);
        COUNTERS.add(
            &COUNTERS.prefetched_pages,
            install.len().saturating_sub(1) as u64,
        );
    }

    /// Evicts until `incoming` more pages fit in the quota.
    fn make_room(&mut self, incoming: usize) -> Result<(), Lost> {
        if self.no_evict {
            return Ok(()); // briefly over quota while a fork is in progress
        }
        while self.resident + incoming > self.quota && self.resident > 0 {
            let n = (self.resident + incoming - self.quota).max(EVICT_BATCH);
            self.evict(n)?;
        }
        Ok(())
    }

    fn evict(&mut self, n: usize) -> Result<(), Lost> {
        let mut victims = Vec::with_capacity(n);
        while victims.len() < n {
            let Some(i) = self.fifo.pop_front() else {
                break;
            };
            let i = i as usize;
            let fl = self.f(i);
            if fl & RES != 0 && fl & VICTIM == 0 {
                self.set(i, fl | VICTIM);
                victims.push(i);
            }
        }
        if victims.is_empty() {
            return Ok(());
        }
        victims.sort_unstable();
        // Victims that may have been written: stop writers first.
        let written: Vec<usize> = victims
            .iter()
            .copied()
            .filter(|&i| self.f(i) & (DIRTY | ZF | HASHED) != 0)
            .collect();
        for run in runs(&written) {
            let _ = self
                .uffd
                .write_protect(self.addr(run.0), run.1 * PAGE, true);
        }
        // A zero-filled page still all zeros needs no copy anywhere.
        // and one fetched writable is dirty only if its hash changed.
        let mut dirty = Vec::with_capacity(written.len());
        for i in written {
            let fl = self.f(i);
            let is_dirty = if fl & DIRTY != 0 {
                true
            } else if fl & HASHED != 0 {
                let now = page_hash(self.protected_page(i));
                self.hashes.remove(&(i as u32)) != Some(now)
            } else {
                self.protected_page(i).iter().any(|&b| b != 0)
            };
            if is_dirty {
                dirty.push(i);
            } else {
                self.set(i, fl & !(HOT | HASHED));
            }
        }
        if !dirty.is_empty() {
            self.settle_ahead();
        }
        let mut start = 0;
        while start < dirty.len() {
            // One write per vRegion.
            let vr = self.remote.vregion_of(self.page_no(dirty[start]));
            let end = start
                + dirty[start..]
                    .iter()
                    .take_while(|&&i| self.remote.vregion_of(self.page_no(i)) == vr)
                    .count();
            let mut data = std::mem::take(&mut self.wbuf);
            data.clear();
            for &i in &dirty[start..end] {
                data.extend_from_slice(self.protected_page(i));
            }
            let pages: Vec<PageNo> = dirty[start..end].iter().map(|&i| self.page_no(i)).collect();
            let r = self.remote.write(&pages, &data);
            self.wbuf = data;
            r?;
            for &i in &dirty[start..end] {
                let fl = self.f(i);
                self.set(i, (fl | REMOTE | HOT) & !(DIRTY | ZF | HASHED));
            }
            start = end;
        }
        for run in runs(&victims) {
            self.drop_pages(self.addr(run.0), run.1 * PAGE);
        }
        for &i in &victims {
            let fl = self.f(i);
            if fl & PREF != 0 {
                COUNTERS.add(&COUNTERS.prefetch_wasted, 1);
            }
            // Zero pages dropped as zeros stay without a remote copy.
            self.set(i, fl & (REMOTE | HOT));
            if fl & HASHED != 0 {
                self.hashes.remove(&(i as u32));
            }
        }
        self.resident -= victims.len();
        COUNTERS.set(&COUNTERS.resident_pages, self.resident as u64);
        COUNTERS.add(&COUNTERS.evictions_dirty, dirty.len() as u64);
        COUNTERS.add(
            &COUNTERS.evictions_clean,
            (victims.len() - dirty.len()) as u64,
        );
        if self.fifo.len() > 2 * self.resident + 4096 {
            let flags = &*self.flags;
            self.fifo.retain(|&i| flags[i as usize] & RES != 0);
        }
        Ok(())
    }

    /// Forgets a range's contents: local pages dropped, remote copies freed.
    /// Afterwards the range reads as zeros.
    pub fn zap(&mut self, start: usize, len: usize) {
        let first = (start - self.base) / PAGE;
        let n = len / PAGE;
        if self.ahead.as_ref().is_some_and(|a| {
            a.pages.first().is_some_and(|&lo| lo < first + n)
                && a.pages.last().is_some_and(|&hi| hi >= first)
        }) {
            self.cancel_ahead();
        }
        let mut remote_runs: Vec<(PageNo, u64)> = Vec::new();
        for i in first..(first + n).min(self.npages) {
            let fl = self.f(i);
            if fl & RES != 0 {
                self.resident -= 1;
            }
            if fl & HASHED != 0 {
                self.hashes.remove(&(i as u32));
            }
            if fl & REMOTE != 0 {
                let p = self.page_no(i);
                match remote_runs.last_mut() {
                    Some((s, c))
                        if *s + *c == p
                            && self.remote.vregion_of(*s) == self.remote.vregion_of(p) =>
                    {
                        *c += 1
                    }
                    _ => remote_runs.push((p, 1)),
                }
            }
            self.set(i, 0);
        }
        self.drop_pages(start, len);
        COUNTERS.set(&COUNTERS.resident_pages, self.resident as u64);
        for (s, c) in remote_runs {
            self.remote.free(s, c);
            COUNTERS.add(&COUNTERS.pages_freed, c);
        }
    }

    /// Makes the resident flags agree with the page tables up to `end`:
    /// a page marked resident but not present loses the mark (its data is
    /// remote or it was never written).
    pub fn resync_resident(&mut self, end: usize) {
        let n = (end.saturating_sub(self.base) / PAGE).min(self.npages);
        let mut vec = vec![0u8; n];
        // SAFETY: mincore reads residency of our own arena range into `vec`.
        if unsafe { libc::mincore(self.base as *mut _, n * PAGE, vec.as_mut_ptr()) } != 0 {
            return;
        }
        let mut resident = 0;
        for (i, v) in vec.iter().enumerate() {
            let fl = self.f(i);
            if fl & RES != 0 {
                if v & 1 == 1 {
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

    /// After fork, in the child: a fresh userfaultfd over the same arena, and
    /// every resident page write-protected again (fork cleared the bits).
    pub fn rearm_after_fork(&mut self, uffd: Uffd) -> std::io::Result<()> {
        uffd.register(self.base, self.npages * PAGE)
            .map_err(|e| std::io::Error::new(e.kind(), format!("register: {e}")))?;
        uffd.write_protect(self.base, self.npages * PAGE, true)
            .map_err(|e| std::io::Error::new(e.kind(), format!("write-protect: {e}")))?;
        self.uffd = uffd;
        Ok(())
    }
}

/// A 64-bit hash of a page's contents.
fn page_hash(page: &[u8]) -> u64 {
    page.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        (h.rotate_left(5) ^ u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .wrapping_mul(0x517c_c1b7_2722_0a95)
    })
}

/// Runs of consecutive indices in a sorted list: (first, length).
fn runs(sorted: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &i in sorted {
        match out.last_mut() {
            Some((s, l)) if *s + *l == i => *l += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

/// Zaps a range of the arena: through the pager when it runs, else just drops
/// the pages (before the runtime started, nothing is remote).
pub fn zap(start: usize, len: usize) {
    crate::section::runtime_section(|| {
        let mut p = PAGER.lock();
        match p.as_mut() {
            Some(p) => p.zap(start, len),
            None => {
                // SAFETY: arena pages of the program's, which it gave back.
                let _ = unsafe { raw_madvise(start, len, libc::MADV_DONTNEED) };
            }
        }
    })
}

/// The fault handler thread's loop.
pub fn handler_loop(uffd: UffdEvents) {
    crate::section::enter_runtime_thread();
    let mut msgs = [UffdMsg::default(); 16];
    let spin = crate::fault_spin();
    loop {
        // The next fault often follows within microseconds: wait for it
        // awake before sleeping in read.
        uffd.spin_until_readable(spin);
        let n = match uffd.read_msgs(&mut msgs) {
            Ok(n) => n,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EBADF) {
                    return; // closed after fork in a child that re-armed
                }
                crate::fatal_start(&format!("userfaultfd read failed: {e}"));
            }
        };
        let mut guard = PAGER.lock();
        let Some(p) = guard.as_mut() else { continue };
        if !uffd.of(&p.uffd) {
            return; // a stale handler after fork
        }
        for msg in &msgs[..n] {
            if let Err(lost) = p.handle(msg) {
                crate::fatal_lost(&lost);
            }
        }
    }
}
