//! [`EtcdCluster`]: a real etcd cluster on loopback for a local lego
//! cluster whose managers keep their state there (`lego up --managers 3
//! --store etcd`, `lego chaos --managers 3`, `lego bench manager`, the
//! tests): `n` members of the distribution's etcd (Debian's etcd-server),
//! each with its data in `DIR/etcd/eN` and its log in `DIR/logs/etcd-N.log`,
//! killed, restarted over their data, and stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ClusterError;

/// How long etcd may take to elect a leader and serve.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// A loopback port free at the time of asking.
pub fn free_port() -> Result<u16, ClusterError> {
    let addr = crate::managers::free_addr("127.0.0.1")?;
    Ok(addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0))
}

/// `n` etcd members on loopback.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    /// Each member's client address (`127.0.0.1:PORT`).
    pub clients: Vec<String>,
    ports: Vec<(u16, u16)>,
    etcd: PathBuf,
    dir: PathBuf,
    logs: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members with their data under `dir/etcd` (wiped first)
    /// and logs in `dir/logs`; returns once the cluster serves.
    pub fn start(dir: &Path, n: usize) -> Result<EtcdCluster, ClusterError> {
        let etcd = which("etcd").ok_or_else(|| {
            ClusterError::Missing(
                "etcd is not installed (apt-get install etcd-server); managers on etcd need it"
                    .into(),
            )
        })?;
        let data = dir.join("etcd");
        let _ = std::fs::remove_dir_all(&data);
        let io = |what: String| move |source| ClusterError::Io { what, source };
        std::fs::create_dir_all(&data).map_err(io(format!("cannot create {}", data.display())))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io(format!("cannot create {}", logs.display())))?;
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>, ClusterError>>()?;
        let mut c = EtcdCluster {
            members: (0..n).map(|_| None).collect(),
            clients: ports
                .iter()
                .map(|(c, _)| format!("127.0.0.1:{c}"))
                .collect(),
            ports,
            etcd,
            dir: data,
            logs,
        };
        for i in 0..n {
            c.spawn(i, "new")?;
        }
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while !c.healthy() {
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady {
                    what: format!("etcd ({n} members) did not serve"),
                    secs: HEALTHY_WITHIN.as_secs(),
                    log: c.logs.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// Starts member `i` (`state`: "new" at first, "existing" again).
    fn spawn(&mut self, i: usize, state: &str) -> Result<(), ClusterError> {
        let initial: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let (client, peer) = self.ports[i];
        let path = self.logs.join(format!("etcd-{i}.log"));
        let io = |what: String| move |source| ClusterError::Io { what, source };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("cannot open {}", path.display())))?;
        let err = log
            .try_clone()
            .map_err(io(format!("cannot open {}", path.display())))?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&self.etcd)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("e{i}")))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            // A manager restores every record in one transaction.
            .args(["--max-txn-ops", "10000"])
            // Loopback: a member lost is noticed in half a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("cannot start {}", self.etcd.display())))?;
        self.members[i] = Some(child);
        Ok(())
    }

    /// How many members it was started with.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has no member at all.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Starts member `i` again, over its data.
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.members[i].is_some() {
            return Err(ClusterError::NoDaemon(format!("stopped etcd member {i}")));
        }
        self.spawn(i, "existing")
    }

    /// Kills member `i` (kill -9).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// `etcd://` and every member, for `lego manager --store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.clients.join(","))
    }

    /// Whether some running member says the cluster is healthy (it has a
    /// leader and a quorum).
    pub fn healthy(&self) -> bool {
        self.clients
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.is_some())
            .any(|(addr, _)| health(addr).unwrap_or(false))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// etcd's own `GET /health` on a member's client port.
fn health(addr: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(
        &addr.parse().map_err(std::io::Error::other)?,
        Duration::from_millis(500),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body.contains("\"health\":\"true\""))
}

/// `program` on `$PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
