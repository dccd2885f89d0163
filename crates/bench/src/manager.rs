//! `lego bench manager`: what the manager's durable store costs and how
//! fast the cluster has a manager again after it dies, with the embedded
//! redb store (one manager) and with three managers on a real 3-member
//! etcd cluster side by side.
//!
//! Each configuration is a real cluster (managers, two memory monitors)
//! driven by one client over the manager's own protocol: vRegion
//! placements (`Assign`, each a new vRegion: a durable write of its
//! copies' places), lease changes (`LeaseMemory`, a durable write of the
//! space's lease) and address spaces made and released. Then the manager
//! that leads is killed (kill -9) while the client keeps asking for
//! placements: the failover time is from the kill to the first placement
//! served again (redb: by the manager restarted at once, as a supervisor
//! would; etcd: by a standby, elected when the dead leader's lease ends).

use std::time::{Duration, Instant};

use clap::Args;
use lego_cluster::size::parse_size;
use lego_cluster::{Managers, Spec, Store};
use lego_transport::Client;
use lego_wire::control::{AssignReq, CreateSpaceReq, LeaseReq, ReleaseSpaceReq, VnodeCreateReq};
use lego_wire::{Asid, VRegionIdx};

use crate::stats::Samples;
use crate::{fail, CallContext, Result, TempCluster};

#[derive(Args, Debug)]
pub struct ManagerBenchArgs {
    /// Operations of each kind per configuration
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    /// Leaders killed per configuration, to time the failover
    #[arg(long, default_value_t = 3)]
    pub failovers: usize,
    /// The leader's lease on etcd, in seconds (a standby leads about this
    /// long after the leader dies)
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub lease_ttl: u64,
    /// Fewer operations (200) and one failover: a quick look
    #[arg(long)]
    pub quick: bool,
    /// Size of a vRegion
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub vregion_size: u64,
}

/// vRegions placed in one address space before it is released (so the
/// memory monitors' capacity is never the limit).
const PER_SPACE: u64 = 32;

/// One configuration's figures.
struct Figures {
    name: String,
    assign: Samples,
    lease: Samples,
    space: Samples,
    failovers: Vec<Duration>,
}

pub fn run(a: ManagerBenchArgs) -> Result<()> {
    let (ops, failovers) = if a.quick {
        (200, 1)
    } else {
        (a.ops.max(1), a.failovers)
    };
    if lego_cluster::etcd::which("etcd").is_none() {
        fail!("etcd is not installed (apt-get install etcd-server): this bench compares redb with etcd");
    }
    println!("lego bench manager: {ops} operations of each kind, {failovers} leader kill(s) per configuration; one client, one request at a time");
    println!(
        "{}",
        crate::environment(&crate::placement::Placement::Shared)
    );
    let configs = [
        ("redb, 1 manager", 1, Store::Redb),
        (
            "etcd (3 members), 3 managers",
            3,
            Store::LocalEtcd { members: 3 },
        ),
    ];
    let mut all = Vec::new();
    for (name, count, store) in configs {
        println!("{name}: starting");
        all.push(measure(&a, name, count, store, ops, failovers)?);
    }
    report(&mut all, a.lease_ttl);
    Ok(())
}

fn measure(
    a: &ManagerBenchArgs,
    name: &str,
    count: usize,
    store: Store,
    ops: usize,
    failovers: usize,
) -> Result<Figures> {
    let dir =
        std::env::temp_dir().join(format!("lego-bench-manager-{}-{count}", std::process::id()));
    let spec = Spec {
        memory_monitors: 2,
        capacity: 4 << 30,
        memory_cpus: None,
        storage: false,
        manager_args: vec!["--vregion-size".into(), a.vregion_size.to_string()],
        rack: None,
        encrypt: lego_cluster::Encrypt::Off,
        join: false,
        managers: Managers {
            count,
            store,
            lease_ttl_s: a.lease_ttl.max(1),
        },
    };
    let mut c = TempCluster::start(dir, 200, &spec, None)?;
    let m = c.target().connect()?;
    m.call(&VnodeCreateReq {
        name: "bench".into(),
        ..VnodeCreateReq::default()
    })
    .call_for(|| "cannot create the vNode bench".into())?;
    let mut f = Figures {
        name: name.to_string(),
        assign: Samples::with_capacity(ops),
        lease: Samples::with_capacity(ops),
        space: Samples::with_capacity(ops),
        failovers: Vec::new(),
    };
    let mut asid = new_space(&m, &mut f.space)?;
    for i in 0..ops as u64 {
        if i > 0 && i % PER_SPACE == 0 {
            release(&m, asid, &mut f.space)?;
            asid = new_space(&m, &mut f.space)?;
        }
        let t = Instant::now();
        m.call(&AssignReq {
            asid,
            index: VRegionIdx(i % PER_SPACE),
        })
        .call_for(|| format!("{name}: placement {i} failed"))?;
        f.assign.push(t.elapsed());
        let t = Instant::now();
        m.call(&LeaseReq {
            asid,
            bytes: (i % 7 + 1) << 20,
        })
        .call_for(|| format!("{name}: lease change {i} failed"))?;
        f.lease.push(t.elapsed());
    }
    release(&m, asid, &mut f.space)?;
    drop(m);
    for round in 0..failovers {
        f.failovers.push(failover(&mut c, round)?);
        println!(
            "{name}: failover {} of {failovers}: {:.2} s",
            round + 1,
            f.failovers[round].as_secs_f64()
        );
    }
    Ok(f)
}

fn new_space(m: &Client, space: &mut Samples) -> Result<Asid> {
    let t = Instant::now();
    let s = m
        .call(&CreateSpaceReq {
            vnode: "bench".into(),
            owner: None,
            proof: None,
        })
        .call_for(|| "cannot create an address space".into())?;
    space.push(t.elapsed());
    Ok(s.asid)
}

fn release(m: &Client, asid: Asid, space: &mut Samples) -> Result<()> {
    let t = Instant::now();
    m.call(&ReleaseSpaceReq { asid, job: None })
        .call_for(|| format!("cannot release {asid}"))?;
    space.push(t.elapsed());
    Ok(())
}

/// Kills the manager that leads and times until a placement is served
/// again; the killed one is started again (on redb at once, as the only
/// manager; on etcd after the new leader serves, to stand by).
fn failover(c: &mut TempCluster, round: usize) -> Result<Duration> {
    let leader = if c.standbys.is_empty() {
        "manager".to_string()
    } else {
        c.leader()?.0
    };
    let target = c.target();
    let asid = new_space(&target.connect()?, &mut Samples::default())?;
    let t = Instant::now();
    c.kill9(&leader)?;
    if c.standbys.is_empty() {
        c.restart(&leader)?;
    }
    let mut index = 0;
    let took = loop {
        index += 1;
        let served = target.connect().ok().and_then(|m| {
            m.call(&AssignReq {
                asid,
                index: VRegionIdx(index),
            })
            .ok()
        });
        if served.is_some() {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(60) {
            fail!("round {round}: no placement served within 60 s of killing the {leader}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !c.standbys.is_empty() {
        c.restart(&leader)?;
    }
    target
        .connect()?
        .call(&ReleaseSpaceReq { asid, job: None })
        .call_for(|| format!("cannot release {asid}"))?;
    Ok(took)
}

fn report(all: &mut [Figures], ttl: u64) {
    println!();
    println!(
        "{:<30} {:<22} {:>9} {:>10} {:>10}",
        "store", "operation", "ops/s", "p50", "p99"
    );
    for f in all.iter_mut() {
        let name = f.name.clone();
        for (op, s) in [
            ("place a vRegion", &mut f.assign),
            ("change a lease", &mut f.lease),
            ("make/release a space", &mut f.space),
        ] {
            let p50 = s.percentile_us(50.0);
            let p99 = s.percentile_us(99.0);
            let mean = s.mean_us();
            println!(
                "{name:<30} {op:<22} {:>9.0} {:>8.0}µs {:>8.0}µs",
                1e6 / mean.max(1e-3),
                p50,
                p99
            );
        }
    }
    println!();
    println!("failover: from kill -9 of the leading manager to the first placement served again");
    for f in all.iter() {
        let mut v: Vec<f64> = f.failovers.iter().map(|d| d.as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        let list: Vec<String> = v.iter().map(|s| format!("{s:.2} s")).collect();
        println!("  {:<30} {}", f.name, list.join(", "));
    }
    println!("  (redb: the one manager restarted at once, then every monitor registers again; etcd: a standby elected when the dead leader's {ttl} s lease ends)");
}
