//! `lego bench`: measurements printed side by side with the machine's own
//! floors, measured in the same run. Every report states where the threads
//! ran and the guest halt-poll setting, which decide cross-CPU wakeup cost.

use anyhow::Result;
use clap::Subcommand;

mod child;
mod cprog;
mod excache;
mod memory;
pub(crate) mod placement;
mod report;
mod rtt;
pub mod stats;
mod storage;
mod swap;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Page read/write latency and throughput against a memory monitor, beside a bare TCP round trip
    Memory(memory::MemoryBenchArgs),
    /// A program's slowdown under lego at ExCache 100/50/25% of its working set, beside Linux swap under a cgroup limit
    Excache(excache::ExcacheBenchArgs),
    /// File throughput and small-file operations through a vNode's mount, beside the local disk
    Storage(storage::StorageBenchArgs),
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Memory(a) => memory::run(a),
        BenchCmd::Excache(a) => excache::run(a),
        BenchCmd::Storage(a) => storage::run(a),
    }
}

/// The facts every report starts with: the machine, the halt-poll setting
/// and where the threads run.
pub fn environment(placement: &placement::Placement) -> String {
    let halt = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        .map(|s| format!("{} ns", s.trim()))
        .unwrap_or_else(|_| "not available (no haltpoll module)".into());
    // The machine's, not this process's: the bench may have pinned itself.
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| crate::cpus::parse_cpus(s.trim()).ok())
        .map_or_else(
            || std::thread::available_parallelism().map_or(0, |n| n.get()),
            |c| c.len(),
        );
    format!(
        "machine: {cpus} CPUs; guest_halt_poll_ns = {halt}\n{}",
        placement.describe()
    )
}

/// The CPUs a process may run on, from /proc.
pub fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "?".into())
}
