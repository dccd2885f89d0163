//! `lego bench memory`: page reads and writes against a real memory monitor
//! over TCP loopback, with 1 and 16 requests in flight, on a plaintext and
//! on a sealed link (encrypted and authenticated, [`lego_transport::seal`]),
//! beside a bare 4 KiB TCP request/response measured in the same run.

use std::collections::VecDeque;
use std::time::Instant;

use clap::Args;
use lego_cluster::{ClusterArgs, Spec};
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::control::{
    AssignReq, CreateSpaceReq, ReleaseSpaceReq, VnodeCreateReq, VnodeDeleteReq,
};
use lego_wire::pages::{ReadPages, ReadPagesReply, WritePages};
use lego_wire::{Asid, Op, PageNo, VRegionIdx, PAGE_SIZE};

use crate::placement::{Placement, PlacementArg};
use crate::stats::{Samples, XorShift};
use crate::{fail, CallContext, Result};

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
    /// Also draw the run as SVG charts in DIR: each measurement's latency
    /// distribution (`memory-latency.svg`) and pages a second
    /// (`memory-throughput.svg`)
    #[arg(long, value_name = "DIR")]
    pub plot: Option<std::path::PathBuf>,
}

/// What one row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// A bare 4 KiB TCP request/response, blocking or with both ends polling.
    BareRtt {
        polled: bool,
    },
    Read {
        depth: usize,
    },
    Write {
        depth: usize,
    },
    /// 16 neighbouring pages per request, one request in flight.
    ReadBatch16,
}

impl Measure {
    fn label(self) -> &'static str {
        match self {
            Measure::BareRtt { polled: false } => "bare 4 KiB TCP round trip",
            Measure::BareRtt { polled: true } => "same, both ends polling",
            Measure::Read { .. } => "page read",
            Measure::Write { .. } => "page write",
            Measure::ReadBatch16 => "page read, 16-page batches",
        }
    }

    fn in_flight(self) -> usize {
        match self {
            Measure::Read { depth } | Measure::Write { depth } => depth,
            _ => 1,
        }
    }
}

struct Row {
    what: Measure,
    /// Measured on a sealed link.
    sealed: bool,
    p50: f64,
    p99: f64,
    pages_per_s: f64,
    /// The latency distribution (µs, % at or below), when kept.
    cdf: Vec<(f64, f64)>,
}

impl Row {
    fn of(what: Measure, sealed: bool, lat: &mut Samples, pages_per_s: f64) -> Row {
        Row {
            what,
            sealed,
            p50: lat.percentile_us(50.0),
            p99: lat.percentile_us(99.0),
            pages_per_s,
            cdf: lat.cdf(50),
        }
    }
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
    let failed = || format!("{op} against the memory monitor failed");
    while sent < depth.min(ops) {
        let id = client.send_buffered(op, &[&make(sent)]).call_for(failed)?;
        q.push_back((id, Instant::now(), sent));
        sent += 1;
    }
    client.flush().call_for(failed)?;
    while let Some((id, t, i)) = q.pop_front() {
        let f = client.wait(id).call_for(failed)?;
        lat.push(t.elapsed());
        check(i, &f.body)?;
        if sent < ops {
            let id = client.send(op, &[&make(sent)]).call_for(failed)?;
            q.push_back((id, Instant::now(), sent));
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
    println!("lego bench memory\n{}", crate::environment(&placement));
    let (cluster, target) = if a.existing {
        (None, a.cluster.resolve()?)
    } else {
        let dir = std::env::temp_dir().join(format!("lego-bench-{}", std::process::id()));
        let spec = Spec {
            memory_monitors: 2,
            capacity: 1 << 30,
            memory_cpus: placement.memory_cpus(),
            storage: false,
            encrypt: lego_cluster::Encrypt::Auto,
            join: false,
            manager_args: Vec::new(),
            rack: None,
            managers: Default::default(),
        };
        let c = crate::TempCluster::start(dir, 1000, &spec, None)?;
        let t = c.target();
        (Some(c), t)
    };
    let mgr = target.manager();
    let asked = |what: &'static str| move || format!("the manager refused to {what}");
    let name = format!("bench-{}", std::process::id());
    let v = mgr
        .call(&VnodeCreateReq {
            name: name.clone(),
            ..VnodeCreateReq::default()
        })
        .call_for(asked("create the bench's vnode"))?;
    let asid = mgr
        .call(&CreateSpaceReq {
            vnode: name.clone(),
            owner: None,
            proof: None,
        })
        .call_for(asked("create an address space"))?
        .asid;
    let placed = mgr
        .call(&AssignReq {
            asid,
            index: VRegionIdx(0),
        })
        .call_for(asked("place a vregion"))?;
    println!(
        "memory monitor {} at {} (allowed on CPUs {}); vnode {} connects with its own key\n",
        placed.primary.id,
        placed.primary.addr,
        cluster
            .as_ref()
            .and_then(|c| c.memories.first())
            .map_or("?".into(), |d| crate::cpus_allowed(d.pid())),
        v.id
    );
    let creds = Credentials::vnode(v.id, target.secret.vnode_key(v.id));
    let mut rows = bare_rows(&a, &placement)?;
    for seal in [false, true] {
        let opts = ClientOptions {
            seal,
            ..ClientOptions::default()
        };
        let client = Client::connect(&placed.primary.addr, &creds, &opts)
            .call_for(|| "cannot reach the memory monitor".into())?;
        if client.sealed() != seal {
            println!("the memory monitor seals every link (--encrypt): no plaintext rows");
            continue;
        }
        rows.extend(fill_and_measure(&a, &client, asid)?);
    }
    report(&rows);
    if let Some(dir) = &a.plot {
        for p in plot(dir, &rows)? {
            println!("plot: {}", p.display());
        }
    }
    let rel = mgr
        .call(&ReleaseSpaceReq { asid, job: None })
        .call_for(asked("release the address space"))?;
    mgr.call(&VnodeDeleteReq { name, force: false })
        .call_for(asked("delete the bench's vnode"))?;
    println!(
        "cleanup: freed {} pages on the memory monitors",
        rel.freed_pages
    );
    Ok(())
}

/// Page `p`'s content: bytes derived from `p`, so reads can be checked.
fn fill(p: u64) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|j| (p as usize * 31 + j) as u8)
        .collect()
}

/// The bare TCP round trips, blocking and polling.
fn bare_rows(a: &MemoryBenchArgs, placement: &Placement) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for polled in [false, true] {
        let r = crate::rtt::bare_tcp(a.ops, placement.memory_cpus(), polled)?;
        rows.push(Row {
            what: Measure::BareRtt { polled },
            sealed: false,
            p50: r.p50_us,
            p99: r.p99_us,
            pages_per_s: r.per_s,
            cdf: Vec::new(),
        });
    }
    Ok(rows)
}

/// Writes the working set, then measures every row on `client`'s link.
fn fill_and_measure(a: &MemoryBenchArgs, client: &Client, asid: Asid) -> Result<Vec<Row>> {
    let sealed = client.sealed();
    for chunk in (0..a.pages).collect::<Vec<_>>().chunks(256) {
        let data: Vec<u8> = chunk.iter().flat_map(|&p| fill(p)).collect();
        let body = WritePages {
            asid,
            version: 0,
            peer: 0,
            pages: chunk.iter().copied().map(PageNo).collect(),
            data: &data,
        }
        .encode();
        client
            .call_raw(Op::WritePages, &[&body])
            .call_for(|| "cannot write the working set".into())?;
    }
    let mut rows = Vec::new();
    let (ops, npages) = (a.ops, a.pages);
    for depth in [1usize, 16] {
        let pick = |i: usize| {
            XorShift((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64() % npages
        };
        let read = |i: usize| {
            ReadPages {
                asid,
                pages: vec![PageNo(pick(i))],
            }
            .encode()
        };
        let check = |i: usize, body: &[u8]| {
            let p = pick(i);
            let r = ReadPagesReply::decode(body)
                .map_err(|e| crate::BenchError::Failed(format!("a bad read reply: {e}")))?;
            if r.data != fill(p).as_slice() {
                fail!(
                    "page {p} (request {i}) read back wrong: {:?} {:?}",
                    &r.present,
                    &r.data[..8.min(r.data.len())]
                );
            }
            Ok(())
        };
        let (mut lat, tput) = pipelined(client, Op::ReadPages, depth, ops, 1, read, check)?;
        rows.push(Row::of(Measure::Read { depth }, sealed, &mut lat, tput));
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let page = vec![0xa5u8; PAGE_SIZE];
        // A second range: reads stay checkable.
        let write = |_| {
            WritePages {
                asid,
                version: 0,
                peer: 0,
                pages: vec![PageNo(npages + rng.next_u64() % npages)],
                data: &page,
            }
            .encode()
        };
        let (mut lat, tput) =
            pipelined(client, Op::WritePages, depth, ops, 1, write, |_, _| Ok(()))?;
        rows.push(Row::of(Measure::Write { depth }, sealed, &mut lat, tput));
    }
    let mut rng = XorShift(77);
    let batch = |_| {
        let first = rng.next_u64() % (npages - 16);
        ReadPages {
            asid,
            pages: (first..first + 16).map(PageNo).collect(),
        }
        .encode()
    };
    let (mut lat, tput) = pipelined(client, Op::ReadPages, 1, ops / 16, 16, batch, |_, _| Ok(()))?;
    rows.push(Row::of(Measure::ReadBatch16, sealed, &mut lat, tput));
    Ok(rows)
}

impl Row {
    /// Its name in the charts.
    fn name(&self) -> String {
        let link = if self.sealed { "sealed" } else { "plain" };
        match self.what {
            Measure::BareRtt { .. } => self.what.label().to_string(),
            m => format!("{}, {} in flight, {link}", m.label(), m.in_flight()),
        }
    }
}

/// Writes `memory-latency.svg` (one series per measurement) and
/// `memory-throughput.svg` (pages a second, a bar per link).
fn plot(dir: &std::path::Path, rows: &[Row]) -> Result<Vec<std::path::PathBuf>> {
    use lego_plot::{Chart, Series};

    use crate::IoContext;
    let latency = Chart {
        title: "Memory monitor request latency".into(),
        x_label: "µs (log scale)".into(),
        y_label: "% of requests at or below".into(),
        x_log2: true,
        y_max: Some(100.0),
        series: rows
            .iter()
            .filter(|r| !r.cdf.is_empty())
            .map(|r| Series::new(r.name(), r.cdf.clone()))
            .collect(),
        ..Chart::default()
    };
    let ops: Vec<Measure> = rows.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.what) {
            v.push(r.what);
        }
        v
    });
    let name = |m: Measure| match m {
        Measure::BareRtt { polled: false } => "bare TCP".to_string(),
        Measure::BareRtt { polled: true } => "bare, polled".to_string(),
        Measure::Read { depth } => format!("read x{depth}"),
        Measure::Write { depth } => format!("write x{depth}"),
        Measure::ReadBatch16 => "16-page read".to_string(),
    };
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let link = match (r.what, r.sealed) {
            (Measure::BareRtt { .. }, _) => "bare TCP",
            (_, true) => "sealed link",
            (_, false) => "plaintext link",
        };
        let i = ops.iter().position(|m| *m == r.what).unwrap_or(0) as f64;
        match series.iter_mut().find(|s| s.label == link) {
            Some(s) => s.points.push((i, r.pages_per_s)),
            None => series.push(Series::new(link, vec![(i, r.pages_per_s)])),
        }
    }
    let throughput = Chart {
        title: "Pages a second (requests a second for bare TCP)".into(),
        x_label: "measurement (xN: N requests in flight)".into(),
        y_label: "pages a second".into(),
        categories: ops.into_iter().map(name).collect(),
        series,
        ..Chart::default()
    };
    std::fs::create_dir_all(dir).io(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    for (file, chart) in [
        ("memory-latency.svg", latency),
        ("memory-throughput.svg", throughput),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, chart.render()).io(|| format!("cannot write {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

fn report(rows: &[Row]) {
    let find = |m: Measure| rows.iter().find(|r| r.what == m && !r.sealed);
    let rtt = find(Measure::BareRtt { polled: false }).map_or(f64::NAN, |r| r.p50);
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "operation", "link", "in flight", "p50 µs", "p99 µs", "pages/s", "p50 / RTT"
    );
    for r in rows {
        let link = match (r.what, r.sealed) {
            (Measure::BareRtt { .. }, _) => "bare",
            (_, true) => "sealed",
            (_, false) => "plain",
        };
        println!(
            "{:<30} {:>9} {:>9} {:>9.1} {:>9.1} {:>12.0} {:>9.2}x",
            r.what.label(),
            link,
            r.what.in_flight(),
            r.p50,
            r.p99,
            r.pages_per_s,
            r.p50 / rtt
        );
    }
    if let Some(read1) = find(Measure::Read { depth: 1 }) {
        let x = read1.p50 / rtt;
        let verdict = if x <= 1.3 { "MET" } else { "MISSED" };
        println!("\ntarget: p50 page read <= 1.3x the bare round trip: {x:.2}x {verdict}");
    }
    let best16 = rows
        .iter()
        .filter(|r| r.what.in_flight() == 16 && !r.sealed)
        .map(|r| r.pages_per_s)
        .fold(f64::INFINITY, f64::min);
    println!(
        "target: >= 100,000 pages/s with 16 in flight (reads and writes): {:.0} {}",
        best16,
        if best16 >= 100_000.0 { "MET" } else { "MISSED" }
    );
}
