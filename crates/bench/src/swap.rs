//! Linux's own answer to a memory squeeze, for `lego bench excache`: a cgroup
//! v1 memory limit with swap on a file, on zram, or on a loop device over a
//! tmpfs file.
//!
//! Everything set up here is undone by guards ([`Undo`]) when they are
//! dropped: on success, on error, on panic, and after Ctrl-C (the bench turns
//! signals into a flag and unwinds normally). Swap that was active before the
//! bench is never touched; ours gets the highest priority so that it is the
//! one used. Only SIGKILL of the bench can leave something behind; every
//! failed undo step prints the command that does it by hand.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{fail, IoContext, Result};

use lego_cluster::size::human;

/// Priority of our swap: the highest, so pre-existing swap stays unused.
const SWAP_PRIORITY: &str = "32767";

type UndoFn = Box<dyn FnMut() -> Result<()>>;

/// Undo steps, run last-in first-out when dropped.
#[derive(Default)]
pub struct Undo {
    steps: Vec<(String, String, UndoFn)>,
}

impl Undo {
    /// Registers how to undo something just done: what it is, the shell
    /// command that undoes it by hand, and the step itself.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        by_hand: impl Into<String>,
        f: impl FnMut() -> Result<()> + 'static,
    ) {
        self.steps.push((what.into(), by_hand.into(), Box::new(f)));
    }

    /// Runs every step, each retried until 2 s after its first attempt;
    /// false if one failed.
    pub fn run(&mut self) -> bool {
        let mut ok = true;
        while let Some((what, by_hand, mut f)) = self.steps.pop() {
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut last;
            loop {
                last = f().err();
                if last.is_none() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(e) = last {
                ok = false;
                eprintln!("lego bench: could not undo {what}: {e:#}; do it by hand: {by_hand}");
            }
        }
        ok
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        self.run();
    }
}

/// Runs a system command; its stdout, or an error with its stderr.
pub fn cmd(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .io(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        fail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`cmd`], but gives up waiting after `limit` and leaves the command
/// running: a `swapoff` that cannot finish must not be killed, since that
/// puts the swap back in use.
fn cmd_patiently(prog: &str, args: &[&str], limit: Duration) -> Result<()> {
    let mut child = Command::new(prog)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .io(|| format!("cannot run {prog}"))?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            if st.success() {
                return Ok(());
            }
            fail!("`{prog} {}` failed ({st})", args.join(" "));
        }
        if t0.elapsed() > limit {
            fail!(
                "`{prog} {}` has not finished after {} s; left running as pid {}",
                args.join(" "),
                limit.as_secs(),
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// The effective uid, from /proc.
pub fn euid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The devices and files in /proc/swaps.
pub fn active_swaps() -> Vec<String> {
    std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// One line of /proc/self/mountinfo: mount point, type, source, super options.
struct Mount {
    point: String,
    fstype: String,
    source: String,
    options: String,
}

fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?.replace("\\040", " ");
            let mut r = right.split_whitespace();
            Some(Mount {
                point,
                fstype: r.next()?.to_string(),
                source: r.next()?.to_string(),
                options: r.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The file system holding `path`: (type, source), e.g. ("ext4", "/dev/vda").
pub fn fs_of(path: &Path) -> Option<(String, String)> {
    let path = std::fs::canonicalize(path).ok()?;
    mounts()
        .into_iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.len())
        .map(|m| (m.fstype, m.source))
}

/// `MemAvailable` in bytes.
pub fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// What every configuration under a cgroup needs; the reason if missing.
pub fn preflight_common() -> Result<PathBuf, String> {
    match euid() {
        Some(0) => {}
        Some(u) => return Err(format!("not root (euid {u}): swap and cgroups need root")),
        None => return Err("cannot read the effective uid from /proc/self/status".into()),
    }
    for p in ["swapon", "swapoff", "mkswap"] {
        if !on_path(p) {
            return Err(format!("{p} not found on PATH (util-linux)"));
        }
    }
    if let Some(dev) = swapoff_in_progress() {
        return Err(format!(
            "a swapoff of {dev} is in progress (it is in /proc/swaps but not in SwapTotal): \
             until it ends the kernel swaps nothing, so the squeezed workload would only be OOM-killed"
        ));
    }
    memcg_parent()
}

/// A swap device being turned off: listed in /proc/swaps, yet /proc/meminfo's
/// SwapTotal leaves it out. A swapoff that hangs keeps the kernel from
/// swapping anything, whatever else is swapped on.
fn swapoff_in_progress() -> Option<String> {
    let swaps = std::fs::read_to_string("/proc/swaps").ok()?;
    let entries: Vec<(String, u64)> = swaps
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect();
    let listed: u64 = entries.iter().map(|(_, kib)| kib).sum();
    let total: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    if total >= listed {
        return None;
    }
    Some(match entries.as_slice() {
        [(dev, _)] => dev.clone(),
        _ => format!(
            "one of {}",
            entries
                .iter()
                .map(|(d, _)| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The cgroup v1 memory directory this process is in: the bench's cgroups
/// are made inside it, so any limit that applies to the bench still applies.
fn memcg_parent() -> Result<PathBuf, String> {
    let root = mounts()
        .into_iter()
        .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == "memory"))
        .map(|m| PathBuf::from(m.point))
        .ok_or("no cgroup v1 memory controller is mounted (cgroup v2 only?): this configuration uses memory.limit_in_bytes of cgroup v1")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    let dir = root.join(own);
    if !dir.join("memory.limit_in_bytes").exists() {
        return Err(format!("{} has no memory.limit_in_bytes", dir.display()));
    }
    Ok(dir)
}

/// A memory cgroup (v1) with a limit; removed when dropped.
pub struct MemCgroup {
    pub path: PathBuf,
    _undo: Undo,
}

impl MemCgroup {
    /// Creates `parent/name` with `memory.limit_in_bytes = limit`, the
    /// memory+swap limit unlimited and swappiness 100.
    pub fn create(parent: &Path, name: &str, limit: u64) -> Result<MemCgroup> {
        let path = parent.join(name);
        std::fs::create_dir(&path).io(|| format!("cannot create the cgroup {}", path.display()))?;
        let mut undo = Undo::default();
        let p = path.clone();
        undo.push(
            format!("the cgroup {}", path.display()),
            format!("rmdir {}", path.display()),
            move || {
                // Anything still inside is ours (the workload): end it first.
                let procs = std::fs::read_to_string(p.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
                std::fs::remove_dir(&p).io(|| format!("rmdir {}", p.display()))
            },
        );
        let write = |file: &str, v: &str| -> Result<()> {
            std::fs::write(path.join(file), v)
                .io(|| format!("cannot write {v} to {}", path.join(file).display()))
        };
        // memsw must stay >= the limit: unlimited first, then the limit.
        if path.join("memory.memsw.limit_in_bytes").exists() {
            write("memory.memsw.limit_in_bytes", "-1")?;
        }
        write("memory.limit_in_bytes", &limit.to_string())?;
        write("memory.swappiness", "100")?;
        Ok(MemCgroup { path, _undo: undo })
    }

    /// Where a process writes its pid to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// A number from one of the cgroup's files.
    pub fn read_u64(&self, file: &str) -> Option<u64> {
        std::fs::read_to_string(self.path.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// How many times the OOM killer struck inside (`oom_kill` of memory.oom_control).
    pub fn oom_kills(&self) -> Option<u64> {
        std::fs::read_to_string(self.path.join("memory.oom_control"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))?
            .trim()
            .parse()
            .ok()
    }

    /// `memory.stat` as a map.
    pub fn stat(&self) -> BTreeMap<String, u64> {
        std::fs::read_to_string(self.path.join("memory.stat"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

/// Where swapped-out pages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapKind {
    /// A swap file on a disk file system.
    File,
    /// The compressed RAM block device.
    Zram,
    /// A loop device over a file on a tmpfs: a ramdisk.
    LoopTmpfs,
}

impl SwapKind {
    pub fn label(self) -> &'static str {
        match self {
            SwapKind::File => "swap file on disk",
            SwapKind::Zram => "swap on zram",
            SwapKind::LoopTmpfs => "swap on loop/tmpfs",
        }
    }
}

/// Swap in use until dropped.
pub struct ActiveSwap {
    /// What it is, for the report.
    pub detail: String,
    _undo: Undo,
}

const ZRAM: &str = "/sys/block/zram0";

/// Why a backend cannot be used here, checked before touching anything.
/// `size` is the swap size, `limit` what the squeezed workload keeps in RAM.
pub fn preflight(kind: SwapKind, size: u64, limit: u64, dir: &Path) -> Result<(), String> {
    let ram_needed = size + limit + (256 << 20);
    let ram_ok = || match mem_available() {
        Some(a) if a < ram_needed => Err(format!(
            "{} of RAM needed (swap held in RAM plus the limit), {} available",
            human(ram_needed),
            human(a)
        )),
        _ => Ok(()),
    };
    match kind {
        SwapKind::File => match fs_of(dir) {
            None => Err(format!("cannot find the file system of {}", dir.display())),
            Some((t, _)) if ["tmpfs", "ramfs", "overlay", "zfs", "nfs", "nfs4"].contains(&t.as_str()) => Err(format!(
                "{} is on {t}, which cannot hold a swap file on a disk: pass --swap-dir DIR on a disk",
                dir.display()
            )),
            Some(_) => Ok(()),
        },
        SwapKind::Zram => {
            if !Path::new(ZRAM).exists() {
                return Err("no zram device (/sys/block/zram0 missing: modprobe zram)".into());
            }
            let disksize = std::fs::read_to_string(format!("{ZRAM}/disksize"))
                .map_err(|e| format!("cannot read {ZRAM}/disksize: {e}"))?;
            if disksize.trim() != "0" || active_swaps().iter().any(|s| s == "/dev/zram0") {
                return Err(format!(
                    "/dev/zram0 is in use (disksize {}): left alone",
                    disksize.trim()
                ));
            }
            ram_ok()
        }
        SwapKind::LoopTmpfs => {
            for p in ["losetup", "mount", "umount"] {
                if !on_path(p) {
                    return Err(format!("{p} not found on PATH"));
                }
            }
            if !Path::new("/dev/loop-control").exists() {
                return Err("no loop devices (/dev/loop-control missing: modprobe loop)".into());
            }
            ram_ok()
        }
    }
}

fn swapon(undo: &mut Undo, dev: &str) -> Result<()> {
    cmd("mkswap", &[dev])?;
    cmd("swapon", &["--priority", SWAP_PRIORITY, dev])?;
    let d = dev.to_string();
    undo.push(
        format!("swap on {dev}"),
        format!("swapoff {dev}"),
        move || {
            if !active_swaps().contains(&d) {
                return Ok(());
            }
            cmd_patiently("swapoff", &[&d], Duration::from_secs(120))
        },
    );
    Ok(())
}

/// Sets up swap of `size` bytes; `dir` is a fresh directory of the bench
/// (on a disk for a swap file). `stop` aborts the slow parts.
pub fn setup(kind: SwapKind, size: u64, dir: &Path, stop: &AtomicBool) -> Result<ActiveSwap> {
    let mut undo = Undo::default();
    let size = size.div_ceil(4096) * 4096;
    let detail = match kind {
        SwapKind::File => {
            let path = dir.join("swapfile");
            let p = path.clone();
            undo.push(
                format!("the swap file {}", path.display()),
                format!("rm {}", path.display()),
                move || match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                },
            );
            write_zeros(&path, size, stop)?;
            let name = path.to_string_lossy().into_owned();
            swapon(&mut undo, &name)?;
            let fs = fs_of(dir).map_or_else(String::new, |(t, s)| format!(" ({t} on {s})"));
            format!("{} swap file {name}{fs}", human(size))
        }
        SwapKind::Zram => {
            std::fs::write(format!("{ZRAM}/disksize"), size.to_string())
                .io(|| format!("cannot set {ZRAM}/disksize"))?;
            undo.push(
                "the zram device /dev/zram0",
                format!("echo 1 > {ZRAM}/reset"),
                || std::fs::write(format!("{ZRAM}/reset"), "1").io(|| "reset zram0".into()),
            );
            swapon(&mut undo, "/dev/zram0")?;
            let alg = std::fs::read_to_string(format!("{ZRAM}/comp_algorithm"))
                .unwrap_or_default()
                .split_whitespace()
                .find(|a| a.starts_with('['))
                .map_or("?".into(), |a| a.trim_matches(['[', ']']).to_string());
            format!("{} zram0, {alg} compression", human(size))
        }
        SwapKind::LoopTmpfs => {
            let mnt = dir.join("tmpfs");
            std::fs::create_dir(&mnt)?;
            let m = mnt.clone();
            undo.push(
                format!("the directory {}", mnt.display()),
                format!("rmdir {}", mnt.display()),
                move || std::fs::remove_dir(&m).io(|| "rmdir".into()),
            );
            let mnt_s = mnt.to_string_lossy().into_owned();
            // A tmpfs page swapped out onto the loop device over that same
            // tmpfs deadlocks: swap-in waits on a write queued behind itself
            // (seen here: the workload and the loop worker stuck in D state
            // for good). So the tmpfs is `noswap` (Linux 6.4+), else ramfs,
            // whose pages are never swapped either.
            let (fs, opts) = (
                "tmpfs",
                format!("size={},mode=0700,noswap", size + (1 << 20)),
            );
            let fs = match cmd("mount", &["-t", fs, "-o", &opts, "lego-bench-swap", &mnt_s]) {
                Ok(_) => "tmpfs (noswap)",
                Err(_) => {
                    cmd(
                        "mount",
                        &["-t", "ramfs", "-o", "mode=0700", "lego-bench-swap", &mnt_s],
                    )?;
                    "ramfs (this kernel's tmpfs has no noswap)"
                }
            };
            let m = mnt_s.clone();
            undo.push(
                format!("the {fs} mounted on {mnt_s}"),
                format!("umount {mnt_s}"),
                move || cmd("umount", &[&m]).map(drop),
            );
            // Filled now, so its pages are allocated (and charged) here, by
            // the bench: pages the loop device allocated during swap-out would
            // be charged to the squeezed cgroup itself, which then runs out
            // of memory by swapping.
            let file = mnt.join("swap.img");
            write_zeros(&file, size, stop)?;
            let file_s = file.to_string_lossy().into_owned();
            let dev = cmd("losetup", &["--find", "--show", &file_s])?
                .trim()
                .to_string();
            if dev.is_empty() {
                fail!("losetup --find --show printed no device");
            }
            let d = dev.clone();
            undo.push(
                format!("the loop device {dev}"),
                format!("losetup -d {dev}"),
                move || {
                    // Already gone (or reused by someone else) once its backing file differs.
                    let back = std::fs::read_to_string(format!(
                        "/sys/block/{}/loop/backing_file",
                        d.trim_start_matches("/dev/")
                    ))
                    .unwrap_or_default();
                    if back.trim() != file_s {
                        return Ok(());
                    }
                    cmd("losetup", &["-d", &d]).map(drop)
                },
            );
            swapon(&mut undo, &dev)?;
            format!("{} {dev} over a file on {fs}", human(size))
        }
    };
    Ok(ActiveSwap {
        detail,
        _undo: undo,
    })
}

/// Writes `size` zero bytes (no holes: swapon refuses sparse files).
fn write_zeros(path: &Path, size: u64, stop: &AtomicBool) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .io(|| format!("cannot create {}", path.display()))?;
    let chunk = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        if stop.load(Ordering::Relaxed) {
            fail!("interrupted");
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])
            .io(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .io(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_runs_last_in_first_out_once() {
        use std::cell::RefCell;
        use std::rc::Rc;
        let log = Rc::new(RefCell::new(Vec::new()));
        {
            let mut u = Undo::default();
            for i in 0..3 {
                let l = log.clone();
                u.push(format!("step {i}"), "", move || {
                    l.borrow_mut().push(i);
                    Ok(())
                });
            }
        }
        assert_eq!(*log.borrow(), vec![2, 1, 0]);
    }

    #[test]
    fn undo_retries_a_failing_step() {
        use std::cell::Cell;
        use std::rc::Rc;
        let tries = Rc::new(Cell::new(0));
        let t = tries.clone();
        let mut u = Undo::default();
        u.push("flaky", "", move || {
            t.set(t.get() + 1);
            if t.get() < 3 {
                fail!("busy")
            }
            Ok(())
        });
        assert!(u.run());
        assert_eq!(tries.get(), 3);
    }
}
