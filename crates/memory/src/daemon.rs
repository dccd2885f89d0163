//! `lego memory`: the memory monitor daemon.

use std::sync::Arc;

use lego_agent::{spawn_agent, AgentConfig};
use lego_transport::{
    listen, spawn_server, Identity, Keyring, Revoked, ServerConfig, TransportError,
};
use tracing::info;

use crate::service::MemoryService;
use crate::store::PageStore;

/// How to run a memory monitor.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// Bytes of page memory this monitor may hold.
    pub capacity: u64,
    pub listen: String,
    /// The address others dial [default: the bound address, with an
    /// unspecified IP replaced by this host's address toward the manager].
    pub advertise: Option<String>,
    pub manager: String,
    /// The cluster secret, or this monitor's own member key.
    pub auth: Identity,
    /// Busy-wait after each answer for the next request (see `ServerConfig::spin`).
    pub spin: std::time::Duration,
    /// Seal every connection to this daemon (encrypt and authenticate
    /// each frame after the handshake); clients that ask for plaintext are refused.
    pub seal: bool,
}

/// A running memory monitor.
pub struct RunningMemory {
    pub addr: String,
    pub service: Arc<MemoryService>,
}

/// Starts serving and registering; returns once the listener is bound.
pub fn run(cfg: MemoryConfig) -> Result<RunningMemory, TransportError> {
    let store = Arc::new(PageStore::new(cfg.capacity));
    let service = Arc::new(MemoryService::new(
        store,
        cfg.auth.credentials(&cfg.manager),
    ));
    // The members the manager revoked: refused here, learnt by the agent.
    let revoked = Arc::new(Revoked::default());
    let keys = Keyring::new(cfg.auth.clone()).with_revoked(revoked.clone());
    let seal = keys.seal.clone();
    let listener = listen(&cfg.listen)?;
    let server = spawn_server(
        listener,
        ServerConfig {
            spin: cfg.spin,
            seal: cfg.seal,
            ..ServerConfig::new("memory", keys)
        },
        service.clone(),
    )
    .map_err(|source| TransportError::Listen {
        addr: cfg.listen.clone(),
        source,
    })?;
    let _ = service.server.set(server.counters.clone());
    info!(addr = %server.local_addr, capacity = cfg.capacity, "memory monitor serving");
    let advertised =
        lego_agent::advertised_addr(cfg.advertise.as_deref(), &server.local_addr, &cfg.manager);
    if advertised != server.local_addr {
        info!(%advertised, "advertised to the cluster");
    }
    let s = service.clone();
    let wiped = service.clone();
    spawn_agent(
        AgentConfig {
            manager: cfg.manager,
            auth: cfg.auth,
            revoked,
            seal,
            role: lego_wire::Role::Memory,
            addr: advertised.clone(),
            capacity: cfg.capacity,
            identity: None,
            routes: lego_agent::routes::as_root(),
        },
        Box::new(move || lego_agent::Load {
            used: s.store.pages_held() * lego_wire::PAGE_SIZE as u64,
            counters: s.counters(),
            jobs: Vec::new(),
            vips: Vec::new(),
        }),
        lego_agent::Hooks {
            on_new_identity: Some(Box::new(move |old, new| {
                let n = wiped.store.wipe();
                tracing::warn!(
                    old,
                    new,
                    pages = n,
                    "dropped every page held under the old identity: this monitor was declared dead and may have missed writes"
                );
            })),
            ..lego_agent::Hooks::default()
        },
    )
    .map_err(|source| TransportError::Listen {
        addr: cfg.listen,
        source,
    })?;
    Ok(RunningMemory {
        addr: advertised,
        service,
    })
}
