//! The user's view: `lego up` in one process, `lego status` and `lego vnode`
//! in others, a clean stop on SIGTERM, and clear errors without a cluster.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn lego(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(LEGO)
        .args(args)
        .env("LEGO_DIR", dir)
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn up_status_vnode_and_clean_stop() {
    ensure_runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut up = KillOnDrop(
        Command::new(LEGO)
            .args(["up", "--dir"])
            .arg(dir.path())
            .args(["--capacity", "512MiB"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let cluster_json = dir.path().join("cluster.json");
    wait_for(Duration::from_secs(20), "cluster.json", || {
        cluster_json.exists().then_some(())
    });

    // Found through LEGO_DIR here; through --dir below.
    let out = stdout(&lego(dir.path(), &["status"]));
    assert!(out.contains("components: 4 (4 alive)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(" storage ") && l.contains("alive")),
        "{out}"
    );
    let memory_lines: Vec<&str> = out.lines().filter(|l| l.contains(" memory ")).collect();
    assert_eq!(memory_lines.len(), 2, "{out}");
    for l in &memory_lines {
        assert!(l.contains("alive") && l.contains("512.0 MiB"), "{l}");
    }
    assert!(out.contains("manager   127.0.0.1:"), "{out}");

    let o = Command::new(LEGO)
        .args(["vnode", "create", "web", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(stdout(&o)
        .contains("created vnode web (vID 1, vIP 10.77.0.1, network its own, mounts /data"));
    let o = lego(dir.path(), &["vnode", "create", "web"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = lego(dir.path(), &["vnode", "create", "../etc"]);
    assert!(!o.status.success(), "bad names are refused");
    assert!(stdout(&lego(dir.path(), &["vnode", "list"])).contains("   1  web"));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&lego(dir.path(), &["status", "--json"]))).unwrap();
    assert_eq!(json["vnodes"][0]["name"], "web");
    assert!(stdout(&lego(dir.path(), &["vnode", "delete", "web"])).contains("deleted vnode web"));

    // Metrics over HTTP, in Prometheus text.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster_json).unwrap()).unwrap();
    let http = file["http"].as_str().unwrap().to_string();
    let metrics = http_get(&http, "/metrics", None);
    assert!(
        metrics.contains("# TYPE lego_component_up gauge"),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("lego_component_up{") && l.ends_with(" 1"))
            .count(),
        4
    );
    assert!(metrics.contains("lego_memory_pages_held{"), "{metrics}");
    // The state only with the cluster's token; metrics name no job.
    assert!(http_get(&http, "/state", None).starts_with("HTTP/1.1 401"));
    assert!(http_get(&http, "/state", Some("00")).starts_with("HTTP/1.1 401"));
    let token = stdout(&lego(dir.path(), &["http-token"]));
    assert!(http_get(&http, "/state", Some(token.trim())).contains("\"components\""));
    assert!(http_get(&http, "/nope", None).starts_with("HTTP/1.1 404"));
    // A client that never finishes its request is cut off.
    let mut slow = std::net::TcpStream::connect(&http).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /metrics HTTP/1.1\r\n").unwrap();
    let t = std::time::Instant::now();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut slow, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(8));

    // A second `lego up` on the same directory is refused.
    let o = lego(dir.path(), &["up"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already running"));

    // SIGTERM stops everything cleanly.
    let daemon_pids: Vec<u32> = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap();
            v["pid"].as_u64().unwrap() as u32
        })
        .collect();
    assert_eq!(daemon_pids.len(), 5);
    Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()
        .unwrap();
    let status = wait_for(Duration::from_secs(15), "lego up to stop", || {
        up.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    let mut out = String::new();
    std::io::Read::read_to_string(up.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("lego cluster up in") && out.contains("lego cluster stopped"),
        "{out}"
    );
    for pid in daemon_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "daemon {pid} is gone"
        );
    }
    assert!(!cluster_json.exists(), "cluster.json removed");

    // Without a cluster: a clear error that says what to do.
    let o = lego(dir.path(), &["status"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no running lego cluster") && err.contains("lego up"),
        "{err}"
    );
}

fn http_get(addr: &str, path: &str, token: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn help_explains_and_bad_flags_fail_clearly() {
    let o = Command::new(LEGO).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for sub in ["manager", "memory", "vnode", "up", "status", "bench"] {
        assert!(help.contains(sub), "{help}");
    }
    let o = Command::new(LEGO)
        .args(["memory", "--capacity", "lots", "--manager", "x"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a size"));
    let o = Command::new(LEGO)
        .args(["memory", "--capacity", "1G", "--manager", "127.0.0.1:1"])
        .env_remove("LEGO_SECRET")
        .env_remove("LEGO_SECRET_FILE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no cluster secret"));
}
