//! The policy's tests: tables of single decisions, and a property test
//! that runs random programs against the policy with a model executor
//! (pages' contents here, on the "memory monitors", and as the program last
//! wrote them) and checks after every step that the program reads what it
//! wrote, that resident means installed, that the quota holds and that the
//! prefetch window stays bounded.

use proptest::prelude::*;

use super::*;

/// A policy over `n` pages with quota `q` (at least 256) and vRegions of
/// `vregion_pages` pages.
fn policy(n: usize, q: usize, vregion_pages: u64) -> Policy {
    let flags: &'static mut [u8] = Box::leak(vec![0u8; n].into_boxed_slice());
    Policy::new(flags, q, 0, (vregion_pages * PAGE as u64).trailing_zeros())
}

#[test]
fn faults_on_their_own() {
    let mut p = policy(1024, 256, 256);
    // A first touch is a zero fill of one page; a stream of them grows.
    assert_eq!(p.on_fault(10, false), Fault::ZeroFill { n: 1 });
    p.zero_filled(10, 1);
    assert_eq!(p.on_fault(11, false), Fault::ZeroFill { n: 9 });
    p.zero_filled(11, 9);
    assert_eq!(p.on_fault(20, false), Fault::ZeroFill { n: 17 });
    p.zero_filled(20, 17);
    assert_eq!(p.resident(), 27);
    // Touching a resident page again, reading: wake.
    assert_eq!(p.on_fault(10, false), Fault::Wake);
    // A write to a protected resident page: dirty, unprotect.
    assert_eq!(p.on_fault(10, true), Fault::Unprotect);
    assert_eq!(p.f(10) & DIRTY, DIRTY);
    // A write-protect fault on a page evicted meanwhile: wake (retry).
    assert_eq!(p.on_fault(500, true), Fault::Wake);
}

#[test]
fn a_stream_of_misses_prefetches_more_each_time_within_a_vregion() {
    let mut p = policy(4096, 4096, 1024);
    for i in 0..4096 {
        p.flags[i] = REMOTE;
    }
    let mut sizes = Vec::new();
    let mut at = 100;
    for _ in 0..8 {
        p.stream_step(at);
        let want = p.fetch_plan(at);
        sizes.push(want.len());
        at = *want.last().unwrap() + 1;
    }
    assert_eq!(sizes, [1, 5, 9, 17, 33, 65, 129, 257]);
    // Never past the vRegion (pages 0..1024) nor the largest window.
    p.stream_step(900);
    let want = p.fetch_plan(1000);
    assert!(want.iter().all(|&i| i < 1024), "{want:?}");
    // Backwards too.
    let mut p = policy(4096, 4096, 4096);
    for i in 0..4096 {
        p.flags[i] = REMOTE;
    }
    p.stream_step(3000);
    p.stream_step(2999);
    assert_eq!(p.fetch_plan(2999), vec![2995, 2996, 2997, 2998, 2999]);
}

#[test]
fn eviction_takes_the_oldest_and_writes_back_only_what_changed() {
    let mut p = policy(1024, 256, 1024);
    for i in 0..256 {
        assert_eq!(p.on_fault(i * 2, false), Fault::ZeroFill { n: 1 });
        p.zero_filled(i * 2, 1);
    }
    assert_eq!(p.to_evict(0), None);
    assert_eq!(p.to_evict(1), Some(EVICT_BATCH));
    let victims = p.pick_victims(4);
    assert_eq!(victims, [0, 2, 4, 6], "FIFO");
    assert_eq!(
        p.maybe_written(&victims),
        victims,
        "zero-filled pages may be written"
    );
    let zeros = [0u8; PAGE];
    let mut written = [0u8; PAGE];
    written[7] = 1;
    assert!(!p.must_write(0, &zeros), "still zeros: nothing to write");
    assert!(p.must_write(2, &written));
    p.written_back(&[2]);
    p.dropped(&victims[..2], 1);
    assert_eq!(p.f(0), 0, "a zero page dropped as zeros has no copy");
    assert_eq!(p.f(2), REMOTE | HOT);
    assert_eq!(p.resident(), 254);
    // A hot page prefetched by a write stream is installed writable with a
    // hash, and written back only if its hash changed.
    p.flags[2] |= REMOTE;
    let data = vec![5u8; 2 * PAGE];
    let runs = p.install(3, true, &[2, 3], &data, 0);
    assert!(runs.iter().all(|r| !r.protect), "{runs:?}");
    assert!(!p.must_write(2, &data[..PAGE]), "unchanged");
}

/// Fills `p` (quota 256) with pages 0..256 fetched from remote, the oldest first.
fn fill_fetched(p: &mut Policy, pages: impl Iterator<Item = usize>) {
    let data = vec![1u8; PAGE];
    for i in pages {
        p.flags[i] |= REMOTE;
        assert_eq!(p.on_fault(i, false), Fault::Fetch);
        p.install(i, false, &[i], &data, 0);
    }
}

/// Evicts the `n` oldest (clean) pages.
fn evict_oldest(p: &mut Policy, n: usize) -> Vec<usize> {
    let v = p.pick_victims(n);
    p.settle_victims(&v);
    p.dropped(&v, 0);
    v
}

#[test]
fn a_page_refaulted_soon_after_eviction_gets_a_second_chance() {
    for (replacement, spared) in [(Replacement::Refault, true), (Replacement::Fifo, false)] {
        let mut p = policy(4096, 256, 4096);
        p.set_replacement(replacement);
        fill_fetched(&mut p, 0..256);
        assert_eq!(evict_oldest(&mut p, 128), (0..128).collect::<Vec<_>>());
        // Page 5 comes back within the window: a refault.
        fill_fetched(&mut p, [5].into_iter());
        // New pages push the FIFO on: 128..256 go, then 5 is next in line.
        fill_fetched(&mut p, 1000..1127);
        let v = evict_oldest(&mut p, 129);
        assert_eq!(v.contains(&5), !spared, "{replacement:?}: {v:?}");
        if spared {
            assert!(v.contains(&1000), "the next in line goes instead");
        }
    }
}

#[test]
fn a_scan_larger_than_twice_the_excache_stays_fifo() {
    let mut p = policy(8192, 256, 8192);
    // Three passes over 1024 pages: each page is refetched 1024 evictions
    // after it left, beyond the 256 remembered.
    for _ in 0..3 {
        for i in 0..1024 {
            if p.to_evict(1).is_some() {
                evict_oldest(&mut p, EVICT_BATCH);
            }
            if p.f(i) & RES == 0 {
                fill_fetched(&mut p, [i].into_iter());
            }
        }
    }
    assert_eq!(p.chance.0.iter().map(|w| w.count_ones()).sum::<u32>(), 0);
}

#[test]
fn zap_frees_remote_runs_per_vregion_and_forgets_the_pages() {
    let mut p = policy(2048, 256, 512);
    for i in 500..520 {
        p.flags[i] = REMOTE;
    }
    p.flags[505] = REMOTE | RES;
    p.resident = 1;
    let freed = p.zap(500, 20);
    assert_eq!(freed, vec![(PageNo(500), 12), (PageNo(512), 8)]);
    assert!((500..520).all(|i| p.f(i) == 0));
    assert_eq!(p.resident(), 0);
}

/// What a random program does.
#[derive(Clone, Debug)]
enum Op {
    Read(usize),
    Write(usize, u64),
    /// A run of reads or writes from a page on: a stream.
    Sweep(usize, usize, bool),
    Zap(usize, usize),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..n).prop_map(Op::Read),
        3 => (0..n, 1..u64::MAX).prop_map(|(i, v)| Op::Write(i, v)),
        2 => (0..n, 1..300usize, any::<bool>()).prop_map(|(i, l, w)| Op::Sweep(i, l, w)),
        1 => (0..n, 1..64usize).prop_map(|(i, l)| Op::Zap(i, l)),
    ]
}

/// The policy and a model of the world it decides for.
struct World {
    p: Policy,
    /// Each page's value installed in the arena (resident), if any.
    local: Vec<Option<u64>>,
    writable: Vec<bool>,
    /// Each page's value on the memory monitors, if any.
    remote: Vec<Option<u64>>,
    /// What the program last wrote to each page (0: never, or zapped).
    truth: Vec<u64>,
    tick: u64,
    /// Victims being cleaned ahead of need (written back, still resident).
    cleaning: Option<Vec<usize>>,
}

/// Pages the model executor cleans ahead, as the pager does.
const CLEAN_AHEAD: usize = 64;

fn page_of(v: u64) -> [u8; PAGE] {
    let mut b = [0u8; PAGE];
    if v != 0 {
        for c in b.chunks_exact_mut(8) {
            c.copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

impl World {
    fn new(n: usize, q: usize, r: Replacement) -> World {
        let mut p = policy(n, q, 1024);
        p.set_replacement(r);
        World {
            p,
            local: vec![None; n],
            writable: vec![false; n],
            remote: vec![None; n],
            truth: vec![0; n],
            tick: 0,
            cleaning: None,
        }
    }

    /// Protects the victims that may have been written and writes back
    /// those that must be; returns them.
    fn clean(&mut self, victims: &[usize]) -> Vec<usize> {
        for &i in &self.p.maybe_written(victims) {
            self.writable[i] = false;
        }
        let mut dirty = Vec::new();
        for i in self.p.maybe_written(victims) {
            let page = page_of(self.local[i].expect("a victim is resident"));
            if self.p.must_write(i, &page) {
                dirty.push(i);
            }
        }
        for &i in &dirty {
            self.remote[i] = self.local[i];
        }
        self.p.written_back(&dirty);
        dirty
    }

    /// As the pager does: the cleaning in flight first, then synchronous
    /// eviction, then the next cleaning ahead of need.
    fn make_room(&mut self, incoming: usize) {
        if self.p.to_evict(incoming).is_some() {
            if let Some(victims) = self.cleaning.take() {
                let drop = self.p.settle_victims(&victims);
                for &i in &drop {
                    self.local[i] = None;
                    self.writable[i] = false;
                }
                self.p.dropped(&drop, 0);
            }
        }
        while let Some(n) = self.p.to_evict(incoming) {
            let victims = self.p.pick_victims(n);
            let dirty = self.clean(&victims);
            for &i in &victims {
                self.local[i] = None;
                self.writable[i] = false;
            }
            self.p.dropped(&victims, dirty.len());
        }
        if self.cleaning.is_none() && self.p.resident() + incoming + CLEAN_AHEAD > self.p.quota() {
            let victims = self.p.pick_victims(CLEAN_AHEAD);
            self.clean(&victims);
            self.cleaning = Some(victims);
        }
    }

    /// One access, faulting as the kernel would until it goes through.
    fn access(&mut self, i: usize, write: Option<u64>) {
        for _ in 0..4 {
            let resident = self.local[i].is_some();
            if resident && (write.is_none() || self.writable[i]) {
                if let Some(v) = write {
                    self.local[i] = Some(v);
                    self.truth[i] = v;
                }
                return;
            }
            match self.p.on_fault(i, resident) {
                Fault::Wake => {}
                Fault::Unprotect => self.writable[i] = true,
                Fault::ZeroFill { n } => {
                    self.make_room(n);
                    for j in i..i + n {
                        assert!(
                            self.local[j].is_none(),
                            "zero fill over a resident page {j}"
                        );
                        self.local[j] = Some(0);
                        self.writable[j] = true;
                    }
                    self.p.zero_filled(i, n);
                }
                Fault::Fetch => {
                    self.p.stream_step(i);
                    let want = self.p.fetch_plan(i);
                    assert!(want.len() <= MAX_WINDOW + 1);
                    self.make_room(want.len());
                    let mut data = Vec::with_capacity(want.len() * PAGE);
                    for &j in &want {
                        data.extend_from_slice(&page_of(
                            self.remote[j].expect("fetch a remote page"),
                        ));
                    }
                    for run in self.p.install(i, write.is_some(), &want, &data, 0) {
                        for (k, j) in (run.first..run.first + run.len).enumerate() {
                            assert!(self.local[j].is_none(), "install over a resident page");
                            self.local[j] = self.remote[want[run.k + k]].or(Some(0));
                            assert_eq!(want[run.k + k], j);
                            self.writable[j] = !run.protect;
                        }
                    }
                }
            }
        }
        panic!("page {i} never became accessible");
    }

    fn run(&mut self, op: &Op) {
        self.tick += 1;
        match *op {
            Op::Read(i) => self.access(i, None),
            Op::Write(i, v) => self.access(i, Some(v)),
            Op::Sweep(i, len, w) => {
                for j in i..(i + len).min(self.local.len()) {
                    let v = w.then_some(self.tick << 20 | j as u64);
                    self.access(j, v);
                }
            }
            Op::Zap(i, len) => {
                let n = len.min(self.local.len() - i);
                for (s, c) in self.p.zap(i, n) {
                    for j in s.0..s.0 + c {
                        self.remote[j as usize] = None;
                    }
                }
                for j in i..i + n {
                    assert!(self.remote[j].is_none(), "a remote copy of {j} not freed");
                    self.local[j] = None;
                    self.writable[j] = false;
                    self.truth[j] = 0;
                }
            }
        }
    }

    fn check(&self) {
        let mut resident = 0;
        for i in 0..self.local.len() {
            let fl = self.p.f(i);
            let cleaning = self.cleaning.as_ref().is_some_and(|v| v.contains(&i));
            assert!(fl & VICTIM == 0 || cleaning, "page {i} left a victim");
            assert_eq!(
                fl & RES != 0,
                self.local[i].is_some(),
                "page {i}: resident means installed"
            );
            if fl & RES == 0 {
                assert_eq!(fl & (DIRTY | ZF | PREF | HASHED), 0, "page {i}: {fl:#b}");
            }
            assert_eq!(
                fl & REMOTE != 0,
                self.remote[i].is_some(),
                "page {i}: remote copy"
            );
            let seen = self.local[i].or(self.remote[i]).unwrap_or(0);
            assert_eq!(seen, self.truth[i], "page {i} lost a write");
            resident += (fl & RES != 0) as usize;
        }
        assert_eq!(resident, self.p.resident());
        assert!(self.p.resident() <= self.p.quota(), "over quota");
        assert!(self.p.window() <= MAX_WINDOW);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn programs_read_what_they_wrote_within_the_quota(
        ops in proptest::collection::vec(op(2048), 1..120),
        fifo in any::<bool>(),
    ) {
        let r = if fifo { Replacement::Fifo } else { Replacement::Refault };
        let mut w = World::new(2048, 256, r);
        for op in &ops {
            w.run(op);
            w.check();
        }
    }
}
