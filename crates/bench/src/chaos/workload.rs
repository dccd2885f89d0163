//! The checksum-verified programs `lego chaos` runs while it injects
//! failures, what each must print (learned by running it once without
//! lego), and how a run is judged.
//!
//! - Memory programs (python3): fill memory with seeded random data, hash it
//!   in passes forwards and backwards, rewrite a third of it, hash again and
//!   sample it at random. With an ExCache of a quarter of that memory, every
//!   pass pages most of it from the memory monitors.
//! - File programs: one writes a seeded file into the vNode's `/data` and
//!   fsyncs it, printing its SHA-256; another, later, prints the SHA-256
//!   `sha256sum` reads back and removes the file. The storage monitor is
//!   only killed between the two, after the fsync.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{fail, IoContext, Result};

use lego_cluster::EXIT_LEGO_FAILED;

/// Distinct seeds of each program (their outputs are learned up front).
pub const SEEDS: u64 = 4;

/// The memory program for `seed`, filling `mib` MiB.
pub fn memory_program(seed: u64, mib: u64) -> String {
    format!(
        r#"
import hashlib, random
r = random.Random({seed})
n = {mib}
chunks = [r.randbytes(1 << 20) for _ in range(n)]
def digest(order):
    h = hashlib.sha256()
    for c in order:
        h.update(c)
    return h.hexdigest()
print("fill", digest(chunks), flush=True)
print("back", digest(reversed(chunks)), flush=True)
for i in range(0, n, 3):
    chunks[i] = bytes(reversed(chunks[i]))
print("rewrite", digest(chunks), flush=True)
h = hashlib.sha256()
for _ in range(4 * n):
    c = chunks[r.randrange(n)]
    o = r.randrange(256) * 4096
    h.update(c[o:o + 4096])
print("random", h.hexdigest(), flush=True)
"#
    )
}

/// The file writer for `seed`: 4 MiB into `path`, fsynced.
pub fn file_writer(seed: u64, path: &str) -> String {
    format!(
        r#"
import hashlib, os, random
data = random.Random({seed}).randbytes(4 << 20)
with open("{path}", "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
d = os.open(os.path.dirname("{path}"), os.O_RDONLY)
os.fsync(d)
os.close(d)
print(hashlib.sha256(data).hexdigest())
"#
    )
}

/// The file reader: the SHA-256 of `path` as read back, then removes it.
pub fn file_reader(path: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"sha256sum "$1" | cut -d" " -f1 && rm "$1""#.into(),
        "sh".into(),
        path.into(),
    ]
}

/// What each seed's programs must print.
pub struct Expected {
    pub memory: Vec<Vec<u8>>,
    pub file: Vec<Vec<u8>>,
}

/// Runs every program once without lego to learn its output.
pub fn learn(mib: u64, scratch: &Path) -> Result<Expected> {
    let mut e = Expected {
        memory: Vec::new(),
        file: Vec::new(),
    };
    for seed in 0..SEEDS {
        e.memory
            .push(local(&["python3", "-c", &memory_program(seed, mib)])?);
        let path = scratch.join(format!("expected-{seed}.bin"));
        let w = local(&["python3", "-c", &file_writer(seed, &path.to_string_lossy())])?;
        let r = local(
            &file_reader(&path.to_string_lossy())
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        if w != r {
            fail!("the file programs disagree without lego: the machine's python3 or sha256sum is broken");
        }
        e.file.push(w);
    }
    Ok(e)
}

fn local(cmd: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .io(|| format!("cannot run {}", cmd[0]))?;
    if !out.status.success() {
        fail!(
            "{} failed without lego ({}): {}",
            cmd[0],
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0, output as without lego.
    Right,
    /// Exit 0, output not as without lego.
    Wrong,
    /// Stopped with an error (or never started): its first line.
    Failed(String),
}

/// Runs `cmd` under lego in vNode `vnode` of the cluster in `dir` and
/// judges its output. A run that lego could not start (the manager away,
/// say) is tried again for up to `patience`.
pub fn judge(
    dir: &Path,
    vnode: &str,
    excache: Option<u64>,
    cmd: &[String],
    expected: &[u8],
    patience: Duration,
) -> (Verdict, Duration, u32) {
    let exe: PathBuf = std::env::current_exe().unwrap_or_else(|_| "lego".into());
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let t = Instant::now();
        let mut c = Command::new(&exe);
        c.arg("run").arg("--dir").arg(dir).args(["--vnode", vnode]);
        if let Some(x) = excache {
            c.args(["--excache", &x.to_string()]);
        }
        let out = c
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .env_remove("LEGO_LOG")
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                return (
                    Verdict::Failed(format!("cannot start lego run: {e}")),
                    t.elapsed(),
                    tries,
                )
            }
        };
        let took = t.elapsed();
        let first = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        match out.status.code() {
            Some(0) if out.stdout == expected => return (Verdict::Right, took, tries),
            Some(0) => return (Verdict::Wrong, took, tries),
            Some(EXIT_LEGO_FAILED) if out.stdout.is_empty() && start.elapsed() < patience => {
                std::thread::sleep(Duration::from_millis(500));
            }
            code => {
                let why = format!("exit {code:?}: {first}");
                return (Verdict::Failed(why), took, tries);
            }
        }
    }
}
