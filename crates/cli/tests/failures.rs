//! Failure detection with real processes: `kill -9` of a memory monitor, and a
//! restart of the manager.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lego_wire::control::{AssignReq, CreateSpaceReq, VnodeCreateReq, VnodeDeleteReq};
use lego_wire::pages::{ReadPages, WritePages};
use lego_wire::{Health, Op, PageNo, VRegionIdx};

#[test]
fn killed_memory_monitor_is_declared_dead_and_avoided() {
    const HB: u64 = 200;
    let mut cluster = TestCluster::start(3, "64MiB", HB);
    let (vnode, asid) = cluster.vnode_space("k");
    // The victim holds the first vRegion (a vNode writes only where the
    // manager placed its vRegions).
    let placed = cluster
        .mgr()
        .call(&AssignReq {
            asid,
            index: VRegionIdx(0),
        })
        .unwrap();
    let victim_addr = placed.primary.addr.clone();
    let victim = cluster
        .memories
        .iter()
        .position(|m| m.addr == victim_addr)
        .unwrap();
    let victim_id = cluster
        .cluster_state()
        .components
        .iter()
        .find(|c| c.addr == victim_addr)
        .unwrap()
        .id;
    // A live connection to the victim, in use before the kill.
    let conn = cluster.vnode_client(&victim_addr, vnode);
    conn.call_raw(
        Op::WritePages,
        &[&WritePages {
            asid,
            version: 0,
            peer: 0,
            pages: vec![PageNo(1)],
            data: &[9u8; 4096],
        }
        .encode()],
    )
    .unwrap();

    let killed = Instant::now();
    cluster.memories[victim].kill9();
    let st = wait_for(Duration::from_secs(5), "victim marked dead", || {
        let s = cluster.cluster_state();
        let c = s.components.iter().find(|c| c.id == victim_id)?;
        (c.health == Health::Dead).then_some(s)
    });
    let detected = killed.elapsed();
    assert!(
        detected <= Duration::from_millis(3 * HB),
        "dead after {detected:?}, more than three heartbeat intervals ({} ms)",
        3 * HB
    );
    assert_eq!(alive_memory(&st).len(), 2);
    let log = cluster.manager.as_ref().unwrap().log_text();
    assert!(
        log.contains("component is dead"),
        "the death is logged:\n{log}"
    );

    // New vRegions go only to the two live monitors.
    let m = cluster.mgr();
    for index in (1..13).map(VRegionIdx) {
        let a = m.call(&AssignReq { asid, index }).unwrap();
        assert!(a.created);
        let backup = a.backup.expect("two copies");
        let backup = backup.on().expect("a live backup");
        assert_ne!(a.primary.id, victim_id);
        assert_ne!(backup.id, victim_id);
        assert_ne!(a.primary.id, backup.id);
    }

    // Requests to the dead monitor fail fast with a clear error, never hang.
    let t = Instant::now();
    let err = conn
        .call_raw(
            Op::ReadPages,
            &[&ReadPages {
                asid,
                pages: vec![PageNo(1)],
            }
            .encode()],
        )
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.is_unreachable(), "{err}");
    assert!(
        err.to_string().contains(&victim_addr),
        "error names the peer: {err}"
    );
    let t = Instant::now();
    let err = lego_transport::Client::connect(
        &victim_addr,
        &lego_transport::Credentials::vnode(vnode, cluster.secret.vnode_key(vnode)),
        &Default::default(),
    )
    .err()
    .expect("connecting to a dead monitor fails");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("cannot connect"), "{err}");

    // With one more death only one monitor is left: placement says why it cannot place.
    cluster.memories[(victim + 1) % 3].kill9();
    cluster.wait_until("second death", |s| alive_memory(s).len() == 1);
    let err = m
        .call(&AssignReq {
            asid,
            index: VRegionIdx(99),
        })
        .unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(lego_wire::ErrorCode::Unavailable),
        "{err}"
    );
}

#[test]
fn manager_restart_keeps_vnodes_and_assignments() {
    let mut cluster = TestCluster::start(3, "64MiB", 100);
    let (_, a1) = cluster.vnode_space("alpha");
    let (_, b1) = cluster.vnode_space("beta");
    let m = cluster.mgr();
    let b2 = m
        .call(&CreateSpaceReq {
            vnode: "beta".into(),
            owner: None,
            proof: None,
        })
        .unwrap();
    for (asid, n) in [(a1, 3), (b1, 2), (b2.asid, 1)] {
        for index in 0..n {
            cluster.assign(asid, index);
        }
    }
    m.call(&VnodeCreateReq {
        name: "gamma".into(),
        ..VnodeCreateReq::default()
    })
    .unwrap();
    m.call(&VnodeDeleteReq {
        name: "gamma".into(),
        force: false,
    })
    .unwrap();
    let before = cluster.cluster_state();
    assert_eq!(before.vregions.len(), 6);

    cluster.kill_manager();
    cluster.restart_manager();
    // Components re-register with their old ids.
    let after = cluster.wait_until("components back", |s| alive_memory(s).len() == 3);
    assert_eq!(after.vnodes, before.vnodes);
    assert_eq!(after.vregions, before.vregions);
    let ids = |s: &lego_wire::control::ClusterState| {
        s.components
            .iter()
            .map(|c| (c.id, c.addr.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    // Existing assignments answer the same; ids are never reused.
    let again = cluster.assign(a1, 1);
    assert!(!again.created);
    let d = cluster
        .mgr()
        .call(&VnodeCreateReq {
            name: "delta".into(),
            ..VnodeCreateReq::default()
        })
        .unwrap();
    assert_eq!(
        d.id, 4,
        "vnode ids are not reused after a restart (gamma had 3)"
    );
    let log = cluster.manager.as_ref().unwrap().log_text();
    assert!(log.contains("metadata loaded"), "{log}");
}
