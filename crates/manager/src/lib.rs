//! The global manager (LegoOS's GPM, GMM and GSM in one daemon).
//!
//! - [`db`]: the durable metadata (components, vNodes, vRegion assignments,
//!   id counters) in an embedded redb database.
//! - [`service`]: the request handler around the pure placement state machine
//!   (`lego-placement`): registration, heartbeats, vRegion assignment, address
//!   spaces, vNodes, the cluster state.
//! - [`vnodes`]: vNode requests (mount points, quotas, storage placement,
//!   forced deletion) and memory leases.
//! - [`recovery`]: failovers, re-replication of degraded vRegions, reports
//!   of unreachable memory monitors, and the journal of failures.
//! - [`http`]: the HTTP endpoint: `/state` (JSON) and `/metrics` (Prometheus).
//! - [`daemon`]: `lego manager`: wires them together with the failure detector.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod db;
pub mod http;
pub mod recovery;
pub mod service;
pub mod vnodes;

pub use daemon::{run, ManagerConfig, RunningManager};
pub use vnodes::VipRange;

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("metadata database failed")]
    Db(#[source] Box<redb::Error>),
    #[error("metadata record {what} is corrupt")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot serve")]
    Transport(#[from] lego_transport::TransportError),
    #[error("cannot serve HTTP on {addr}: {reason}")]
    Http { addr: String, reason: String },
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
}

impl ManagerError {
    pub(crate) fn db(e: impl Into<redb::Error>) -> Self {
        ManagerError::Db(Box::new(e.into()))
    }
}
