//! `lego chaos` itself: a short run on its embedded cluster (its manager on
//! redb, or three managers on etcd) injects
//! failures of every kind, every program's output is right, no page is
//! left behind, and it says PASS (the 10-minute run is the same command
//! with `--duration 10m`).

mod common;

use std::process::Command;

use common::*;

/// Runs `lego chaos` for 45 s with a failure every ~3 s and `more` flags;
/// checks that it passed with every output right and nothing leaked, and
/// returns what it printed.
fn short_run(seed: &str, more: &[&str]) -> String {
    ensure_runtime();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(LEGO)
        .args([
            "chaos",
            "--duration",
            "45s",
            "--every",
            "3s",
            "--seed",
            seed,
        ])
        .args(more)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "lego chaos failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verdict: PASS"), "{text}");
    assert!(text.contains("0 WRONG, 0 failed"), "{text}");
    assert!(text.contains("leaked pages at the end: 0 "), "{text}");
    text
}

#[test]
fn a_short_chaos_run_passes() {
    let text = short_run("3", &[]);
    let injected: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("failures injected: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(injected >= 6, "{injected} failures injected:\n{text}");
    for kind in [
        "kill -9 memory monitor",
        "kill -9 manager",
        "kill -9 storage monitor",
    ] {
        assert!(text.contains(kind), "no {kind}:\n{text}");
    }
}

/// The same with three managers on a real 3-member etcd cluster: every
/// manager kill kills the one that leads, and a standby takes over.
#[test]
fn a_short_chaos_run_with_managers_on_etcd_passes() {
    let text = short_run("5", &["--managers", "3", "--store", "etcd"]);
    assert!(
        text.contains("(the leader)"),
        "a leading manager was killed:\n{text}"
    );
}

#[test]
fn chaos_refuses_fewer_than_three_memory_monitors() {
    let out = Command::new(LEGO)
        .args(["chaos", "--memory-monitors", "2", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 3 memory monitors"), "{err}");
}
