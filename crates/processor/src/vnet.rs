//! vNode networks on this processor host: one network namespace per vNode
//! with processes here, shared by its jobs (as a pod), holding the vNode's
//! vIP on a veth whose other end is on the host.
//!
//! ```text
//!  processor host                                  vNode netns lego-p<PID>-v<ID>-<N>
//!   l<PID>g<N>: 169.254.77.1/32  <--- veth --->  eth0: VIP/32
//!   route VIP/32 dev l<PID>g<N>                   route 169.254.77.1 dev eth0
//!   ip_forward = 1 (if on several hosts)          route HOST/32 via 169.254.77.1   (each cluster host)
//!                                                 route PEER/32 via 169.254.77.1   (vNodes of its network)
//! ```
//!
//! What a vNode can reach: its namespace has routes to the hosts of the
//! cluster (so that their connections to its vIP can be answered) and to
//! the vIPs of vNodes in its network, nothing else ("network unreachable").
//! An nftables filter in the namespace (table `ip lego`) lets its processes
//! open new connections only to the vIPs of its network (set `peers`);
//! hosts get only answers to connections they opened, so a vNode reaches
//! no service of any host (the monitors' own connections for it go through
//! the broker, as before). Its processes cannot change routes or filter
//! (they hold no capability over the namespace). Other hosts route the vIP
//! here ([`lego_agent::routes`]) after the processor monitor reports it
//! served.
//!
//! A vNode with processes on several processor hosts has a namespace with
//! the vIP on each; inbound connections to the vIP reach the first host the
//! manager lists, while outbound ones leave from whichever host the
//! process runs on.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use lego_agent::routes::ip;
use lego_transport::lock;
use lego_wire::control::VipRoutes;
use lego_wire::VnodeId;
use tracing::{info, warn};

/// The host end of every vNode veth: the vNodes' gateway.
pub const GATEWAY: &str = "169.254.77.1";

/// One vNode's network here.
struct Net {
    ns: String,
    vip: Ipv4Addr,
    network: String,
    /// Jobs using it.
    users: usize,
    /// Routes set inside (besides the gateway's).
    routes: BTreeSet<Ipv4Addr>,
    /// The vIPs it may open connections to (the filter's set).
    peers: BTreeSet<Ipv4Addr>,
}

/// The vNode networks of this processor monitor.
pub(crate) struct Vnets {
    pid: u32,
    nets: Mutex<HashMap<VnodeId, Net>>,
    /// The vNode whose network each job uses.
    jobs: Mutex<HashMap<u64, VnodeId>>,
    /// The last routes the manager gave (applied to new networks at once).
    last: Mutex<VipRoutes>,
    /// Turn on IP forwarding for the vNodes (the cluster spans hosts, whose
    /// connections to vIPs pass through this one); on one host it is never
    /// needed, and the host's setting is left alone.
    forward: AtomicBool,
    /// Networks made so far (names each one).
    made: AtomicU32,
}

/// Names of the `generation`th network this monitor makes: a fresh name
/// each time, since the kernel tears down a deleted namespace (and its
/// veth) in the background, and the next of the same vNode may come first.
fn ns_name(pid: u32, vnode: VnodeId, generation: u32) -> String {
    format!("lego-p{pid}-v{vnode}-{generation}")
}

/// The host end's name: at most 15 bytes (`l` + 7-digit pid + `g` + 6 hex).
fn host_if(pid: u32, generation: u32) -> String {
    format!("l{pid}g{:x}", generation & 0xff_ffff)
}

impl Vnets {
    pub(crate) fn new() -> Self {
        Vnets {
            pid: std::process::id(),
            nets: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            last: Mutex::new(VipRoutes::default()),
            forward: AtomicBool::new(false),
            made: AtomicU32::new(0),
        }
    }

    /// Whether other hosts reach vIPs through this one: true when this
    /// monitor is advertised at an address other than loopback.
    pub(crate) fn set_forwarding(&self, on: bool) {
        self.forward.store(on, Ordering::Relaxed);
    }

    /// The vNode's namespace here (made on its first job), for job `job`
    /// about to start in it; [`Vnets::release`] when the job is over.
    pub(crate) fn acquire(
        &self,
        job: u64,
        vnode: VnodeId,
        vip: &str,
        network: &str,
    ) -> Result<PathBuf, String> {
        let mut nets = lock(&self.nets);
        if let Some(n) = nets.get_mut(&vnode) {
            n.users += 1;
            lock(&self.jobs).insert(job, vnode);
            return Ok(PathBuf::from("/run/netns").join(&n.ns));
        }
        let vip: Ipv4Addr = vip
            .parse()
            .map_err(|_| format!("the vnode's vIP '{vip}' is not an IPv4 address"))?;
        let generation = self.made.fetch_add(1, Ordering::Relaxed);
        let ns = ns_name(self.pid, vnode, generation);
        if let Err(e) = self.make(generation, &ns, vip) {
            let _ = ip(&["netns", "del", &ns]);
            return Err(e);
        }
        let mut net = Net {
            ns: ns.clone(),
            vip,
            network: network.to_string(),
            users: 1,
            routes: BTreeSet::new(),
            peers: BTreeSet::new(),
        };
        if let Err(e) = inside_routes(&mut net, &lock(&self.last)) {
            warn!(vnode, "cannot route the vnode's network yet: {e}");
        }
        info!(vnode, %vip, ns = %ns, network, "vnode network made");
        nets.insert(vnode, net);
        lock(&self.jobs).insert(job, vnode);
        Ok(PathBuf::from("/run/netns").join(ns))
    }

    fn make(&self, generation: u32, ns: &str, vip: Ipv4Addr) -> Result<(), String> {
        let hif = host_if(self.pid, generation);
        let vip32 = format!("{vip}/32");
        let gw32 = format!("{GATEWAY}/32");
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "addr", "add", &vip32, "dev", "eth0"])?;
        ip(&["-n", ns, "route", "add", &gw32, "dev", "eth0"])?;
        ip(&["addr", "add", &gw32, "dev", &hif])?;
        ip(&["link", "set", &hif, "up"])?;
        ip(&["route", "replace", &vip32, "dev", &hif, "src", GATEWAY])?;
        nft(ns, FILTER)?;
        // Connections from other hosts to the vIP pass through this one.
        if self.forward.load(Ordering::Relaxed) {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| format!("cannot turn on IP forwarding: {e}"))?;
        }
        Ok(())
    }

    /// Job `job` is over: its vNode's namespace goes with its last job.
    pub(crate) fn release(&self, job: u64) {
        let Some(vnode) = lock(&self.jobs).remove(&job) else {
            return;
        };
        let mut nets = lock(&self.nets);
        let Some(n) = nets.get_mut(&vnode) else {
            return;
        };
        n.users -= 1;
        if n.users == 0 {
            let n = nets.remove(&vnode).expect("present");
            // The veth goes with the namespace, the host's route with the veth.
            match ip(&["netns", "del", &n.ns]) {
                Ok(_) => info!(vnode, ns = %n.ns, "vnode network removed"),
                Err(e) => warn!(vnode, "cannot remove the vnode's network: {e}"),
            }
        }
    }

    /// The vIP of a job's vNode, if the job has a network of its vNode's.
    pub(crate) fn vip_of_job(&self, job: u64) -> Option<Ipv4Addr> {
        let vnode = *lock(&self.jobs).get(&job)?;
        lock(&self.nets).get(&vnode).map(|n| n.vip)
    }

    /// The vIPs served here, for the heartbeat.
    pub(crate) fn vips(&self) -> Vec<String> {
        lock(&self.nets)
            .values()
            .map(|n| n.vip.to_string())
            .collect()
    }

    /// Sets every namespace's routes from the manager's answer: the
    /// cluster's hosts and the vIPs of vNodes in the same network.
    pub(crate) fn sync(&self, routes: VipRoutes) {
        let mut nets = lock(&self.nets);
        for (vnode, n) in nets.iter_mut() {
            if let Err(e) = inside_routes(n, &routes) {
                warn!(vnode, "cannot route the vnode's network: {e}");
            }
        }
        *lock(&self.last) = routes;
    }

    /// Removes every namespace (the monitor stops).
    pub(crate) fn clear(&self) {
        for (_, n) in lock(&self.nets).drain() {
            let _ = ip(&["netns", "del", &n.ns]);
        }
    }
}

/// The filter of every vNode namespace: new connections only to its
/// network's vIPs (the set `peers`), answers to anyone, loopback free; any
/// other attempt fails at once ("no route to host").
const FILTER: &str = "table ip lego {
  set peers { type ipv4_addr; }
  chain out {
    type filter hook output priority 0; policy drop;
    oifname \"lo\" accept
    ct state established,related accept
    ct state new ip daddr @peers accept
    reject with icmp type admin-prohibited
  }
}
";

/// Runs `nft -f -` with `script` in namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft (nftables, needed to confine a vNode's network; install it, or \
             create the vNode with --host-network): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// What `n`'s namespace should route to its gateway: (the cluster's hosts,
/// its network's vIPs).
fn wanted_inside(n: &Net, routes: &VipRoutes) -> (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>) {
    let keep = |a: &Ipv4Addr| *a != n.vip && !a.is_loopback();
    let hosts = routes
        .hosts
        .iter()
        .filter_map(|h| h.parse().ok())
        .filter(keep)
        .collect();
    let peers = routes
        .vnodes
        .iter()
        .filter(|r| r.network == n.network)
        .filter_map(|r| r.vip.parse().ok())
        .filter(keep)
        .collect();
    (hosts, peers)
}

fn inside_routes(n: &mut Net, routes: &VipRoutes) -> Result<(), String> {
    let (hosts, peers) = wanted_inside(n, routes);
    let elements = |set: &BTreeSet<Ipv4Addr>| {
        set.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let add: BTreeSet<Ipv4Addr> = peers.difference(&n.peers).copied().collect();
    let del: BTreeSet<Ipv4Addr> = n.peers.difference(&peers).copied().collect();
    let mut script = String::new();
    if !add.is_empty() {
        script += &format!("add element ip lego peers {{ {} }}\n", elements(&add));
    }
    if !del.is_empty() {
        script += &format!("delete element ip lego peers {{ {} }}\n", elements(&del));
    }
    if !script.is_empty() {
        nft(&n.ns, &script)?;
        n.peers = peers.clone();
    }
    let want: BTreeSet<Ipv4Addr> = hosts.union(&peers).copied().collect();
    for a in want.difference(&n.routes.clone()) {
        ip(&[
            "-n",
            &n.ns,
            "route",
            "replace",
            &format!("{a}/32"),
            "via",
            GATEWAY,
            "dev",
            "eth0",
        ])?;
        n.routes.insert(*a);
    }
    for a in n.routes.clone().difference(&want) {
        ip(&["-n", &n.ns, "route", "del", &format!("{a}/32")])?;
        n.routes.remove(a);
    }
    Ok(())
}

/// Removes the vNode namespaces of processor monitors that are gone (named
/// `lego-p<PID>-v<ID>-<N>` with no process PID); returns their names.
pub fn sweep_stale() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("lego-p")
            .and_then(|r| r.split_once("-v"))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "del", &name]).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_wire::control::VipRoute;

    #[test]
    fn a_namespace_routes_hosts_and_its_own_network_only() {
        let n = Net {
            ns: "x".into(),
            vip: "10.77.0.1".parse().unwrap(),
            network: "web".into(),
            users: 1,
            routes: BTreeSet::new(),
            peers: BTreeSet::new(),
        };
        let r = |vip: &str, network: &str| VipRoute {
            vnode: 1,
            vip: vip.into(),
            network: network.into(),
            served_by: vec![],
        };
        let routes = VipRoutes {
            vnodes: vec![
                r("10.77.0.1", "web"),
                r("10.77.0.2", "web"),
                r("10.77.0.3", "vnode:other"),
            ],
            hosts: vec!["10.99.0.1".into(), "10.99.0.4".into(), "127.0.0.1".into()],
        };
        let (hosts, peers) = wanted_inside(&n, &routes);
        let s = |set: BTreeSet<Ipv4Addr>| set.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(s(hosts), ["10.99.0.1", "10.99.0.4"]);
        assert_eq!(s(peers), ["10.77.0.2"]);
    }
}
