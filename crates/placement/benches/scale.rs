//! Decision latency of the placement state machine at datacenter scale:
//! 1,000, 10,000 and 100,000 components (40% processor, 55% memory, 5%
//! storage monitors), each memory monitor holding about 20 vRegion copies
//! (two per vRegion). Each decision is timed alone, on a state kept at the
//! same size: placing a vRegion (GMM), placing a process (GPM), failing
//! over a memory monitor's vRegions when it dies, planning one vRegion's
//! recovery. Run: `cargo bench -p lego-placement --bench scale`
//! (`LEGO_BENCH_SIZES=1000,10000` for some sizes only).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lego_placement::{
    Asid, Backup, ComponentId, Placement, PlacementConfig, Role, VRegionIdx, VRegionKey, VnodeId,
};

/// Copies each memory monitor holds, about.
const COPIES_PER_MONITOR: usize = 20;

struct Dc {
    p: Placement,
    memories: Vec<ComponentId>,
    vnode: VnodeId,
    next_instance: u64,
}

fn datacenter(n: usize) -> Dc {
    let mut p = Placement::new(PlacementConfig {
        dead_after_ms: 10_000,
        isolation_guard: false,
    });
    let processors = n * 40 / 100;
    let storages = n * 5 / 100;
    let memories = n - processors - storages;
    let mut mem = Vec::new();
    for i in 0..n {
        let role = if i < processors {
            Role::Processor
        } else if i < processors + memories {
            Role::Memory
        } else {
            Role::Storage
        };
        let id = p
            .register(0, role, format!("c{i}"), 64 << 30, 1, None)
            .unwrap();
        if role == Role::Memory {
            mem.push(id);
        }
    }
    // vRegions in spaces of many vNodes (each vNode holds at most 1,024).
    let vregions = memories * COPIES_PER_MONITOR / 2;
    let mut vnode = 0;
    let mut placed = 0;
    while placed < vregions {
        let v = p.create_vnode(&format!("v{vnode}")).unwrap().id;
        vnode += 1;
        for _ in 0..1000 {
            let (asid, _) = p.create_space(v, Some(1)).unwrap();
            for i in 0..16 {
                p.assign_vregion(VRegionKey {
                    asid,
                    index: VRegionIdx(i),
                })
                .unwrap();
                placed += 1;
            }
            if placed >= vregions {
                break;
            }
        }
    }
    let v = p.create_vnode("bench").unwrap().id;
    Dc {
        p,
        memories: mem,
        vnode: v,
        next_instance: 2,
    }
}

impl Dc {
    /// After memory monitor `dead` (number `idx`) died: its vRegions get
    /// their second copy back, and it comes back as a new monitor.
    fn replace(&mut self, idx: usize, dead: ComponentId) {
        for (key, _) in self.p.vregions_on(dead) {
            if let Ok(r) = self.p.plan_recovery(key, Backup::On(dead)) {
                let _ = self.p.commit_recovery(&r);
            }
        }
        self.next_instance += 1;
        self.memories[idx] = self
            .p
            .register(
                1,
                Role::Memory,
                format!("m{idx}"),
                64 << 30,
                self.next_instance,
                None,
            )
            .unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // LEGO_BENCH_SIZES=1000,10000 runs only those sizes.
    let sizes: Vec<usize> = std::env::var("LEGO_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    for n in sizes {
        let mut dc = datacenter(n);
        g.bench_with_input(BenchmarkId::new("place a vRegion", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                let mut space: Option<Asid> = None;
                for i in 0..iters {
                    let asid = match space {
                        Some(a) if i % 64 != 0 => a,
                        old => {
                            if let Some(a) = old {
                                dc.p.release_space(a);
                            }
                            let a = dc.p.create_space(dc.vnode, Some(2)).unwrap().0;
                            space = Some(a);
                            a
                        }
                    };
                    let key = VRegionKey {
                        asid,
                        index: VRegionIdx(i % 64),
                    };
                    let t = Instant::now();
                    std::hint::black_box(dc.p.assign_vregion(key).unwrap());
                    took += t.elapsed();
                }
                if let Some(a) = space {
                    dc.p.release_space(a);
                }
                took
            })
        });
        g.bench_with_input(BenchmarkId::new("place a process", n), &n, |b, _| {
            b.iter(|| std::hint::black_box(dc.p.place_process(1 << 20).unwrap()))
        });
        g.bench_with_input(
            BenchmarkId::new("fail over a memory monitor", n),
            &n,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut took = Duration::ZERO;
                    for i in 0..iters {
                        let idx = i as usize % dc.memories.len();
                        let dead = dc.memories[idx];
                        let t = Instant::now();
                        std::hint::black_box(dc.p.declare_dead(1, dead));
                        took += t.elapsed();
                        // Untimed: the state keeps its size.
                        dc.replace(idx, dead);
                    }
                    took
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("plan a vRegion's recovery", n),
            &n,
            |b, _| {
                // One monitor dead for this bench (the one holding the
                // most copies): its vRegions are degraded.
                let idx = (0..dc.memories.len())
                    .max_by_key(|&i| dc.p.copies_on(dc.memories[i]))
                    .expect("memory monitors");
                let dead = dc.memories[idx];
                dc.p.declare_dead(1, dead);
                let keys: Vec<VRegionKey> =
                    dc.p.vregions_on(dead).into_iter().map(|(k, _)| k).collect();
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    std::hint::black_box(dc.p.plan_recovery(keys[i], Backup::On(dead)).unwrap())
                });
                dc.replace(idx, dead);
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
