//! The split kernel's datacenter, run by lego's own placement state machine
//! (`lego-placement`, no copy of it): processor monitors whose capacity is
//! CPU (milli-cores: the GPM ranks by free capacity whatever its unit),
//! memory monitors, storage monitors. A job is a process: the GPM picks its
//! processor monitor, it gets an address space in its tenant's vNode, and
//! the GMM places each of its vRegions (on monitors with room for it).
//! Heartbeats carry each monitor's use, as the real ones do. A failed
//! component is declared dead (the GMM fails its vRegions over at once); a
//! vRegion left with one copy gets a new one (recovery planned and
//! committed at once: copy time is not modelled); a job that lost its
//! processor or the last copy of a vRegion dies. A repaired component
//! registers again, new. Every decision is timed.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use lego_placement::{
    Asid, Backup, ComponentId, Health, Placement, PlacementConfig, Role, VRegionIdx, VRegionKey,
    VRegionState, VnodeId,
};

use crate::engine::{Design, Sample};
use crate::workload::Job;
use crate::Latencies;

/// How the components are made.
#[derive(Clone, Debug)]
pub struct Shape {
    pub processors: usize,
    pub memories: usize,
    pub storages: usize,
    pub cores_per_processor: u64,
    pub bytes_per_memory: u64,
    pub vregion_bytes: u64,
    /// Copies of each vRegion (1 or 2).
    pub replicas: u8,
    pub tenants: usize,
}

struct Running {
    processor: ComponentId,
    asid: Asid,
    cpu: u64,
    mem: u64,
}

pub struct Disaggregated {
    pub p: Placement,
    shape: Shape,
    /// Each unit's role and current component id.
    units: Vec<(Role, ComponentId)>,
    instance: u64,
    used: HashMap<ComponentId, u64>,
    jobs: HashMap<u64, Running>,
    by_asid: HashMap<Asid, u64>,
    on_processor: HashMap<ComponentId, BTreeSet<u64>>,
    tenants: Vec<VnodeId>,
    /// vRegions left with one copy, waiting for a monitor with room for a
    /// second (tried again whenever a component is repaired).
    pending: BTreeSet<(VRegionKey, ComponentId)>,
    /// Free bytes on all live memory monitors: a job that cannot fit in it
    /// is not tried (as a scheduler checks capacity before it places).
    mem_free: i128,
    pub lat: Latencies,
}

impl Disaggregated {
    pub fn new(shape: Shape) -> Disaggregated {
        let mut d = Disaggregated {
            p: Placement::new(PlacementConfig {
                dead_after_ms: 10_000,
                isolation_guard: false,
            }),
            units: Vec::new(),
            instance: 1,
            used: HashMap::new(),
            jobs: HashMap::new(),
            by_asid: HashMap::new(),
            on_processor: HashMap::new(),
            tenants: Vec::new(),
            pending: BTreeSet::new(),
            mem_free: 0,
            lat: Latencies::default(),
            shape: shape.clone(),
        };
        d.mem_free = (shape.memories as u64 * shape.bytes_per_memory) as i128;
        let roles = std::iter::repeat_n(Role::Processor, shape.processors)
            .chain(std::iter::repeat_n(Role::Memory, shape.memories))
            .chain(std::iter::repeat_n(Role::Storage, shape.storages));
        for (u, role) in roles.enumerate() {
            let id = d.register(0, u, role);
            d.units.push((role, id));
        }
        for t in 0..shape.tenants {
            let v =
                d.p.create_vnode(&format!("tenant-{t}"))
                    .expect("a fresh name");
            d.p.set_replicas(v.id, shape.replicas).expect("1 or 2");
            if shape.storages > 0 {
                let t0 = Instant::now();
                d.p.place_storage(v.id).expect("storage monitors alive");
                d.lat.storage.push(t0.elapsed());
            }
            d.tenants.push(v.id);
        }
        d
    }

    fn capacity_of(&self, role: Role) -> u64 {
        match role {
            Role::Processor => self.shape.cores_per_processor * 1000,
            Role::Memory => self.shape.bytes_per_memory,
            _ => 1 << 40,
        }
    }

    fn register(&mut self, now: u64, unit: usize, role: Role) -> ComponentId {
        self.instance += 1;
        self.p
            .register(
                now,
                role,
                format!("unit-{unit}"),
                self.capacity_of(role),
                self.instance,
                None,
            )
            .expect("a valid address")
    }

    /// Tells the state machine a component's use, as its heartbeat would.
    fn beat(&mut self, now: u64, id: ComponentId, delta: i128) {
        if self
            .p
            .component(id)
            .is_some_and(|c| c.role == Role::Memory && c.health != Health::Dead)
        {
            self.mem_free -= delta;
        }
        let u = self.used.entry(id).or_default();
        *u = (*u as i128 + delta).max(0) as u64;
        let used = *u;
        let instance = self.p.component(id).map_or(0, |c| c.instance);
        let _ = self.p.heartbeat(now, id, instance, used);
    }

    /// Bytes of vRegion `index` of a job of `mem` bytes.
    fn vregion_len(&self, mem: u64, index: u64) -> u64 {
        let v = self.shape.vregion_bytes;
        (mem - (index * v).min(mem)).min(v)
    }

    /// Releases a job's address space and processor.
    fn release(&mut self, now: u64, id: u64) {
        let Some(j) = self.jobs.remove(&id) else {
            return;
        };
        self.by_asid.remove(&j.asid);
        if let Some(set) = self.on_processor.get_mut(&j.processor) {
            set.remove(&id);
        }
        for (key, a) in self.p.release_space(j.asid) {
            let len = self.vregion_len(j.mem, key.index.0) as i128;
            for c in a.copies() {
                self.beat(now, c, -len);
            }
        }
        self.beat(now, j.processor, -(j.cpu as i128));
    }
}

impl Disaggregated {
    /// Gives each vRegion left with one copy a second one, on the
    /// least-loaded monitor if it has room (else it waits).
    fn recover(&mut self, now: u64) {
        let pending = std::mem::take(&mut self.pending);
        for (key, dead) in pending {
            if self.p.vregion_state(key) != Some(VRegionState::Degraded) {
                continue;
            }
            let t = Instant::now();
            let plan = self.p.plan_recovery(key, Backup::On(dead));
            self.lat.recovery.push(t.elapsed());
            let Ok(plan) = plan else {
                self.pending.insert((key, dead));
                continue;
            };
            let job = self.by_asid.get(&key.asid).copied();
            let mem = job.and_then(|j| self.jobs.get(&j)).map_or(0, |j| j.mem);
            let len = self.vregion_len(mem, key.index.0);
            let room = self
                .p
                .component(plan.target)
                .map_or(0, |c| c.capacity.saturating_sub(c.used));
            if room < len || self.p.commit_recovery(&plan).is_err() {
                self.pending.insert((key, dead));
                continue;
            }
            self.beat(now, plan.target, len as i128);
        }
    }
}

impl Design for Disaggregated {
    fn name(&self) -> String {
        format!(
            "disaggregated (lego): {} processor, {} memory, {} storage monitors; {} cop{} per vRegion",
            self.shape.processors,
            self.shape.memories,
            self.shape.storages,
            self.shape.replicas,
            if self.shape.replicas == 1 { "y" } else { "ies" }
        )
    }

    fn place(&mut self, now: u64, job: &Job) -> bool {
        if (job.mem_bytes as i128) * self.shape.replicas as i128 > self.mem_free {
            return false;
        }
        let t = Instant::now();
        let processor = self.p.place_process(job.cpu_milli);
        self.lat.process.push(t.elapsed());
        let Ok(processor) = processor else {
            return false;
        };
        let vnode = self.tenants[job.tenant % self.tenants.len()];
        let Ok((asid, _)) = self.p.create_space(vnode, Some(job.id)) else {
            return false;
        };
        let n = job.mem_bytes.div_ceil(self.shape.vregion_bytes).max(1);
        self.jobs.insert(
            job.id,
            Running {
                processor,
                asid,
                cpu: job.cpu_milli,
                mem: job.mem_bytes,
            },
        );
        self.by_asid.insert(asid, job.id);
        self.on_processor
            .entry(processor)
            .or_default()
            .insert(job.id);
        self.beat(now, processor, job.cpu_milli as i128);
        for i in 0..n {
            let len = self.vregion_len(job.mem_bytes, i);
            let key = VRegionKey {
                asid,
                index: VRegionIdx(i),
            };
            let t = Instant::now();
            let placed = self.p.assign_vregion_sized(key, len);
            self.lat.vregion.push(t.elapsed());
            match placed {
                Ok((a, _)) => {
                    for c in a.copies() {
                        self.beat(now, c, len as i128);
                    }
                }
                Err(_) => {
                    // All or nothing: what was placed is given back.
                    self.release(now, job.id);
                    return false;
                }
            }
        }
        true
    }

    fn remove(&mut self, now: u64, job: u64) {
        self.release(now, job);
    }

    fn units(&self) -> usize {
        self.units.len()
    }

    fn fail(&mut self, now: u64, unit: usize) -> Vec<u64> {
        let (role, id) = self.units[unit];
        let t = Instant::now();
        let died = self.p.declare_dead(now, id);
        if role == Role::Memory {
            self.lat.failover.push(t.elapsed());
        }
        if died.is_none() {
            return Vec::new();
        }
        let held = self.used.remove(&id).unwrap_or(0);
        if role == Role::Memory {
            // Its free space is gone with it (what it held, too).
            self.mem_free -= self.shape.bytes_per_memory.saturating_sub(held) as i128;
        }
        let mut killed: BTreeSet<u64> = BTreeSet::new();
        match role {
            Role::Processor => {
                killed.extend(self.on_processor.remove(&id).unwrap_or_default());
            }
            Role::Memory => {
                for (key, _) in self.p.vregions_on(id) {
                    match self.p.vregion_state(key) {
                        Some(VRegionState::Degraded) => {
                            self.pending.insert((key, id));
                        }
                        Some(VRegionState::Lost) => {
                            killed.extend(self.by_asid.get(&key.asid));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        for &j in &killed {
            self.release(now, j);
        }
        self.recover(now);
        killed.into_iter().collect()
    }

    fn repair(&mut self, now: u64, unit: usize) {
        let role = self.units[unit].0;
        let id = self.register(now, unit, role);
        self.units[unit] = (role, id);
        if role == Role::Memory {
            self.mem_free += self.shape.bytes_per_memory as i128;
        }
        self.recover(now);
    }

    fn sample(&self, typical: (u64, u64)) -> Sample {
        let (mut cpu_used, mut mem_used, mut cpu_free, mut mem_free) = (0, 0, 0, 0);
        let (mut cpu_fits, mut mem_fits) = (false, false);
        for c in self.p.components().filter(|c| c.health == Health::Alive) {
            let free = c.capacity.saturating_sub(c.used);
            match c.role {
                Role::Processor => {
                    cpu_used += c.used;
                    cpu_free += free;
                    cpu_fits |= free >= typical.0;
                }
                Role::Memory => {
                    mem_used += c.used;
                    mem_free += free;
                }
                _ => {}
            }
        }
        // Memory is pooled: a typical job fits if the free memory holds it
        // (in vRegions, on any monitors) and one processor has its CPU.
        mem_fits |= mem_free >= typical.1;
        Sample {
            cpu_used,
            mem_used,
            stranded_mem: if cpu_fits { 0 } else { mem_free },
            stranded_cpu: if mem_fits { 0 } else { cpu_free },
            ..Sample::default()
        }
    }

    fn capacity(&self) -> (u64, u64) {
        (
            self.shape.processors as u64 * self.shape.cores_per_processor * 1000,
            self.shape.memories as u64 * self.shape.bytes_per_memory,
        )
    }

    fn check(&self) -> Result<(), String> {
        self.p.check_index()?;
        for (key, a) in self.p.vregions() {
            let copies: Vec<ComponentId> = a.copies().collect();
            if copies.len() == 2 && copies[0] == copies[1] {
                return Err(format!("{key}: both copies on monitor {}", copies[0]));
            }
            for id in copies {
                let c = self
                    .p
                    .component(id)
                    .ok_or_else(|| format!("{key}: on unknown component {id}"))?;
                if c.role != Role::Memory {
                    return Err(format!("{key}: on {id}, a {} monitor", c.role));
                }
                // A dead monitor's copy stays listed only while its
                // replacement waits for room; a primary is always live.
                if c.health == Health::Dead
                    && (a.primary == id || !self.pending.contains(&(*key, id)))
                {
                    return Err(format!("{key}: a copy on dead monitor {id}"));
                }
            }
        }
        let free: i128 = self
            .p
            .components()
            .filter(|c| c.role == Role::Memory && c.health != Health::Dead)
            .map(|c| c.capacity as i128 - c.used as i128)
            .sum();
        if free != self.mem_free {
            return Err(format!(
                "free memory counted {} but the monitors have {free}",
                self.mem_free
            ));
        }
        for c in self.p.components().filter(|c| c.health != Health::Dead) {
            if c.used > c.capacity {
                return Err(format!(
                    "{} monitor {} holds {} of {}",
                    c.role, c.id, c.used, c.capacity
                ));
            }
        }
        Ok(())
    }
}
