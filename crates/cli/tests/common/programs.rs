//! A program that runs long enough for failures to be injected under it:
//! python filling 160 MiB and hashing it pass after pass, started under
//! `lego run`, its output collected; and what "every vRegion healthy again"
//! means.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lego_wire::control::ClusterState;
use lego_wire::VRegionState;

use super::{alive_memory, python, wait_for, TestCluster};

/// Fills `mib` MiB, says "started", then hashes it all in `passes`
/// passes, printing each pass's digest: at an ExCache of a quarter of it,
/// every pass pages most of it in from the memory monitors.
pub fn hashing(mib: usize, passes: usize) -> String {
    format!(
        r#"
import hashlib, random
r = random.Random(11)
chunks = [r.randbytes(1 << 20) for _ in range({mib})]
print("started", flush=True)
for p in range({passes}):
    h = hashlib.sha256()
    for c in (chunks if p % 2 == 0 else reversed(chunks)):
        h.update(c)
    print(p, h.hexdigest(), flush=True)
"#
    )
}

/// [`hashing`] 160 MiB (a 40 MiB ExCache is 25%).
pub fn script(passes: usize) -> String {
    hashing(160, passes)
}

/// What `script` prints run by python without lego.
pub fn local_output(script: &str) -> Vec<u8> {
    let local = Command::new(python())
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(local.status.success(), "python without lego");
    local.stdout
}

pub struct Running {
    pub child: Child,
    pub out: std::thread::JoinHandle<Vec<u8>>,
}

/// Starts `cmd` (a `lego run` of a [`script`]) and waits for "started".
pub fn start_cmd(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    if let Err(e) = stdout.read_exact(&mut first) {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("the program ended before it started ({e}): {err}");
    }
    assert_eq!(&first, b"started\n");
    let out = std::thread::spawn(move || {
        let mut rest = first.to_vec();
        let _ = stdout.read_to_end(&mut rest);
        rest
    });
    Running { child, out }
}

pub fn finish(mut r: Running, limit: Duration) -> (std::process::ExitStatus, Vec<u8>, String) {
    let status = wait_for(limit, "the program to end", || r.child.try_wait().unwrap());
    let mut err = String::new();
    r.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, r.out.join().unwrap(), err)
}

/// Whether every vRegion is healthy with no copy on the components `dead`.
pub fn all_healthy_without(s: &ClusterState, dead: &[u64]) -> bool {
    !s.vregions.is_empty()
        && s.vregions.iter().all(|r| {
            r.state == VRegionState::Healthy
                && !dead.contains(&r.primary)
                && !r
                    .backup
                    .is_some_and(|b| b.on().is_some_and(|id| dead.contains(id)))
        })
}

/// Starts the script under lego and waits for "started".
pub fn start(c: &TestCluster, script: &str) -> Running {
    start_cmd(c.run_command(&["--excache", "40MiB"], &[&python(), "-c", script]))
}

/// The memory monitor (index in `c.memories`, id) holding the primary copy
/// of the most vRegions.
pub fn busiest_primary(c: &TestCluster, s: &ClusterState) -> (usize, u64) {
    let id = alive_memory(s)
        .iter()
        .max_by_key(|m| s.vregions.iter().filter(|r| r.primary == m.id).count())
        .map(|m| m.id)
        .unwrap();
    let addr = &s.components.iter().find(|x| x.id == id).unwrap().addr;
    let i = c.memories.iter().position(|m| &m.addr == addr).unwrap();
    (i, id)
}
