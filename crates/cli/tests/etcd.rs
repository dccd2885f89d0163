//! A manager that survives its host (issue 15): the metadata on a real
//! 3-member etcd cluster, managers electing a leader there, writes fenced
//! by the leader's term.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{free_port, EtcdCluster};
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
    let etcd = EtcdCluster::start(3);
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

/// The leader manager killed (kill -9) while python fills 384 MiB at
/// 64 MiB ExCache and needs new vRegions meanwhile: the standby leads
/// within its lease (3 s) and a half, the process's placements wait for it
/// and go on, and the output is byte for byte the one without lego.
#[test]
fn the_leader_killed_while_python_runs_a_standby_takes_over() {
    let etcd = EtcdCluster::start(3);
    let url = etcd.url();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let flags = [
        "--store",
        &url,
        "--lease-ttl",
        "3",
        "--vregion-size",
        "16MiB",
    ];
    // A first: alone, it is elected; then B, which stands by.
    let mut c = TestCluster::with_manager_at(&a, &flags);
    let (mut standby, standby_ready) = standby(&c, "manager-b", &b, &flags);
    c.set_manager_addr(&format!("{a},{b}"));
    // `lego status` names the store and the standby.
    let status = wait_for(Duration::from_secs(5), "the standby listed", || {
        let out = c.cli(&["status"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.contains(&format!("standing by: {b}")).then_some(said)
    });
    assert!(status.contains(&format!("leader on {url}")), "{status}");
    for _ in 0..3 {
        c.start_memory("1GiB");
    }
    ensure_runtime();
    c.start_processor("1GiB");
    let script = hashing(384, 2);
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
    // Killed while the program still places vRegions: its fill needs 24.
    let placed = c.wait_until("a few vRegions placed", |s| s.vregions.len() >= 4);
    assert!(placed.vregions.len() < 20, "killed during the fill");
    assert!(!standby_ready.exists(), "B stands by while A leads");
    let t = Instant::now();
    c.kill_manager();
    wait_for(Duration::from_secs(10), "the standby to lead", || {
        standby_ready.exists().then_some(())
    });
    let took = t.elapsed();
    eprintln!("the standby leads {took:?} after the leader was killed");
    assert!(
        took < Duration::from_secs(5),
        "a standby leads within 5 s: {took:?}"
    );
    let status = wait_for(Duration::from_secs(300), "the program to end", || {
        child.try_wait().unwrap()
    });
    let (out, err) = (out.join().unwrap().unwrap(), err.join().unwrap().unwrap());
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
    // B serves: the monitors registered with it, all alive.
    let st = c.cluster_state();
    assert_eq!(alive_memory(&st).len(), 3);
    let _ = standby.kill();
    let _ = standby.wait();
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
    let etcd = EtcdCluster::start(3);
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
    leader_stops(&mut c, "it stops now");
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
    let mut etcd = EtcdCluster::start(3);
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
    etcd.restart(1);
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
