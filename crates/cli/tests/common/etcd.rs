//! A real etcd cluster for tests ([`lego_cluster::etcd::EtcdCluster`], the
//! one `lego up --store etcd` starts, in a directory of its own), and
//! [`Blackhole`]: a TCP relay in front of etcd that can stop passing bytes
//! without closing anything, as a firewall dropping a host's packets would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use lego_cluster::etcd::EtcdCluster;

/// An etcd cluster and the directory it lives in.
pub struct Etcd {
    pub cluster: EtcdCluster,
    _dir: tempfile::TempDir,
}

/// `n` etcd members on loopback, serving.
pub fn start(n: usize) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), n)
        .expect("etcd is needed for these tests (apt-get install etcd-server; .ci/run does)");
    Etcd { cluster, _dir: dir }
}

impl std::ops::Deref for Etcd {
    type Target = EtcdCluster;
    fn deref(&self) -> &EtcdCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut EtcdCluster {
        &mut self.cluster
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    lego_cluster::etcd::free_port().unwrap()
}

/// Relays every member of an etcd cluster on ports of its own; once cut,
/// it passes nothing more either way on any connection, old or new, and
/// closes none (the peer sees silence, not an error).
pub struct Blackhole {
    /// `etcd://` and every relay: the store URL of whoever is to be cut off.
    pub url: String,
    cut: Arc<AtomicBool>,
}

impl Blackhole {
    pub fn new(etcd: &EtcdCluster) -> Blackhole {
        let cut = Arc::new(AtomicBool::new(false));
        let mut relays = Vec::new();
        for upstream in &etcd.clients {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            relays.push(l.local_addr().unwrap().to_string());
            let (cut, upstream) = (cut.clone(), upstream.clone());
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    let Ok(up) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    pump(conn.try_clone().unwrap(), up.try_clone().unwrap(), &cut);
                    pump(up, conn, &cut);
                }
            });
        }
        Blackhole {
            url: format!("etcd://{}", relays.join(",")),
            cut,
        }
    }

    /// From now on nothing passes.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; once `cut`, reads and drops.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &Arc<AtomicBool>) {
    let cut = cut.clone();
    std::thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(_) if cut.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        // Cut off: keep both ends open and silent.
        if cut.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(3600));
        }
    });
}
