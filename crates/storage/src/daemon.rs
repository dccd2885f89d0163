//! `lego storage`: the storage monitor daemon.

use std::path::PathBuf;
use std::sync::Arc;

use lego_agent::{spawn_agent, AgentConfig};
use lego_transport::{
    listen, spawn_server, Identity, Keyring, Revoked, ServerConfig, TransportError,
};
use tracing::info;

use crate::service::StorageService;
use crate::store::FileStore;

/// How to run a storage monitor.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Where the vNodes' files live.
    pub dir: PathBuf,
    pub listen: String,
    /// The address others dial [default: the bound address, with an
    /// unspecified IP replaced by this host's address toward the manager].
    pub advertise: Option<String>,
    pub manager: String,
    /// The cluster secret, or this monitor's own member key.
    pub auth: Identity,
    /// Per-vNode disk quota and open-file limit.
    pub limits: crate::Limits,
    /// Seal every connection to this daemon (encrypt and authenticate
    /// each frame after the handshake); clients that ask for plaintext are refused.
    pub seal: bool,
}

/// A running storage monitor.
pub struct RunningStorage {
    pub addr: String,
    pub service: Arc<StorageService>,
}

/// Why a storage monitor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot use {dir} for files")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Starts serving and registering; returns once the listener is bound.
pub fn run(cfg: StorageConfig) -> Result<RunningStorage, StorageError> {
    let store =
        FileStore::open(cfg.dir.clone(), cfg.limits).map_err(|source| StorageError::Dir {
            dir: cfg.dir.clone(),
            source,
        })?;
    let service = Arc::new(StorageService::new(Arc::new(store)));
    // The members the manager revoked: refused here, learnt by the agent.
    let revoked = Arc::new(Revoked::default());
    let keys = Keyring::new(cfg.auth.clone()).with_revoked(revoked.clone());
    let seal = keys.seal.clone();
    let listener = listen(&cfg.listen)?;
    let server = spawn_server(
        listener,
        ServerConfig {
            seal: cfg.seal,
            ..ServerConfig::new("storage", keys)
        },
        service.clone(),
    )
    .map_err(|source| TransportError::Listen {
        addr: cfg.listen.clone(),
        source,
    })?;
    let _ = service.server.set(server.counters.clone());
    let (capacity, _) = service.store.disk();
    info!(addr = %server.local_addr, dir = %cfg.dir.display(), capacity, "storage monitor serving");
    let advertised =
        lego_agent::advertised_addr(cfg.advertise.as_deref(), &server.local_addr, &cfg.manager);
    if advertised != server.local_addr {
        info!(%advertised, "advertised to the cluster");
    }
    let s = service.clone();
    spawn_agent(
        AgentConfig {
            manager: cfg.manager,
            auth: cfg.auth,
            revoked,
            seal,
            role: lego_wire::Role::Storage,
            addr: advertised.clone(),
            capacity,
            // Its files outlive it: after a restart it is the same storage
            // monitor, holding the same vNodes.
            identity: Some(cfg.dir.join("component-id")),
            routes: lego_agent::routes::as_root(),
        },
        Box::new(move || {
            let (total, free) = s.store.disk();
            lego_agent::Load {
                used: total.saturating_sub(free),
                counters: s.counters(),
                jobs: Vec::new(),
                vips: Vec::new(),
            }
        }),
        lego_agent::Hooks::default(),
    )
    .map_err(|source| TransportError::Listen {
        addr: cfg.listen,
        source,
    })?;
    Ok(RunningStorage {
        addr: advertised,
        service,
    })
}
