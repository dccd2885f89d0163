//! The managers of a [`LocalCluster`]: one on its redb file (the embedded
//! default), or several on one etcd ([`Store::LocalEtcd`] starts a real
//! etcd cluster for them in `DIR/etcd`), of which one leads and the others
//! (`manager-2`, `manager-3`, ...) stand by to take over. Clients are given
//! every manager's address (`A,B,C`) and find the leader among them.

use std::ffi::OsString;

use crate::etcd::EtcdCluster;
use crate::launch::{Daemon, LocalCluster};
use crate::ClusterError;

/// Where the managers keep the cluster's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Store {
    /// A redb file in the cluster's directory, one manager alone.
    #[default]
    Redb,
    /// A new etcd cluster of this many members started for the managers
    /// (its data in `DIR/etcd`, fresh each time).
    LocalEtcd { members: usize },
    /// An etcd cluster already running: `etcd://HOST:PORT[,HOST:PORT...]`.
    Etcd(String),
}

impl Store {
    /// `--store`: `redb`, `etcd` (a local 3-member etcd cluster) or
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(s: &str) -> Result<Store, String> {
        match s {
            "redb" => Ok(Store::Redb),
            "etcd" => Ok(Store::LocalEtcd { members: 3 }),
            url if url.starts_with("etcd://") && url.len() > 7 => Ok(Store::Etcd(url.to_string())),
            other => Err(format!(
                "{other:?} is not a store: redb, etcd (a local etcd cluster) or etcd://HOST:PORT[,...]"
            )),
        }
    }
}

/// The managers of a cluster, for [`crate::Spec::managers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Managers {
    /// How many: more than one needs etcd (one leads, the others stand by).
    pub count: usize,
    pub store: Store,
    /// `--lease-ttl` of managers on etcd, in seconds: a standby leads
    /// within about this long after the leader's host dies.
    pub lease_ttl_s: u64,
}

impl Default for Managers {
    fn default() -> Self {
        Managers {
            count: 1,
            store: Store::Redb,
            lease_ttl_s: 3,
        }
    }
}

impl LocalCluster {
    /// Whether the managers keep the state on etcd (several may run).
    pub fn on_etcd(&self) -> bool {
        self.manager_flags.iter().any(|f| f == "--store")
    }

    /// Starts the managers of `m`: the first is elected (and ready) before
    /// the others start and stand by. Clients get every address.
    pub fn start_managers(&mut self, m: &Managers) -> Result<(), ClusterError> {
        let url = match &m.store {
            Store::Redb if m.count > 1 => {
                return Err(ClusterError::Missing(
                    "several managers need a store they share: --store etcd".into(),
                ))
            }
            Store::Redb => return self.start_manager(),
            Store::LocalEtcd { members } => {
                let etcd = EtcdCluster::start(&self.opts.dir, *members)?;
                let url = etcd.url();
                self.etcd = Some(etcd);
                url
            }
            Store::Etcd(url) => url.clone(),
        };
        self.manager_flags.extend([
            "--store".into(),
            url,
            "--lease-ttl".into(),
            m.lease_ttl_s.to_string(),
        ]);
        // On etcd the leader's key names its address: fixed ones.
        let ip = self.manager_ip();
        let addrs = (0..m.count.max(1))
            .map(|_| free_addr(&ip))
            .collect::<Result<Vec<_>, _>>()?;
        self.manager_addr = addrs[0].clone();
        self.start_manager()?;
        for (i, addr) in addrs.iter().enumerate().skip(1) {
            let name = format!("manager-{}", i + 1);
            let mut args: Vec<OsString> = vec![
                "manager".into(),
                "--listen".into(),
                addr.into(),
                "--http".into(),
                format!("{ip}:0").into(),
                "--heartbeat-ms".into(),
                self.opts.heartbeat_ms.to_string().into(),
                "--db".into(),
                self.opts.dir.join(format!("{name}.redb")).into(),
            ];
            args.extend(self.manager_flags.iter().map(OsString::from));
            let (mut d, _) = self.launch(&name, args)?;
            d.addr = addr.clone();
            self.standbys.push(d);
        }
        self.manager_addr = addrs.join(",");
        Ok(())
    }

    /// Starts a stopped standby manager again: it stands by, so it is not
    /// waited for.
    pub(crate) fn restart_standby(
        &mut self,
        name: &str,
        args: Vec<OsString>,
    ) -> Result<(), ClusterError> {
        let addr = self.daemon(name)?.addr.clone();
        let (mut d, _) = self.launch(name, args)?;
        d.addr = addr;
        *self.daemon(name)? = d;
        Ok(())
    }

    /// The name of the manager that leads now (`manager`, `manager-2`,
    /// ...), as the managers say; and its HTTP address.
    pub fn leader(&self) -> Result<(String, Option<String>), ClusterError> {
        let s = self.state()?;
        self.managers()
            .find(|d| d.addr == s.manager.addr)
            .map(|d| (d.name.clone(), s.manager.http.clone()))
            .ok_or_else(|| ClusterError::NoDaemon(format!("manager at {}", s.manager.addr)))
    }

    /// Every manager, the first started first.
    pub fn managers(&self) -> impl Iterator<Item = &Daemon> {
        self.manager.iter().chain(&self.standbys)
    }

    /// Follows a change of leader: the HTTP address clients are told is
    /// the leader's; rewrites `cluster.json` if it changed.
    pub fn follow_leader(&mut self) -> Result<(), ClusterError> {
        if self.standbys.is_empty() {
            return Ok(());
        }
        let (_, http) = self.leader()?;
        if http.is_some() && http != self.http {
            self.http = http;
            self.write_file()?;
        }
        Ok(())
    }

    /// The address managers listen on: the first host's on a rack, else
    /// loopback.
    fn manager_ip(&self) -> String {
        self.rack()
            .map(|r| r.hosts[0].ip.to_string())
            .unwrap_or_else(|| "127.0.0.1".into())
    }
}

/// `IP:PORT` with a port free on `ip` at the time of asking.
pub(crate) fn free_addr(ip: &str) -> Result<String, ClusterError> {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .map_err(|source| ClusterError::Io {
            what: format!("cannot find a free port on {ip}"),
            source,
        })
}
