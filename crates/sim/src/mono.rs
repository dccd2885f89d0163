//! The baseline: monolithic servers, each with its own CPU and memory, of
//! the same total CPU and memory as the split kernel's components. A job
//! needs its CPU and all its memory on one server: best-fit bin packing
//! (the server left with the least free CPU, then the least free memory,
//! that holds it), as cluster schedulers pack. A failed server kills its
//! jobs; repaired, it comes back empty.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::engine::{Design, Sample};
use crate::workload::Job;

/// Free CPU is bucketed by this many milli-cores for the best-fit index.
const BUCKET: u64 = 250;

#[derive(Clone, Debug)]
struct Server {
    cpu_free: u64,
    mem_free: u64,
    alive: bool,
    jobs: BTreeSet<u64>,
}

pub struct Monolithic {
    servers: Vec<Server>,
    cpu: u64,
    mem: u64,
    /// Alive servers by free-CPU bucket, then (free memory, free CPU, id).
    index: BTreeMap<u64, BTreeSet<(u64, u64, usize)>>,
    placed: HashMap<u64, (usize, u64, u64)>,
}

impl Monolithic {
    /// `servers` servers of `cpu_milli` milli-cores and `mem` bytes each.
    pub fn new(servers: usize, cpu_milli: u64, mem: u64) -> Monolithic {
        let mut m = Monolithic {
            servers: vec![
                Server {
                    cpu_free: cpu_milli,
                    mem_free: mem,
                    alive: true,
                    jobs: BTreeSet::new(),
                };
                servers
            ],
            cpu: cpu_milli,
            mem,
            index: BTreeMap::new(),
            placed: HashMap::new(),
        };
        for i in 0..servers {
            m.index_in(i);
        }
        m
    }

    fn index_in(&mut self, i: usize) {
        let s = &self.servers[i];
        if s.alive {
            self.index
                .entry(s.cpu_free / BUCKET)
                .or_default()
                .insert((s.mem_free, s.cpu_free, i));
        }
    }

    fn index_out(&mut self, i: usize) {
        let s = &self.servers[i];
        let b = s.cpu_free / BUCKET;
        if let Some(set) = self.index.get_mut(&b) {
            set.remove(&(s.mem_free, s.cpu_free, i));
            if set.is_empty() {
                self.index.remove(&b);
            }
        }
    }

    /// The best-fit server for (cpu, mem), if one holds it.
    fn best_fit(&self, cpu: u64, mem: u64) -> Option<usize> {
        for (_, set) in self.index.range(cpu / BUCKET..) {
            if let Some(&(_, _, i)) = set
                .range((mem, 0, 0)..)
                .find(|(m, c, _)| *c >= cpu && *m >= mem)
            {
                return Some(i);
            }
        }
        None
    }
}

impl Design for Monolithic {
    fn name(&self) -> String {
        format!(
            "monolithic: {} servers of {} cores and {:.0} GiB each, best-fit",
            self.servers.len(),
            self.cpu / 1000,
            self.mem as f64 / (1u64 << 30) as f64
        )
    }

    fn place(&mut self, _now: u64, job: &Job) -> bool {
        let Some(i) = self.best_fit(job.cpu_milli, job.mem_bytes) else {
            return false;
        };
        self.index_out(i);
        let s = &mut self.servers[i];
        s.cpu_free -= job.cpu_milli;
        s.mem_free -= job.mem_bytes;
        s.jobs.insert(job.id);
        self.index_in(i);
        self.placed
            .insert(job.id, (i, job.cpu_milli, job.mem_bytes));
        true
    }

    fn remove(&mut self, _now: u64, job: u64) {
        let Some((i, cpu, mem)) = self.placed.remove(&job) else {
            return;
        };
        if !self.servers[i].alive {
            return;
        }
        self.index_out(i);
        let s = &mut self.servers[i];
        s.cpu_free += cpu;
        s.mem_free += mem;
        s.jobs.remove(&job);
        self.index_in(i);
    }

    fn units(&self) -> usize {
        self.servers.len()
    }

    fn fail(&mut self, _now: u64, unit: usize) -> Vec<u64> {
        if !self.servers[unit].alive {
            return Vec::new();
        }
        self.index_out(unit);
        let s = &mut self.servers[unit];
        s.alive = false;
        let killed: Vec<u64> = std::mem::take(&mut s.jobs).into_iter().collect();
        for j in &killed {
            self.placed.remove(j);
        }
        killed
    }

    fn repair(&mut self, _now: u64, unit: usize) {
        self.servers[unit] = Server {
            cpu_free: self.cpu,
            mem_free: self.mem,
            alive: true,
            jobs: BTreeSet::new(),
        };
        self.index_in(unit);
    }

    fn sample(&self, typical: (u64, u64)) -> Sample {
        let mut s = Sample::default();
        for v in self.servers.iter().filter(|v| v.alive) {
            s.cpu_used += self.cpu - v.cpu_free;
            s.mem_used += self.mem - v.mem_free;
            // Free memory behind too little CPU for a typical job, and the
            // other way round.
            if v.cpu_free < typical.0 {
                s.stranded_mem += v.mem_free;
            }
            if v.mem_free < typical.1 {
                s.stranded_cpu += v.cpu_free;
            }
        }
        s
    }

    fn capacity(&self) -> (u64, u64) {
        let n = self.servers.len() as u64;
        (n * self.cpu, n * self.mem)
    }

    fn check(&self) -> Result<(), String> {
        for (i, v) in self.servers.iter().enumerate() {
            let (cpu, mem) = v.jobs.iter().fold((0, 0), |(c, m), j| {
                let (_, jc, jm) = self.placed[j];
                (c + jc, m + jm)
            });
            if v.alive && (cpu + v.cpu_free != self.cpu || mem + v.mem_free != self.mem) {
                return Err(format!("server {i}: jobs and free space do not add up"));
            }
        }
        Ok(())
    }
}
