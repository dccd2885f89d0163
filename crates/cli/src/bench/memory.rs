//! `lego bench memory`: page reads and writes against a real memory monitor
//! over TCP loopback, with 1 and 16 requests in flight, beside a bare 4 KiB
//! TCP request/response measured in the same run.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::control::{
    AssignReq, AssignResp, CreateSpaceReq, CreateSpaceResp, ReleaseSpaceReq, ReleaseSpaceResp,
    VnodeInfo, VnodeReq,
};
use lego_wire::pages::{ReadPages, ReadPagesReply, WritePages};
use lego_wire::{Op, PAGE_SIZE};

use super::placement::{Placement, PlacementArg};
use super::stats::{Samples, XorShift};
use crate::cluster::ClusterArgs;
use crate::up::{LocalCluster, Spec};

#[derive(Args, Debug)]
pub struct MemoryBenchArgs {
    /// Requests per measurement
    #[arg(long, default_value_t = 20_000)]
    pub ops: usize,
    /// Pages in the working set written before the reads
    #[arg(long, default_value_t = 4096)]
    pub pages: u64,
    /// Use the running cluster found by --dir/$LEGO_DIR instead of starting a temporary one
    #[arg(long)]
    pub existing: bool,
    /// Where threads run [default: split when there are two CPUs or more]
    #[arg(long, value_enum, value_name = "HOW")]
    pub placement: Option<PlacementArg>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

struct Row {
    what: &'static str,
    in_flight: usize,
    p50: f64,
    p99: f64,
    pages_per_s: f64,
}

/// Runs `ops` requests with `depth` in flight; `make` builds request `i`.
fn pipelined(
    client: &Client,
    op: Op,
    depth: usize,
    ops: usize,
    pages_per_op: usize,
    mut make: impl FnMut(usize) -> Vec<u8>,
    mut check: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<(Samples, f64)> {
    let mut lat = Samples::with_capacity(ops);
    let mut q = VecDeque::with_capacity(depth);
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < depth.min(ops) {
        q.push_back((
            client.send_buffered(op, &[&make(sent)])?,
            Instant::now(),
            sent,
        ));
        sent += 1;
    }
    client.flush()?;
    while let Some((id, t, i)) = q.pop_front() {
        let f = client.wait(id)?;
        lat.push(t.elapsed());
        check(i, &f.body)?;
        if sent < ops {
            q.push_back((client.send(op, &[&make(sent)])?, Instant::now(), sent));
            sent += 1;
        }
    }
    Ok((
        lat,
        (ops * pages_per_op) as f64 / t0.elapsed().as_secs_f64(),
    ))
}

pub fn run(a: MemoryBenchArgs) -> Result<()> {
    let placement = Placement::choose(a.placement)?;
    placement.pin_bench()?;
    println!("lego bench memory\n{}", super::environment(&placement));
    let (_cluster, target) = if a.existing {
        (None, a.cluster.resolve()?)
    } else {
        let dir = std::env::temp_dir().join(format!("lego-bench-{}", std::process::id()));
        let c = LocalCluster::start(&Spec {
            dir,
            memory_monitors: 2,
            capacity: 1 << 30,
            heartbeat_ms: 1000,
            memory_cpus: placement.memory_cpus(),
            storage: false,
            manager_args: Vec::new(),
        })?;
        let t = c.target();
        (Some(TempCluster(c)), t)
    };
    let mgr = target.connect()?;
    let name = format!("bench-{}", std::process::id());
    let v: VnodeInfo = mgr.call_json(
        Op::VnodeCreate,
        &VnodeReq {
            name: name.clone(),
            ..VnodeReq::default()
        },
    )?;
    let space: CreateSpaceResp = mgr.call_json(
        Op::CreateSpace,
        &CreateSpaceReq {
            vnode: name.clone(),
            owner: None,
        },
    )?;
    let asid = space.asid;
    let placed: AssignResp = mgr.call_json(Op::AssignVRegion, &AssignReq { asid, index: 0 })?;
    println!(
        "memory monitor {} at {} (allowed on CPUs {}); vnode {} connects with its own key\n",
        placed.primary.id,
        placed.primary.addr,
        _cluster.as_ref().map_or("?".into(), |c| c
            .0
            .pid_of("memory-1")
            .map_or("?".into(), super::cpus_allowed)),
        v.id
    );
    let creds = Credentials::vnode(v.id, target.secret.vnode_key(v.id));
    let client = Client::connect(&placed.primary.addr, &creds, &ClientOptions::default())
        .context("cannot reach the memory monitor")?;

    // Working set: page i holds bytes derived from i, so reads can be checked.
    let fill = |p: u64| -> Vec<u8> {
        (0..PAGE_SIZE)
            .map(|j| (p as usize * 31 + j) as u8)
            .collect()
    };
    for chunk in (0..a.pages).collect::<Vec<_>>().chunks(256) {
        let data: Vec<u8> = chunk.iter().flat_map(|&p| fill(p)).collect();
        client.call(
            Op::WritePages,
            &[&WritePages {
                asid,
                version: 0,
                peer: 0,
                pages: chunk.to_vec(),
                data: &data,
            }
            .encode()],
        )?;
    }

    let bare = super::rtt::bare_tcp(a.ops, placement.memory_cpus(), false)?;
    let polled = super::rtt::bare_tcp(a.ops, placement.memory_cpus(), true)?;
    let mut rows = vec![
        Row {
            what: "bare 4 KiB TCP round trip",
            in_flight: 1,
            p50: bare.p50_us,
            p99: bare.p99_us,
            pages_per_s: bare.per_s,
        },
        Row {
            what: "same, both ends polling",
            in_flight: 1,
            p50: polled.p50_us,
            p99: polled.p99_us,
            pages_per_s: polled.per_s,
        },
    ];
    let ops = a.ops;
    let npages = a.pages;
    for depth in [1usize, 16] {
        let pick = |i: usize| {
            XorShift((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64() % npages
        };
        let (mut lat, tput) = pipelined(
            &client,
            Op::ReadPages,
            depth,
            ops,
            1,
            |i| {
                ReadPages {
                    asid,
                    pages: vec![pick(i)],
                }
                .encode()
            },
            |i, body| {
                let p = pick(i);
                let r = ReadPagesReply::decode(body)?;
                anyhow::ensure!(
                    r.data == fill(p).as_slice(),
                    "page {p} (request {i}) read back wrong: {:?} {:?}",
                    &r.present,
                    &r.data[..8.min(r.data.len())]
                );
                Ok(())
            },
        )?;
        rows.push(Row {
            what: "page read",
            in_flight: depth,
            p50: lat.percentile_us(50.0),
            p99: lat.percentile_us(99.0),
            pages_per_s: tput,
        });
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let page = vec![0xa5u8; PAGE_SIZE];
        let (mut lat, tput) = pipelined(
            &client,
            Op::WritePages,
            depth,
            ops,
            1,
            |_| {
                WritePages {
                    asid,
                    version: 0,
                    peer: 0,
                    pages: vec![npages + rng.next_u64() % npages], // a second range: reads stay checkable
                    data: &page,
                }
                .encode()
            },
            |_, _| Ok(()),
        )?;
        rows.push(Row {
            what: "page write",
            in_flight: depth,
            p50: lat.percentile_us(50.0),
            p99: lat.percentile_us(99.0),
            pages_per_s: tput,
        });
    }
    let mut rng = XorShift(77);
    let (mut lat, tput) = pipelined(
        &client,
        Op::ReadPages,
        1,
        ops / 16,
        16,
        |_| {
            let first = rng.next_u64() % (npages - 16);
            ReadPages {
                asid,
                pages: (first..first + 16).collect(),
            }
            .encode()
        },
        |_, _| Ok(()),
    )?;
    rows.push(Row {
        what: "page read, 16-page batches",
        in_flight: 1,
        p50: lat.percentile_us(50.0),
        p99: lat.percentile_us(99.0),
        pages_per_s: tput,
    });

    let rtt = rows[0].p50;
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "operation", "in flight", "p50 µs", "p99 µs", "pages/s", "p50 / RTT"
    );
    for r in &rows {
        println!(
            "{:<30} {:>9} {:>9.1} {:>9.1} {:>12.0} {:>9.2}x",
            r.what,
            r.in_flight,
            r.p50,
            r.p99,
            r.pages_per_s,
            r.p50 / rtt
        );
    }
    let read1 = &rows[1];
    let best16 = rows
        .iter()
        .filter(|r| r.in_flight == 16)
        .map(|r| r.pages_per_s)
        .fold(f64::INFINITY, f64::min);
    println!(
        "\ntarget: p50 page read <= 1.3x the bare round trip: {:.2}x {}",
        read1.p50 / rtt,
        if read1.p50 / rtt <= 1.3 {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!(
        "target: >= 100,000 pages/s with 16 in flight (reads and writes): {:.0} {}",
        best16,
        if best16 >= 100_000.0 { "MET" } else { "MISSED" }
    );

    let rel: ReleaseSpaceResp = mgr.call_json(Op::ReleaseSpace, &ReleaseSpaceReq { asid })?;
    mgr.call_json::<_, VnodeInfo>(
        Op::VnodeDelete,
        &VnodeReq {
            name,
            ..VnodeReq::default()
        },
    )?;
    println!(
        "cleanup: freed {} pages on the memory monitors",
        rel.freed_pages
    );
    Ok(())
}

/// A temporary cluster whose directory is removed with it.
struct TempCluster(LocalCluster);

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.0.stop();
        let _ = std::fs::remove_dir_all(&self.0.dir);
    }
}
