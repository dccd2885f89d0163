//! A real etcd cluster for tests: `n` members of the distribution's etcd
//! (Debian's etcd-server; .ci/run installs it) on loopback ports, each in
//! its own data directory, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    /// Client URLs' host:port of each member.
    pub clients: Vec<String>,
    ports: Vec<(u16, u16)>,
    etcd: PathBuf,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        let etcd = which("etcd")
            .expect("etcd is needed for these tests (apt-get install etcd-server; .ci/run does)");
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut c = EtcdCluster {
            members: (0..n).map(|_| None).collect(),
            clients: ports
                .iter()
                .map(|(c, _)| format!("127.0.0.1:{c}"))
                .collect(),
            ports,
            etcd,
            dir,
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        wait_for(Duration::from_secs(20), "etcd to serve", || {
            c.healthy().then_some(())
        });
        c
    }

    /// Starts member `i` (`state`: "new" at first, "existing" again).
    fn spawn(&mut self, i: usize, state: &str) {
        let initial: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let (client, peer) = self.ports[i];
        let data: PathBuf = self.dir.path().join(format!("e{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("e{i}.log")))
            .unwrap();
        self.members[i] = Some(
            Command::new(&self.etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", state])
                .args(["--max-txn-ops", "10000"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// Starts member `i` again, over its data.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// `etcd://` and every member.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.clients.join(","))
    }

    /// Whether the cluster answers a read (it has a leader).
    fn healthy(&self) -> bool {
        lego_manager::etcd::Etcd::connect(&self.url(), "/health")
            .and_then(|e| e.leader())
            .is_ok()
    }

    /// Kills member `i` (kill -9).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.members[i].take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| Path::new(p).is_file())
    })
}
