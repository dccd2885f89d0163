//! A lego cluster on one machine, and how clients find a cluster.
//!
//! - [`launch`]: [`LocalCluster`], the daemons (a manager, memory monitors,
//!   a storage monitor, a processor monitor) as child processes of the
//!   `lego` binary on loopback, each in its own process group with its log
//!   in `DIR/logs`, told to exit when their supervisor is gone; killed,
//!   signalled, restarted and added to at will. `lego up`, `lego run`'s
//!   embedded cluster, the benches, `lego chaos` and the integration tests
//!   all start clusters with it.
//! - [`dir`]: a cluster's directory (its secret, `cluster.json`) and
//!   [`Target`], where its manager is.
//! - [`managers`]: one manager on redb, or several on etcd (one leads), and
//!   [`etcd`], a real etcd cluster started for them.
//! - [`rack`]: hosts as network namespaces on a bridge with shaped links,
//!   for a cluster spread over "hosts" on one machine (`lego up --hosts N`).
//! - [`args`]: the flags by which commands find a cluster.
//! - [`cpus`], [`size`]: CPU lists with pinning, and sizes and durations as
//!   people write them.
#![forbid(unsafe_code)]

pub mod args;
pub mod cpus;
pub mod dir;
pub mod etcd;
pub mod launch;
pub mod managers;
pub mod rack;
pub mod size;

use std::path::PathBuf;

pub use args::{ClusterArgs, Encrypt, SecretArgs};
pub use cpus::CpuList;
pub use dir::{ClusterFile, Target};
pub use launch::{Daemon, LocalCluster, Options, ProcessorSpec, RackSpec, Spec};
pub use managers::{Managers, Store};
pub use nix::sys::signal::Signal;

/// `lego run`'s exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// `lego run`'s exit status when the command cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// `lego run`'s exit status when lego itself fails.
pub const EXIT_LEGO_FAILED: i32 = 125;

/// What can go wrong starting or steering a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cluster secret: pass --secret-file PATH or set LEGO_SECRET \
         (`lego up` writes one to DIR/secret)"
    )]
    NoSecret,
    #[error("bad cluster secret in {}: {why}", path.display())]
    BadSecret { path: PathBuf, why: String },
    #[error(
        "no running lego cluster in {} (no cluster.json): start one with `lego up --dir {}`, \
         or point at one with --dir, $LEGO_DIR or --manager",
        dir.display(), dir.display()
    )]
    NotRunning { dir: PathBuf },
    #[error("corrupt {}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("a lego cluster is already running in {} (lego up, pid {pid}): stop it, or use another --dir", dir.display())]
    AlreadyRunning { dir: PathBuf, pid: u32 },
    #[error("the {name} exited ({status}) before it was ready:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("{what} within {secs} s; see {}", log.display())]
    NotReady {
        what: String,
        secs: u64,
        log: PathBuf,
    },
    /// A rack of network namespaces cannot be made or used.
    #[error("{0}")]
    Rack(String),
    #[error("cannot reach {what}")]
    Unreachable {
        what: String,
        #[source]
        source: lego_transport::TransportError,
    },
    #[error("no {0}")]
    NoDaemon(String),
    /// Something the cluster needs is not there (a program, a setting).
    #[error("{0}")]
    Missing(String),
    #[error(
        "cannot run on CPUs {cpus} (does this machine have them, and may this process use them?)"
    )]
    Pin {
        cpus: String,
        #[source]
        source: nix::Error,
    },
}
