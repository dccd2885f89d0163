//! A manager that survives its host (issue 15): the metadata on a real
//! 3-member etcd cluster, managers electing a leader there, writes fenced
//! by the leader's term.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{free_port, Blackhole, EtcdCluster};
use common::*;
use lego_manager::etcd::{Change, Etcd};
use lego_manager::ManagerError;
use lego_transport::{Client, ClientOptions};
use lego_wire::control::VnodeCreateReq;

/// A deposed leader's write is refused by etcd itself: manager A is
/// elected, its lease ends (as when it is cut off or paused past its TTL),
/// B is elected, and A's next write fails with `Deposed`, while B's goes
/// through; nothing of A's write is stored.
#[test]
fn a_deposed_leaders_write_is_refused_by_the_store() {
    let etcd = common::etcd::start(3);
    let mut a = Etcd::connect(&etcd.url(), "/fence").unwrap();
    a.campaign("a:1", Duration::from_secs(2), |_| {}).unwrap();
    let put = |v: &str| {
        vec![Change {
            table: "meta",
            key: "probe".into(),
            value: Some(v.as_bytes().to_vec()),
        }]
    };
    a.commit(&put("from a")).unwrap();
    // B stands by while A's lease lives (A does not renew it here).
    let mut b = Etcd::connect(&etcd.url(), "/fence").unwrap();
    let t = Instant::now();
    let mut seen = Vec::new();
    b.campaign("b:1", Duration::from_secs(2), |l| {
        seen.push(l.map(str::to_string))
    })
    .unwrap();
    let took = t.elapsed();
    assert!(
        seen.contains(&Some("a:1".to_string())),
        "B saw A lead: {seen:?}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "B waited for A's lease: {took:?}"
    );
    eprintln!("B elected {took:?} after A stopped renewing (TTL 2 s)");
    assert_eq!(b.leader().unwrap().as_deref(), Some("b:1"));
    match a.commit(&put("from deposed a")) {
        Err(ManagerError::Deposed) => {}
        other => panic!("A's write after B's election: {other:?}"),
    }
    b.commit(&put("from b")).unwrap();
    let stored = b.scan("meta").unwrap();
    assert_eq!(stored, vec![("probe".to_string(), b"from b".to_vec())]);
}

/// The leader of three managers killed (kill -9) while python hashes
/// 512 MiB at 64 MiB ExCache and needs new vRegions during the outage: a
/// standby leads within 5 s, the process's placements wait for it and go
/// on, the output is byte for byte the one without lego, and no vRegion
/// was placed twice (every manager logs each vRegion it places, and no
/// vRegion is in two managers' logs).
#[test]
fn the_leader_killed_while_python_runs_a_standby_takes_over() {
    let etcd = common::etcd::start(3);
    let url = etcd.url();
    let mut c = TestCluster::with_managers(3, &url, 3, &["--vregion-size", "16MiB"]);
    let standbys: Vec<String> = c.standbys.iter().map(|d| d.addr.clone()).collect();
    // `lego status` names the store and the standbys.
    let status = wait_for(Duration::from_secs(5), "the standbys listed", || {
        let out = c.cli(&["status"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        standbys
            .iter()
            .all(|b| said.contains(b.as_str()))
            .then_some(said)
    });
    assert!(status.contains(&format!("leader on {url}")), "{status}");
    assert!(status.contains("standing by: "), "{status}");
    for _ in 0..3 {
        c.start_memory("1GiB");
    }
    ensure_runtime();
    c.start_processor("1GiB");
    let script = hashing(512, 2);
    let local = local_output(&script);
    let mut child = c
        .run_command(&["--excache", "64MiB"], &[&python(), "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = String::new();
        std::io::Read::read_to_string(&mut se, &mut v).map(|_| v)
    });
    // Killed while the program still places vRegions: its fill needs 32.
    let placed = c.wait_until("a few vRegions placed", |s| s.vregions.len() >= 4);
    assert!(placed.vregions.len() < 24, "killed during the fill");
    let t = Instant::now();
    c.kill_manager();
    let (leader, _) = wait_for(Duration::from_secs(10), "a standby to lead", || {
        c.leader().ok().filter(|(name, _)| name != "manager")
    });
    let took = t.elapsed();
    eprintln!("{leader} leads {took:?} after the leader was killed");
    assert!(
        took < Duration::from_secs(5),
        "a standby leads within 5 s: {took:?}"
    );
    let during = c.cluster_state().vregions.len();
    // It stood by warm: elected, it read only what changed since its last
    // catch-up, not every record.
    let new_log = c.daemon(&leader).unwrap().log_text();
    let elected = new_log
        .lines()
        .find(|l| l.contains("INFO elected leader"))
        .expect("the new leader logs its election")
        .to_string();
    let field = |name: &str| -> usize {
        elected
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {elected:?}"))
    };
    eprintln!("{elected}");
    assert!(field("records") > 0, "{elected}");
    assert!(field("changed") < field("records"), "{elected}");
    let status = wait_for(Duration::from_secs(300), "the program to end", || {
        child.try_wait().unwrap()
    });
    let (out, err) = (out.join().unwrap().unwrap(), err.join().unwrap().unwrap());
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
    // The new leader placed vRegions too (the fill went on after the kill).
    let logs: Vec<String> = c.managers().map(|d| d.log_text()).collect();
    let mut placed_by = std::collections::BTreeMap::<String, Vec<usize>>::new();
    for (m, log) in logs.iter().enumerate() {
        for key in log
            .lines()
            .filter(|l| l.contains("vregion placed"))
            .filter_map(|l| l.split("key=").nth(1))
            .filter_map(|k| k.split(" primary=").next())
        {
            placed_by.entry(key.to_string()).or_default().push(m);
        }
    }
    let twice: Vec<_> = placed_by.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "placed twice: {twice:?}");
    let by_new = placed_by.values().filter(|by| by[0] != 0).count();
    eprintln!(
        "{} vRegions placed: {} by the first leader, {by_new} by {leader} ({during} when it took over)",
        placed_by.len(),
        placed_by.len() - by_new
    );
    assert!(by_new > 0, "{leader} placed vRegions after the kill");
    // The new leader serves: the monitors registered with it, all alive.
    let st = c.cluster_state();
    assert_eq!(alive_memory(&st).len(), 3);
}

/// The leader cut off from etcd (every byte to and from its etcd
/// connections dropped) while it still runs: it stops acting within its
/// lease (2 s) and exits; a standby takes over. A request it was given
/// after the cut is answered with an error and leaves no trace: no split
/// brain. (A leader that does reach etcd after its lease is fenced by
/// etcd itself: the two tests above and below.)
#[test]
fn the_leader_cut_off_from_etcd_stops_and_a_standby_takes_over() {
    let etcd = common::etcd::start(3);
    let hole = Blackhole::new(&etcd);
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut c = TestCluster::with_manager_at(&a, &["--store", &hole.url, "--lease-ttl", "2"]);
    let url = etcd.url();
    let (mut b_child, b_ready) =
        standby(&c, "manager-b", &b, &["--store", &url, "--lease-ttl", "2"]);
    c.set_manager_addr(&format!("{a},{b}"));
    let out = c.cli(&["vnode", "create", "before"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to_a = Client::connect(&a, &c.creds(), &ClientOptions::default()).unwrap();
    hole.cut();
    let t = Instant::now();
    let asked = std::thread::spawn(move || {
        to_a.call(&VnodeCreateReq {
            name: "split-brain".into(),
            ..VnodeCreateReq::default()
        })
    });
    leader_stops(&mut c, "could not be renewed");
    let stopped = t.elapsed();
    eprintln!("the cut-off leader stopped {stopped:?} after the cut");
    assert!(
        stopped < Duration::from_secs(2),
        "it stops within its lease (2 s): {stopped:?}"
    );
    let answer = asked.join().unwrap();
    assert!(answer.is_err(), "the cut-off leader answered: {answer:?}");
    wait_for(Duration::from_secs(10), "the standby to lead", || {
        b_ready.exists().then_some(())
    });
    eprintln!("the standby leads {:?} after the cut", t.elapsed());
    let st = c.cluster_state();
    assert_eq!(st.manager.addr, b);
    assert!(st.vnodes.iter().any(|v| v.name == "before"));
    assert!(
        !st.vnodes.iter().any(|v| v.name == "split-brain"),
        "nothing of the cut-off leader's request is stored"
    );
    let _ = b_child.kill();
    let _ = b_child.wait();
}

/// Starts a standby manager at `addr` on the store of `c`'s manager, with
/// `flags`; returns it and the file it writes once elected.
fn standby(
    c: &TestCluster,
    name: &str,
    addr: &str,
    flags: &[&str],
) -> (KillOnDrop, std::path::PathBuf) {
    let ready = c.path().join("run").join(format!("{name}.ready"));
    let child = std::process::Command::new(LEGO)
        .args([
            "manager",
            "--listen",
            addr,
            "--http",
            "none",
            "--heartbeat-ms",
            "200",
        ])
        .args(flags)
        .arg("--db")
        .arg(c.path().join(format!("{name}.redb")))
        .arg("--secret-file")
        .arg(c.path().join("secret"))
        .arg("--ready-file")
        .arg(&ready)
        .arg("--exit-with")
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(c.path().join("logs").join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    (KillOnDrop(child), ready)
}

/// Manager A (elected) and standby B on `etcd`, leases of 2 s: the
/// cluster, both addresses, B and the file B writes once elected.
fn leader_and_standby(
    etcd: &EtcdCluster,
) -> (TestCluster, String, String, KillOnDrop, std::path::PathBuf) {
    let url = etcd.url();
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let flags = ["--store", url.as_str(), "--lease-ttl", "2"];
    let c = TestCluster::with_manager_at(&a, &flags);
    let (b_child, b_ready) = standby(&c, "manager-b", &b, &flags);
    (c, a, b, b_child, b_ready)
}

/// Waits until `c`'s first manager (the leader) has stopped, and checks
/// that its log says why (`says`).
fn leader_stops(c: &mut TestCluster, says: &str) {
    wait_for(Duration::from_secs(10), "the leader to stop", || {
        (!c.manager.as_mut().unwrap().running()).then_some(())
    });
    let log = std::fs::read_to_string(c.path().join("logs").join("manager.log")).unwrap();
    assert!(
        log.contains(says),
        "the leader says why it stops ({says:?})"
    );
}

/// A leader paused past its lease (as a host cut off, or stopped) comes
/// back after a standby took over: it cannot act. The write it was asked
/// for meanwhile is refused by etcd (or it stops first, on its lost lease),
/// it exits, and the standby's state has no trace of the write.
#[test]
fn a_paused_leader_cannot_act_after_a_standby_took_over() {
    let etcd = common::etcd::start(3);
    let (mut c, a, b, mut b_child, b_ready) = leader_and_standby(&etcd);
    let to_a = Client::connect(&a, &c.creds(), &ClientOptions::default()).unwrap();
    c.manager.as_ref().unwrap().signal(Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    wait_for(Duration::from_secs(10), "the standby to lead", || {
        b_ready.exists().then_some(())
    });
    eprintln!(
        "the standby leads {:?} after the leader was paused",
        t.elapsed()
    );
    // Asked of A while it is paused; A resumes.
    let asked = std::thread::spawn(move || {
        to_a.call(&VnodeCreateReq {
            name: "split-brain".into(),
            ..VnodeCreateReq::default()
        })
    });
    std::thread::sleep(Duration::from_millis(100));
    c.manager.as_ref().unwrap().signal(Signal::SIGCONT).unwrap();
    let answer = asked.join().unwrap();
    assert!(answer.is_err(), "the deposed leader answered: {answer:?}");
    // Whichever it meets first: etcd refusing the write ("this one stops
    // now") or its lease found lost ("it stops now").
    leader_stops(&mut c, "stops now");
    c.set_manager_addr(&format!("{a},{b}"));
    let st = c.cluster_state();
    assert!(
        !st.vnodes.iter().any(|v| v.name == "split-brain"),
        "nothing of the deposed leader's write is stored"
    );
    let _ = b_child.kill();
    let _ = b_child.wait();
}

/// One etcd member killed: the manager goes on placing. Two killed (no
/// quorum): the leader cannot renew its lease and stops, with a clear
/// message; nothing is placed. A member back: the standby leads and
/// placements go on, the earlier ones kept.
#[test]
fn etcd_members_lost_and_back() {
    let mut etcd = common::etcd::start(3);
    let (mut c, a, b, mut b_child, b_ready) = leader_and_standby(&etcd);
    c.set_manager_addr(&format!("{a},{b}"));
    let create = |c: &TestCluster, name: &str| c.cli(&["vnode", "create", name]);
    etcd.kill(2);
    let out = create(&c, "one-down");
    assert!(
        out.status.success(),
        "one member down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Past a whole lease: the leader renews it through the other members.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.manager.as_mut().unwrap().running() && !b_ready.exists(),
        "the leader goes on with one etcd member down"
    );
    etcd.kill(1);
    leader_stops(&mut c, "could not be renewed");
    let out = create(&c, "no-quorum");
    assert!(!out.status.success(), "no manager places without quorum");
    eprintln!(
        "without quorum: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(!b_ready.exists(), "no standby is elected without quorum");
    etcd.restart(1).unwrap();
    let t = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "the standby to lead once quorum is back",
        || b_ready.exists().then_some(()),
    );
    eprintln!(
        "the standby leads {:?} after a member came back",
        t.elapsed()
    );
    let out = create(&c, "back");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.cluster_state();
    for name in ["one-down", "back"] {
        assert!(st.vnodes.iter().any(|v| v.name == name), "{name} is kept");
    }
    let _ = b_child.kill();
    let _ = b_child.wait();
}

/// `lego up --managers 3 --store etcd`: a local etcd cluster and three
/// managers; `lego status` names the store, the leader and the standbys;
/// programs run; the leader killed, a standby leads and programs still
/// run; Ctrl-C (SIGTERM) stops everything, etcd included.
#[test]
fn lego_up_with_three_managers_on_etcd() {
    ensure_runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut up = KillOnDrop(
        std::process::Command::new(LEGO)
            .args([
                "up",
                "--managers",
                "3",
                "--store",
                "etcd",
                "--capacity",
                "512MiB",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cluster_json = dir.path().join("cluster.json");
    wait_for(Duration::from_secs(40), "cluster.json", || {
        cluster_json.exists().then_some(())
    });
    let lego = |args: &[&str]| {
        let out = std::process::Command::new(LEGO)
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, status, err) = lego(&["status"]);
    assert!(ok, "{err}");
    let standing = status
        .lines()
        .find_map(|l| l.split("standing by: ").nth(1))
        .unwrap_or_else(|| panic!("no standbys in:\n{status}"));
    assert_eq!(standing.split(", ").count(), 2, "{status}");
    assert!(status.contains("leader on etcd://127.0.0.1:"), "{status}");
    let script = "import hashlib; print(hashlib.sha256(bytes(range(256)) * 65536).hexdigest())";
    let local = local_output(script);
    let run = || {
        let out = std::process::Command::new(LEGO)
            .arg("run")
            .arg("--dir")
            .arg(dir.path())
            .args(["--", &python(), "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, local);
    };
    run();
    // Kill -9 the manager that leads (it wrote its ready file).
    let ready: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run").join("manager.ready")).unwrap(),
    )
    .unwrap();
    let leader = ready["addr"].as_str().unwrap().to_string();
    let pid = ready["pid"].as_u64().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for(Duration::from_secs(15), "a standby to lead", || {
        let (ok, status, _) = lego(&["status"]);
        (ok && !status.contains(&format!("manager   {leader}"))).then_some(status)
    });
    assert!(status.contains("leader on etcd://"), "{status}");
    run();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = wait_for(Duration::from_secs(30), "lego up to stop", || {
        up.try_wait().unwrap()
    });
    assert!(stopped.success(), "{stopped}");
    let mut said = String::new();
    std::io::Read::read_to_string(up.stdout.as_mut().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("manager-3") && said.contains("3 members"),
        "{said}"
    );
    // Nothing of the cluster runs on: no process names its directory.
    let d = dir.path().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&d))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}
