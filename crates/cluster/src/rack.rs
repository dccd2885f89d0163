//! A rack on one machine: each "host" is a network namespace with one
//! address on a bridge, its link shaped with tc (HTB, a bulk class under
//! the default one) in both directions.
//!
//! ```text
//!   netns lego<PID>-h0        netns lego<PID>-h1   ...   netns lego<PID>-h<N-1>
//!   eth0 10.99.0.1/24         eth0 10.99.0.2/24          eth0 10.99.0.N/24
//!    |  htb RATE (egress)      |                          |
//!    +--- veth ---+            +--- veth ---+             +--- veth ---+
//!                 p0 (htb RATE)             p1                         p<N-1>
//!                 +------------- br0 in netns lego<PID>-sw ------------+
//! ```
//!
//! Every address and route lives in a namespace made here; nothing is added
//! to the machine's own namespace, so nothing can leave the rack. The
//! namespaces are named after the launcher's pid: dropping the [`Rack`]
//! kills what runs in them and deletes them, and [`sweep_stale`] (run by
//! every [`Rack::create`]) deletes those of launchers that are gone, also
//! after a SIGKILL.
//!
//! Processes run on a host through `ip netns exec` ([`Rack::command`]); a
//! thread enters a host with [`enter`] (every socket it then opens, and
//! every thread and process it starts, is on that host).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ClusterError;

/// The rack's subnet: host `i` is `10.99.0.(i+1)`. Racks never share it:
/// each has its own bridge in its own namespace.
pub const SUBNET: [u8; 3] = [10, 99, 0];
/// Most hosts in a rack.
pub const MAX_HOSTS: usize = 200;
/// What the rack's namespaces are called: `lego<PID>r<N>-...`.
const PREFIX: &str = "lego";

/// Racks made by this process so far.
static RACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A host of a rack.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// Hosts as network namespaces on one bridge; removed when dropped.
#[derive(Debug)]
pub struct Rack {
    pub hosts: Vec<Host>,
    /// The namespace of the bridge.
    switch: String,
    /// The links' rate (tc syntax), if shaped.
    pub rate: Option<String>,
}

fn run(args: &[&str]) -> Result<(), ClusterError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Io {
            what: format!(
                "cannot run {} (the rack needs iproute2: apt install iproute2)",
                args[0]
            ),
            source,
        })?;
    if !out.status.success() {
        return Err(ClusterError::Rack(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The namespaces on this machine (`ip netns list`).
fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The launcher pid a rack namespace's name carries.
fn owner_of(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(PREFIX)?;
    let (tag, host) = rest.split_once('-')?;
    let (pid, seq) = tag.split_once('r')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let host_ok = host == "sw"
        || host
            .strip_prefix('h')
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit()));
    match host_ok {
        true => pid.parse().ok(),
        false => None,
    }
}

/// Kills what runs in a namespace (but this process, which may have
/// entered it) and deletes it.
fn remove_ns(ns: &str) {
    let me = std::process::id().to_string();
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|p| *p != me)
        {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Deletes the namespaces of racks whose launcher is gone; returns their names.
pub fn sweep_stale() -> Vec<String> {
    let mut gone = Vec::new();
    for ns in namespaces() {
        if let Some(pid) = owner_of(&ns) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_ns(&ns);
                gone.push(ns);
            }
        }
    }
    if !gone.is_empty() {
        tracing::warn!(namespaces = ?gone, "removed the rack of a launcher that is gone");
    }
    gone
}

/// Why a rack cannot be made here, before anything is touched.
pub fn preflight() -> Result<(), ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ClusterError::Rack(
            "a rack of network namespaces needs root".into(),
        ));
    }
    for (tool, pkg) in [("ip", "iproute2"), ("tc", "iproute2")] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(ClusterError::Rack(format!(
                "`{tool}` not found: apt install {pkg}"
            )));
        }
    }
    Ok(())
}

impl Rack {
    /// Makes `n` hosts on one bridge, each link shaped to `rate` (tc
    /// syntax, e.g. `10gbit`) in both directions if given.
    pub fn create(n: usize, rate: Option<&str>) -> Result<Rack, ClusterError> {
        preflight()?;
        if n == 0 || n > MAX_HOSTS {
            return Err(ClusterError::Rack(format!(
                "a rack has 1 to {MAX_HOSTS} hosts, not {n}"
            )));
        }
        sweep_stale();
        let seq = RACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{PREFIX}{}r{seq}", std::process::id());
        let mut rack = Rack {
            hosts: Vec::new(),
            switch: format!("{tag}-sw"),
            rate: rate.map(str::to_string),
        };
        // Made before anything else: a failure below undoes through Drop.
        run(&["ip", "netns", "add", &rack.switch])?;
        let sw = rack.switch.clone();
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{tag}-h{i}");
            run(&["ip", "netns", "add", &ns])?;
            let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], (i + 1) as u8);
            rack.hosts.push(Host { ns: ns.clone(), ip });
            let port = format!("p{i}");
            run(&[
                "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "master", "br0"])?;
            run(&["ip", "-n", &sw, "link", "set", &port, "up"])?;
            if let Some(r) = rate {
                shape(&ns, "eth0", r)?;
                shape(&sw, &port, r)?;
            }
        }
        tracing::info!(hosts = n, rate = rate.unwrap_or("unshaped"), "rack made");
        Ok(rack)
    }

    /// Takes host `i`'s link down (a partition: its processes run on, cut
    /// off) or brings it back up.
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), ClusterError> {
        let state = if up { "up" } else { "down" };
        run(&["ip", "-n", &self.hosts[i].ns, "link", "set", "eth0", state])
    }

    /// `cmd` run on host `i`: `ip netns exec NS cmd`.
    pub fn command(&self, i: usize, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }
}

/// Shapes `dev`'s egress in `ns` to `rate` with HTB, in two classes as a
/// datacenter's switches would: bulk traffic (DSCP CS1, which copies of
/// vRegions are sent as) takes only what programs' requests leave, and
/// never queues in front of them.
///
/// ```text
///   1: htb, default 1:10
///   └─ 1:1  rate RATE
///      ├─ 1:10 rate RATE, prio 0          everything else
///      └─ 1:20 rate 1% of RATE, ceil RATE, prio 1   tos 0x20/0xfc (CS1)
/// ```
fn shape(ns: &str, dev: &str, rate: &str) -> Result<(), ClusterError> {
    let tc = |args: &[&str]| {
        let mut all = vec!["tc", "-n", ns];
        all.extend_from_slice(args);
        run(&all)
    };
    let floor = format!("{}bit", (rate_bits(rate)? / 100).max(8_000));
    let tos = format!("{:#04x}", lego_transport::BULK_TOS);
    tc(&[
        "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
    ])?;
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "burst",
        "1mb", "cburst", "1mb",
    ])?;
    tc(&[
        "class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb", "rate", rate,
        "ceil", rate, "prio", "0", "burst", "1mb", "cburst", "1mb", "quantum", "200000",
    ])?;
    tc(&[
        "class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb", "rate", &floor,
        "ceil", rate, "prio", "1", "burst", "256kb", "cburst", "256kb", "quantum", "200000",
    ])?;
    tc(&[
        "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match",
        "ip", "tos", &tos, "0xfc", "flowid", "1:20",
    ])
}

/// Bits a second of a tc rate (`10gbit`, `500mbit`, `100kbit`, `8bit`).
fn rate_bits(rate: &str) -> Result<u64, ClusterError> {
    let r = rate.to_ascii_lowercase();
    let (num, mult) = [
        ("gbit", 1_000_000_000u64),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
        ("bit", 1),
    ]
    .iter()
    .find_map(|(unit, m)| r.strip_suffix(unit).map(|n| (n, *m)))
    .ok_or_else(|| {
        ClusterError::Rack(format!(
            "link rate {rate:?}: give it as NUMgbit, NUMmbit, NUMkbit or NUMbit"
        ))
    })?;
    let n: f64 = num
        .parse()
        .map_err(|_| ClusterError::Rack(format!("link rate {rate:?}: {num:?} is not a number")))?;
    if n.is_nan() || n <= 0.0 {
        return Err(ClusterError::Rack(format!(
            "link rate {rate:?} is not positive"
        )));
    }
    Ok((n * mult as f64) as u64)
}

impl Drop for Rack {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_ns(&h.ns);
        }
        remove_ns(&self.switch);
    }
}

/// Moves the calling thread onto the host whose namespace is `ns`: every
/// socket it opens from now on, and every thread and process it starts, is
/// on that host.
pub fn enter(ns: &str) -> Result<(), ClusterError> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(|source| ClusterError::Io {
        what: format!("cannot open {path} (is the rack still up?)"),
        source,
    })?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| ClusterError::Rack(format!("cannot enter the host {ns}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rack_namespaces_have_owners() {
        assert_eq!(owner_of("lego123r0-h0"), Some(123));
        assert_eq!(owner_of("lego123r4-sw"), Some(123));
        assert_eq!(owner_of("lego123r0-h17"), Some(123));
        for other in [
            "lego123-h0",
            "lego123r-h0",
            "lego123r0",
            "legor0-h0",
            "legoxr0-h0",
            "lego12r0-hx",
            "lego12r0-h",
            "mynet",
            "lego1r0-br",
        ] {
            assert_eq!(owner_of(other), None, "{other}");
        }
    }

    #[test]
    fn link_rates_in_bits() {
        assert_eq!(rate_bits("10gbit").unwrap(), 10_000_000_000);
        assert_eq!(rate_bits("1Gbit").unwrap(), 1_000_000_000);
        assert_eq!(rate_bits("2.5mbit").unwrap(), 2_500_000);
        assert_eq!(rate_bits("800kbit").unwrap(), 800_000);
        for bad in ["10gb", "fast", "0mbit", "-1gbit", "gbit"] {
            assert!(rate_bits(bad).is_err(), "{bad}");
        }
    }
}
