//! `lego manager`, `lego memory` and `lego processor`: parse flags, start the
//! daemon, stay up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use lego_cluster::cpus::{parse_cpu_list, pin_current_thread, CpuList};
use lego_cluster::dir::write_atomic;
use lego_cluster::size::parse_size;
use lego_cluster::{Encrypt, SecretArgs};
use lego_transport::Identity;
use lego_wire::Role;

/// Flags every daemon has.
#[derive(Args, Clone, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Read flags from this TOML file: its keys are the long flags
    /// (`capacity = "4GiB"`, `secret-file = "/etc/lego/secret"`, lists for
    /// repeated flags, `true` for switches); a flag on the command line wins
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Once serving, write {"addr": ..., "http": ...} to this file (for supervisors)
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Exit when the process with this pid is gone (set by `lego up`)
    #[arg(long, value_name = "PID", hide = true)]
    pub exit_with: Option<u32>,
    /// Run only on these CPUs (e.g. 0, 2-3 or 0,4-7); a processor monitor's
    /// programs run on them too [default: wherever the scheduler puts them]
    #[arg(long, value_parser = parse_cpu_list, value_name = "LIST")]
    pub cpus: Option<CpuList>,
    /// Seal this daemon's links: encrypt and authenticate every frame after
    /// the handshake (AES-256-GCM, keys from an X25519 exchange inside the
    /// handshake), and refuse clients that ask for plaintext. `auto`: on
    /// unless the daemon is reachable only on this host (loopback or Unix
    /// socket); give every daemon of a cluster the same setting
    #[arg(long, value_enum, default_value_t = Encrypt::Auto, value_name = "WHEN")]
    pub encrypt: Encrypt,
    /// Join with this one-time token (from `lego token create --role ROLE`)
    /// instead of holding the cluster secret: the manager gives this daemon
    /// a key of its own, kept in --key-file, that `lego component revoke`
    /// can end without touching any other daemon's (monitors only)
    #[arg(
        long,
        env = "LEGO_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub join_token: Option<String>,
    /// Where this daemon keeps its own key (written at its first join, mode
    /// 0600); once there, the daemon needs neither the secret nor a token
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

impl DaemonArgs {
    /// Whether the daemon seals its links, given the address others dial.
    fn seals(&self, name: &str, listen: &str, advertise: Option<&str>) -> bool {
        let addr = advertise.unwrap_or(listen);
        let seal = self.encrypt.seals(addr);
        // Its own outgoing links too (to other daemons and the manager).
        lego_transport::seal_by_default(seal);
        if seal {
            tracing::info!(
                "{name}: links sealed (--encrypt {:?} at {addr})",
                self.encrypt
            );
        } else {
            tracing::info!(
                "{name}: links in plaintext (--encrypt {:?} at {addr})",
                self.encrypt
            );
        }
        seal
    }

    /// What the daemon proves itself with: its own key (`--key-file`,
    /// joining with `--join-token` the first time), else the cluster secret.
    fn auth(&self, manager: &str, role: Role) -> Result<Identity> {
        match (&self.key_file, &self.join_token) {
            (Some(f), token) => Ok(lego_agent::join::identity(f, token.as_deref(), manager, role)?),
            (None, Some(_)) => anyhow::bail!(
                "--join-token needs --key-file PATH: the key the manager gives is kept there for restarts (a token works once)"
            ),
            (None, None) => Ok(Identity::Secret(self.secret.secret()?)),
        }
    }

    /// Applies `--cpus`; called before the daemon starts any thread.
    fn pin(&self) -> Result<()> {
        match &self.cpus {
            Some(cpus) => Ok(pin_current_thread(&cpus.0)?),
            None => Ok(()),
        }
    }
}

#[derive(Args, Debug)]
pub struct ManagerArgs {
    /// Address to serve components and clients on (HOST:PORT or unix:PATH)
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    pub listen: String,
    /// Address for HTTP (/state JSON, /metrics Prometheus), or "none"
    #[arg(long, default_value = "127.0.0.1:7780", value_name = "ADDR")]
    pub http: String,
    /// The metadata database (redb); survives restarts
    #[arg(long, default_value = "lego-manager.redb", value_name = "PATH")]
    pub db: PathBuf,
    /// Keep the metadata on etcd instead (etcd://HOST:PORT[,HOST:PORT...]):
    /// several managers on one etcd elect a leader, the others stand by
    /// (not listening) and take over when it stops; give each its own
    /// fixed --listen, and clients all of them (--manager A,B,C)
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The etcd key prefix of this cluster's records (with --store etcd)
    #[arg(long, default_value = "/lego", value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// The leader's lease on etcd, in seconds: a leader that cannot renew
    /// it for two thirds of this stops; a standby leads within about this long
    #[arg(long, default_value_t = 4, value_name = "S")]
    pub lease_ttl: u64,
    /// How often components heartbeat, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,
    /// Declare a component dead after this much silence [default: 2 heartbeat intervals]
    #[arg(long, value_name = "MS")]
    pub dead_after_ms: Option<u64>,
    /// Size of a vRegion: the unit of memory placement
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub vregion_size: u64,
    /// Where vNodes' virtual IP addresses come from: vNode N gets the range's
    /// base address plus N
    #[arg(long, default_value = "10.77.0.0/16", value_name = "CIDR")]
    pub vip_range: lego_manager::VipRange,
    /// Even out the memory monitors' use on its own: when the fullest holds
    /// more than PERCENT of its capacity above the emptiest (a monitor that
    /// joined, copies piled up after failures), copies move, one at a time,
    /// looked at every 5 s [default: only on `lego rebalance`]
    #[arg(long, value_name = "PERCENT")]
    pub rebalance: Option<f64>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MemoryArgs {
    #[command(subcommand)]
    pub action: Option<crate::elastic::MemoryCmd>,
    /// Memory this monitor may hold for pages (e.g. 4GiB)
    #[arg(long, value_parser = parse_size, value_name = "SIZE", required = true)]
    pub capacity: Option<u64>,
    /// The manager's address
    #[arg(long, value_name = "ADDR", required = true)]
    pub manager: Option<String>,
    /// Address to serve pages on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// The address other hosts dial to reach this monitor (HOST:PORT)
    /// [default: the --listen address; an unspecified IP (0.0.0.0) is
    /// replaced by this host's address on the route to the manager]. The
    /// manager dials it back at registration and refuses one it cannot reach
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// After each answer, busy-wait this many microseconds for the client's
    /// next request before sleeping (0 turns it off)
    #[arg(long, default_value_t = 50, value_name = "US")]
    pub spin_us: u64,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args, Debug)]
pub struct StorageArgs {
    /// Directory for the vNodes' files (created if missing)
    #[arg(long, value_name = "PATH")]
    pub dir: PathBuf,
    /// The manager's address
    #[arg(long, value_name = "ADDR")]
    pub manager: String,
    /// Address to serve files on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// The address other hosts dial to reach this monitor (HOST:PORT)
    /// [default: the --listen address; an unspecified IP (0.0.0.0) is
    /// replaced by this host's address on the route to the manager]. The
    /// manager dials it back at registration and refuses one it cannot reach
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// Bytes of files each vNode may keep here (data, and 4 KiB per file
    /// or directory); past it, writes fail with EDQUOT [default: no limit
    /// but the disk]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub vnode_disk_quota: Option<u64>,
    /// Files each vNode may have open here at once; past it, opens fail
    /// with EMFILE
    #[arg(long, default_value_t = lego_storage::limits::DEFAULT_MAX_OPEN, value_name = "N")]
    pub vnode_open_files: usize,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Args, Debug)]
pub struct ProcessorArgs {
    /// ExCache to divide among the processes this monitor runs (e.g. 1GiB):
    /// each gets a quota of it for its resident pages
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub excache: u64,
    /// The manager's address
    #[arg(long, value_name = "ADDR")]
    pub manager: String,
    /// Address to serve launches on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// The address other hosts dial to reach this monitor (HOST:PORT)
    /// [default: the --listen address; an unspecified IP (0.0.0.0) is
    /// replaced by this host's address on the route to the manager]. The
    /// manager dials it back at registration and refuses one it cannot reach
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// The ExCache runtime preloaded into every program [default:
    /// liblego_rt.so next to the lego executable]
    #[arg(long, env = "LEGO_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Directory where the runtime of each job writes its counters
    /// [default: a fresh directory under $TMPDIR]; removed at exit
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run programs without confinement: as this monitor's own user, in the
    /// host's PID namespace and file system. Only for a monitor that is not
    /// root (confinement needs root); a program can then read what this
    /// user can read
    #[arg(long)]
    pub unconfined: bool,
    /// A host path confined programs never see, even when it is under the
    /// working directory they are shown (repeatable; `lego up` passes its
    /// directory). The state directory and the secret's file are always
    /// hidden
    #[arg(long, value_name = "PATH")]
    pub hide: Vec<PathBuf>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

fn ready(args: &DaemonArgs, addr: &str, http: Option<&str>) -> Result<()> {
    if let Some(p) = &args.ready_file {
        let doc = serde_json::json!({ "addr": addr, "http": http, "pid": std::process::id() });
        write_atomic(p, doc.to_string().as_bytes())?;
    }
    Ok(())
}

/// Blocks until SIGTERM or SIGINT, or until the watched parent is gone.
fn stay_up(args: &DaemonArgs) -> Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("stopping on signal");
            return Ok(());
        }
        if let Some(pid) = args.exit_with {
            if std::os::unix::process::parent_id() != pid {
                tracing::warn!(pid, "supervising `lego up` is gone; exiting");
                return Ok(());
            }
        }
    }
}

pub fn manager(a: ManagerArgs) -> Result<()> {
    a.daemon.pin()?;
    let secret = a.daemon.secret.secret()?;
    // A standby (--store etcd) waits in `run` until elected: it must still
    // go when its supervisor does.
    if let Some(pid) = a.daemon.exit_with {
        std::thread::Builder::new()
            .name("exit-with".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                if std::os::unix::process::parent_id() != pid {
                    tracing::warn!(pid, "supervising process is gone; exiting");
                    std::process::exit(0);
                }
            })?;
    }
    let http = (a.http != "none").then(|| a.http.clone());
    let m = lego_manager::run(lego_manager::ManagerConfig {
        listen: a.listen.clone(),
        http,
        db: a.db.clone(),
        store: a.store.clone().filter(|s| s != "redb"),
        etcd_prefix: a.etcd_prefix.clone(),
        lease_ttl: std::time::Duration::from_secs(a.lease_ttl.max(2)),
        secret,
        heartbeat_ms: a.heartbeat_ms.max(1),
        dead_after_ms: a.dead_after_ms.unwrap_or(a.heartbeat_ms * 2),
        vregion_bytes: a.vregion_size,
        vips: a.vip_range,
        seal: a.daemon.seals("manager", &a.listen, None),
        rebalance: a.rebalance.map(|p| (p / 100.0).clamp(0.0, 1.0)),
    })
    .context("the manager cannot start")?;
    ready(&a.daemon, &m.addr, m.http.as_deref())?;
    stay_up(&a.daemon)
}

pub fn memory(a: MemoryArgs) -> Result<()> {
    if let Some(cmd) = a.action {
        return crate::elastic::memory(cmd);
    }
    // Both required by the parser when there is no subcommand.
    let manager = a.manager.clone().context("--manager is needed")?;
    let capacity = a.capacity.context("--capacity is needed")?;
    a.daemon.pin()?;
    let auth = a.daemon.auth(&manager, Role::Memory)?;
    let m = lego_memory::run(lego_memory::MemoryConfig {
        capacity,
        listen: a.listen.clone(),
        advertise: a.advertise.clone(),
        manager,
        auth,
        spin: std::time::Duration::from_micros(a.spin_us),
        seal: a
            .daemon
            .seals("memory monitor", &a.listen, a.advertise.as_deref()),
    })
    .context("the memory monitor cannot start")?;
    ready(&a.daemon, &m.addr, None)?;
    stay_up(&a.daemon)
}

pub fn storage(a: StorageArgs) -> Result<()> {
    a.daemon.pin()?;
    let auth = a.daemon.auth(&a.manager, Role::Storage)?;
    let s = lego_storage::run(lego_storage::StorageConfig {
        dir: a.dir.clone(),
        listen: a.listen.clone(),
        advertise: a.advertise.clone(),
        manager: a.manager.clone(),
        auth,
        limits: lego_storage::Limits {
            disk_quota: a.vnode_disk_quota,
            max_open: a.vnode_open_files.max(1),
        },
        seal: a
            .daemon
            .seals("storage monitor", &a.listen, a.advertise.as_deref()),
    })
    .context("the storage monitor cannot start")?;
    ready(&a.daemon, &s.addr, None)?;
    stay_up(&a.daemon)
}

pub fn processor(a: ProcessorArgs) -> Result<()> {
    a.daemon.pin()?;
    let auth = a.daemon.auth(&a.manager, Role::Processor)?;
    let p = lego_processor::run(lego_processor::ProcessorConfig {
        excache: a.excache,
        listen: a.listen.clone(),
        advertise: a.advertise.clone(),
        manager: a.manager.clone(),
        auth,
        runtime: a
            .runtime
            .clone()
            .unwrap_or_else(lego_processor::default_runtime_path),
        state_dir: a.state_dir.clone(),
        enter_exe: std::env::current_exe().context("cannot find the lego executable")?,
        confine: !a.unconfined,
        hide: a
            .hide
            .iter()
            .chain(&a.daemon.secret.secret_file)
            .chain(&a.daemon.key_file)
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect(),
        seal: a
            .daemon
            .seals("processor monitor", &a.listen, a.advertise.as_deref()),
    })
    .map_err(|e| anyhow::anyhow!(lego_processor::chain(&e)))
    .context("the processor monitor cannot start")?;
    ready(&a.daemon, &p.addr, None)?;
    let stayed = stay_up(&a.daemon);
    // Its processes die with it (as with a CPU failure), but cleanly: killed,
    // and their memory freed while the manager can still be told.
    p.shutdown(Duration::from_secs(3));
    stayed
}
