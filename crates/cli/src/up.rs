//! `lego up`: a local cluster on loopback, or spread over a rack of network
//! namespaces (`--hosts N`), (a manager, memory monitors, a storage monitor
//! and a processor monitor) until Ctrl-C, started with
//! [`lego_cluster::LocalCluster`]. Once every daemon has registered with
//! the manager, `DIR/cluster.json` tells clients where the manager is.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use lego_cluster::cpus::{parse_cpu_list, CpuList};
use lego_cluster::dir::default_dir;
use lego_cluster::size::{human, parse_size};
use lego_cluster::{LocalCluster, Managers, Options, ProcessorSpec, Spec, Store};
use tracing::{info, warn};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many memory monitors to start
    #[arg(long, default_value_t = 2)]
    pub memory_monitors: usize,
    /// Capacity of each memory monitor
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub capacity: u64,
    /// Directory for the secret, the manager's database, logs and cluster.json
    /// [default: $LEGO_DIR, else ~/.lego]
    #[arg(long, env = "LEGO_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Heartbeat interval of the cluster, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,
    /// ExCache of the processor monitor: local memory divided among the
    /// processes it runs (each gets a quota; the rest of their memory lives on
    /// the memory monitors)
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub excache: u64,
    /// The ExCache runtime for the processor monitor [default: liblego_rt.so
    /// next to the lego executable]
    #[arg(long, env = "LEGO_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Run the memory monitors only on these CPUs (e.g. 1 or 2-3)
    #[arg(long, value_parser = parse_cpu_list, value_name = "LIST")]
    pub memory_cpus: Option<CpuList>,
    /// Run the processor monitor and its programs only on these CPUs
    #[arg(long, value_parser = parse_cpu_list, value_name = "LIST")]
    pub processor_cpus: Option<CpuList>,
    /// Spread the cluster over N hosts made on this machine: network
    /// namespaces on one bridge, addresses 10.99.0.1 to 10.99.0.N, the
    /// manager on the first, each monitor on the next (needs root and
    /// iproute2). Clients (`lego status`, `lego run`) join the first host on
    /// their own; everything is removed at exit, or by the next `lego up`
    /// if this one was killed
    #[arg(long, value_name = "N")]
    pub hosts: Option<usize>,
    /// Shape each host's link to this rate in both directions, in tc's
    /// syntax (e.g. 10gbit, 1gbit, 100mbit); only with --hosts
    #[arg(long, value_name = "RATE", requires = "hosts")]
    pub link: Option<String>,
    /// Seal the daemons' links (`auto`: sealed with --hosts, plaintext on
    /// loopback); see `lego manager --help`
    #[arg(long, value_enum, default_value_t = lego_cluster::Encrypt::Auto, value_name = "WHEN")]
    pub encrypt: lego_cluster::Encrypt,
    /// Start the monitors as a real deployment would: each joins with a
    /// one-time token and keeps a key of its own in DIR/keys (never the
    /// cluster secret), so `lego component revoke ID` can end one alone
    #[arg(long)]
    pub join: bool,
    /// How many managers: more than one needs --store etcd; one leads, the
    /// others stand by and take over if its host dies
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub managers: usize,
    /// Where the managers keep the cluster's state: `redb` (a file in DIR,
    /// one manager), `etcd` (a new 3-member etcd cluster started here, its
    /// data in DIR/etcd; needs the etcd binary, Debian's etcd-server) or
    /// `etcd://HOST:PORT[,HOST:PORT...]` (an etcd already running)
    #[arg(long, default_value = "redb", value_parser = Store::parse, value_name = "STORE")]
    pub store: Store,
    /// The leader manager's lease on etcd, in seconds: a standby leads
    /// within about this long after the leader's host dies
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub lease_ttl: u64,
}

pub fn run(a: UpArgs) -> Result<()> {
    if a.managers > 1 && a.store == Store::Redb {
        anyhow::bail!(
            "--managers {} needs a store they share: add --store etcd",
            a.managers
        );
    }
    if a.memory_monitors < 2 {
        warn!("with fewer than two memory monitors no vRegion can be placed (each needs a primary and a backup)");
    }
    // The processor monitor would refuse to start without the runtime: say
    // so before starting anything.
    let runtime = a
        .runtime
        .clone()
        .unwrap_or_else(lego_processor::default_runtime_path);
    lego_processor::check_runtime(&runtime)
        .map_err(|e| anyhow::anyhow!(lego_processor::chain(&e)))?;
    let dir = a.dir.clone().unwrap_or_else(default_dir);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let opts = Options {
        dir: dir.clone(),
        exe: std::env::current_exe().context("cannot find the lego executable")?,
        heartbeat_ms: a.heartbeat_ms,
        log: None,
    };
    let spec = Spec {
        memory_monitors: a.memory_monitors,
        capacity: a.capacity,
        memory_cpus: a.memory_cpus.clone(),
        storage: true,
        encrypt: a.encrypt,
        join: a.join,
        manager_args: Vec::new(),
        rack: a.hosts.map(|hosts| lego_cluster::RackSpec {
            hosts,
            link: a.link.clone(),
        }),
        managers: Managers {
            count: a.managers.max(1),
            store: a.store.clone(),
            lease_ttl_s: a.lease_ttl.max(1),
        },
    };
    let processor = ProcessorSpec {
        excache: a.excache,
        runtime: a.runtime.clone(),
        cpus: a.processor_cpus.clone(),
    };
    let mut cluster = LocalCluster::start(opts, &spec, Some(&processor))?;
    let dir_flag = if a.dir.is_some() {
        format!(" --dir {}", dir.display())
    } else {
        String::new()
    };
    println!("lego cluster up in {}", dir.display());
    if cluster.standbys.is_empty() {
        println!("  manager          {}", cluster.manager_addr);
    } else {
        for d in cluster.managers() {
            let role = if d.name == "manager" {
                "leads"
            } else {
                "stands by"
            };
            println!("  {:<16} {} ({role})", d.name, d.addr);
        }
    }
    if let Some(e) = &cluster.etcd {
        println!(
            "  etcd             {} ({} members, data in {})",
            e.url(),
            e.len(),
            dir.join("etcd").display()
        );
    } else if let Store::Etcd(url) = &a.store {
        println!("  etcd             {url}");
    }
    if let Some(h) = &cluster.http {
        println!("  metrics          http://{h}/metrics");
        println!("  state            http://{h}/state (Authorization: Bearer $(lego http-token --dir {}))", dir.display());
    }
    for (i, m) in cluster.memories.iter().enumerate() {
        println!(
            "  memory monitor {} {} ({})",
            i + 1,
            m.addr,
            human(a.capacity)
        );
    }
    if let Some(p) = &cluster.processor {
        println!(
            "  processor        {} ({} ExCache)",
            p.addr,
            human(a.excache)
        );
    }
    if let Some(s) = &cluster.storage {
        println!(
            "  storage          {} (files in {})",
            s.addr,
            dir.join("storage").display()
        );
    }
    if let Some(r) = cluster.rack() {
        println!(
            "  hosts            {} network namespaces on a bridge ({}), links {}",
            r.hosts.len(),
            r.hosts
                .iter()
                .map(|h| h.ns.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            r.rate.as_deref().unwrap_or("unshaped")
        );
    }
    println!("  secret           {}", dir.join("secret").display());
    println!("  logs             {}", dir.join("logs").display());
    println!("run programs with `lego run{dir_flag} -- CMD`, see it with `lego status{dir_flag}`; Ctrl-C stops the cluster");
    let mut ticks = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for gone in cluster.check_children() {
            warn!("{gone}; see {}", dir.join("logs").display());
        }
        ticks += 1;
        if ticks.is_multiple_of(10) {
            // After a failover, clients' HTTP address is the new leader's.
            if let Err(e) = cluster.follow_leader() {
                tracing::debug!("cannot find the leading manager: {e}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    info!("stopping the cluster");
    cluster.stop();
    println!("lego cluster stopped");
    Ok(())
}
