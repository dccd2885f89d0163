//! Child processes of `lego bench excache`: run with a timeout and a stop
//! flag, never left behind, and what their ending means for the table.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{fail, BenchError, IoContext, Result};

/// A finished child process.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Runs a child with piped output; on `stop` or after `timeout` it is sent
/// SIGTERM, then SIGKILL 5 s later, and an error is returned.
pub fn run_child(mut cmd: Command, stop: &AtomicBool, timeout: Duration) -> Result<Finished> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .io(|| format!("cannot start {:?}", cmd.get_program()))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let mut why = None;
    let mut term_at: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .io(|| "cannot wait for a child process".into())?
        {
            break st;
        }
        if why.is_none() {
            if stop.load(Ordering::Relaxed) {
                why = Some("interrupted".to_string());
            } else if t0.elapsed() > timeout {
                why = Some(format!("timed out after {} s", timeout.as_secs()));
            }
            if why.is_some() {
                signal(child.id(), "-TERM");
                term_at = Some(Instant::now());
            }
        }
        if kill_at.is_none() && term_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            let _ = child.kill();
            kill_at = Some(Instant::now());
        }
        if kill_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            // Its pipes stay open: the readers are abandoned with it.
            return Err(BenchError::Stuck(format!(
                "{}; process {} did not die within 30 s of SIGKILL (stuck in the kernel: {})",
                why.unwrap_or_default(),
                child.id(),
                proc_state(child.id())
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = t0.elapsed();
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if let Some(w) = why {
        fail!("{w}");
    }
    Ok(Finished {
        status,
        stdout,
        stderr,
        wall,
    })
}

/// A child that survived SIGKILL: the bench cannot go on safely.
/// A process's state and kernel wait channel, from /proc.
pub fn proc_state(pid: u32) -> String {
    let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("State:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into());
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!("state {state}, waiting in {wchan}")
}
