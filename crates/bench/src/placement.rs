//! Where a bench's threads run. One machine stands in for several: with
//! `split` (the default on two or more CPUs) the program under test, its
//! processor monitor, the local and swap runs and the bench itself share the
//! first CPU, and the memory monitors (and the far end of the bare round
//! trip) get the others, as if they were other hosts. With `shared` the
//! scheduler places every thread.

use crate::{fail, Result};
use clap::ValueEnum;

use lego_cluster::cpus::{allowed_cpus, pin_current_thread, CpuList};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// Programs on CPU 0, memory monitors on the other CPUs
    Split,
    /// Not pinned: the scheduler places every thread
    Shared,
}

/// The placement a bench runs with.
#[derive(Clone, Debug)]
pub enum Placement {
    Split { app: CpuList, memory: CpuList },
    Shared,
}

impl Placement {
    /// `split` needs two CPUs; without a choice it is taken when there are.
    pub fn choose(arg: Option<PlacementArg>) -> Result<Placement> {
        let cpus = allowed_cpus();
        let split = || Placement::Split {
            app: CpuList(vec![cpus[0]]),
            memory: CpuList(cpus[1..].to_vec()),
        };
        match arg {
            Some(PlacementArg::Shared) => Ok(Placement::Shared),
            Some(PlacementArg::Split) if cpus.len() < 2 => fail!(
                "--placement split needs two CPUs; this process may use only CPU {}",
                cpus[0]
            ),
            Some(PlacementArg::Split) => Ok(split()),
            None if cpus.len() >= 2 => Ok(split()),
            None => Ok(Placement::Shared),
        }
    }

    /// Pins the calling (main) thread of the bench, and so every process
    /// it starts afterwards, to the programs' CPUs.
    pub fn pin_bench(&self) -> Result<()> {
        match self {
            Placement::Split { app, .. } => Ok(pin_current_thread(&app.0)?),
            Placement::Shared => Ok(()),
        }
    }

    /// CPUs for the memory side (memory monitors, the round trip's server).
    pub fn memory_cpus(&self) -> Option<CpuList> {
        match self {
            Placement::Split { memory, .. } => Some(memory.clone()),
            Placement::Shared => None,
        }
    }

    /// CPUs for the programs' side (processor monitor, workloads).
    pub fn app_cpus(&self) -> Option<CpuList> {
        match self {
            Placement::Split { app, .. } => Some(app.clone()),
            Placement::Shared => None,
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match self {
            Placement::Split { app, memory } => format!(
                "thread placement: split: the programs under test (local, lego and swap runs, with the lego runtime's \
                 fault handler), the processor monitor and the bench on CPU {app}; the memory and storage \
                 monitors and the round trip's server on CPUs {memory} (as if on other hosts)"
            ),
            Placement::Shared => format!(
                "thread placement: not pinned; bench process allowed on CPUs {}, the scheduler places each thread",
                super::cpus_allowed(std::process::id())
            ),
        }
    }
}
