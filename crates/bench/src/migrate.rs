//! `lego bench migrate`: a memory monitor drained while a program pages
//! through its memory at a small ExCache. Reports the drain's throughput
//! beside a bare bulk TCP transfer between the same CPUs measured in the
//! same run, and the program's remote-fault p50/p99 during the drain beside
//! before it (from the runtime's fault histogram, read from its processor
//! monitor at the start and end of each window).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use lego_cluster::cpus::pin_current_thread;
use lego_cluster::size::{human, parse_rate, parse_size};
use lego_cluster::{ProcessorSpec, Spec};
use lego_transport::{Client, ClientOptions};
use lego_wire::control::ClusterStateReq;
use lego_wire::elastic::DrainReq;
use lego_wire::jobs::JobsReq;
use lego_wire::{ComponentId, Role};

use crate::placement::{Placement, PlacementArg};
use crate::{fail, CallContext, IoContext, Result};

#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    /// The program's working set
    #[arg(long, default_value = "512MiB", value_parser = parse_size, value_name = "SIZE")]
    pub size: u64,
    /// Its ExCache, in percent of the working set
    #[arg(long, default_value_t = 25, value_name = "PERCENT")]
    pub excache_percent: u64,
    /// The drain's rate limit, e.g. 200MiB/s [default: none]
    #[arg(long, value_parser = parse_rate, value_name = "BYTES/s")]
    pub rate: Option<u64>,
    /// Seconds of faults measured before the drain
    #[arg(long, default_value_t = 4, value_name = "S")]
    pub before: u64,
    /// Where threads run [default: split when there are two CPUs or more]
    #[arg(long, value_enum, value_name = "HOW")]
    pub placement: Option<PlacementArg>,
    /// Run on a rack of 5 hosts made on this machine (network namespaces:
    /// manager, 3 memory monitors, processor); the bare bulk transfer is
    /// then between two memory hosts
    #[arg(long)]
    pub rack: bool,
    /// With --rack, shape each host's link to this rate (tc syntax: 10gbit,
    /// 1gbit) [default: unshaped]
    #[arg(long, value_name = "RATE", requires = "rack")]
    pub link: Option<String>,
}

/// How long the bare bulk transfer runs at most.
const BULK_TIME: Duration = Duration::from_secs(3);

/// Where the bare bulk transfer runs: on loopback, or from one rack host
/// (its namespace) to another (its namespace and address).
struct BulkPath {
    from_ns: Option<String>,
    to: Option<(String, std::net::Ipv4Addr)>,
}

/// Bytes a second of one TCP stream between two threads on `cpus`, for
/// `bytes` or [`BULK_TIME`], whichever ends first.
fn bare_bulk(cpus: Option<lego_cluster::CpuList>, bytes: u64, path: BulkPath) -> Result<f64> {
    let (to_ns, ip) = match path.to {
        Some((ns, ip)) => (Some(ns), std::net::IpAddr::V4(ip)),
        None => (None, std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
    };
    let enter = |ns: &Option<String>| -> std::io::Result<()> {
        match ns {
            Some(ns) => lego_cluster::rack::enter(ns).map_err(std::io::Error::other),
            None => Ok(()),
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let pin = cpus.clone();
    let receiver = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        if let Some(c) = &pin {
            let _ = pin_current_thread(&c.0);
        }
        let listening = (|| {
            enter(&to_ns)?;
            TcpListener::bind((ip, 0))
        })();
        let l = match listening {
            Ok(l) => {
                let _ = tx.send(l.local_addr());
                l
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let mut t0 = None;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            t0.get_or_insert_with(Instant::now);
            got += n as u64;
        }
        Ok((got, t0.map_or(Duration::ZERO, |t| t.elapsed())))
    });
    let addr = rx
        .recv()
        .map_err(|_| crate::BenchError::Failed("the bulk receiver ended".into()))?
        .io(|| "cannot listen for the bulk transfer".into())?;
    let from_ns = path.from_ns;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some(c) = &cpus {
            let _ = pin_current_thread(&c.0);
        }
        enter(&from_ns)?;
        let mut s = TcpStream::connect(addr)?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut sent = 0;
        let t = Instant::now();
        while sent < bytes && t.elapsed() < BULK_TIME {
            s.write_all(&chunk)?;
            sent += chunk.len() as u64;
        }
        Ok(())
    });
    sender
        .join()
        .map_err(|_| crate::BenchError::Failed("the bulk sender panicked".into()))?
        .io(|| "the bulk transfer failed".into())?;
    let (got, took) = receiver
        .join()
        .map_err(|_| crate::BenchError::Failed("the bulk receiver panicked".into()))?
        .io(|| "the bulk transfer failed".into())?;
    Ok(got as f64 / took.as_secs_f64().max(1e-9))
}

/// The program: fills SIZE bytes, says "ready", then reads one byte of a
/// random page forever (until killed).
fn program(size: u64) -> String {
    format!(
        r#"
import random
n = {size}
g = random.Random(1)
buf = bytearray()
while len(buf) < n:
    buf += g.randbytes(min(1 << 24, n - len(buf)))
print("ready", flush=True)
r = random.Random(2)
pages = n // 4096
s = 0
while True:
    for _ in range(4096):
        s += buf[r.randrange(pages) * 4096]
"#
    )
}

/// The job's fault histogram now: (bucket midpoint in µs, count).
fn histogram(processor: &Client) -> Result<BTreeMap<u64, u64>> {
    let jobs = processor
        .call(&JobsReq)
        .call_for(|| "cannot ask the processor monitor for its jobs".into())?;
    let job = jobs
        .into_iter()
        .find(|j| j.running)
        .ok_or_else(|| crate::BenchError::Failed("the program is not running".into()))?;
    Ok(lego_wire::jobs::rt_histogram(&job.counters, "")
        .into_iter()
        .collect())
}

/// Faults between two readings, and their p50 and p99 in µs.
fn window(a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>) -> (u64, u64, u64) {
    let diff: Vec<(u64, u64)> = b
        .iter()
        .map(|(mid, n)| (*mid, n - a.get(mid).copied().unwrap_or(0).min(*n)))
        .collect();
    let total: u64 = diff.iter().map(|(_, n)| n).sum();
    let pct = |p: u64| {
        let mut seen = 0;
        for (mid, n) in &diff {
            seen += n;
            if seen * 100 >= total * p {
                return *mid;
            }
        }
        0
    };
    (total, pct(50), pct(99))
}

pub fn run(a: MigrateBenchArgs) -> Result<()> {
    let placement = Placement::choose(a.placement)?;
    placement.pin_bench()?;
    println!("lego bench migrate\n{}", crate::environment(&placement));
    let dir = std::env::temp_dir().join(format!("lego-bench-migrate-{}", std::process::id()));
    let vregion = 64u64 << 20;
    let spec = Spec {
        memory_monitors: 3,
        capacity: (a.size * 2).max(1 << 30),
        memory_cpus: placement.memory_cpus(),
        storage: false,
        encrypt: lego_cluster::Encrypt::Auto,
        join: false,
        manager_args: vec!["--vregion-size".into(), vregion.to_string()],
        rack: a.rack.then(|| lego_cluster::RackSpec {
            hosts: 5,
            link: a.link.clone(),
        }),
        managers: Default::default(),
    };
    let quota = a.size * a.excache_percent.clamp(1, 100) / 100;
    let processor = ProcessorSpec {
        excache: quota.max(64 << 20) * 2,
        runtime: None,
        cpus: placement.app_cpus(),
    };
    let cluster = crate::TempCluster::start(dir, 300, &spec, Some(&processor))?;
    let path = match cluster.rack() {
        Some(r) => {
            let host = |name: &str| {
                cluster
                    .host_index(name)
                    .map(|h| &r.hosts[h])
                    .ok_or_else(|| crate::BenchError::Failed(format!("{name} is on no host")))
            };
            let (from, to) = (host("memory-1")?, host("memory-2")?);
            println!(
                "rack of {} hosts (network namespaces on a bridge), links {}; copies of vRegions are sent as bulk traffic (DSCP CS1), which the links' HTB shaping sends after everything else",
                r.hosts.len(),
                r.rate.as_deref().unwrap_or("unshaped")
            );
            BulkPath {
                from_ns: Some(from.ns.clone()),
                to: Some((to.ns.clone(), to.ip)),
            }
        }
        None => BulkPath {
            from_ns: None,
            to: None,
        },
    };
    let bulk = bare_bulk(placement.memory_cpus(), 1 << 30, path)?;
    let target = cluster.target();
    let mgr = target.manager();
    println!(
        "program: python reading random pages of {} at ExCache {} ({}%); 3 memory monitors, {} vRegions",
        human(a.size),
        human(quota),
        a.excache_percent,
        human(vregion)
    );
    let mut child = Command::new(&cluster.opts.exe)
        .arg("run")
        .arg("--dir")
        .arg(&cluster.opts.dir)
        .args(["--excache", &quota.to_string(), "--", "python3", "-c"])
        .arg(program(a.size))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .io(|| "cannot start lego run".into())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .io(|| "the program said nothing".into())?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        fail!("the program did not start: {line}{err}");
    }
    let measured = (|| -> Result<String> {
        let st = mgr
            .call(&ClusterStateReq)
            .call_for(|| "cannot read the cluster state".into())?;
        let proc_addr = st
            .alive(Role::Processor)
            .map(|p| p.addr.clone())
            .next()
            .ok_or_else(|| crate::BenchError::Failed("no processor monitor".into()))?;
        let processor =
            Client::connect(&proc_addr, &target.credentials(), &ClientOptions::default())
                .call_for(|| "cannot reach the processor monitor".into())?;
        // The monitor holding the most copies is drained.
        let copies = |id: ComponentId| {
            st.vregions
                .iter()
                .filter(|r| r.primary == id || r.backup.and_then(|b| b.on().copied()) == Some(id))
                .count()
        };
        let victim = st
            .alive(Role::Memory)
            .max_by_key(|m| (copies(m.id), m.id))
            .map(|m| m.id)
            .ok_or_else(|| crate::BenchError::Failed("no memory monitor".into()))?;
        let h0 = histogram(&processor)?;
        std::thread::sleep(Duration::from_secs(a.before.max(1)));
        let h1 = histogram(&processor)?;
        let t = Instant::now();
        mgr.call(&DrainReq {
            id: victim,
            drained: true,
            rate: a.rate,
        })
        .call_for(|| "the manager refused the drain".into())?;
        let drain = loop {
            let s = mgr
                .call(&ClusterStateReq)
                .call_for(|| "cannot read the cluster state".into())?;
            let d = s
                .components
                .iter()
                .find(|c| c.id == victim)
                .and_then(|c| c.drain);
            if let Some(d) = d.filter(|d| d.copies == 0) {
                break d;
            }
            if t.elapsed() > Duration::from_secs(600) {
                fail!("the drain did not end within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t.elapsed();
        let h2 = histogram(&processor)?;
        let (n0, p50_0, p99_0) = window(&h0, &h1);
        let (n1, p50_1, p99_1) = window(&h1, &h2);
        let rate = drain.bytes_moved as f64 / took.as_secs_f64();
        let share = rate / bulk;
        let p99_ratio = p99_1 as f64 / p99_0.max(1) as f64;
        let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
        Ok(format!(
            "\n{:<34} {:>16} {:>16}\n{:<34} {:>16} {:>16}\n{:<34} {:>13} µs {:>13} µs\n{:<34} {:>13} µs {:>13} µs\n\n\
             drain of memory monitor {victim}: {} copies, {} in {:.2} s = {}/s{}\n\
             bare bulk TCP between the memory monitors' {}, same run: {}/s\n\
             drain / bare bulk: {:.0}% (target >= 50%: {})\n\
             remote-fault p99 during / before: {:.1}x (target <= 5x: {})",
            "",
            "before the drain",
            "during the drain",
            "remote faults",
            n0,
            n1,
            "remote fault p50",
            p50_0,
            p50_1,
            "remote fault p99",
            p99_0,
            p99_1,
            drain.copies_moved,
            human(drain.bytes_moved),
            took.as_secs_f64(),
            human(rate as u64),
            a.rate.map_or(String::new(), |r| format!(" (limit {}/s)", human(r))),
            if a.rack { "hosts" } else { "CPUs" },
            human(bulk as u64),
            share * 100.0,
            verdict(share >= 0.5),
            p99_ratio,
            verdict(p99_ratio <= 5.0),
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    println!("{}", measured?);
    Ok(())
}
