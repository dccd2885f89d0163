//! `lego manager`: opens the database, restores the placement state, serves
//! requests and HTTP, and runs the failure detector.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lego_placement::{Placement, PlacementConfig};
use lego_transport::{listen, spawn_server, Keyring, ServerConfig};
use lego_wire::auth::Secret;
use tracing::info;

use crate::identity::Identities;
use crate::recovery::FailedCopies;
use crate::service::{ManagerService, ServiceConfig};
use crate::store::Db;
use crate::ManagerError;

/// How to run a manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub listen: String,
    /// Where to serve HTTP (`None`: not at all).
    pub http: Option<String>,
    /// The redb file holding the metadata (unless `store` names etcd).
    pub db: PathBuf,
    /// `etcd://HOST:PORT[,HOST:PORT...]`: the metadata on etcd, this
    /// manager one of several that elect a leader there; it stands by
    /// (not listening) until elected. `None`: redb, alone.
    pub store: Option<String>,
    /// The etcd key prefix of this cluster's records.
    pub etcd_prefix: String,
    /// The leader's lease on etcd: a leader that cannot renew it for two thirds
    /// of this stops; a standby takes over within about this long.
    pub lease_ttl: Duration,
    pub secret: Secret,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub vregion_bytes: u64,
    /// Where vNodes' virtual IP addresses come from.
    pub vips: crate::vip::VipRange,
    /// Seal every connection to this daemon (encrypt and authenticate
    /// each frame after the handshake); clients that ask for plaintext are refused.
    pub seal: bool,
    /// See [`ServiceConfig::rebalance`].
    pub rebalance: Option<f64>,
}

/// A running manager.
pub struct RunningManager {
    pub addr: String,
    pub http: Option<String>,
    pub service: Arc<ManagerService>,
}

/// Starts the manager; returns once it is listening.
pub fn run(cfg: ManagerConfig) -> Result<RunningManager, ManagerError> {
    let db = match &cfg.store {
        None => Db::open(&cfg.db)?,
        Some(url) => {
            let mut etcd = crate::etcd::Etcd::connect(url, &cfg.etcd_prefix)?;
            info!(store = %url, listen = %cfg.listen, "standing by until elected leader");
            etcd.campaign(&cfg.listen, cfg.lease_ttl, |leader| match leader {
                Some(l) => info!(leader = %l, "standing by: another manager leads"),
                None => info!("standing by: no leader yet"),
            })?;
            etcd.keep_leading(cfg.lease_ttl, |why| {
                tracing::error!("{why}: this manager may no longer be the leader; it stops now");
                std::process::exit(3);
            })?;
            Db::on_etcd(etcd)
        }
    };
    let records = db.load()?;
    info!(
        store = %db.describe(),
        db = %cfg.db.display(),
        components = records.components.len(),
        vnodes = records.vnodes.len(),
        vregions = records.vregions.len(),
        "metadata loaded"
    );
    // Components get a longer grace after a restart than a silent one gets
    // normally: they must notice the manager is back and register again,
    // and a memory monitor wrongly declared dead would lose its pages.
    let grace = cfg.dead_after_ms.max(2_000);
    let pcfg = PlacementConfig {
        dead_after_ms: cfg.dead_after_ms,
        // Every component silent at once means this manager is cut off
        // (or was paused): it declares none of them dead.
        isolation_guard: true,
    };
    let placement = Placement::restore(pcfg, grace, records);
    let identities = Arc::new(Identities::load(&db)?);
    let svc = Arc::new(ManagerService::new(
        placement,
        db,
        ServiceConfig {
            heartbeat_ms: cfg.heartbeat_ms,
            dead_after_ms: cfg.dead_after_ms,
            vregion_bytes: cfg.vregion_bytes,
            vips: cfg.vips,
            rebalance: cfg.rebalance,
        },
        &cfg.secret,
        identities.clone(),
    ));
    let keys = Keyring::from(cfg.secret.clone())
        .with_revoked(identities.revoked.clone())
        .with_seal(identities.seal.clone())
        .with_tokens(identities.token_keys());
    let server = spawn_server(
        listen(&cfg.listen)?,
        ServerConfig {
            seal: cfg.seal,
            ..ServerConfig::new("manager", keys)
        },
        svc.clone(),
    )
    .map_err(ManagerError::Thread)?;
    let http = match &cfg.http {
        Some(a) => Some(crate::http::serve(a, svc.clone())?),
        None => None,
    };
    let _ = svc.addrs.set((server.local_addr.clone(), http.clone()));
    let s = svc.clone();
    let period = Duration::from_millis((cfg.heartbeat_ms / 10).clamp(5, 100));
    std::thread::Builder::new()
        .name("manager-detector".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            s.tick();
        })
        .map_err(ManagerError::Thread)?;
    let s = svc.clone();
    let every = Duration::from_millis(cfg.heartbeat_ms.max(100));
    std::thread::Builder::new()
        .name("manager-routes".into())
        .spawn(move || crate::vnet::keep_routes(s, every))
        .map_err(ManagerError::Thread)?;
    // Re-replication and moves (drains, rebalancing): each a loop of
    // rounds, pausing only when a round found nothing to do.
    let s = svc.clone();
    worker("manager-recovery", period, move |failed| {
        s.recover_once(failed)
    })?;
    let s = svc.clone();
    worker("manager-mover", period, move |failed| s.move_once(failed))?;
    info!(addr = %server.local_addr, http = ?http, heartbeat_ms = cfg.heartbeat_ms,
        dead_after_ms = cfg.dead_after_ms, "manager serving");
    Ok(RunningManager {
        addr: server.local_addr,
        http,
        service: svc,
    })
}

/// Runs `round` for ever on a thread named `name`, pausing `period` after a
/// round that had nothing to do; the copies that failed lately are its own.
fn worker(
    name: &str,
    period: Duration,
    round: impl Fn(&mut FailedCopies) -> bool + Send + 'static,
) -> Result<(), ManagerError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut failed = FailedCopies::new();
            loop {
                if !round(&mut failed) {
                    std::thread::sleep(period);
                }
            }
        })
        .map(drop)
        .map_err(ManagerError::Thread)
}
