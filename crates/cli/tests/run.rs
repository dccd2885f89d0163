//! `lego run` and the processor monitor with real daemons: every program's
//! output compared byte for byte with the same command run directly, exit
//! codes (statuses and signals), stdin, signals, errors, a killed `lego run`,
//! the embedded cluster, and `lego up` + `lego status` showing jobs. After
//! every job the memory monitors hold no page.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::control::VnodeListReq;
use lego_wire::jobs::{JobInfo, JobsReq, LaunchReq, OutputReq};
use lego_wire::ErrorCode;

/// A manager, two memory monitors and a processor monitor with 256 MiB ExCache.
fn cluster() -> TestCluster {
    ensure_runtime();
    let mut c = TestCluster::start(2, "256MiB", 200);
    c.start_processor("256MiB");
    c
}

/// Like `Command::output`, but a command that hangs is killed and fails
/// the test instead of hanging it.
fn output_within(cmd: Command, limit: Duration) -> Output {
    output_watched(cmd, limit, || {})
}

fn run_in(c: &TestCluster, cwd: &Path, flags: &[&str], cmd: &[&str]) -> Output {
    let mut command = c.run_command(flags, cmd);
    command.current_dir(cwd).stdin(Stdio::null());
    output_within(command, Duration::from_secs(30))
}

fn direct_in(cwd: &Path, cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The exit code a shell would report: the status, or 128+N for signal N.
fn shell_code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The jobs of the cluster's processor monitor.
fn jobs(c: &TestCluster) -> Vec<JobInfo> {
    c.processor_client().call(&JobsReq).unwrap()
}

fn gone(pid: u32) -> bool {
    // A zombie is gone too: it runs nothing and holds nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Waits until the processor monitor runs a job with this argv; returns it.
fn wait_job(c: &TestCluster, argv: &[&str]) -> JobInfo {
    wait_for(Duration::from_secs(10), "the job to run", || {
        jobs(c).into_iter().find(|j| j.running && j.argv == argv)
    })
}

#[test]
fn output_and_exit_codes_are_those_of_the_program() {
    let c = cluster();
    let dir = shared_dir();
    let made = Command::new("sh")
        .args(["-c", "head -c 3000000 /dev/urandom > data.bin"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(made.success());
    let cases: &[&[&str]] = &[
        &["echo", "hello", "world"],
        &["cat", "data.bin"],
        &["sh", "-c", "echo out; echo err >&2; printf 'no newline'"],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 2000 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done",
        ],
        &["sh", "-c", "echo before; exit 3"],
        &["sh", "-c", "echo dying; kill -9 $$"],
        &["pwd"],
        // bash with pipes, command substitution, arithmetic, forks and execs.
        &[
            "bash",
            "-c",
            "set -o pipefail; n=$(seq 1 5000 | sort -rn | head -1); \
             echo \"max $n sum $(( $(seq 1 100 | paste -sd+) ))\"; \
             for f in $(ls | sort); do wc -c < \"$f\"; done | sort -n | tail -1; \
             (echo sub; exit 7); echo \"status $?\"",
        ],
    ];
    for cmd in cases {
        let via = run_in(&c, dir.path(), &[], cmd);
        let direct = direct_in(dir.path(), cmd);
        assert!(via.stdout == direct.stdout, "stdout of {cmd:?} differs");
        assert_eq!(text(&via.stderr), text(&direct.stderr), "stderr of {cmd:?}");
        assert_eq!(
            via.status.code(),
            Some(shell_code(&direct)),
            "exit of {cmd:?}: {}",
            text(&via.stderr)
        );
        c.assert_no_pages(&format!("{cmd:?}"));
    }
    let cat = run_in(&c, dir.path(), &[], &["cat", "data.bin"]);
    assert_eq!(
        cat.stdout,
        std::fs::read(dir.path().join("data.bin")).unwrap()
    );
    assert_eq!(
        run_in(&c, dir.path(), &[], &["sh", "-c", "kill -9 $$"])
            .status
            .code(),
        Some(137)
    );

    // The program's environment: ours, plus the runtime's and nothing else.
    let via = run_in(&c, dir.path(), &["--excache", "64MiB"], &["env"]);
    assert!(via.status.success(), "{}", text(&via.stderr));
    let direct = direct_in(dir.path(), &["env"]);
    let lines = |o: &Output| -> Vec<String> {
        let mut v: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
        v.retain(|l| {
            !l.starts_with("LEGO_RT_")
                && !l.starts_with("LD_PRELOAD=")
                && !l.starts_with("LEGO_SECRET=")
        });
        v.sort();
        v
    };
    assert_eq!(lines(&via), lines(&direct));
    c.assert_no_pages("env");

    // What the runtime is told, as the program started with it (the runtime
    // may consume some of it, so read it from /proc, not from `env`).
    let mut sleeper = c
        .run_command(&["--excache", "64MiB"], &["sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let job = wait_job(&c, &["sleep", "30"]);
    // The job's process is its helper; the program runs two levels down
    // (under the init of its PID namespace).
    let program = wait_for(Duration::from_secs(5), "the program under its init", || {
        let leaf = leaf_process(job.pid);
        std::fs::read(format!("/proc/{leaf}/cmdline"))
            .is_ok_and(|c| c.starts_with(b"sleep\0"))
            .then_some(leaf)
    });
    let environ = text(&std::fs::read(format!("/proc/{program}/environ")).unwrap());
    let var = |k: &str| {
        environ
            .split('\0')
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} is not set"))
            .to_string()
    };
    let runtime = std::fs::canonicalize(ensure_runtime()).unwrap();
    assert_eq!(
        var("LD_PRELOAD").split(':').next(),
        runtime.to_str(),
        "the runtime, first"
    );
    assert_eq!(var("LEGO_RT_EXCACHE"), (64u64 << 20).to_string());
    assert_eq!(var("LEGO_RT_VNODE"), "default");
    assert_eq!(var("LEGO_RT_MANAGER"), c.manager_addr);
    let vid: u32 = var("LEGO_RT_VNODE_ID").parse().unwrap();
    let key: String = c
        .secret
        .vnode_key(vid)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(var("LEGO_RT_KEY"), key, "the vnode's key");
    assert_ne!(var("LEGO_RT_KEY"), c.secret.to_hex(), "never the secret");
    assert_eq!(var("LEGO_RT_JOB"), job.job.to_string());
    assert_eq!(
        var("LEGO_RT_JOB_PROOF"),
        c.secret.job_proof_hex(job.job, vid),
        "the proof of its job"
    );
    assert!(var("LEGO_RT_BROKER").parse::<i32>().is_ok());
    assert!(var("LEGO_RT_UFFD_DEV").parse::<i32>().is_ok());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    wait_for(Duration::from_secs(5), "the job's end", || {
        (!jobs(&c).iter().any(|j| j.job == job.job && j.running)).then_some(())
    });
    c.assert_no_pages("sleep");

    // --stats: the counters the runtime sent through its broker, as a
    // table on stderr.
    let o = run_in(
        &c,
        dir.path(),
        &["--stats", "--excache", "64MiB"],
        &[
            "sh",
            "-c",
            "head -c 20000000 /dev/zero | wc -c >/dev/null; echo ran",
        ],
    );
    assert_eq!(text(&o.stdout), "ran\n");
    let err = text(&o.stderr);
    let mut lines = err.lines();
    let head = lines.next().unwrap_or_default();
    assert!(
        head.starts_with("lego: job ") && head.ends_with(", ExCache 64.0 MiB:"),
        "{err}"
    );
    let mut names = Vec::new();
    for l in lines {
        let mut f = l.split_whitespace();
        names.push(f.next().unwrap_or_default().to_string());
        assert!(f.next().is_some_and(|v| v.parse::<u64>().is_ok()), "{err}");
    }
    assert!(names.iter().any(|n| n == "faults_zero_filled"), "{err}");
}

#[test]
fn stdin_and_signals_are_relayed() {
    let c = cluster();
    // 5 MB through lego's stdin into cat, and back out byte for byte.
    let data: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = c
        .run_command(&[], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == data,
        "cat returned {} bytes",
        out.stdout.len()
    );
    c.assert_no_pages("cat");

    // A program that stops reading its stdin early does not hang lego.
    let mut child = c
        .run_command(&[], &["head", "-c", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&feed);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data[..100]);

    // SIGTERM to lego run reaches the program: 128 + 15.
    let mut child = c
        .run_command(&[], &["sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // At once: a signal in the job's first moments, before its program has
    // started, waits for it rather than being dropped.
    let job = wait_job(&c, &["sleep", "30"]);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_for(Duration::from_secs(10), "lego run to exit", || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(143));
    assert!(gone(job.pid));
    c.assert_no_pages("sleep");
}

#[test]
fn killing_lego_run_kills_the_program() {
    let c = cluster();
    let mut child = c
        .run_command(&[], &["sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let job = wait_job(&c, &["sleep", "1000"]);
    assert!(!gone(job.pid));
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(Duration::from_secs(5), "the program to be killed", || {
        gone(job.pid).then_some(())
    });
    wait_for(Duration::from_secs(5), "the job's cleanup", || {
        (!jobs(&c).iter().any(|j| j.job == job.job && j.running)).then_some(())
    });
    c.assert_no_pages("a killed lego run");
    let log = c.processor.as_ref().unwrap().log_text();
    assert!(log.contains("the client of the job went away"), "{log}");
}

#[test]
fn errors_are_one_clear_line() {
    let c = cluster();
    let dir = shared_dir();
    let one_line = |o: &Output| {
        let e = text(&o.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("lego: "), "{e}");
        e
    };

    let o = run_in(&c, dir.path(), &[], &["no-such-command-xyz", "arg"]);
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(
        one_line(&o),
        "lego: no-such-command-xyz: command not found\n"
    );

    let o = run_in(&c, dir.path(), &[], &["./missing"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(one_line(&o).contains("No such file or directory"));

    std::fs::write(dir.path().join("plain"), "not a program").unwrap();
    let o = run_in(&c, dir.path(), &[], &["./plain"]);
    assert_eq!(o.status.code(), Some(126));
    assert!(one_line(&o).contains("Permission denied"));

    let o = run_in(&c, dir.path(), &["--excache", "100GiB"], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(one_line(&o).contains("ExCache free"));

    let o = run_in(&c, dir.path(), &["--excache", "150%"], &["true"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("between 1% and 100%"));

    // The processor monitor's own refusals, straight through the protocol.
    let p = c.processor_client();
    let launch = |excache: Option<u64>, vnode: &str| {
        p.call(&LaunchReq {
            argv: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            vnode: vnode.into(),
            excache,
            excache_percent: None,
            isolated: false,
            publish: vec![],
        })
        .unwrap_err()
    };
    let e = launch(Some(1 << 30), "default");
    assert_eq!(e.remote_code(), Some(ErrorCode::Unavailable));
    assert!(
        e.to_string()
            .contains("ExCache exhausted: 1.0 GiB requested, 256.0 MiB free of 256.0 MiB"),
        "{e}"
    );
    let e = launch(None, "nowhere");
    assert_eq!(e.remote_code(), Some(ErrorCode::NotFound));
    assert!(e.to_string().contains("unknown vnode \"nowhere\""), "{e}");
    let e = p
        .call(&OutputReq {
            job: 7,
            max_wait_ms: 0,
        })
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::NotFound));

    // A vNode's process may not launch anything.
    let v = c
        .mgr()
        .call(&VnodeListReq)
        .map(|l| l.into_iter().find(|v| v.name == "default").unwrap())
        .unwrap();
    let as_vnode = Client::connect(
        &c.processor.as_ref().unwrap().addr,
        &Credentials::vnode(v.id, c.secret.vnode_key(v.id)),
        &ClientOptions::default(),
    )
    .unwrap();
    let e = as_vnode.call(&JobsReq).unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::NotEntitled));

    // A cluster without a processor monitor says so.
    let bare = TestCluster::start(2, "64MiB", 200);
    let o = run_in(&bare, dir.path(), &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(one_line(&o).contains("no processor monitor is running"));
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = text(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn with_no_cluster_an_embedded_one_runs_the_program_and_goes() {
    ensure_runtime();
    let (lego_dir, home, tmp) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let o = Command::new(LEGO)
        .args(["run", "--", "sh", "-c", "echo hi; echo there >&2; exit 4"])
        .env("LEGO_DIR", lego_dir.path())
        .env("HOME", home.path())
        .env("TMPDIR", tmp.path())
        .env_remove("LEGO_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), "hi\n");
    assert_eq!(
        text(&o.stderr),
        "there\n",
        "quiet: nothing but the program's"
    );
    assert_eq!(o.status.code(), Some(4));
    let tmp_name = tmp.path().to_str().unwrap();
    assert_eq!(processes_mentioning(tmp_name), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the embedded cluster's directory is removed"
    );
    assert_eq!(std::fs::read_dir(lego_dir.path()).unwrap().count(), 0);
}

#[test]
fn up_starts_a_processor_monitor_and_status_shows_its_jobs() {
    ensure_runtime();
    let dir = tempfile::tempdir().unwrap();
    let lego = |args: &[&str]| {
        let o = Command::new(LEGO)
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let mut up = KillOnDrop(
        Command::new(LEGO)
            .args(["up", "--excache", "256MiB", "--capacity", "256MiB", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cluster_json = dir.path().join("cluster.json");
    wait_for(Duration::from_secs(20), "cluster.json", || {
        cluster_json.exists().then_some(())
    });
    let status = lego(&["status"]);
    assert!(status.contains("components: 4 (4 alive)"), "{status}");
    let processor = status
        .lines()
        .find(|l| l.contains(" processor "))
        .unwrap_or_else(|| panic!("no processor monitor in\n{status}"));
    assert!(
        processor.contains("alive") && processor.contains("256.0 MiB"),
        "{processor}"
    );
    assert!(status.contains("jobs: 0 running"), "{status}");

    let mut run = Command::new(LEGO)
        .args(["run", "--excache", "10%", "--dir"])
        .arg(dir.path())
        .args(["--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(10), "the job in lego status", || {
        let s = lego(&["status"]);
        s.contains("jobs: 1 running").then_some(s)
    });
    let line = status.lines().find(|l| l.ends_with("  sleep 30")).unwrap();
    assert!(
        line.contains("default") && line.contains("25.6 MiB"),
        "{line}"
    );
    let json: serde_json::Value = serde_json::from_str(&lego(&["status", "--json"])).unwrap();
    let job = &json["jobs"][0]["jobs"][0];
    assert_eq!(job["argv"], serde_json::json!(["sleep", "30"]));
    assert_eq!(job["excache"], 256u64 * 1024 * 1024 / 10 / 4096 * 4096);

    // Ctrl-C reaches the program; lego run exits as it did: 128 + 2.
    Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    let st = wait_for(Duration::from_secs(10), "lego run to exit", || {
        run.try_wait().unwrap()
    });
    assert_eq!(st.code(), Some(130));
    assert!(lego(&["status"]).contains("jobs: 0 running"));

    // No page left on the memory monitors.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster_json).unwrap()).unwrap();
    let secret = lego_wire::auth::Secret::from_hex(
        &std::fs::read_to_string(dir.path().join("secret")).unwrap(),
    )
    .unwrap();
    for m in file["memory_monitors"].as_array().unwrap() {
        let c = Client::connect(
            m.as_str().unwrap(),
            &Credentials::component(&secret),
            &ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(mem_stats(&c).pages_held, 0);
    }

    Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    let st = wait_for(Duration::from_secs(15), "lego up to stop", || {
        up.try_wait().unwrap()
    });
    assert!(st.success());
    let mut out = String::new();
    up.stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("  processor        127.0.0.1:"), "{out}");
    assert!(
        !dir.path().join("jobs").exists(),
        "the job directory is removed"
    );
}
