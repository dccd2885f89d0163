//! `lego sim`: the datacenter-scale case for disaggregation, measured on
//! lego's own placement code. A simulated datacenter of N components runs a
//! day of jobs drawn from published cluster-trace shapes twice: once on
//! monolithic servers (best-fit bin packing), once split into processor,
//! memory and storage components placed by the real `lego-placement` state
//! machine (GPM, GMM, GSM, membership, failover, recovery), with the same
//! total CPU and memory, the same jobs and the same failure rate per unit.
//!
//! - [`workload`]: job shapes (built-in parameter files) and the generator;
//! - [`engine`]: the event loop both designs run under;
//! - [`mono`], [`disagg`]: the two designs;
//! - [`report`]: the tables, and the SVG plots.
#![forbid(unsafe_code)]

pub mod disagg;
pub mod engine;
pub mod mono;
pub mod report;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use engine::Design;

/// What stops a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read the workload file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("workload {name}: {why}")]
    Workload { name: String, why: String },
    #[error("{0}")]
    Args(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A design broke one of its invariants (only with --check).
    #[error("{design}: invariant broken {what}")]
    Invariant { design: String, what: String },
}

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Components of the split datacenter (processor, memory and storage
    /// monitors); the monolithic one has as many servers as it has
    /// processor monitors, with the same total CPU and memory
    #[arg(long, default_value_t = 10_000)]
    pub components: usize,
    /// Simulated time
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Job shapes: a built-in workload (google2019, alibaba2018) or a
    /// parameter file of the same form
    #[arg(long, default_value = "google2019", value_name = "NAME|FILE")]
    pub workload: String,
    /// Offered load: arrivals per hour are set so that this fraction of the
    /// scarcer resource (CPU or memory) would be busy with no waste
    #[arg(long, default_value_t = 0.95)]
    pub load: f64,
    /// Share of the components that are processor monitors (the rest:
    /// memory monitors, and --storage-share storage monitors)
    #[arg(long, default_value_t = 0.4)]
    pub processor_share: f64,
    /// Share of the components that are storage monitors
    #[arg(long, default_value_t = 0.05)]
    pub storage_share: f64,
    /// CPU cores of a processor monitor (and of a monolithic server)
    #[arg(long, default_value_t = 32)]
    pub cores: u64,
    /// Memory of a memory monitor, GiB (a monolithic server gets the total
    /// memory divided among the servers)
    #[arg(long, default_value_t = 96)]
    pub memory_gib: u64,
    /// vRegion size, MiB (LegoOS's is 1 GiB; a job's last vRegion holds
    /// only what it needs)
    #[arg(long, default_value_t = 1024)]
    pub vregion_mib: u64,
    /// Copies of each vRegion (2: a memory monitor's death loses nothing)
    #[arg(long, default_value_t = 1)]
    pub replicas: u8,
    /// Mean days between failures of one unit (a server, or a component);
    /// 0: no failures
    #[arg(long, default_value_t = 200.0)]
    pub mtbf_days: f64,
    /// Hours until a failed unit is back, empty
    #[arg(long, default_value_t = 2.0)]
    pub repair_hours: f64,
    /// A job waiting longer than this many minutes gives up
    #[arg(long, default_value_t = 60.0)]
    pub max_wait_min: f64,
    /// Seed of the jobs and failures
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write SVG plots (jobs admitted, use, stranded memory, jobs running
    /// and waiting over time) into this directory
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Check every design's invariants after every event (slow; for tests)
    #[arg(long)]
    pub check: bool,
}

/// Decision times of the state machine, by kind.
#[derive(Default, Debug, Clone)]
pub struct Latencies {
    pub process: Samples,
    pub vregion: Samples,
    pub failover: Samples,
    pub recovery: Samples,
    pub storage: Samples,
}

/// Durations, for percentiles: every one up to [`Samples::KEEP`], then a
/// uniform sample of that many (reservoir sampling; a day at 10,000
/// components makes hundreds of millions of calls).
#[derive(Default, Debug, Clone)]
pub struct Samples {
    pub kept: Vec<u32>,
    /// Calls seen, kept or not.
    pub calls: u64,
    rng: u64,
}

impl Samples {
    pub const KEEP: usize = 1 << 20;

    pub fn push(&mut self, d: Duration) {
        let ns = d.as_nanos().min(u32::MAX as u128) as u32;
        self.calls += 1;
        if self.kept.len() < Self::KEEP {
            self.kept.push(ns);
            return;
        }
        let mut r = workload::Rng(self.rng);
        let i = r.below(self.calls) as usize;
        self.rng = r.0;
        if i < Self::KEEP {
            self.kept[i] = ns;
        }
    }

    /// The `p`-th percentile in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.kept.is_empty() {
            return 0.0;
        }
        let mut v = self.kept.clone();
        let i = (((p / 100.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
        let (_, x, _) = v.select_nth_unstable(i);
        *x as f64 / 1000.0
    }
}

/// Both designs' outcomes.
pub struct Results {
    pub args: SimArgs,
    pub shape: workload::Shape,
    pub per_hour: f64,
    pub mono: (String, (u64, u64), engine::Outcome, Duration),
    pub disagg: (String, (u64, u64), engine::Outcome, Duration),
    pub lat: Latencies,
    pub components: usize,
}

/// Runs both designs.
pub fn simulate(a: &SimArgs) -> Result<Results, SimError> {
    if a.components < 10 {
        return Err(SimError::Args("--components must be at least 10".into()));
    }
    if !(a.processor_share > 0.0
        && a.storage_share >= 0.0
        && a.processor_share + a.storage_share < 1.0)
    {
        return Err(SimError::Args(
            "--processor-share and --storage-share must leave room for memory monitors".into(),
        ));
    }
    if !(1..=2).contains(&a.replicas) || a.hours <= 0.0 || a.load <= 0.0 || a.vregion_mib == 0 {
        return Err(SimError::Args(
            "--replicas is 1 or 2; --hours, --load and --vregion-mib must be positive".into(),
        ));
    }
    let shape = workload::Shape::load(&a.workload)?;
    let n = a.components;
    let processors = ((n as f64 * a.processor_share).round() as usize).max(1);
    let storages = (n as f64 * a.storage_share).round() as usize;
    let memories = n.saturating_sub(processors + storages).max(2);
    let gen = workload::Generator::new(shape.clone(), a.seed);
    let (cpu_work, mem_work) = gen.mean_work(200_000);
    let typical = gen.medians(20_001);
    let cpu_total = (processors as u64 * a.cores) as f64;
    let mem_total = memories as f64 * (a.memory_gib << 30) as f64 * 1.0 / a.replicas as f64;
    // Arrivals that keep the scarcer resource `load` busy if nothing were
    // wasted (its use is the rate times a job's resource x duration), and
    // so (Little) the jobs in the system at once.
    let per_ms = a.load * (cpu_total / cpu_work).min(mem_total / mem_work);
    let gap_ms = 1.0 / per_ms;
    let mean_duration_ms = {
        let mut g = workload::Generator::new(shape.clone(), a.seed ^ 0xd0);
        (0..20_000).map(|_| g.demands().2 as f64).sum::<f64>() / 20_000.0
    };
    let concurrent = per_ms * mean_duration_ms;
    let tenants = ((concurrent / 256.0).ceil() as usize).max(16);
    let run = engine::Run {
        duration_ms: (a.hours * 3_600_000.0) as u64,
        gap_ms,
        tenants,
        seed: a.seed,
        unit_mtbf_ms: (a.mtbf_days > 0.0).then_some(a.mtbf_days * 86_400_000.0),
        repair_ms: (a.repair_hours * 3_600_000.0) as u64,
        max_wait_ms: (a.max_wait_min * 60_000.0) as u64,
        sample_every_ms: ((a.hours * 3_600_000.0) as u64 / 288).max(1000),
        typical,
        check_every_step: a.check,
    };
    let mem_per_server = memories as u64 * (a.memory_gib << 30) / processors as u64;
    let mut mono = mono::Monolithic::new(processors, a.cores * 1000, mem_per_server);
    let timed = |design: &mut dyn Design| {
        let t = Instant::now();
        let out = engine::run(
            design,
            workload::Generator::new(shape.clone(), a.seed),
            &run,
        );
        (out, t.elapsed())
    };
    let (mono_out, mono_took) = timed(&mut mono);
    let mut split = disagg::Disaggregated::new(disagg::Shape {
        processors,
        memories,
        storages,
        cores_per_processor: a.cores,
        bytes_per_memory: a.memory_gib << 30,
        vregion_bytes: a.vregion_mib << 20,
        replicas: a.replicas,
        tenants,
    });
    let (split_out, split_took) = timed(&mut split);
    for (name, out) in [(mono.name(), &mono_out), (split.name(), &split_out)] {
        if let Some(what) = &out.broken {
            return Err(SimError::Invariant {
                design: name,
                what: what.clone(),
            });
        }
    }
    Ok(Results {
        args: a.clone(),
        shape,
        per_hour: 3_600_000.0 / gap_ms,
        mono: (mono.name(), mono.capacity(), mono_out, mono_took),
        disagg: (split.name(), split.capacity(), split_out, split_took),
        lat: split.lat.clone(),
        components: processors + memories + storages,
    })
}

/// `lego sim`: runs, prints the report, writes the plots.
pub fn run(a: SimArgs) -> Result<(), SimError> {
    let r = simulate(&a)?;
    print!("{}", report::text(&r));
    if let Some(dir) = &a.plot {
        for path in report::plots(&r, dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
