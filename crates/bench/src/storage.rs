//! `lego bench storage`: one unmodified C program (`fsbench.c`: a large file
//! written with fsync and read back in 1 MiB calls, then many 4 KiB files
//! created, stat'ed and unlinked) run on the local disk directly and through
//! a vNode's mount (FUSE in the processor monitor, the file protocol over TCP
//! loopback, a storage monitor keeping the files on the same disk), in one
//! run, printed side by side.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::{fail, IoContext, Result};
use clap::Args;

use crate::child::run_child;
use crate::cprog::compile_fsbench;
use crate::placement::{Placement, PlacementArg};
use crate::progress::Progress;
use lego_cluster::size::{human, parse_size};
use lego_cluster::{LocalCluster, Options, ProcessorSpec, Spec};

#[derive(Args, Debug)]
pub struct StorageBenchArgs {
    /// Size of the file written and read sequentially
    #[arg(long, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub size: u64,
    /// Number of small files created, stat'ed and unlinked
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub files: u64,
    /// Where threads run [default: split when there are two CPUs or more]
    #[arg(long, value_enum, value_name = "HOW")]
    pub placement: Option<PlacementArg>,
    /// Also draw the run as an SVG chart in DIR (`storage.svg`: each
    /// phase's rate through the vNode's mount as a share of the local disk's)
    #[arg(long, value_name = "DIR")]
    pub plot: Option<std::path::PathBuf>,
}

const PHASES: [(&str, &str); 5] = [
    ("write", "seq write"),
    ("read", "seq read"),
    ("create", "creates"),
    ("stat", "stats"),
    ("unlink", "unlinks"),
];

/// Per phase: (seconds, units).
type Result1 = BTreeMap<String, (f64, f64)>;

fn parse(out: &str) -> Result<Result1> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        if let ["phase", name, secs, units] = l.split_whitespace().collect::<Vec<_>>()[..] {
            if let (Ok(secs), Ok(units)) = (secs.parse(), units.parse()) {
                m.insert(name.to_string(), (secs, units));
            }
        }
    }
    if m.len() != PHASES.len() {
        fail!("fsbench printed {out:?}");
    }
    Ok(m)
}

fn rate(r: &Result1, phase: &str) -> f64 {
    let (s, u) = r[phase];
    let per_s = u / s.max(1e-9);
    if matches!(phase, "write" | "read") {
        per_s / (1 << 20) as f64
    } else {
        per_s
    }
}

/// Writes `storage.svg`: a bar per phase and configuration, as % of the
/// local disk's rate.
fn plot(dir: &std::path::Path, local: &Result1, lego: &Result1) -> Result<std::path::PathBuf> {
    use lego_plot::{Chart, Series};
    let share = |r: &Result1| -> Vec<(f64, f64)> {
        PHASES
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (i as f64, 100.0 * rate(r, p) / rate(local, p)))
            .collect()
    };
    let chart = Chart {
        title: "File operations through a vNode's mount, against the local disk".into(),
        x_label: "phase".into(),
        y_label: "% of the local disk's rate".into(),
        categories: PHASES.iter().map(|(_, l)| l.to_string()).collect(),
        series: vec![
            Series::new("local disk", share(local)),
            Series::new("lego vNode mount", share(lego)),
        ],
        ..Chart::default()
    };
    std::fs::create_dir_all(dir).io(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("storage.svg");
    std::fs::write(&path, chart.render()).io(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn fs_of(path: &std::path::Path) -> String {
    let out = Command::new("df")
        .args(["--output=source,fstype"])
        .arg(path)
        .output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

pub fn run(a: StorageBenchArgs) -> Result<()> {
    let placement = Placement::choose(a.placement)?;
    placement.pin_bench()?;
    println!("lego bench storage\n{}", super::environment(&placement));
    let mb = a.size.div_ceil(1 << 20).max(1);
    println!(
        "workload: C, gcc -O2: a {} file written in 1 MiB writes then fsync, read back in 1 MiB reads; \
         {} files of 4 KiB created, stat'ed, unlinked",
        human(mb << 20),
        a.files
    );
    let dir = tempfile_dir()?;
    let bin = compile_fsbench(&dir.0)?;
    let stop = AtomicBool::new(false);
    let progress = Progress::steps("bench");
    let args = [mb.to_string(), a.files.to_string()];
    let local_dir = dir.0.join("local");
    std::fs::create_dir_all(&local_dir)?;
    println!(
        "local disk: {} ({})",
        local_dir.display(),
        fs_of(&local_dir)
    );
    progress.step("the program on the local disk");
    let mut cmd = Command::new(&bin);
    cmd.arg(&local_dir).args(&args);
    let f = run_child(cmd, &stop, Duration::from_secs(900))?;
    if !f.status.success() {
        fail!("fsbench failed on the local disk: {}", f.stderr.trim());
    }
    let local = parse(&f.stdout)?;

    progress.step("starting the embedded cluster with a storage monitor");
    let spec = Spec {
        memory_monitors: 2,
        capacity: 256 << 20,
        memory_cpus: placement.memory_cpus(),
        storage: true,
        encrypt: lego_cluster::Encrypt::Auto,
        join: false,
        manager_args: Vec::new(),
        rack: None,
        managers: Default::default(),
    };
    let processor = ProcessorSpec {
        excache: 256 << 20,
        runtime: None,
        cpus: placement.app_cpus(),
    };
    let cluster = LocalCluster::start(
        Options {
            dir: dir.0.join("cluster"),
            exe: std::env::current_exe().io(|| "cannot find the lego executable".into())?,
            heartbeat_ms: 1000,
            log: None,
        },
        &spec,
        Some(&processor),
    )?;
    let sdir = dir.0.join("cluster").join("storage");
    println!(
        "lego: vNode mount /data (FUSE in the processor monitor, TCP loopback) -> storage monitor {} keeping files in {} ({})",
        cluster.storage.as_ref().map_or("?", |d| d.addr.as_str()),
        sdir.display(),
        fs_of(&sdir)
    );
    progress.step("the same program through the vnode mount");
    let mut cmd = Command::new(&cluster.opts.exe);
    cmd.arg("run")
        .arg("--dir")
        .arg(&cluster.opts.dir)
        .args(["--vnode", "bench-storage", "--excache", "64MiB", "--"])
        .arg(&bin)
        .arg("/data")
        .args(&args)
        .env_remove("LEGO_LOG");
    let f = run_child(cmd, &stop, Duration::from_secs(900))?;
    if !f.status.success() {
        fail!(
            "fsbench failed through the vnode mount: {}",
            f.stderr.trim()
        );
    }
    let lego = parse(&f.stdout)?;
    drop(cluster);
    progress.finish();

    println!();
    print!("{:<28}", "configuration");
    for (_, label) in PHASES {
        print!("{:>20}", label);
    }
    println!();
    for (name, r) in [("local disk", &local), ("lego vNode mount", &lego)] {
        print!("{name:<28}");
        for (p, _) in PHASES {
            let unit = if matches!(p, "write" | "read") {
                "MB/s"
            } else {
                "/s"
            };
            print!("{:>20}", format!("{:.0} {unit}", rate(r, p)));
        }
        println!();
    }
    print!("{:<28}", "lego / local");
    for (p, _) in PHASES {
        print!(
            "{:>20}",
            format!("{:.2}x", rate(&lego, p) / rate(&local, p))
        );
    }
    if let Some(dir) = &a.plot {
        let path = plot(dir, &local, &lego)?;
        println!("\nplot: {}", path.display());
    }
    println!(
        "\n\nreads on both rows come from the host's page cache (the file was just written; \
         nothing is dropped); MB are MiB"
    );
    Ok(())
}

/// The bench's own directory; removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir> {
    let d = std::env::temp_dir().join(format!("lego-bench-storage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).io(|| format!("cannot create {}", d.display()))?;
    Ok(TempDir(d))
}
