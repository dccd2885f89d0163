//! `lego run [--excache SIZE|PERCENT] [--vnode NAME] [--stats] -- CMD [ARGS...]`
//!
//! Runs an unmodified program on the cluster: the manager's GPM picks a
//! processor monitor, which starts CMD under the ExCache runtime with this
//! shell's environment and working directory. `lego run` then behaves like
//! the program: stdin is relayed, stdout and stderr are copied byte for byte
//! to its own, SIGINT/SIGTERM/SIGHUP are forwarded, and it exits with the
//! program's status (128+N when the program was killed by signal N). When
//! `lego run` itself dies, the processor monitor kills the program.
//!
//! With no cluster (no `cluster.json` in the cluster directory and no
//! `--manager`), it starts the embedded local cluster (a manager, two memory
//! monitors, a processor monitor) in a fresh temporary directory for the
//! duration of the run and removes it afterwards.
//!
//! Exit codes of its own: 127 command not found, 126 command not executable,
//! 125 any other failure of lego (as `docker run` does).
//!
//! Connections to the processor monitor: one for the launch and the output
//! long-poll (its loss kills the job), one for stdin (a write may block while
//! the program does not read) and one for signals (never stuck behind either).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use lego_cluster::size::{human, parse_size};
use lego_cluster::{
    ClusterArgs, LocalCluster, Options, ProcessorSpec, Spec, Target, EXIT_CANNOT_EXECUTE,
    EXIT_LEGO_FAILED, EXIT_NOT_FOUND,
};
use lego_transport::{lock, Client, ClientOptions, Credentials, Patience, Redial, TransportError};
use lego_wire::auth::Secret;
use lego_wire::control::{ClusterStateReq, PlaceProcessReq, VnodeCreateReq, VnodeListReq};
use lego_wire::jobs::{JobsReq, LaunchReq, OutputReq, SignalReq, StdinReq, Stream};
use lego_wire::{ErrorCode, Role};
use signal_hook::consts::{SIGHUP, SIGINT, SIGPIPE, SIGTERM};
use tracing::{info, warn};

/// ExCache of the embedded cluster's processor monitor.
const EMBEDDED_EXCACHE: u64 = 1 << 30;
/// Longest wait of one output long-poll.
const POLL_MS: u64 = 1000;
/// Bytes of stdin relayed per request.
const STDIN_CHUNK: usize = 256 << 10;

/// An ExCache quota as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    Bytes(u64),
    Percent(u32),
}

/// Parses `64MiB` or `25%`.
pub fn parse_quota(s: &str) -> Result<Quota, String> {
    if let Some(p) = s.trim().strip_suffix('%') {
        let p: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a percentage such as 25%"))?;
        if p == 0 || p > 100 {
            return Err(format!("'{s}' is not between 1% and 100%"));
        }
        return Ok(Quota::Percent(p));
    }
    match parse_size(s)? {
        0 => Err("an ExCache quota of 0 bytes cannot hold a page".into()),
        b => Ok(Quota::Bytes(b)),
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// ExCache quota of the program: a size (64MiB) or a percentage of the
    /// processor monitor's ExCache (25%) [default: 25%]
    #[arg(long, value_parser = parse_quota, value_name = "SIZE|PERCENT")]
    pub excache: Option<Quota>,
    /// The vNode to run in (created if missing)
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub vnode: String,
    /// When the program ends, print the runtime's counters (faults,
    /// evictions, bytes moved, ...) to stderr
    #[arg(long)]
    pub stats: bool,
    /// With --stats, also print the buckets of the remote fault latency
    /// histogram (`remote_fault_hist_us_MID  COUNT`, MID the bucket's
    /// midpoint in µs)
    #[arg(long, requires = "stats")]
    pub stats_histogram: bool,
    /// Do not share this working directory with the program: it starts in
    /// its vNode's /data (or /). By default the directory is visible to the
    /// program read-only, at the same path
    #[arg(long)]
    pub isolated: bool,
    /// Forward a port of the processor host to this port of the vNode's
    /// vIP while the program runs, as `docker run -p` does: HOSTPORT:PORT,
    /// or PORT for any free host port (repeat for more)
    #[arg(long, value_parser = parse_publish, value_name = "[HOSTPORT:]PORT")]
    pub publish: Vec<(u16, u16)>,
    /// The network of the vNode when this command creates it: vNodes of
    /// one network reach each other's vIPs, others cannot [default: a
    /// network of its own]
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The program and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<std::ffi::OsString>,
}

/// A failure of `lego run` itself: one line and an exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn lego(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_LEGO_FAILED,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::lego(format!("{e:#}"))
    }
}

impl From<lego_cluster::ClusterError> for Failure {
    fn from(e: lego_cluster::ClusterError) -> Self {
        Failure::lego(lego_processor::chain(&e))
    }
}

/// A refusal's own message (the remote's words), or the whole error.
fn describe(e: &TransportError) -> String {
    match e {
        TransportError::Remote { message, .. } => message.clone(),
        other => lego_processor::chain(other),
    }
}

/// Signals caught before and after the launch.
#[derive(Default)]
struct SignalState {
    /// The job and a connection to signal it on, once launched.
    job: Option<(Client, u64)>,
    /// A signal that came before the launch.
    pending: Option<i32>,
}

/// Runs the command; returns the exit code for the process.
pub fn main(a: RunArgs) -> i32 {
    let sig = Arc::new(Mutex::new(SignalState::default()));
    if let Err(e) = catch_signals(sig.clone()) {
        eprintln!("lego: cannot handle signals: {e}");
        return EXIT_LEGO_FAILED;
    }
    match run(a, &sig) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("lego: {}", f.message);
            f.code
        }
    }
}

fn catch_signals(state: Arc<Mutex<SignalState>>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let mut st = lock(&state);
                match &st.job {
                    Some((client, job)) => {
                        let req = SignalReq {
                            job: *job,
                            signal: s,
                        };
                        if let Err(e) = client.call(&req) {
                            warn!("cannot forward signal {s} to the program: {}", describe(&e));
                        }
                    }
                    None => st.pending = Some(s),
                }
            }
        })?;
    Ok(())
}

/// The embedded cluster and its directory; both go away on drop.
struct Embedded {
    cluster: Option<LocalCluster>,
    dir: PathBuf,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Memory monitors of the embedded cluster: a quarter of the machine's
/// memory each (pages are held twice, primary and backup), at least 1 GiB.
fn embedded_capacity() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(16 << 20);
    (total_kib * 1024 / 4).max(1 << 30) >> 20 << 20
}

fn start_embedded() -> Result<(Embedded, Target), Failure> {
    // Before starting anything: the most likely reason it would fail. The
    // processor monitor finds the same runtime ($LEGO_RUNTIME is inherited).
    let runtime = std::env::var_os("LEGO_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(lego_processor::default_runtime_path);
    lego_processor::check_runtime(&runtime)
        .map_err(|e| Failure::lego(lego_processor::chain(&e)))?;
    let rnd = lego_wire::auth::random_bytes().map_err(|e| Failure::lego(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!(
        "lego-run-{}-{:08x}",
        std::process::id(),
        u32::from_le_bytes(rnd[..4].try_into().expect("4 bytes"))
    ));
    std::fs::create_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .map_err(Failure::from)?;
    let spec = Spec {
        memory_monitors: 2,
        capacity: embedded_capacity(),
        memory_cpus: None,
        storage: true,
        encrypt: lego_cluster::Encrypt::Auto,
        join: false,
        manager_args: Vec::new(),
        rack: None,
        managers: Default::default(),
    };
    let processor = ProcessorSpec {
        excache: EMBEDDED_EXCACHE,
        runtime: None,
        cpus: None,
    };
    let opts = Options {
        dir: dir.clone(),
        exe: std::env::current_exe()
            .context("cannot find the lego executable")
            .map_err(Failure::from)?,
        heartbeat_ms: 1000,
        log: None,
    };
    match LocalCluster::start(opts, &spec, Some(&processor)) {
        Ok(c) => {
            info!(
                "no lego cluster is running: started an embedded one in {} for this run (logs in {})",
                dir.display(),
                dir.join("logs").display()
            );
            let target = c.target();
            Ok((
                Embedded {
                    cluster: Some(c),
                    dir,
                },
                target,
            ))
        }
        Err(e) => {
            // Keep the directory: its logs say what went wrong.
            Err(Failure::lego(format!(
                "cannot start the embedded local cluster (logs in {}): {}",
                dir.join("logs").display(),
                lego_processor::chain(&e).lines().next().unwrap_or_default()
            )))
        }
    }
}

/// The cluster named by the flags, or none when there is nothing to find.
fn find_cluster(c: &ClusterArgs) -> Result<Option<Target>, Failure> {
    if c.manager.is_some() || c.dir().join("cluster.json").exists() {
        return Ok(Some(c.resolve()?));
    }
    Ok(None)
}

/// `--publish`: `HOSTPORT:PORT` or `PORT` (any free host port).
fn parse_publish(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' is not a port number"))
    };
    let (host, inner) = match s.split_once(':') {
        Some((h, p)) => (port(h)?, port(p)?),
        None => (0, port(s)?),
    };
    if inner == 0 {
        return Err("the vNode's port cannot be 0".into());
    }
    Ok((host, inner))
}

fn ensure_vnode(mgr: &Redial, name: &str, network: Option<&str>) -> Result<(), Failure> {
    let list = mgr
        .call(&VnodeListReq)
        .map_err(|e| Failure::lego(format!("cannot list vnodes: {}", describe(&e))))?;
    if let Some(v) = list.iter().find(|v| v.name == name) {
        return match network {
            Some(n) if v.network != n => Err(Failure::lego(format!(
                "vnode {name} exists in network {}, not {n}: a vNode's network is set when it is created",
                v.network_name()
            ))),
            _ => Ok(()),
        };
    }
    match mgr.call(&VnodeCreateReq {
        name: name.into(),
        network: network.map(str::to_string),
        ..VnodeCreateReq::default()
    }) {
        Ok(v) => {
            tracing::debug!(id = v.id, "created vnode {name}");
            Ok(())
        }
        // Someone else created it meanwhile.
        Err(e) if e.remote_code() == Some(ErrorCode::Conflict) => Ok(()),
        Err(e) => Err(Failure::lego(format!(
            "cannot create vnode {name}: {}",
            describe(&e)
        ))),
    }
}

/// Why no processor monitor was found, in the words most useful to the user.
fn placement_failure(mgr: &Redial, e: &TransportError) -> Failure {
    let processors = mgr
        .call(&ClusterStateReq)
        .map(|st| st.alive(Role::Processor).count())
        .unwrap_or(1);
    if processors == 0 {
        return Failure::lego(
            "no processor monitor is running in this cluster: start one with \
             `lego processor --excache SIZE --manager ADDR` (`lego up` starts one)",
        );
    }
    Failure::lego(format!("cannot place the program: {}", describe(e)))
}

fn connect(addr: &str, secret: &Secret, request_timeout: Duration) -> Result<Client, Failure> {
    Client::connect(
        addr,
        &Credentials::component(secret),
        &ClientOptions {
            request_timeout,
            ..ClientOptions::default()
        },
    )
    .map_err(|e| {
        Failure::lego(format!(
            "cannot reach the processor monitor: {}",
            describe(&e)
        ))
    })
}

fn utf8(what: &str, s: std::ffi::OsString) -> Result<String, Failure> {
    s.into_string().map_err(|s| {
        Failure::lego(format!(
            "{what} {s:?} is not UTF-8, which lego cannot carry yet"
        ))
    })
}

fn run(a: RunArgs, sig: &Arc<Mutex<SignalState>>) -> Result<i32, Failure> {
    let argv: Vec<String> = a
        .cmd
        .iter()
        .map(|s| utf8("argument", s.clone()))
        .collect::<Result<_, _>>()?;
    let cwd = std::env::current_dir()
        .context("cannot read the working directory")
        .map_err(Failure::from)
        .and_then(|d| utf8("working directory", d.into_os_string()))?;
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => env.push((k, v)),
            (k, _) => warn!("not passing environment variable {k:?}: not UTF-8"),
        }
    }

    let (_embedded, target) = match find_cluster(&a.cluster)? {
        Some(t) => (None, t),
        None => {
            let (e, t) = start_embedded()?;
            (Some(e), t)
        }
    };
    if let Some(s) = lock(sig).pending {
        return Ok(128 + s);
    }
    target.connect()?;
    let mgr = target.manager();
    ensure_vnode(&mgr, &a.vnode, a.network.as_deref())?;
    let excache = match a.excache {
        Some(Quota::Bytes(b)) => b,
        // The processor monitor works out a percentage of its own ExCache.
        _ => 0,
    };
    // The manager learns that ExCache came back (a job just ended) from the
    // processor's next heartbeat: a refusal for want of room is retried for
    // a few heartbeats before it is reported.
    let req = PlaceProcessReq {
        vnode: a.vnode.clone(),
        excache,
    };
    let patience =
        Patience::steady(Duration::from_secs(3), Duration::from_millis(100)).and_unavailable();
    let place = mgr
        .call_patiently(&req, &patience)
        .map_err(|e| placement_failure(&mgr, &e))?;
    drop(mgr);

    let main = connect(&place.addr, &target.secret, Duration::from_secs(30))?;
    let ctl = connect(&place.addr, &target.secret, Duration::from_secs(10))?;
    let req = LaunchReq {
        argv,
        env,
        cwd,
        vnode: a.vnode.clone(),
        excache: match a.excache {
            Some(Quota::Bytes(b)) => Some(b),
            _ => None,
        },
        excache_percent: match a.excache {
            Some(Quota::Percent(p)) => Some(p),
            _ => None,
        },
        isolated: a.isolated,
        publish: a.publish.clone(),
    };
    let launched = main.call(&req).map_err(|e| Failure {
        code: match e.remote_code() {
            Some(ErrorCode::NotFound) => EXIT_NOT_FOUND,
            Some(ErrorCode::Conflict) => EXIT_CANNOT_EXECUTE,
            _ => EXIT_LEGO_FAILED,
        },
        message: describe(&e),
    })?;
    let job = launched.job;
    let processor_host = place.addr.rsplit_once(':').map_or("", |(h, _)| h);
    for (host, target) in &launched.published {
        let port = host.rsplit_once(':').map_or(host.as_str(), |(_, p)| p);
        eprintln!("lego: published {processor_host}:{port} -> {target}");
    }
    tracing::debug!(
        job = format_args!("{job:x}"),
        pid = launched.pid,
        processor = %place.addr,
        excache = %human(launched.excache),
        "launched"
    );
    {
        let mut st = lock(sig);
        st.job = Some((ctl.clone(), job));
        if let Some(s) = st.pending.take() {
            let _ = ctl.call(&SignalReq { job, signal: s });
        }
    }
    relay_stdin(place.addr.clone(), target.secret.clone(), job);
    let code = relay_output(&main, &ctl, job, &place.addr)?;
    if a.stats {
        print_stats(&main, job, launched.excache, a.stats_histogram);
    }
    Ok(code)
}

/// Copies this process's stdin to the job's, on its own connection.
fn relay_stdin(addr: String, secret: Secret, job: u64) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            // A program may leave its stdin unread for as long as it likes.
            let Ok(conn) = connect(&addr, &secret, Duration::from_secs(365 * 24 * 3600)) else {
                return;
            };
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; STDIN_CHUNK];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                // Empty: end of input. An error: the program closed its stdin.
                let data = buf[..n].to_vec();
                if conn.call(&StdinReq { job, data }).is_err() || n == 0 {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot relay stdin: {e}");
    }
}

/// Copies the job's output to ours until its exit chunk; returns its code.
fn relay_output(main: &Client, ctl: &Client, job: u64, addr: &str) -> Result<i32, Failure> {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let mut stdout_open = true;
    let poll = OutputReq {
        job,
        max_wait_ms: POLL_MS,
    };
    let sigpipe = SignalReq {
        job,
        signal: SIGPIPE,
    };
    loop {
        let output = main.call(&poll).map_err(|e| {
            Failure::lego(format!(
                "lost the program on the processor monitor at {addr}: {}",
                describe(&e)
            ))
        })?;
        let chunks = output
            .chunks()
            .map_err(|e| Failure::lego(format!("bad output from {addr}: {e}")))?;
        let mut exit = None;
        let (mut out, mut err) = (stdout.lock(), stderr.lock());
        let (mut wrote_out, mut wrote_err) = (false, false);
        for c in chunks {
            match c.kind {
                Stream::Stdout if stdout_open => {
                    if out.write_all(c.data).is_err() {
                        // Like a pipe: the reader is gone, the writer gets SIGPIPE.
                        stdout_open = false;
                        let _ = ctl.call(&sigpipe);
                    }
                    wrote_out = true;
                }
                Stream::Stdout => {}
                Stream::Stderr => {
                    let _ = err.write_all(c.data);
                    wrote_err = true;
                }
                Stream::Exit => {
                    exit = Some(i32::from_le_bytes(c.data.try_into().unwrap_or([0; 4])));
                }
            }
        }
        if wrote_out && stdout_open && out.flush().is_err() {
            stdout_open = false;
            let _ = ctl.call(&sigpipe);
        }
        if wrote_err {
            let _ = err.flush();
        }
        if let Some(code) = exit {
            return Ok(code);
        }
    }
}

/// `--stats`: the runtime's final counters, as a table on stderr.
fn print_stats(main: &Client, job: u64, quota: u64, histogram: bool) {
    let jobs = match main.call(&JobsReq) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("lego: cannot read the program's counters: {}", describe(&e));
            return;
        }
    };
    let counters: std::collections::BTreeMap<String, u64> = jobs
        .into_iter()
        .find(|j| j.job == job)
        .map(|j| j.counters)
        .unwrap_or_default()
        .into_iter()
        // The fault histogram's buckets: summed up by the percentiles,
        // unless asked for.
        .filter(|(k, _)| histogram || !k.starts_with(lego_wire::jobs::RT_HIST_PREFIX))
        .collect();
    let mut o = std::io::stderr().lock();
    if counters.is_empty() {
        let _ = writeln!(
            o,
            "lego: job {job:x} (ExCache {}): the runtime reported no counters",
            human(quota)
        );
        return;
    }
    let _ = writeln!(o, "lego: job {job:x}, ExCache {}:", human(quota));
    let width = counters.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in &counters {
        let _ = writeln!(o, "  {k:<width$}  {v:>14}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas() {
        assert_eq!(parse_quota("64MiB"), Ok(Quota::Bytes(64 << 20)));
        assert_eq!(parse_quota("25%"), Ok(Quota::Percent(25)));
        assert!(parse_quota("0%").is_err());
        assert!(parse_quota("150%").is_err());
        assert!(parse_quota("0").is_err());
        assert!(parse_quota("lots").is_err());
    }
}
