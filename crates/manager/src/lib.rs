//! The global manager (LegoOS's GPM, GMM and GSM in one daemon).
//!
//! - [`state`]: the placement state machine (`lego-placement`, which holds
//!   everything durable) and its [`store`] (redb) behind one lock: every
//!   change is durable before it is answered.
//! - [`service`]: the request handler, a thin shell around the state: one
//!   typed request, one method; entitlement checks; the cluster state.
//! - [`spaces`]: address spaces (create, place vRegions, lease, fork, release).
//! - [`vnodes`]: vNode requests (mount points, quotas, storage placement,
//!   forced deletion).
//! - [`recovery`]: what placement events mean (deaths, failovers), the
//!   re-replication worker, reports of missed writes and unreachable
//!   memory monitors; its [`journal`] is what `lego status` shows.
//! - [`identity`]: join tokens, members with keys of their own, revocation
//!   (durable, and looked up by every handshake); [`members`]: its requests.
//! - [`migrate`]: drains and rebalancing: the mover that copies vRegions
//!   off live memory monitors and commits the moves.
//! - [`peers`]: what the manager asks of other components.
//! - [`vip`]: vNodes' virtual IP addresses; [`vnet`]: where they are
//!   served, for every host's routes.
//! - [`http`]: the HTTP endpoint: `/metrics` ([`metrics`], Prometheus
//!   text), and with the cluster's token `/state` (JSON), the dashboard at
//!   `/` and the [`history`] its charts draw.
//! - [`daemon`]: `lego manager`: wires them together with the failure detector.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod etcd;
pub mod history;
pub mod http;
pub mod identity;
pub mod journal;
pub mod members;
pub mod metrics;
pub mod migrate;
pub mod peers;
pub mod reachable;
pub mod recovery;
pub mod service;
pub mod spaces;
pub mod state;
pub mod store;
pub mod vip;
pub mod vnet;
pub mod vnodes;

pub use daemon::{run, ManagerConfig, RunningManager};
pub use vip::VipRange;

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
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("this manager is no longer the leader (another was elected): it stops")]
    Deposed,
}

impl ManagerError {
    pub(crate) fn db(e: impl Into<redb::Error>) -> Self {
        ManagerError::Db(Box::new(e.into()))
    }
}
