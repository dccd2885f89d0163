//! What only several hosts have, on a rack of network namespaces made by
//! the tests: the address a monitor advertises to the cluster is one others
//! can dial, and a monitor whose address no one can dial is refused at
//! registration with the reason; a cluster spread over five hosts on shaped
//! (sealed) links runs real programs (python, sqlite3 on /data) with the
//! same output as locally; a rack is
//! removed with its cluster, and by the next launcher after a SIGKILL.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `lego memory` with `flags`, against the test cluster's manager.
fn memory(c: &TestCluster, flags: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(LEGO)
            .args([
                "memory",
                "--capacity",
                "64MiB",
                "--manager",
                &c.manager_addr,
            ])
            .arg("--secret-file")
            .arg(c.path().join("secret"))
            .args(flags)
            .env("LEGO_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_unspecified_listen_address_is_advertised_as_the_route_to_the_manager() {
    let c = TestCluster::start(0, "64MiB", 100);
    let _m = memory(&c, &["--listen", "0.0.0.0:0"]);
    let st = c.wait_until("the memory monitor registered", |s| {
        !alive_memory(s).is_empty()
    });
    let addr = &alive_memory(&st)[0].addr;
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "a monitor bound to 0.0.0.0 advertises the address the manager reaches it at, got {addr}"
    );
    let status = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(addr.as_str()), "{text}");
    assert!(!text.contains("0.0.0.0"), "{text}");
}

#[test]
fn an_address_the_manager_cannot_dial_back_is_refused_with_the_reason() {
    let c = TestCluster::start(0, "64MiB", 100);
    // Nothing listens on port 1: the manager's dial back fails.
    let mut m = memory(&c, &["--advertise", "127.0.0.1:1"]);
    let mut err = m.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while !text.contains("refuses to register") {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    wait_for(Duration::from_secs(20), "the refusal in the log", || {
        reader.is_finished().then_some(())
    });
    let log = reader.join().unwrap();
    assert!(
        log.contains("cannot dial it back at 127.0.0.1:1") && log.contains("--advertise"),
        "{log}"
    );
    assert!(
        alive_memory(&c.cluster_state()).is_empty(),
        "a refused monitor is not a member"
    );
    assert!(
        m.try_wait().unwrap().is_none(),
        "it keeps retrying, as a monitor waiting for a fix"
    );
}

/// The namespaces of the rack of `c`.
fn namespaces(c: &TestCluster) -> Vec<String> {
    c.rack()
        .expect("a rack")
        .hosts
        .iter()
        .map(|h| h.ns.clone())
        .collect()
}

#[test]
fn a_cluster_on_five_hosts_pages_python_across_them_and_shows_each_host() {
    let c = TestCluster::on_rack(5, Some("10gbit"), "3GiB", "1GiB");
    let ns = namespaces(&c);
    let st = c.cluster_state();
    let mut addrs: Vec<&str> = st.components.iter().map(|m| m.addr.as_str()).collect();
    addrs.sort_unstable();
    let hosts: Vec<&str> = addrs.iter().map(|a| a.split(':').next().unwrap()).collect();
    assert_eq!(
        hosts,
        ["10.99.0.2", "10.99.0.3", "10.99.0.4", "10.99.0.5"],
        "each monitor serves at its own host's address: {addrs:?}"
    );
    let status = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    for a in &addrs {
        assert!(status.contains(a), "lego status shows {a}:\n{status}");
    }
    assert!(
        status.contains("hosts: 5"),
        "lego status counts the hosts:\n{status}"
    );
    assert!(status.contains("10.99.0.1             manager"), "{status}");

    let py = python();
    let local = Command::new(&py).args(["-c", HASH_1GIB]).output().unwrap();
    assert!(local.status.success());
    let out = c
        .run_command(&["--excache", "64MiB", "--stats"], &[&py, "-c", HASH_1GIB])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python under lego on the rack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, local.stdout, "the same output as locally");

    // sqlite3 with its database on /data: the files on the storage host,
    // the pages on the memory hosts, over sealed links.
    let script = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n\
        WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < 50000)\n\
        INSERT INTO t SELECT x, printf('row-%d', x) FROM n;\n\
        SELECT count(*), sum(id), max(v) FROM t;\n\
        PRAGMA integrity_check;\n";
    let sqlite = |cmd: &mut Command| {
        use std::io::Write;
        let mut ch = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sqlite3 is installed");
        ch.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        ch.wait_with_output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let local = sqlite(Command::new("sqlite3").arg(dir.path().join("t.db")));
    assert!(local.status.success());
    let on_rack = sqlite(&mut c.run_command(&["--excache", "64MiB"], &["sqlite3", "/data/t.db"]));
    assert!(
        on_rack.status.success(),
        "sqlite3 on the rack: {}",
        String::from_utf8_lossy(&on_rack.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&on_rack.stdout),
        String::from_utf8_lossy(&local.stdout),
        "sqlite3 on /data prints what it prints on a local file"
    );
    // Every memory monitor's links were sealed, none tampered with.
    let st = c.cluster_state();
    for m in alive_memory(&st) {
        let sealed = m
            .counters
            .get("connections_sealed_total")
            .copied()
            .unwrap_or(0);
        assert!(
            sealed > 0,
            "memory monitor {} at {} sealed its links",
            m.id,
            m.addr
        );
        assert_eq!(m.counters.get("records_tampered_total"), Some(&0));
    }
    c.assert_no_pages("python and sqlite3 on the rack");
    drop(c);
    for n in ns {
        assert!(
            !std::path::Path::new("/run/netns").join(&n).exists(),
            "{n} is removed with its cluster"
        );
    }
}

#[test]
fn a_rack_left_by_a_killed_launcher_is_removed_by_the_next() {
    ensure_runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut up = KillOnDrop(
        Command::new(LEGO)
            .args([
                "up",
                "--hosts",
                "3",
                "--memory-monitors",
                "2",
                "--capacity",
                "64MiB",
            ])
            .args(["--excache", "64MiB", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = up.id();
    let mine = |n: &str| n.starts_with(&format!("lego{pid}r"));
    let list = || -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| mine(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(60), "lego up on 3 hosts", || {
        dir.path().join("cluster.json").exists().then_some(())
    });
    // A client finds the rack's first host on its own.
    let status = Command::new(LEGO)
        .args(["status", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("10.99.0.2"),
        "{text}"
    );
    assert_eq!(list().len(), 4, "3 hosts and the switch: {:?}", list());
    up.kill().unwrap();
    up.wait().unwrap();
    assert_eq!(
        list().len(),
        4,
        "a SIGKILLed launcher leaves its rack behind"
    );
    let gone = lego_cluster::rack::sweep_stale();
    assert_eq!(gone.iter().filter(|n| mine(n)).count(), 4, "{gone:?}");
    assert!(
        list().is_empty(),
        "the next launcher removes it: {:?}",
        list()
    );
}

#[test]
fn a_monitor_started_from_a_config_file_registers_as_the_file_says() {
    let c = TestCluster::start(0, "64MiB", 100);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("memory.toml");
    // As deploy/ has it: a key file of its own, the token in the environment.
    let token = c.cli(&["token", "create", "--role", "memory"]);
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    std::fs::write(
        &f,
        format!(
            "# as in deploy/memory.toml\nmanager = \"{}\"\ncapacity = \"48MiB\"\nlisten = \"0.0.0.0:0\"\nkey-file = \"{}\"\n",
            c.manager_addr,
            dir.path().join("memory.key").display()
        ),
    )
    .unwrap();
    let _m = KillOnDrop(
        Command::new(LEGO)
            .args(["memory", "--config"])
            .arg(&f)
            .env("LEGO_JOIN_TOKEN", token.trim())
            .args(["--capacity", "80MiB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let st = c.wait_until("the memory monitor of the config file registered", |s| {
        !alive_memory(s).is_empty()
    });
    let m = alive_memory(&st)[0];
    assert_eq!(m.capacity, 80 << 20, "the command line wins over the file");
    assert!(
        dir.path().join("memory.key").exists(),
        "it joined with the token"
    );
    assert!(
        m.addr.starts_with("127.0.0.1:"),
        "listen from the file: {}",
        m.addr
    );

    std::fs::write(&f, "capasity = \"1GiB\"\n").unwrap();
    let o = Command::new(LEGO)
        .args(["memory", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("capasity") && err.contains(&*f.to_string_lossy()),
        "the error names the key and the file: {err}"
    );
}
