//! The pager: the ExCache's executor. It carries out what the policy
//! ([`crate::policy`]) decides against userfaultfd and the memory monitors:
//! resolves the application's page faults (zero-fill, fetch with prefetch
//! and read-ahead), evicts in batches (write-protect the victims that may
//! have been written, copy them, write them to the primary and the backup,
//! and only then drop them with one MADV_DONTNEED per run), frees the
//! remote copies of ranges the program gives back (without waiting for the
//! answers: see [`Remote::free`]), and reports each outcome to the policy.
//!
//! One handler thread owns all of this behind the `PAGER` lock; application
//! threads take the lock only to zap ranges they free. The handler never
//! touches a page it does not know to be resident, so it cannot fault itself.

use std::time::Instant;

use crate::lock::Lock as Mutex;

use crate::arena::PAGE;
use lego_wire::PageNo;

use crate::policy::{runs, Fault, Policy, Replacement, MAX_ZERO_WINDOW, REMOTE, RES, SMALL_READ};
use crate::remote::{Lost, PendingRead, PendingWrite, Remote};
use crate::stats::COUNTERS;
use crate::sys::{
    private_pages, raw_madvise, Uffd, UffdEvents, UffdMsg, UFFD_EVENT_PAGEFAULT,
    UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE,
};

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

/// Victims being cleaned ahead of need: written back while they stay
/// resident and write-protected (see [`Pager::make_room`]).
struct Cleaning {
    victims: Vec<usize>,
    /// One write per vRegion, with the data it sent (kept for a retry).
    writes: Vec<(PendingWrite, Vec<u8>)>,
    dirty: usize,
}

/// Pages cleaned ahead of need at a time.
const CLEAN_AHEAD: usize = 256;

pub struct Pager {
    pub uffd: Uffd,
    base: usize,
    /// What every page is, and every decision.
    policy: Policy,
    pub remote: Remote,
    /// Zeros, read-only: the source of every zero-filled page.
    zero: &'static [u8],
    buf: Vec<u8>,
    /// The read of a sequential stream's next window, in flight.
    ahead: Option<Ahead>,
    /// The answer of the read-ahead.
    abuf: Vec<u8>,
    /// Set while a fork is in progress: nothing is evicted (see `process`).
    pub no_evict: bool,
    /// The victims being cleaned ahead of need, if any.
    cleaning: Option<Cleaning>,
    /// Spare buffers for write-backs in flight.
    spare: Vec<Vec<u8>>,
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
        let mut policy = Policy::new(
            flags,
            quota_bytes / PAGE,
            PageNo::of_addr(base).0,
            remote.vregion_shift(),
        );
        // An experiment's knob: LEGO_REPLACEMENT=fifo turns refault
        // detection off (see crate::policy).
        if std::env::var_os("LEGO_REPLACEMENT").is_some_and(|v| v == "fifo") {
            policy.set_replacement(Replacement::Fifo);
        }
        Ok(Pager {
            uffd,
            base,
            policy,
            remote,
            zero,
            buf: Vec::new(),
            ahead: None,
            abuf: Vec::new(),
            no_evict: false,
            cleaning: None,
            spare: Vec::new(),
        })
    }

    /// A page of the arena that is resident and write-protected.
    fn protected_page(&self, idx: usize) -> &'static [u8] {
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

    /// Which pages of `start..end` (arena addresses) are in the page
    /// tables, or `None` if mincore fails.
    fn present(&self, start: usize, end: usize) -> Option<Vec<bool>> {
        let mut vec = vec![0u8; (end - start) / PAGE];
        // SAFETY: mincore reads residency of our own arena range into `vec`.
        let r = unsafe { libc::mincore(start as *mut _, end - start, vec.as_mut_ptr()) };
        (r == 0).then(|| vec.iter().map(|v| v & 1 == 1).collect())
    }

    /// Adopts pages made resident before the pager existed (early mallocs).
    pub fn adopt(&mut self, start: usize, end: usize) {
        if let Some(present) = self.present(start, end) {
            self.policy.adopt((start - self.base) / PAGE, &present);
        }
    }

    /// The page index a message faults on, whether it is a write-protect
    /// fault and whether the access was a write; `None` for what is not a
    /// fault in the arena.
    fn fault_of(&self, msg: &UffdMsg) -> Option<(usize, bool, bool)> {
        if msg.event != UFFD_EVENT_PAGEFAULT {
            return None;
        }
        let addr = (msg.address as usize) & !(PAGE - 1);
        if addr < self.base || addr >= self.base + self.policy.npages() * PAGE {
            return None;
        }
        Some((
            (addr - self.base) / PAGE,
            msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0,
            msg.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0,
        ))
    }

    /// Handles the messages read at once. Misses of several threads on
    /// pages with remote copies, outside any stream, are fetched together
    /// (every read in flight before the first answer is taken: one round
    /// trip for all, see [`Pager::fetch_together`]); the rest one by one.
    pub fn handle_batch(&mut self, msgs: &[UffdMsg]) -> Result<(), Lost> {
        // The usual case, one fault: nothing to gather.
        if let [msg] = msgs {
            return match self.fault_of(msg) {
                Some((idx, wp, write)) => self.handle_fault(idx, wp, write),
                None => Ok(()),
            };
        }
        let faults: Vec<(usize, bool, bool)> =
            msgs.iter().filter_map(|m| self.fault_of(m)).collect();
        let is_miss = |p: &Policy, &(idx, wp, _): &(usize, bool, bool)| {
            !wp && p.f(idx) & (RES | REMOTE) == REMOTE
        };
        let misses = faults.iter().filter(|f| is_miss(&self.policy, f)).count();
        let in_ahead = |idx: usize| {
            self.ahead
                .as_ref()
                .is_some_and(|a| a.pages.binary_search(&idx).is_ok())
        };
        if misses < 2 || self.policy.window() > 0 || faults.iter().any(|f| in_ahead(f.0)) {
            for (idx, wp, write) in faults {
                self.handle_fault(idx, wp, write)?;
            }
            return Ok(());
        }
        let mut together = Vec::with_capacity(misses);
        for f in faults {
            match is_miss(&self.policy, &f) {
                true => together.push((f.0, f.2)),
                false => self.handle_fault(f.0, f.1, f.2)?,
            }
        }
        self.fetch_together(together)
    }

    /// Handles one fault at page `idx`.
    fn handle_fault(&mut self, idx: usize, wp: bool, write: bool) -> Result<(), Lost> {
        let addr = self.addr(idx);
        match self.policy.on_fault(idx, wp) {
            Fault::Wake => {
                let _ = self.uffd.wake(addr, PAGE);
                Ok(())
            }
            Fault::Unprotect => {
                let _ = self.uffd.write_protect(addr, PAGE, false);
                Ok(())
            }
            Fault::ZeroFill { n } => {
                // First touch: zeros, locally, installed writable (a page
                // still all zeros at eviction is simply dropped).
                self.make_room(n)?;
                let _ = self
                    .uffd
                    .copy(self.addr(idx), &self.zero[..n * PAGE], false);
                self.policy.zero_filled(idx, n);
                Ok(())
            }
            Fault::Fetch => self.fetch(idx, write),
        }
    }

    /// Fetches the pages several threads missed at once: room is made for
    /// all first, then every read is sent, then each answer is taken and
    /// installed (waking its thread) in turn.
    fn fetch_together(&mut self, mut misses: Vec<(usize, bool)>) -> Result<(), Lost> {
        let t = Instant::now();
        misses.sort_unstable();
        misses.dedup_by_key(|m| m.0);
        self.cancel_ahead();
        let mut plans = Vec::with_capacity(misses.len());
        for (idx, write) in misses {
            self.policy.stream_step(idx);
            let want = self.policy.fetch_plan(idx);
            plans.push((idx, write, want));
        }
        let incoming = plans.iter().map(|p| p.2.len()).sum();
        self.make_room(incoming)?;
        let mut reads = Vec::with_capacity(plans.len());
        for (_, _, want) in &plans {
            let nos: Vec<PageNo> = want.iter().map(|&i| self.policy.page_no(i)).collect();
            reads.push(self.remote.start_read(&nos)?);
        }
        COUNTERS.add(&COUNTERS.faults_fetched_together, plans.len() as u64);
        for ((idx, write, want), read) in plans.into_iter().zip(reads) {
            self.take_and_install(idx, write, &want, read, t)?;
        }
        Ok(())
    }

    /// Takes the answer of `read` (of `want`'s pages) and installs it for
    /// the fault at `idx`, which began at `t`.
    fn take_and_install(
        &mut self,
        idx: usize,
        write: bool,
        want: &[usize],
        read: PendingRead,
        t: Instant,
    ) -> Result<(), Lost> {
        let mut data = std::mem::take(&mut self.buf);
        let at = self.remote.finish_read(read, &mut data)?;
        self.install(idx, write, want, at, &data);
        self.buf = data;
        COUNTERS.record_fault(t.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Sends the read of the window after `pages` (ascending) in the
    /// stream's direction, to be installed when the stream gets there.
    fn send_ahead(&mut self, pages: &[usize]) -> Result<(), Lost> {
        let ahead = self.policy.ahead_plan(pages);
        if ahead.is_empty() {
            return Ok(());
        }
        let nos: Vec<PageNo> = ahead.iter().map(|&i| self.policy.page_no(i)).collect();
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
        if !hit {
            self.cancel_ahead();
            self.policy.stream_step(idx);
            return self.fetch_now(idx, write, t);
        }
        self.settle_ahead();
        self.policy.stream_step(idx);
        let Some(Ahead {
            read: AheadRead::Ready(at),
            pages,
        }) = self.ahead.take()
        else {
            return self.fetch_now(idx, write, t);
        };
        COUNTERS.add(&COUNTERS.readahead_hits, 1);
        self.make_room(pages.len())?;
        self.send_ahead(&pages)?;
        let data = std::mem::take(&mut self.abuf);
        self.install(idx, write, &pages, at, &data);
        self.abuf = data;
        COUNTERS.record_fault(t.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Fetches the page at `idx` and the stream's window after it, then sends
    /// the read-ahead of the window after that.
    fn fetch_now(&mut self, idx: usize, write: bool, t: Instant) -> Result<(), Lost> {
        let want = self.policy.fetch_plan(idx);
        // Evicting (maybe writing back) while a small answer is on its way
        // hides the round trip; a large one must not be in flight then (see
        // `settle_ahead`).
        let small = want.len() <= SMALL_READ;
        if !small {
            self.make_room(want.len())?;
        }
        let nos: Vec<PageNo> = want.iter().map(|&i| self.policy.page_no(i)).collect();
        let read = self.remote.start_read(&nos)?;
        if small {
            self.make_room(want.len())?;
        }
        if self.policy.window() > 0 {
            self.send_ahead(&want)?;
        }
        self.take_and_install(idx, write, &want, read, t)
    }

    /// Installs fetched pages: `data[at..]` holds `want`'s pages in order.
    fn install(&mut self, idx: usize, write: bool, want: &[usize], at: usize, data: &[u8]) {
        for run in self.policy.install(idx, write, want, data, at) {
            let src = &data[at + run.k * PAGE..at + (run.k + run.len) * PAGE];
            let _ = self.uffd.copy(self.addr(run.first), src, run.protect);
        }
    }

    /// Evicts until `incoming` more pages fit in the quota: first the
    /// victims cleaned ahead of need (their write-backs were sent at an
    /// earlier fault and have had the program's time since to complete),
    /// then synchronously if still short. Then, when fewer than
    /// [`CLEAN_AHEAD`] slots would be left, the next victims are cleaned
    /// ahead: written back now, dropped when room is needed.
    fn make_room(&mut self, incoming: usize) -> Result<(), Lost> {
        if self.no_evict {
            return Ok(()); // briefly over quota while a fork is in progress
        }
        if self.policy.to_evict(incoming).is_some() {
            self.settle_cleaning()?;
        }
        while let Some(n) = self.policy.to_evict(incoming) {
            self.evict(n)?;
        }
        if self.cleaning.is_none()
            && self.policy.resident() + incoming + CLEAN_AHEAD > self.policy.quota()
        {
            self.start_cleaning(CLEAN_AHEAD)?;
        }
        Ok(())
    }

    /// Writes back the next `n` victims without waiting, leaving them
    /// resident and write-protected (a write to one makes it dirty again,
    /// and keeps it).
    fn start_cleaning(&mut self, n: usize) -> Result<(), Lost> {
        let victims = self.policy.pick_victims(n);
        if victims.is_empty() {
            return Ok(());
        }
        let dirty = self.protect_and_classify(&victims);
        if !dirty.is_empty() {
            self.settle_ahead();
        }
        let mut writes = Vec::new();
        let mut start = 0;
        while start < dirty.len() {
            let end = start + self.same_vregion(&dirty[start..]);
            let mut data = self.spare.pop().unwrap_or_default();
            data.clear();
            for &i in &dirty[start..end] {
                data.extend_from_slice(self.protected_page(i));
            }
            let pages: Vec<PageNo> = dirty[start..end]
                .iter()
                .map(|&i| self.policy.page_no(i))
                .collect();
            let w = self.remote.start_write(&pages, &data)?;
            writes.push((w, data));
            start = end;
        }
        self.policy.written_back(&dirty);
        self.cleaning = Some(Cleaning {
            victims,
            writes,
            dirty: dirty.len(),
        });
        Ok(())
    }

    /// Takes the answers of the cleaning in flight and drops its victims
    /// that were not written again meanwhile.
    pub fn settle_cleaning(&mut self) -> Result<(), Lost> {
        let Some(c) = self.cleaning.take() else {
            return Ok(());
        };
        for (w, data) in c.writes {
            let r = self.remote.finish_write(w, &data);
            self.spare.push(data);
            r?;
        }
        let drop = self.policy.settle_victims(&c.victims);
        for run in runs(&drop) {
            self.drop_pages(self.addr(run.0), run.1 * PAGE);
        }
        let dirty = c.dirty.min(drop.len());
        self.policy.dropped(&drop, dirty);
        Ok(())
    }

    /// Write-protects the victims that may have been written and returns
    /// those that must be written back.
    fn protect_and_classify(&mut self, victims: &[usize]) -> Vec<usize> {
        let written = self.policy.maybe_written(victims);
        for run in runs(&written) {
            let _ = self
                .uffd
                .write_protect(self.addr(run.0), run.1 * PAGE, true);
        }
        let mut dirty = Vec::with_capacity(written.len());
        for i in written {
            if self.policy.must_write(i, self.protected_page(i)) {
                dirty.push(i);
            }
        }
        dirty
    }

    /// How many of `pages` (ascending) from the first are in its vRegion.
    fn same_vregion(&self, pages: &[usize]) -> usize {
        let vr = self.policy.vregion_of(pages[0]);
        pages
            .iter()
            .take_while(|&&i| self.policy.vregion_of(i) == vr)
            .count()
    }

    /// Evicts `n` victims now: written back (those that must be), waited
    /// for, dropped.
    fn evict(&mut self, n: usize) -> Result<(), Lost> {
        debug_assert!(self.cleaning.is_none(), "settled before evicting");
        self.start_cleaning(n)?;
        self.settle_cleaning()
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
        let remote_runs = self.policy.zap(first, n);
        self.drop_pages(start, len);
        for (s, c) in remote_runs {
            self.remote.free(s, c);
            COUNTERS.add(&COUNTERS.pages_freed, c);
        }
    }

    /// Makes the resident flags agree with the page tables up to `end`:
    /// a page marked resident but not present loses the mark (its data is
    /// remote or it was never written).
    pub fn resync_resident(&mut self, end: usize) {
        let n = (end.saturating_sub(self.base) / PAGE).min(self.policy.npages());
        if let Some(present) = self.present(self.base, self.base + n * PAGE) {
            self.policy.resync(&present);
        }
    }

    /// After fork, in the child: a fresh userfaultfd over the same arena, and
    /// every resident page write-protected again (fork cleared the bits).
    pub fn rearm_after_fork(&mut self, uffd: Uffd) -> std::io::Result<()> {
        let len = self.policy.npages() * PAGE;
        uffd.register(self.base, len)
            .map_err(|e| std::io::Error::new(e.kind(), format!("register: {e}")))?;
        uffd.write_protect(self.base, len, true)
            .map_err(|e| std::io::Error::new(e.kind(), format!("write-protect: {e}")))?;
        self.uffd = uffd;
        Ok(())
    }
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
        if let Err(lost) = p.handle_batch(&msgs[..n]) {
            crate::fatal_lost(&lost);
        }
    }
}
