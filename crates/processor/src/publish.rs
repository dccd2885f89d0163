//! `lego run --publish [HOSTPORT:]PORT`: a port of the processor host
//! forwarded to a port of the job's vIP, as `docker run -p` does, for as
//! long as the job runs.
//!
//! ```text
//! client --> processor host 0.0.0.0:HOSTPORT --(this monitor)--> VIP:PORT (the vNode's netns)
//! ```
//!
//! Each accepted connection is joined to a fresh connection to the vIP by
//! two copying threads; either side closing closes both. At most
//! [`MAX_CONNECTIONS`] at once per port (more are closed at once). The
//! forward ends with its job: no new connection is taken and those open
//! are shut down.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lego_transport::lock;
use std::time::Duration;

use tracing::{debug, info, warn};

/// Connections at once through one published port.
pub const MAX_CONNECTIONS: usize = 256;

/// The open connections of a forward (both ends of each), by number.
type Open = Arc<Mutex<HashMap<u64, (TcpStream, Option<TcpStream>)>>>;

/// One forwarded port.
pub(crate) struct Forward {
    /// Where clients connect (the processor host's port).
    pub host: SocketAddr,
    /// Where their connections go.
    pub target: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Open,
}

impl Forward {
    /// Starts forwarding `host_port` (0: any free one) of every address of
    /// this host to `vip:port`.
    pub fn start(host_port: u16, vip: Ipv4Addr, port: u16) -> std::io::Result<Forward> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, host_port))?;
        let host = listener.local_addr()?;
        let target = SocketAddr::from((vip, port));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Open = Arc::default();
        let (s, o) = (stop.clone(), open.clone());
        std::thread::Builder::new()
            .name(format!("publish-{}", host.port()))
            .spawn(move || accept(listener, target, &s, &o))?;
        info!(%host, %target, "port published");
        Ok(Forward {
            host,
            target,
            stop,
            open,
        })
    }

    /// Stops taking connections and shuts down those open.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, (client, server)) in lock(&self.open).drain() {
            let _ = client.shutdown(Shutdown::Both);
            if let Some(s) = server {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Wake the accept with a connection of our own.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.host.port())),
            Duration::from_secs(1),
        );
        info!(host = %self.host, target = %self.target, "port no longer published");
    }
}

fn accept(listener: TcpListener, target: SocketAddr, stop: &AtomicBool, open: &Open) {
    let mut next = 0u64;
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let client = match conn {
            Ok(c) => c,
            Err(e) => {
                debug!(%target, "accept failed: {e}");
                continue;
            }
        };
        {
            let mut o = lock(open);
            if o.len() >= MAX_CONNECTIONS {
                debug!(%target, "{MAX_CONNECTIONS} connections open: closing a new one");
                continue;
            }
            let Ok(c) = client.try_clone() else { continue };
            next += 1;
            o.insert(next, (c, None));
        }
        let (id, o) = (next, open.clone());
        let spawned = std::thread::Builder::new()
            .name("publish-conn".into())
            .spawn(move || {
                join(client, target, id, &o);
                lock(&o).remove(&id);
            });
        if let Err(e) = spawned {
            warn!(%target, "cannot forward a connection: {e}");
            lock(open).remove(&id);
        }
    }
}

/// Copies both ways between `client` and a new connection to `target`.
fn join(client: TcpStream, target: SocketAddr, id: u64, open: &Open) {
    let server = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            debug!(%target, "cannot reach the published port: {e}");
            return;
        }
    };
    match (lock(open).get_mut(&id), server.try_clone()) {
        (Some(entry), Ok(s)) => entry.1 = Some(s),
        // Stopped meanwhile: the forward is over.
        _ => return,
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back = std::thread::Builder::new()
        .name("publish-back".into())
        .spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(Shutdown::Write);
        });
    let (mut c, mut s) = (client, server);
    let _ = std::io::copy(&mut c, &mut s);
    let _ = s.shutdown(Shutdown::Write);
    if let Ok(h) = back {
        let _ = h.join();
    }
}
