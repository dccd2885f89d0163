//! Failure detection with real processes: `kill -9` of a memory monitor, and a
//! restart of the manager.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lego_wire::control::{AssignReq, AssignResp, VnodeInfo, VnodeReq};
use lego_wire::pages::{ReadPages, WritePages};
use lego_wire::Op;

#[test]
fn killed_memory_monitor_is_declared_dead_and_avoided() {
    const HB: u64 = 200;
    let mut cluster = TestCluster::start(3, "64MiB", HB);
    let (vnode, asid) = cluster.vnode_space("k");
    let victim_addr = cluster.memories[0].addr.clone();
    let victim_id = cluster
        .state()
        .components
        .iter()
        .find(|c| c.addr == victim_addr)
        .unwrap()
        .id;
    // A live connection to the victim, in use before the kill.
    let conn = cluster.vnode_client(&victim_addr, vnode);
    conn.call(
        Op::WritePages,
        &[&WritePages {
            asid,
            version: 0,
            peer: 0,
            pages: vec![1],
            data: &[9u8; 4096],
        }
        .encode()],
    )
    .unwrap();

    let killed = Instant::now();
    cluster.memories[0].kill9();
    let st = wait_for(Duration::from_secs(5), "victim marked dead", || {
        let s = cluster.state();
        let c = s.components.iter().find(|c| c.id == victim_id)?;
        (c.health == "dead").then_some(s)
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
    let m = cluster.manager_client();
    for index in 0..12 {
        let a: AssignResp = m
            .call_json(Op::AssignVRegion, &AssignReq { asid, index })
            .unwrap();
        assert!(a.created);
        let backup = a.backup.expect("two copies");
        assert_ne!(a.primary.id, victim_id);
        assert_ne!(backup.id, victim_id);
        assert_ne!(a.primary.id, backup.id);
    }

    // Requests to the dead monitor fail fast with a clear error, never hang.
    let t = Instant::now();
    let err = conn
        .call(
            Op::ReadPages,
            &[&ReadPages {
                asid,
                pages: vec![1],
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
    cluster.memories[1].kill9();
    cluster.wait_state("second death", |s| alive_memory(s).len() == 1);
    let err = m
        .call_json::<_, AssignResp>(Op::AssignVRegion, &AssignReq { asid, index: 99 })
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
    let m = cluster.manager_client();
    let b2: lego_wire::control::CreateSpaceResp = m
        .call_json(
            Op::CreateSpace,
            &lego_wire::control::CreateSpaceReq {
                vnode: "beta".into(),
                owner: None,
            },
        )
        .unwrap();
    for (asid, n) in [(a1, 3), (b1, 2), (b2.asid, 1)] {
        for index in 0..n {
            cluster.assign(asid, index);
        }
    }
    m.call_json::<_, VnodeInfo>(
        Op::VnodeCreate,
        &VnodeReq {
            name: "gamma".into(),
            ..VnodeReq::default()
        },
    )
    .unwrap();
    m.call_json::<_, VnodeInfo>(
        Op::VnodeDelete,
        &VnodeReq {
            name: "gamma".into(),
            ..VnodeReq::default()
        },
    )
    .unwrap();
    let before = cluster.state();
    assert_eq!(before.vregions.len(), 6);

    cluster.kill_manager();
    cluster.start_manager();
    // Components re-register with their old ids.
    let after = cluster.wait_state("components back", |s| alive_memory(s).len() == 3);
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
    let m = cluster.manager_client();
    let d: VnodeInfo = m
        .call_json(
            Op::VnodeCreate,
            &VnodeReq {
                name: "delta".into(),
                ..VnodeReq::default()
            },
        )
        .unwrap();
    assert_eq!(
        d.id, 4,
        "vnode ids are not reused after a restart (gamma had 3)"
    );
    let log = cluster.manager.as_ref().unwrap().log_text();
    assert!(log.contains("metadata loaded"), "{log}");
}
