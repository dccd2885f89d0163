//! `lego bench` and `lego chaos`: the subcommands of the `lego` binary that
//! measure and that break things, in a crate of their own (they start
//! clusters, compile C programs, and set up swap, zram, cgroups and loop
//! devices as root, none of which the daemons need).
//!
//! - Benches print measurements side by side with the machine's own floors,
//!   measured in the same run. Every report states where the threads ran
//!   and the guest halt-poll setting, which decide cross-CPU wakeup cost.
//!   Each is a list of configurations ([`excache::Config`]) whose results
//!   are typed rows ([`excache::report::Row`]).
//! - [`chaos`]: checksum-verified programs on a local cluster while its
//!   daemons are killed and restarted at random.
#![forbid(unsafe_code)]

use clap::Subcommand;
use lego_cluster::{ClusterError, LocalCluster, Options, ProcessorSpec, Spec};
use lego_transport::TransportError;

pub mod chaos;
mod child;
mod cprog;
pub mod excache;
mod manager;
mod memory;
mod migrate;
pub(crate) mod placement;
pub mod progress;
mod rtt;
pub mod stats;
mod storage;
mod swap;

/// What stops a bench or a chaos run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start or steer the cluster")]
    Cluster(#[from] ClusterError),
    #[error("{what}")]
    Transport {
        what: String,
        #[source]
        source: TransportError,
    },
    /// The machine cannot do what was asked (a tool, a kernel feature, a flag).
    #[error("{0}")]
    Setup(String),
    /// A program, a check or a configuration failed.
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Interrupted,
    /// A process that cannot be ended (stuck in the kernel).
    #[error("{0}")]
    Stuck(String),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// A bare `?` on an I/O error (where the step says enough on its own).
impl From<std::io::Error> for BenchError {
    fn from(source: std::io::Error) -> Self {
        BenchError::Io {
            what: "an I/O operation failed".into(),
            source,
        }
    }
}

/// Says what an I/O step was about when it fails.
pub(crate) trait IoContext<T> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BenchError::Io {
            what: what(),
            source,
        })
    }
}

/// Says what a call to a daemon was for when it fails.
pub(crate) trait CallContext<T> {
    fn call_for(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CallContext<T> for std::result::Result<T, TransportError> {
    fn call_for(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| BenchError::Transport {
            what: what(),
            source,
        })
    }
}

/// A cluster of this `lego` binary's daemons in a directory of its own,
/// which goes with it.
pub(crate) struct TempCluster(LocalCluster);

impl TempCluster {
    pub(crate) fn start(
        dir: std::path::PathBuf,
        heartbeat_ms: u64,
        spec: &Spec,
        processor: Option<&ProcessorSpec>,
    ) -> Result<TempCluster> {
        let exe = std::env::current_exe().io(|| "cannot find the lego executable".into())?;
        let opts = Options {
            dir,
            exe,
            heartbeat_ms,
            log: None,
        };
        Ok(TempCluster(LocalCluster::start(opts, spec, processor)?))
    }
}

impl std::ops::Deref for TempCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

impl std::ops::DerefMut for TempCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.0
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.0.stop();
        let _ = std::fs::remove_dir_all(&self.0.opts.dir);
    }
}

/// Fails with a message (the benches' `bail!`).
macro_rules! fail {
    ($($t:tt)*) => {
        return Err($crate::BenchError::Failed(format!($($t)*)))
    };
}
pub(crate) use fail;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Page read/write latency and throughput against a memory monitor, beside a bare TCP round trip
    Memory(memory::MemoryBenchArgs),
    /// A program's slowdown under lego at ExCache 100/50/25% of its working set, beside Linux swap under a cgroup limit
    Excache(excache::ExcacheBenchArgs),
    /// File throughput and small-file operations through a vNode's mount, beside the local disk
    Storage(storage::StorageBenchArgs),
    /// A memory monitor drained while a program pages at 25% ExCache: drain throughput beside bare bulk TCP, fault p50/p99 during against before
    Migrate(migrate::MigrateBenchArgs),
    /// The manager's store: placement and lease operations per second and their latency on redb and on etcd, and the time from killing the leader to the next placement served
    Manager(manager::ManagerBenchArgs),
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Memory(a) => memory::run(a),
        BenchCmd::Excache(a) => excache::run(a),
        BenchCmd::Storage(a) => storage::run(a),
        BenchCmd::Migrate(a) => migrate::run(a),
        BenchCmd::Manager(a) => manager::run(a),
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
        .and_then(|s| lego_cluster::cpus::parse_cpus(s.trim()).ok())
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
