//! A component's membership with the manager.
//!
//! Every monitor (memory, processor, storage) runs one agent thread: it
//! registers with the manager (role, address, capacity and a random instance id
//! that tells a restart from a reconnect), then heartbeats with its current use
//! and counters at the interval the manager asks for. When the manager is
//! unreachable the agent keeps retrying with backoff, and when the manager no
//! longer knows it (a manager restart without its record, or the component was
//! declared dead) it registers again under its previous id; the manager may
//! answer with a new id (a memory monitor that was declared dead), and the
//! component then drops what it held. The data path never waits for the agent.
//!
//! Each heartbeat's answer lists the members whose keys the operator
//! revoked; the agent puts them in the daemon's [`Revoked`] set, and its
//! server refuses them and closes their connections. A daemon that holds
//! no cluster secret gets its own key by joining with a token ([`join`]).
//!
//! After each heartbeat the agent also keeps this host's routes to vNodes'
//! vIPs ([`routes`]) in step with where the manager says they are served.
#![forbid(unsafe_code)]

pub mod join;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lego_transport::{Client, ClientOptions, Credentials, Identity, Revoked, TransportError};
use lego_wire::control::{HeartbeatReq, RegisterReq};
use lego_wire::{ComponentId, Role};
use tracing::{error, info, warn};

/// What a component reports on each heartbeat.
#[derive(Debug, Default)]
pub struct Load {
    /// Bytes in use.
    pub used: u64,
    pub counters: BTreeMap<String, u64>,
    /// Jobs running here (processor monitors).
    pub jobs: Vec<u64>,
    /// vIPs of the vNode networks served here (processor monitors).
    pub vips: Vec<String>,
}

/// Produces the heartbeat's report.
pub type Report = Box<dyn Fn() -> Load + Send + Sync>;

/// Called when the manager gives the component a new id in place of the
/// one it had (old, new): what it held under the old id is not trusted.
pub type OnNewIdentity = Box<dyn Fn(ComponentId, ComponentId) + Send + Sync>;

/// Who the component is.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub manager: String,
    /// What proves the component to the manager.
    pub auth: Identity,
    /// Filled from heartbeats' answers: the members revoked.
    pub revoked: Arc<Revoked>,
    /// Set from heartbeats' answers: the cluster has members, so every
    /// link of this daemon's server must be sealed ([`lego_transport::Keyring`]).
    pub seal: Arc<AtomicBool>,
    pub role: Role,
    /// Where the component serves.
    pub addr: String,
    pub capacity: u64,
    /// A file that keeps the component's id across restarts, for a
    /// component whose data outlives it (a storage monitor): it registers
    /// again under that id. `None`: a restart is a new component.
    pub identity: Option<std::path::PathBuf>,
    /// Keep this host's routes to vNodes' vIPs ([`routes`]); needs root and
    /// iproute2 (without them: said once, then not tried again).
    pub routes: bool,
}

/// What the agent calls back into the component for.
#[derive(Default)]
pub struct Hooks {
    pub on_new_identity: Option<OnNewIdentity>,
    /// Called with the manager's vIP routes after each heartbeat (a
    /// processor monitor routes its vNode networks with them).
    pub on_routes: Option<OnRoutes>,
    /// Called with the addresses of members newly revoked, before this
    /// host's connections to them are aborted (so that nothing here makes
    /// new ones).
    pub on_revoked: Option<OnRevoked>,
}

/// See [`Hooks::on_revoked`].
pub type OnRevoked = Box<dyn Fn(&[String]) + Send + Sync>;

/// See [`Hooks::on_routes`].
pub type OnRoutes = Box<dyn Fn(&lego_wire::control::VipRoutes) + Send + Sync>;

/// A running agent. `id()` is 0 until the first registration succeeds.
#[derive(Clone)]
pub struct Agent {
    id: Arc<AtomicU64>,
    pub instance: u64,
    /// The heartbeat interval the manager asked for (ms), once known.
    interval_ms: Arc<AtomicU64>,
    /// Whether a heartbeat's answer was heard since this process started
    /// (revocations older than that are taken in without aborting anything:
    /// a process just started has no connections to abort).
    synced: Arc<AtomicBool>,
}

impl Agent {
    pub fn id(&self) -> ComponentId {
        self.id.load(Ordering::Relaxed)
    }
}

/// Starts the agent thread.
pub fn spawn_agent(cfg: AgentConfig, report: Report, hooks: Hooks) -> std::io::Result<Agent> {
    let rnd = lego_wire::auth::random_bytes().map_err(std::io::Error::other)?;
    let instance = u64::from_le_bytes(rnd[..8].try_into().expect("8 bytes")) | 1;
    let kept = cfg
        .identity
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let agent = Agent {
        id: Arc::new(AtomicU64::new(kept)),
        instance,
        interval_ms: Arc::new(AtomicU64::new(1000)),
        synced: Arc::new(AtomicBool::new(false)),
    };
    let a = agent.clone();
    std::thread::Builder::new()
        .name(format!("{}-agent", cfg.role))
        .spawn(move || run(cfg, report, hooks, a))?;
    Ok(agent)
}

fn run(cfg: AgentConfig, report: Report, hooks: Hooks, agent: Agent) {
    let creds = cfg.auth.credentials(&cfg.manager);
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    let mut said = String::new();
    loop {
        let (registered, e) = session(&cfg, &creds, &opts, &report, &hooks, &agent);
        if registered {
            failures = 0;
            backoff = Duration::from_millis(100);
        }
        // Each new reason is said once (a revoked key, say, after the
        // connection it closed), not every retry.
        let why = e.to_string();
        if failures == 0 || why != said {
            match &e {
                TransportError::AuthRefused { .. } => {
                    error!(manager = %cfg.manager, "the manager refuses this component, retrying: {why}")
                }
                _ => warn!(manager = %cfg.manager, "lost the manager, retrying: {why}"),
            }
            said = why;
        }
        failures += 1;
        std::thread::sleep(backoff);
        // A restarted manager declares dead whoever does not come back
        // within a few heartbeats: retry at least every half heartbeat.
        let cap = Duration::from_millis(agent.interval_ms.load(Ordering::Relaxed) / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(2));
        backoff = (backoff * 2).min(cap);
    }
}

/// One connection's worth of registering and heartbeating; returns when the
/// connection fails, with whether it got as far as registering.
fn session(
    cfg: &AgentConfig,
    creds: &Credentials,
    opts: &ClientOptions,
    report: &Report,
    hooks: &Hooks,
    agent: &Agent,
) -> (bool, TransportError) {
    let mut registered = false;
    match session_inner(cfg, creds, opts, report, hooks, agent, &mut registered) {
        Err(e) => (registered, e),
    }
}

fn session_inner(
    cfg: &AgentConfig,
    creds: &Credentials,
    opts: &ClientOptions,
    report: &Report,
    hooks: &Hooks,
    agent: &Agent,
    registered: &mut bool,
) -> Result<std::convert::Infallible, TransportError> {
    let client = Client::connect(&cfg.manager, creds, opts)?;
    loop {
        let previous = match agent.id() {
            0 => None,
            id => Some(id),
        };
        let resp = client
            .call(&RegisterReq {
                role: cfg.role,
                addr: cfg.addr.clone(),
                capacity: cfg.capacity,
                instance: agent.instance,
                previous,
            })
            .inspect_err(|e| {
                if e.remote_code().is_some() {
                    error!(addr = %cfg.addr, "the manager refuses to register this component: {e}");
                }
            })?;
        agent.id.store(resp.id, Ordering::Relaxed);
        *registered = true;
        if let (Some(old), Some(hook)) = (previous, &hooks.on_new_identity) {
            if old != resp.id {
                warn!(
                    old,
                    new = resp.id,
                    "the manager gave this component a new id: it had been declared dead"
                );
                hook(old, resp.id);
            }
        }
        if let Some(p) = &cfg.identity {
            if previous != Some(resp.id) {
                if let Err(e) = std::fs::write(p, resp.id.to_string()) {
                    warn!(path = %p.display(), "cannot keep the component id: {e}");
                }
            }
        }
        info!(id = resp.id, role = %cfg.role, manager = %cfg.manager, "registered with the manager");
        let interval = Duration::from_millis(resp.heartbeat_ms.max(10));
        let mut keeper = routes::Keeper::new(cfg.routes);
        agent
            .interval_ms
            .store(resp.heartbeat_ms.max(10), Ordering::Relaxed);
        loop {
            let load = report();
            let hb = HeartbeatReq {
                id: resp.id,
                instance: agent.instance,
                used: load.used,
                counters: load.counters,
                jobs: load.jobs,
                vips: load.vips,
            };
            let answer = client.call(&hb);
            if let Ok(a) = &answer {
                cfg.seal.fetch_or(a.seal, Ordering::Relaxed);
                let first = !agent.synced.swap(true, Ordering::Relaxed);
                revoked(cfg, hooks, a, first);
            }
            match answer {
                Ok(_) if keeper.enabled() || hooks.on_routes.is_some() => {
                    if let Ok(r) = client.call(&lego_wire::control::VipRoutesReq) {
                        keeper.apply(&r);
                        if let Some(f) = &hooks.on_routes {
                            f(&r);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e.remote_code().is_some() => {
                    warn!(
                        id = resp.id,
                        "manager refused the heartbeat, registering again: {e}"
                    );
                    break;
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(interval);
        }
    }
}

/// Takes in the members the manager says are revoked: the server refuses
/// them and closes their connections ([`Revoked`]); connections from this
/// host to where a newly revoked member serves are aborted.
fn revoked(cfg: &AgentConfig, hooks: &Hooks, a: &lego_wire::identity::HeartbeatResp, first: bool) {
    let new: Vec<u32> = a
        .revoked
        .iter()
        .copied()
        .filter(|m| !cfg.revoked.contains(*m))
        .collect();
    if new.is_empty() {
        return;
    }
    cfg.revoked.extend(new.iter().copied());
    if first {
        info!(members = ?new, "members revoked before this daemon started: refused here");
        return;
    }
    warn!(members = ?new, "the manager says these members' keys are revoked: refused here from now on");
    let addrs: Vec<String> = new
        .iter()
        .filter_map(|m| a.revoked_addrs.get(m).cloned())
        .filter(|addr| *addr != cfg.addr)
        .collect();
    if let Some(f) = &hooks.on_revoked {
        f(&addrs);
    }
    for addr in &addrs {
        match lego_transport::link::sever(addr) {
            Ok(n) => {
                info!(%addr, connections = n, "aborted this host's connections to a revoked member")
            }
            Err(e) => warn!(%addr, "cannot abort the connections to a revoked member: {e}"),
        }
    }
}

/// The address a component registers with the manager, the one others
/// dial: `advertise` if given; else the address it is bound to, with an
/// unspecified IP (`0.0.0.0`, `::`) replaced by this host's address on the
/// route to the manager (found by connecting a UDP socket, which sends
/// nothing). The manager dials it back at registration and refuses one it
/// cannot reach, saying so.
pub fn advertised_addr(advertise: Option<&str>, bound: &str, manager: &str) -> String {
    use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
    if let Some(a) = advertise {
        return a.to_string();
    }
    let Ok(sa) = bound.parse::<SocketAddr>() else {
        return bound.to_string();
    };
    if !sa.ip().is_unspecified() {
        return bound.to_string();
    }
    // With several managers (A,B,C), the route to the first.
    let manager = manager.split(',').next().unwrap_or(manager);
    let route = manager
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|m| {
            let any = if m.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = UdpSocket::bind(any).ok()?;
            s.connect(m).ok()?;
            s.local_addr().ok()
        });
    match route {
        Some(l) => SocketAddr::new(l.ip(), sa.port()).to_string(),
        None => bound.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::advertised_addr;

    #[test]
    fn advertises_what_others_can_dial() {
        assert_eq!(
            advertised_addr(Some("10.0.0.5:7000"), "0.0.0.0:7000", "127.0.0.1:1"),
            "10.0.0.5:7000",
            "--advertise wins"
        );
        assert_eq!(
            advertised_addr(None, "127.0.0.1:7000", "127.0.0.1:1"),
            "127.0.0.1:7000"
        );
        assert_eq!(
            advertised_addr(None, "0.0.0.0:7000", "127.0.0.1:1"),
            "127.0.0.1:7000",
            "the route to a manager on loopback is loopback"
        );
        assert_eq!(
            advertised_addr(None, "unix:/tmp/m.sock", "127.0.0.1:1"),
            "unix:/tmp/m.sock"
        );
    }
}
