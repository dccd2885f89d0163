//! `lego processor`: the processor monitor daemon.
//!
//! Checks that the runtime exists (a monitor that would start programs
//! without it would silently run them on local memory), creates the
//! directory where job runtimes write their counters, serves, and registers
//! with the manager as role "processor" with its ExCache as capacity; each
//! heartbeat reports the quotas granted as its use.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lego_agent::{spawn_agent, AgentConfig};
use lego_transport::{listen, spawn_server, Identity, Keyring, Revoked, ServerConfig};
use tracing::info;

use crate::service::{ProcessorService, ServiceConfig};
use crate::{human, ProcessorError};

/// File name of the runtime.
pub const RUNTIME_NAME: &str = "liblego_rt.so";

/// How to run a processor monitor.
#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    /// ExCache bytes to divide among jobs.
    pub excache: u64,
    pub listen: String,
    /// The address others dial [default: the bound address, with an
    /// unspecified IP replaced by this host's address toward the manager].
    pub advertise: Option<String>,
    pub manager: String,
    /// The cluster secret, or this monitor's own member key.
    pub auth: Identity,
    /// `liblego_rt.so`; made absolute here.
    pub runtime: PathBuf,
    /// Where job runtimes write counters [default: a fresh directory under
    /// the system's temporary directory]. Removed at shutdown.
    pub state_dir: Option<PathBuf>,
    /// The `lego` executable whose helper subcommand gives a job its vNode's
    /// mounts ([`crate::enter`]).
    pub enter_exe: PathBuf,
    /// Confine every job ([`lego_jail`]); needs root. `false` runs programs
    /// as this monitor's user in its PID namespace and file system.
    pub confine: bool,
    /// Host paths jobs never see, even under a shared working directory
    /// (the cluster's directories, the secret's file).
    pub hide: Vec<PathBuf>,
    /// Seal every connection to this daemon (encrypt and authenticate
    /// each frame after the handshake); clients that ask for plaintext are refused.
    pub seal: bool,
}

/// Whether jobs can have network namespaces of their own: `ip` (iproute2)
/// runs here and this process may create namespaces. Said once in the log.
fn own_networks() -> bool {
    let ip = std::process::Command::new("ip")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let root = rustix::process::geteuid().is_root();
    if !(ip && root) {
        tracing::warn!(
            ip,
            root,
            "vnode processes will share this host's network: a network namespace per vnode needs root and iproute2's ip"
        );
    }
    ip && root
}

/// A running processor monitor.
pub struct RunningProcessor {
    pub addr: String,
    pub service: Arc<ProcessorService>,
    pub state_dir: PathBuf,
}

impl RunningProcessor {
    /// Kills every job, waits for their cleanup (memory freed at the
    /// manager) up to `timeout`, and removes the state directory.
    pub fn shutdown(&self, timeout: Duration) {
        self.service.shutdown(timeout);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// `liblego_rt.so` next to the running executable (where cargo puts both).
pub fn default_runtime_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(RUNTIME_NAME)))
        .unwrap_or_else(|| PathBuf::from(RUNTIME_NAME))
}

/// The runtime as an absolute path, or why it cannot be used.
pub fn check_runtime(path: &Path) -> Result<PathBuf, ProcessorError> {
    match std::fs::canonicalize(path) {
        Ok(p) if p.is_file() => Ok(p),
        _ => Err(ProcessorError::RuntimeMissing {
            path: path.to_path_buf(),
        }),
    }
}

/// Starts serving and registering; returns once the listener is bound.
pub fn run(cfg: ProcessorConfig) -> Result<RunningProcessor, ProcessorError> {
    let runtime = check_runtime(&cfg.runtime)?;
    if cfg.confine && !rustix::process::geteuid().is_root() {
        return Err(ProcessorError::CannotConfine);
    }
    if !cfg.confine {
        tracing::warn!(
            "jobs run unconfined: each program runs as this monitor's user and can read what it can read"
        );
    }
    let state_dir = cfg.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lego-processor-{}", std::process::id()))
    });
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .map_err(|source| ProcessorError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
    let service = Arc::new(ProcessorService::new(ServiceConfig {
        excache: cfg.excache,
        runtime: runtime.clone(),
        manager: cfg.manager.clone(),
        auth: cfg.auth.clone(),
        state_dir: state_dir.clone(),
        enter_exe: cfg.enter_exe.clone(),
        own_networks: own_networks(),
        confine: cfg.confine,
        hide: cfg.hide.clone(),
    }));
    let revoked = Arc::new(Revoked::default());
    let keys = Keyring::new(cfg.auth.clone()).with_revoked(revoked.clone());
    let seal = keys.seal.clone();
    let listener = listen(&cfg.listen)?;
    let server = spawn_server(
        listener,
        ServerConfig {
            seal: cfg.seal,
            ..ServerConfig::new("processor", keys)
        },
        service.clone(),
    )
    .map_err(ProcessorError::Thread)?;
    let _ = service.server.set(server.counters.clone());
    service.spawn_janitor().map_err(ProcessorError::Thread)?;
    let swept = crate::vnet::sweep_stale();
    if !swept.is_empty() {
        info!(
            ?swept,
            "removed the vnode networks of processor monitors that are gone"
        );
    }
    info!(
        addr = %server.local_addr,
        excache = %human(cfg.excache),
        runtime = %runtime.display(),
        "processor monitor serving"
    );
    let advertised =
        lego_agent::advertised_addr(cfg.advertise.as_deref(), &server.local_addr, &cfg.manager);
    if advertised != server.local_addr {
        info!(%advertised, "advertised to the cluster");
    }
    let on_one_host = advertised
        .rsplit_once(':')
        .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
        .is_none_or(|ip| ip.is_loopback());
    service.set_forwarding(!on_one_host);
    let s = service.clone();
    // Routing the vNode networks runs `ip` and `nft`: on a thread of its own,
    // so that the heartbeats never wait for it.
    let (routes_tx, routes_rx) = std::sync::mpsc::channel::<lego_wire::control::VipRoutes>();
    let routed = service.clone();
    std::thread::Builder::new()
        .name("processor-vnet".into())
        .spawn(move || {
            while let Ok(mut r) = routes_rx.recv() {
                while let Ok(newer) = routes_rx.try_recv() {
                    r = newer;
                }
                routed.sync_routes(r);
            }
        })
        .map_err(ProcessorError::Thread)?;
    let routes_tx = std::sync::Mutex::new(routes_tx);
    let stale = service.clone();
    let dial = service.clone();
    spawn_agent(
        AgentConfig {
            manager: cfg.manager,
            auth: cfg.auth,
            revoked,
            seal,
            role: lego_wire::Role::Processor,
            addr: advertised.clone(),
            capacity: cfg.excache,
            identity: None,
            routes: lego_agent::routes::as_root(),
        },
        Box::new(move || lego_agent::Load {
            used: s.granted(),
            counters: s.counters(),
            jobs: s
                .jobs()
                .iter()
                .filter(|j| j.running())
                .map(|j| j.id)
                .collect(),
            vips: s.vips(),
        }),
        lego_agent::Hooks {
            on_routes: Some(Box::new(move |r| {
                let _ = lego_transport::lock(&routes_tx).send(r.clone());
            })),
            // Jobs' connections to a revoked memory monitor were just
            // aborted; the broker must not make new ones.
            on_revoked: Some(Box::new(move |_| {
                dial.shared.refresh_dialable(Duration::ZERO)
            })),
            on_new_identity: Some(Box::new(move |old, new| {
                stale.drop_jobs(&format!(
                    "this processor monitor was declared dead while the manager could not hear it \
                     (now {new}, was {old}); its jobs were declared lost and their memory freed"
                ));
            })),
        },
    )
    .map_err(ProcessorError::Thread)?;
    Ok(RunningProcessor {
        addr: advertised,
        service,
        state_dir,
    })
}
