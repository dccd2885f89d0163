//! What the processor monitor's request handler and each job's threads
//! share: its configuration, its jobs, the ExCache granted, its counters.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::job::Job;
use crate::manager::ManagerLink;

/// What the service needs to know.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// ExCache bytes this monitor divides among its jobs.
    pub excache: u64,
    /// Absolute path of `liblego_rt.so`.
    pub runtime: PathBuf,
    /// The manager's address (also given to the runtime).
    pub manager: String,
    /// The cluster secret, or this monitor's own member key.
    pub auth: lego_transport::Identity,
    /// Where the runtime of each job writes its counters.
    pub state_dir: PathBuf,
    /// The `lego` executable with the vNode helper ([`crate::enter`]).
    pub enter_exe: PathBuf,
    /// Whether jobs may get a network namespace of their vNode's own (root
    /// and iproute2's `ip` are there).
    pub own_networks: bool,
    /// Whether jobs are confined ([`lego_jail`]): the monitor runs as root.
    pub confine: bool,
    /// Host paths confined jobs never see, even under a shared working
    /// directory (besides `state_dir`).
    pub hide: Vec<PathBuf>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) started: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) killed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) not_entitled: AtomicU64,
    pub(crate) spaces_reaped: AtomicU64,
}

/// What the handler and each job's threads share.
pub(crate) struct Shared {
    pub(crate) cfg: ServiceConfig,
    pub(crate) manager: ManagerLink,
    pub(crate) jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
    /// Sum of the quotas of jobs not yet cleaned up.
    pub(crate) granted: Mutex<u64>,
    pub(crate) counters: Counters,
    /// Memory monitors jobs may be connected to, and when they were asked.
    pub(crate) dialable: Mutex<(Option<Instant>, crate::manager::MemoryMonitors)>,
    /// The vNode networks on this host.
    pub(crate) vnets: crate::vnet::Vnets,
    /// Ports forwarded to jobs (`lego run --publish`), by job.
    pub(crate) published: Mutex<BTreeMap<u64, Vec<crate::publish::Forward>>>,
    /// The runtime counters of finished jobs, summed (see
    /// [`crate::rtstats::RtCounter`]): with the running jobs' counters added they make
    /// totals that never go down while this monitor runs. Taken before a
    /// job's record is marked finished, so that a reader sees each job
    /// counted once.
    pub(crate) finished_rt: Mutex<BTreeMap<String, u64>>,
}
