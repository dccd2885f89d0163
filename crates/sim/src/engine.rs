//! The discrete-event loop every design runs under: the same jobs arrive at
//! the same times (one seed), each is placed at once if it fits, else waits
//! in a queue (first come, first tried; a job waiting longer than the
//! limit gives up); jobs leave when done; units fail at a given rate (their
//! jobs are killed and submitted again) and come back repaired. Samples of
//! use and stranded resources are taken at a fixed interval.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use crate::workload::{Generator, Job, Rng};

/// Use at one moment, in CPU milli-cores and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub cpu_used: u64,
    pub mem_used: u64,
    /// Free memory a typical job could not use for want of CPU beside it.
    pub stranded_mem: u64,
    /// Free CPU a typical job could not use for want of memory beside it.
    pub stranded_cpu: u64,
    pub running: u64,
    pub queued: u64,
    /// Jobs admitted so far.
    pub admitted: u64,
}

/// A way of building the datacenter: whole servers, or lego's split kernel.
pub trait Design {
    fn name(&self) -> String;
    /// Places `job` now if it fits (all or nothing).
    fn place(&mut self, now_ms: u64, job: &Job) -> bool;
    /// Frees what `job` holds.
    fn remove(&mut self, now_ms: u64, job: u64);
    /// How many units can fail (servers, or components).
    fn units(&self) -> usize;
    /// Unit `u` fails; returns the jobs that died with it.
    fn fail(&mut self, now_ms: u64, unit: usize) -> Vec<u64>;
    /// Unit `u` is back, empty.
    fn repair(&mut self, now_ms: u64, unit: usize);
    /// Use now; `typical` = the median job's (CPU milli-cores, bytes).
    fn sample(&self, typical: (u64, u64)) -> Sample;
    /// Total CPU (milli-cores) and memory (bytes) installed.
    fn capacity(&self) -> (u64, u64);
    /// The design's own invariants (for the tests); `Err` says which broke.
    fn check(&self) -> Result<(), String>;
}

/// What the loop is told.
#[derive(Clone, Debug)]
pub struct Run {
    pub duration_ms: u64,
    /// Mean time between arrivals.
    pub gap_ms: f64,
    pub tenants: usize,
    pub seed: u64,
    /// Mean time between failures of one unit (`None`: none fail).
    pub unit_mtbf_ms: Option<f64>,
    pub repair_ms: u64,
    pub max_wait_ms: u64,
    pub sample_every_ms: u64,
    /// The median job's (CPU, memory), for the stranding figures.
    pub typical: (u64, u64),
    /// Check the design's invariants after every event.
    pub check_every_step: bool,
}

/// What came of a run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub arrived: u64,
    /// Placed at least once.
    pub admitted: u64,
    pub completed: u64,
    /// Gave up waiting.
    pub dropped: u64,
    /// Killed by a failure (and submitted again).
    pub killed: u64,
    pub failures: u64,
    /// Waits of admitted jobs, ms.
    pub waits_ms: Vec<u64>,
    pub samples: Vec<Sample>,
    /// Invariant broken (with `check_every_step`), and after which event.
    pub broken: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Sample,
    Repair(usize),
    Fail(usize),
    /// Job, the generation it was placed in (a killed job's old departure
    /// is ignored).
    Depart(u64, u64),
    Arrive,
}

/// How many queued jobs are tried when room frees up.
const QUEUE_TRIES: usize = 64;

/// The jobs running, each under the generation of its current placement
/// (a killed job's old departure is then ignored), and those ever placed.
#[derive(Default)]
struct Placed {
    running: HashMap<u64, u64>,
    once: HashSet<u64>,
    generation: u64,
}

impl Placed {
    /// Places `job` now if it fits: it runs under a new generation
    /// (returned), and counts as admitted (with its wait) the first time.
    fn place(
        &mut self,
        design: &mut dyn Design,
        now: u64,
        job: &Job,
        out: &mut Outcome,
    ) -> Option<u64> {
        if !design.place(now, job) {
            return None;
        }
        self.generation += 1;
        self.running.insert(job.id, self.generation);
        if self.once.insert(job.id) {
            out.admitted += 1;
            out.waits_ms.push(now.saturating_sub(job.arrival_ms));
        }
        Some(self.generation)
    }
}

/// Runs `design` through the jobs of `gen`.
pub fn run(design: &mut dyn Design, mut gen: Generator, r: &Run) -> Outcome {
    let mut out = Outcome::default();
    let mut events: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, at: u64, ev: Ev| {
        seq += 1;
        events.push(Reverse((at, seq, ev)));
    };
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    let mut placed = Placed::default();
    let mut queue: VecDeque<(u64, u64)> = VecDeque::new();
    let mut fail_rng = Rng(r.seed ^ 0xfa11);
    let mut next_arrival = 0.0;
    let mut next_id = 1u64;
    let (job, at) = gen.next_job(next_id, next_arrival, r.gap_ms, r.tenants);
    next_arrival = at;
    let mut pending = Some(job);
    push(&mut events, job.arrival_ms, Ev::Arrive);
    push(&mut events, 0, Ev::Sample);
    if let Some(mtbf) = r.unit_mtbf_ms {
        for u in 0..design.units() {
            let at = fail_rng.exp(mtbf) as u64;
            if at < r.duration_ms {
                push(&mut events, at, Ev::Fail(u));
            }
        }
    }
    while let Some(Reverse((now, _, ev))) = events.pop() {
        if now > r.duration_ms {
            break;
        }
        let mut freed = false;
        match ev {
            Ev::Sample => {
                let mut s = design.sample(r.typical);
                s.at_ms = now;
                s.running = placed.running.len() as u64;
                s.queued = queue.len() as u64;
                s.admitted = out.admitted;
                out.samples.push(s);
                push(&mut events, now + r.sample_every_ms, Ev::Sample);
            }
            Ev::Arrive => {
                let job = pending.take().expect("an arrival is pending");
                out.arrived += 1;
                jobs.insert(job.id, job);
                let placed = if queue.is_empty() {
                    placed.place(design, now, &job, &mut out)
                } else {
                    None
                };
                match placed {
                    Some(g) => push(&mut events, now + job.duration_ms, Ev::Depart(job.id, g)),
                    None => queue.push_back((job.id, now)),
                }
                next_id += 1;
                let (job, at) = gen.next_job(next_id, next_arrival, r.gap_ms, r.tenants);
                next_arrival = at;
                pending = Some(job);
                push(&mut events, job.arrival_ms, Ev::Arrive);
            }
            Ev::Depart(id, g) => {
                if placed.running.get(&id) == Some(&g) {
                    placed.running.remove(&id);
                    design.remove(now, id);
                    jobs.remove(&id);
                    out.completed += 1;
                    freed = true;
                }
            }
            Ev::Fail(u) => {
                out.failures += 1;
                for id in design.fail(now, u) {
                    if placed.running.remove(&id).is_some() {
                        out.killed += 1;
                        // Submitted again, to run its whole duration.
                        queue.push_front((id, now));
                    }
                }
                push(&mut events, now + r.repair_ms, Ev::Repair(u));
                freed = true;
            }
            Ev::Repair(u) => {
                design.repair(now, u);
                if let Some(mtbf) = r.unit_mtbf_ms {
                    let at = now + fail_rng.exp(mtbf) as u64;
                    if at < r.duration_ms {
                        push(&mut events, at, Ev::Fail(u));
                    }
                }
                freed = true;
            }
        }
        if freed || matches!(ev, Ev::Arrive) {
            // Jobs waiting too long give up; then the first few are tried.
            while let Some(&(id, since)) = queue.front() {
                if now.saturating_sub(since) <= r.max_wait_ms {
                    break;
                }
                queue.pop_front();
                jobs.remove(&id);
                out.dropped += 1;
            }
            if freed {
                let mut i = 0;
                let mut tried = 0;
                while i < queue.len() && tried < QUEUE_TRIES {
                    let (id, _) = queue[i];
                    let job = jobs[&id];
                    tried += 1;
                    match placed.place(design, now, &job, &mut out) {
                        Some(g) => {
                            queue.remove(i);
                            push(&mut events, now + job.duration_ms, Ev::Depart(id, g));
                        }
                        None => i += 1,
                    }
                }
            }
        }
        if r.check_every_step && out.broken.is_none() {
            if let Err(e) = design.check() {
                out.broken = Some(format!("after {ev:?} at {now} ms: {e}"));
            }
        }
    }
    out
}
