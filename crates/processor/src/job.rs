//! One job: a program the processor monitor started, its output on the way
//! to `lego run`, its standard input, signals, and its end.
//!
//! Output: one thread per pipe (stdout, stderr) reads into the job's buffer
//! as chunks; `Output` requests take what is there (long-poll). While more
//! than [`OUTPUT_LIMIT`] bytes are buffered the readers stop reading, so a
//! program that writes faster than its client reads blocks in `write`, as it
//! would on a slow terminal: output is never dropped. Nobody left to read
//! (the client went away) turns the buffer into a sink.
//!
//! The end: the waiter (in [`crate::service`]) reaps the main process, kills
//! the rest of its process group, waits for the pipes to drain, frees the
//! job's memory and quota, and only then publishes the exit code, so a client
//! that sees the exit also sees every byte and a cluster already cleaned up.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::process::ChildStdin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lego_transport::lock;
use lego_wire::jobs::JobInfo;
use lego_wire::jobs::{push_chunk, Stream};
use lego_wire::Asid;
use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};

use crate::ProcessorError;

/// Most output bytes buffered per job before its pipes are no longer read.
pub const OUTPUT_LIMIT: usize = 4 << 20;
/// Most output bytes in one `Output` answer (well under the 8 MiB frame limit).
const REPLY_LIMIT: usize = 4 << 20;
/// Size of one read from a pipe.
const READ_SIZE: usize = 64 << 10;
/// In a job's start-up, how long a signal may wait for its program to take
/// it (see [`Job::signal`]).
const SIGNAL_START_WAIT: Duration = Duration::from_secs(5);
/// After the process group is gone, how long pipes may stay silent before the
/// job is declared finished anyway (something outside the group holds them).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// A job's identity and its shared state.
pub struct Job {
    pub id: u64,
    pub pid: u32,
    pub vnode: String,
    pub argv: Vec<String>,
    /// The ExCache quota, bytes.
    pub excache: u64,
    /// The connection that launched it: when it goes away, the job is killed.
    pub launcher: u64,
    state: Mutex<JobState>,
    /// Each process's address space, by pid, as its runtime said.
    spaces: Mutex<BTreeMap<u32, Asid>>,
    /// The broker's thread, joined at the end.
    broker: Mutex<Option<std::thread::JoinHandle<()>>>,
    cond: Condvar,
    stdin: Mutex<Option<ChildStdin>>,
    /// Memory-quota refusals already logged.
    quota_logged: std::sync::atomic::AtomicU64,
    /// When it was started.
    started: Instant,
}

#[derive(Default)]
struct JobState {
    chunks: VecDeque<(Stream, Vec<u8>)>,
    buffered: usize,
    pipes_open: u8,
    last_output: Option<Instant>,
    /// The main process was reaped: its pid must not be signalled any more.
    reaped: bool,
    /// The code `lego run` exits with, once the job is cleaned up.
    exit: Option<i32>,
    exit_collected: bool,
    finished_at: Option<Instant>,
    launcher_gone: bool,
    /// Nobody will read the output: readers drop it instead of waiting.
    discard: bool,
    pipes_abandoned: bool,
    /// The runtime's last counters (from the broker), by address space,
    /// kept after the job ends.
    counters: crate::rtstats::JobCounters,
}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        pid: u32,
        vnode: String,
        argv: Vec<String>,
        excache: u64,
        launcher: u64,
        stdin: Option<ChildStdin>,
    ) -> Self {
        Job {
            id,
            pid,
            vnode,
            argv,
            excache,
            launcher,
            state: Mutex::new(JobState::default()),
            spaces: Mutex::new(BTreeMap::new()),
            broker: Mutex::new(None),
            cond: Condvar::new(),
            stdin: Mutex::new(stdin),
            quota_logged: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Logs allocations the vNode's memory quota refused since last time.
    pub fn log_quota_refusals(&self, counters: &BTreeMap<String, u64>) {
        let now = counters.get("quota_refusals").copied().unwrap_or(0);
        let before = self
            .quota_logged
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        if now > before {
            tracing::warn!(
                vnode = %self.vnode,
                job = format_args!("{:x}", self.id),
                refusals = now,
                "vnode {} is out of its memory quota: an allocation of the job failed as out of memory",
                self.vnode
            );
        }
    }

    /// Starts a thread that moves one pipe's bytes into the buffer.
    pub fn start_reader(
        self: &Arc<Self>,
        kind: Stream,
        mut pipe: impl Read + Send + 'static,
    ) -> std::io::Result<()> {
        lock(&self.state).pipes_open += 1;
        let job = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{:x}-{kind:?}", self.id & 0xffff))
            .spawn(move || {
                let mut buf = vec![0u8; READ_SIZE];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let mut st = lock(&job.state);
                    while st.buffered >= OUTPUT_LIMIT && !st.discard {
                        st = job.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    st.last_output = Some(Instant::now());
                    if !st.discard {
                        match st.chunks.back_mut() {
                            // Coalesce small reads of the same stream.
                            Some((k, data)) if *k == kind && data.len() + n <= READ_SIZE => {
                                data.extend_from_slice(&buf[..n])
                            }
                            _ => st.chunks.push_back((kind, buf[..n].to_vec())),
                        }
                        st.buffered += n;
                    }
                    job.cond.notify_all();
                }
                let mut st = lock(&job.state);
                st.pipes_open -= 1;
                job.cond.notify_all();
            });
        if let Err(e) = spawned {
            lock(&self.state).pipes_open -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// The `Output` long-poll: whatever is buffered, or the exit chunk once
    /// everything was delivered, or nothing after `max_wait`.
    pub fn poll_output(&self, max_wait: Duration, out: &mut Vec<u8>) {
        let deadline = Instant::now() + max_wait;
        let mut st = lock(&self.state);
        loop {
            if !st.chunks.is_empty() {
                let mut taken = 0;
                while let Some((kind, data)) = st.chunks.pop_front() {
                    taken += data.len();
                    push_chunk(out, kind, &data);
                    if taken >= REPLY_LIMIT {
                        break;
                    }
                }
                st.buffered -= taken;
                self.cond.notify_all();
                return;
            }
            if let Some(code) = st.exit {
                if st.pipes_open == 0 || st.pipes_abandoned {
                    push_chunk(out, Stream::Exit, &code.to_le_bytes());
                    st.exit_collected = true;
                    return;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sends `sig` to the job's process group, unless it is already gone.
    /// Returns whether a signal was sent.
    ///
    /// In a job's first moments its helper and the init of its namespaces
    /// ignore the signals a shell passes on, and its program has not yet
    /// reset them to their defaults: a signal sent then would be dropped. So
    /// during start-up ([`SIGNAL_START_WAIT`]) it waits until one of the
    /// first three processes of the job (helper, init, program) takes it.
    pub fn signal(&self, sig: i32) -> Result<bool, ProcessorError> {
        let signal = Signal::from_named_raw(sig).ok_or(ProcessorError::BadSignal(sig))?;
        let deadline = self.started + SIGNAL_START_WAIT;
        while Instant::now() < deadline && !takes_signal(self.pid, sig) {
            if lock(&self.state).reaped {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = lock(&self.state);
        Ok(!st.reaped && self.kill_group(signal))
    }

    /// kill(-pgid). Never for pid 0 or 1: kill(0) and kill(-1) mean "everyone".
    fn kill_group(&self, signal: Signal) -> bool {
        match Pid::from_raw(self.pid as i32) {
            Some(pid) if self.pid > 1 => kill_process_group(pid, signal).is_ok(),
            _ => false,
        }
    }

    /// Called by the waiter once the main process is reaped: SIGKILLs whatever
    /// else is left in its process group. Returns whether anything was.
    pub fn reaped(&self) -> bool {
        let mut st = lock(&self.state);
        // The group outlives its leader while members remain, so its id cannot
        // have been reused yet.
        let rest = self.kill_group(Signal::KILL);
        st.reaped = true;
        rest
    }

    /// Waits (up to `timeout`) until no process of the job's group exists,
    /// so that none can still be sending pages when its memory is freed.
    /// Returns whether the group is gone.
    pub fn wait_group_gone(&self, timeout: Duration) -> bool {
        let Some(pid) = Pid::from_raw(self.pid as i32).filter(|_| self.pid > 1) else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        // Killed members linger as zombies until their new parent reaps them.
        while test_kill_process_group(pid).is_ok() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Waits until both pipes are at end of file, or until they have been
    /// silent for a while with room in the buffer (a process that escaped the
    /// group holds them): then they are abandoned.
    pub fn wait_pipes(&self) {
        let mut st = lock(&self.state);
        let mut silent_since = Instant::now();
        while st.pipes_open > 0 {
            if let Some(t) = st.last_output {
                silent_since = silent_since.max(t);
            }
            let blocked_on_space = st.buffered >= OUTPUT_LIMIT && !st.discard;
            if blocked_on_space {
                silent_since = Instant::now();
            } else if silent_since.elapsed() >= PIPE_GRACE {
                tracing::warn!(
                    job = format_args!("{:x}", self.id),
                    "a process outside the job's process group still holds its output; not waiting for it"
                );
                st.pipes_abandoned = true;
                st.discard = true;
                self.cond.notify_all();
                return;
            }
            st = self
                .cond
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Publishes the exit code: the job is over.
    pub fn finish(&self, code: i32) {
        let mut st = lock(&self.state);
        st.exit = Some(code);
        st.finished_at = Some(Instant::now());
        self.cond.notify_all();
    }

    /// Address space `asid` of the job is gone: its levels (resident
    /// pages) no longer count; its totals do.
    pub fn space_gone(&self, asid: u64) {
        lock(&self.state).counters.gone(asid);
    }

    /// A report of the runtime in one of the job's processes.
    pub fn set_counters(&self, counters: BTreeMap<String, u64>) {
        lock(&self.state).counters.report(counters);
    }

    /// Records a process's address space; returns the one it had before
    /// (its image before an exec), if any.
    pub fn note_space(&self, pid: u32, asid: Asid) -> Option<Asid> {
        lock(&self.spaces)
            .insert(pid, asid)
            .filter(|&old| old != asid)
    }

    /// The address spaces of processes that are gone, forgotten now.
    pub fn take_spaces_of_gone(&self) -> Vec<Asid> {
        let mut spaces = lock(&self.spaces);
        let gone: Vec<u32> = spaces
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        gone.iter().filter_map(|pid| spaces.remove(pid)).collect()
    }

    /// Keeps the broker's thread, to wait for it at the end.
    pub fn set_broker(&self, h: std::thread::JoinHandle<()>) {
        *lock(&self.broker) = Some(h);
    }

    /// Waits (up to `timeout`) for the broker to have heard the last word
    /// of every process of the job.
    pub fn wait_broker(&self, timeout: Duration) {
        let Some(h) = lock(&self.broker).take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }

    /// The launching connection is gone: nobody reads the output any more.
    /// Returns whether the job was still running.
    pub fn launcher_gone(&self) -> bool {
        let mut st = lock(&self.state);
        st.launcher_gone = true;
        st.discard = true;
        st.chunks.clear();
        st.buffered = 0;
        self.cond.notify_all();
        st.exit.is_none()
    }

    /// True while the program (or its cleanup) runs.
    pub fn running(&self) -> bool {
        lock(&self.state).exit.is_none()
    }

    /// True once a finished job's record may be dropped: its client has gone
    /// after the end, or it ended `keep` ago.
    pub fn forgettable(&self, keep: Duration) -> bool {
        let st = lock(&self.state);
        match st.finished_at {
            Some(t) => st.launcher_gone || t.elapsed() >= keep,
            None => false,
        }
    }

    /// Writes to the program's stdin; empty data closes it.
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), ProcessorError> {
        let mut stdin = lock(&self.stdin);
        if data.is_empty() {
            stdin.take();
            return Ok(());
        }
        let Some(pipe) = stdin.as_mut() else {
            return Err(ProcessorError::StdinClosed(self.id));
        };
        if pipe.write_all(data).is_err() {
            stdin.take();
            return Err(ProcessorError::StdinClosed(self.id));
        }
        Ok(())
    }

    /// Closes stdin (the job is over, or nobody will write any more).
    pub fn close_stdin(&self) {
        // try_lock: a writer blocked on a full pipe gets EPIPE once the
        // program is gone and drops the pipe itself.
        if let Ok(mut s) = self.stdin.try_lock() {
            s.take();
        }
    }

    /// The runtime's counters: the latest while running, the final ones
    /// afterwards.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.state).counters.merged()
    }

    pub fn info(&self) -> JobInfo {
        JobInfo {
            job: self.id,
            pid: self.pid,
            vnode: self.vnode.clone(),
            argv: self.argv.clone(),
            excache: self.excache,
            running: self.running(),
            counters: self.counters(),
        }
    }
}

/// Whether one of the first three processes of the chain from `pid` (each
/// the first child of the one before: a job's helper, init and program)
/// does not ignore `sig`, or the chain is gone.
fn takes_signal(pid: u32, sig: i32) -> bool {
    let mut p = pid;
    for _ in 0..3 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            return true;
        };
        let ignored = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(0);
        if !(1..=64).contains(&sig) || ignored & (1u64 << (sig - 1)) == 0 {
            return true;
        }
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        match children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            Some(c) => p = c,
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_wire::jobs::decode_chunks;

    fn job() -> Arc<Job> {
        Arc::new(Job::new(1, 0, "v".into(), vec!["x".into()], 0, 1, None))
    }

    #[test]
    fn output_is_bounded_and_never_dropped() {
        let j = job();
        let total = 3 * OUTPUT_LIMIT + 12345;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        j.start_reader(Stream::Stdout, std::io::Cursor::new(data.clone()))
            .unwrap();
        // The reader stops at the limit until someone takes output.
        std::thread::sleep(Duration::from_millis(100));
        assert!(lock(&j.state).buffered < OUTPUT_LIMIT + READ_SIZE);
        j.wait_pipes_for_test();
        let mut got = Vec::new();
        while got.len() < total {
            let mut body = Vec::new();
            j.poll_output(Duration::from_secs(5), &mut body);
            assert!(body.len() < 8 << 20);
            for c in decode_chunks(&body).unwrap() {
                assert_eq!(c.kind, Stream::Stdout);
                got.extend_from_slice(c.data);
            }
        }
        assert_eq!(got, data);
        // Exit comes only once published and drained.
        let mut body = Vec::new();
        j.poll_output(Duration::from_millis(10), &mut body);
        assert!(body.is_empty());
        j.finish(3);
        j.poll_output(Duration::from_secs(1), &mut body);
        let c = decode_chunks(&body).unwrap();
        assert_eq!(c[0].kind, Stream::Exit);
        assert_eq!(c[0].data, 3i32.to_le_bytes());
    }

    #[test]
    fn a_gone_client_unblocks_the_readers() {
        let j = job();
        let data = vec![1u8; 2 * OUTPUT_LIMIT];
        j.start_reader(Stream::Stderr, std::io::Cursor::new(data))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(j.launcher_gone());
        j.wait_pipes_for_test();
        assert_eq!(lock(&j.state).pipes_open, 0);
        assert_eq!(lock(&j.state).buffered, 0);
    }

    #[test]
    fn signals_are_checked_and_pid_one_is_never_signalled() {
        let j = job();
        assert!(matches!(j.signal(0), Err(ProcessorError::BadSignal(0))));
        assert!(!j.signal(15).unwrap(), "pid 0 is never signalled");
    }

    impl Job {
        /// Waits for the readers to finish, whatever the buffer holds.
        fn wait_pipes_for_test(&self) {
            let j = self;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut st = lock(&j.state);
            while st.pipes_open > 0 && st.buffered < OUTPUT_LIMIT {
                assert!(Instant::now() < deadline);
                st = j
                    .cond
                    .wait_timeout(st, Duration::from_millis(10))
                    .unwrap()
                    .0;
            }
        }
    }
}
