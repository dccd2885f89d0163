//! The processor monitor (LegoOS's pComponent with its process monitor).
//!
//! A processor monitor runs the processes of vNodes. It owns an ExCache
//! budget (bytes of local memory for the pages of its processes) and gives
//! each process a quota out of it; the process itself runs under the ExCache
//! runtime (`liblego_rt.so`, preloaded), which keeps at most that quota of its
//! pages resident and pages the rest from memory monitors.
//!
//! - [`spawn`]: starting a program: resolving it through `PATH`, the
//!   environment the runtime needs, its own process group, piped stdio.
//! - [`job`]: one running program: its bounded output buffer (long-polled by
//!   `lego run`), its stdin, signals to its process group, its end.
//! - [`manager`]: what the monitor asks of the manager (vNodes, freeing a
//!   finished job's memory everywhere).
//! - [`enter`], [`mounts`], [`vfs`]: a vNode's files for its processes: a
//!   mount namespace of their own with FUSE mounts at the vNode's mount
//!   points, served from the storage monitor that holds the files.
//! - [`service`]: the request handler (`Launch`, `Output`, `Stdin`,
//!   `Signal`, `Jobs`), quotas, the waiter of each job, cleanup.
//! - [`daemon`]: `lego processor`: the server, the agent, shutdown.
#![forbid(unsafe_code)]

pub mod broker;
pub mod daemon;
pub mod enter;
pub mod job;
pub mod launch;
pub mod manager;
pub mod mounts;
pub mod publish;
pub mod rtstats;
pub mod service;
pub mod shared;
pub mod spawn;
pub mod vfs;
pub mod vnet;

use std::path::PathBuf;

use lego_transport::{Reject, TransportError};
use lego_wire::ErrorCode;

pub use daemon::{check_runtime, default_runtime_path, run, ProcessorConfig, RunningProcessor};
pub use lego_wire::error::chain;
pub use lego_wire::types::human;
pub use service::ProcessorService;

/// Everything that can go wrong in a processor monitor.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(
        "the ExCache runtime is not at {}: build it with `cargo build -p lego-rt` \
         (or `cargo build --release` for the whole workspace), or point --runtime or \
         $LEGO_RUNTIME at it",
        path.display()
    )]
    RuntimeMissing { path: PathBuf },
    #[error(
        "confining jobs needs root (user, PID and mount namespaces, an identity per vNode): \
         run the processor monitor as root, or pass --unconfined to run programs as this user"
    )]
    CannotConfine,
    #[error("cannot create the job directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve")]
    Transport(#[from] TransportError),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("the manager at {addr} cannot be asked")]
    Manager {
        addr: String,
        #[source]
        source: TransportError,
    },
    #[error("unknown vnode {0:?}")]
    UnknownVnode(String),
    #[error("the files of vnode {vnode:?} are unavailable: {why}")]
    NoFiles { vnode: String, why: String },
    #[error("cannot publish ports of vnode {vnode}: {why}")]
    CannotPublish { vnode: String, why: String },
    #[error("cannot give vnode {vnode} its network on this host: {why}")]
    NoNetwork { vnode: String, why: String },
    #[error("ExCache exhausted: {requested} requested, {free} free of {capacity}", requested = human(*requested), free = human(*free), capacity = human(*capacity))]
    ExCacheExhausted {
        requested: u64,
        free: u64,
        capacity: u64,
    },
    #[error("bad ExCache quota: {0}")]
    BadQuota(String),
    #[error("no command to run")]
    NoCommand,
    #[error("working directory {} is not usable on this processor monitor", cwd)]
    BadCwd {
        cwd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: command not found")]
    CommandNotFound(String),
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no job {0:#x} on this processor monitor")]
    NoSuchJob(u64),
    #[error("job {0:#x} no longer reads its standard input")]
    StdinClosed(u64),
    #[error("unknown signal {0}")]
    BadSignal(i32),
}

impl ProcessorError {
    /// The protocol's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        use ProcessorError as E;
        match self {
            E::UnknownVnode(_) | E::CommandNotFound(_) | E::NoSuchJob(_) => ErrorCode::NotFound,
            E::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorCode::NotFound
            }
            E::Spawn { .. } | E::StdinClosed(_) => ErrorCode::Conflict,
            E::ExCacheExhausted { .. }
            | E::Manager { .. }
            | E::RuntimeMissing { .. }
            | E::CannotConfine
            | E::NoFiles { .. }
            | E::NoNetwork { .. } => ErrorCode::Unavailable,
            E::CannotPublish { .. } => ErrorCode::BadRequest,
            E::BadQuota(_) | E::NoCommand | E::BadCwd { .. } | E::BadSignal(_) => {
                ErrorCode::BadRequest
            }
            E::StateDir { .. } | E::Transport(_) | E::Thread(_) => ErrorCode::Internal,
        }
    }
}

impl From<ProcessorError> for Reject {
    fn from(e: ProcessorError) -> Self {
        Reject::new(e.code(), chain(&e))
    }
}
