//! Elastic memory (issue 14): a memory monitor drained while python pages
//! through its memory: every copy it held moves to the others while the
//! program runs, no vRegion is ever degraded (watched every 20 ms), the
//! drained monitor ends with no page, and the output is byte for byte the
//! same as without lego; a monitor added to a loaded cluster takes copies
//! (`lego rebalance`) until use is even within the threshold, while the
//! program runs on with the right output; a write that reached only the
//! copy being moved is on the new copy when the move commits.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lego_transport::{Client, ClientOptions};
use lego_wire::control::MissedReq;
use lego_wire::pages::{ReadPages, ReadPagesReply, WritePages, WriteReply};
use lego_wire::types::EventKind;
use lego_wire::{Asid, Op, PageNo, Role, VRegionIdx, VRegionState};

/// Three memory monitors (16 MiB vRegions), a processor monitor.
fn cluster(memories: usize) -> TestCluster {
    ensure_runtime();
    let mut c = TestCluster::start_with(memories, "2GiB", 300, &["--vregion-size", "16MiB"]);
    c.start_processor("1GiB");
    c
}

#[test]
fn a_monitor_drained_while_python_runs_ends_empty_with_no_vregion_degraded() {
    let c = cluster(3);
    let script = hashing(512, 3);
    let local = local_output(&script);
    let running = start_cmd(c.run_command(&["--excache", "64MiB"], &[&python(), "-c", &script]));
    let st = c.wait_until("the program's vRegions placed", |s| s.vregions.len() >= 30);
    let (victim, id) = busiest_primary(&c, &st);
    let held = st
        .vregions
        .iter()
        .filter(|r| r.primary == id || r.backup.and_then(|b| b.on().copied()) == Some(id));
    let copies = held.count();
    assert!(copies > 0);

    // Watch every vRegion's state while the drain runs.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, target) = (stop.clone(), c.target());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let state = target
                    .connect()
                    .ok()
                    .and_then(|m| m.call(&lego_wire::control::ClusterStateReq).ok());
                if let Some(s) = state {
                    for r in &s.vregions {
                        if r.state != VRegionState::Healthy {
                            seen.push(format!("{}.{} {:?}", r.asid, r.index.0, r.state));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    let out = c.cli(&["memory", "drain", &id.to_string(), "--wait"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("is empty after"), "{said}");
    eprintln!("{said}");

    let (status, out, err) = finish(running, Duration::from_secs(300));
    stop.store(true, Ordering::Relaxed);
    let unhealthy = watcher.join().unwrap();
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
    assert!(
        unhealthy.is_empty(),
        "no vRegion degraded while its copy moved: {unhealthy:?}"
    );

    // The drained monitor holds nothing; the journal has every move.
    let monitor = Client::connect(
        &c.memories[victim].addr,
        &c.creds(),
        &ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(mem_stats(&monitor).pages_held, 0);
    let st = c.cluster_state();
    assert!(
        st.events
            .iter()
            .filter(|e| e.kind == EventKind::Moved)
            .count()
            >= copies
    );
    assert!(
        !st.events.iter().any(|e| matches!(
            e.kind,
            EventKind::Failover | EventKind::BadCopy | EventKind::Lost
        )),
        "{:?}",
        st.events
    );
    let drained = st.components.iter().find(|m| m.id == id).unwrap();
    assert_eq!(drained.drain.map(|d| d.copies), Some(0));
    let status = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("drained: holds no copy"), "{status}");
    // It takes nothing new until undrained.
    let out = c.cli(&["memory", "undrain", &id.to_string()]);
    assert!(out.status.success());
    assert_eq!(
        c.cluster_state()
            .components
            .iter()
            .find(|m| m.id == id)
            .unwrap()
            .drain,
        None
    );
    c.assert_no_pages("the drained program");
}

/// Whether every live memory monitor holds copies, within `copies` of
/// each other.
fn even(s: &lego_wire::control::ClusterState, monitors: usize, copies: usize) -> bool {
    let held: Vec<usize> = s.alive(Role::Memory).map(|m| copies_on(s, m.id)).collect();
    let (lo, hi) = (held.iter().min().copied(), held.iter().max().copied());
    held.len() == monitors
        && lo
            .zip(hi)
            .is_some_and(|(lo, hi)| lo > 0 && hi - lo <= copies)
}

#[test]
fn a_manager_with_rebalance_evens_out_a_monitor_that_joins_on_its_own() {
    ensure_runtime();
    let mut c = TestCluster::start_with(
        2,
        "2GiB",
        300,
        &["--vregion-size", "16MiB", "--rebalance", "2"],
    );
    c.start_processor("1GiB");
    let script = hashing(256, 6);
    let local = local_output(&script);
    let running = start_cmd(c.run_command(&["--excache", "64MiB"], &[&python(), "-c", &script]));
    c.wait_until("the program's vRegions placed", |s| s.vregions.len() >= 14);
    c.start_memory("2GiB");
    // 2% of 2 GiB is about 2.6 copies of 16 MiB.
    // Rebalancing moves one copy at a time, looking every 5 s: up to a
    // minute while the suite runs its tests side by side on 2 CPUs.
    let st = wait_for(
        Duration::from_secs(60),
        "copies even within 2% of capacity",
        || c.state().ok().filter(|s| even(s, 3, 3)),
    );
    assert!(st.vregions.iter().all(|r| r.state == VRegionState::Healthy));
    assert!(st.events.iter().any(|e| e.kind == EventKind::Moved));
    let (status, out, err) = finish(running, Duration::from_secs(300));
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
}

#[test]
fn a_monitor_added_to_a_loaded_cluster_takes_copies_until_use_is_even() {
    let mut c = cluster(2);
    let script = hashing(256, 4);
    let local = local_output(&script);
    let running = start_cmd(c.run_command(&["--excache", "64MiB"], &[&python(), "-c", &script]));
    c.wait_until("the program's vRegions placed", |s| s.vregions.len() >= 14);
    c.start_memory("2GiB");
    let plan = c.cli(&["rebalance", "--dry-run"]);
    let said = String::from_utf8_lossy(&plan.stdout);
    assert!(said.contains("dry run"), "{said}");
    let out = c.cli(&["rebalance", "--threshold", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 2% of 2 GiB is about 2.6 copies of 16 MiB.
    // Rebalancing moves one copy at a time, looking every 5 s: up to a
    // minute while the suite runs its tests side by side on 2 CPUs.
    let st = wait_for(
        Duration::from_secs(60),
        "copies even within 2% of capacity",
        || c.state().ok().filter(|s| even(s, 3, 3)),
    );
    assert!(st.vregions.iter().all(|r| r.state == VRegionState::Healthy));
    let (status, out, err) = finish(running, Duration::from_secs(300));
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
}

/// Copies held by component `id`.
fn copies_on(s: &lego_wire::control::ClusterState, id: u64) -> usize {
    s.vregions
        .iter()
        .filter(|r| r.primary == id || r.backup.and_then(|b| b.on().copied()) == Some(id))
        .count()
}

/// Starts a slow drain (30 MiB/s: half a second a copy) of the busiest
/// primary under a running program; returns (program, its local output,
/// victim index, victim id) once the first copy moved.
fn slow_drain(c: &TestCluster) -> (Running, Vec<u8>, usize, u64) {
    let script = hashing(256, 16);
    let local = local_output(&script);
    let running = start_cmd(c.run_command(&["--excache", "64MiB"], &[&python(), "-c", &script]));
    let st = c.wait_until("the program's vRegions placed", |s| s.vregions.len() >= 14);
    let (victim, id) = busiest_primary(c, &st);
    let out = c.cli(&["memory", "drain", &id.to_string(), "--rate", "30MiB/s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_until("a first copy moved", |s| {
        s.events.iter().any(|e| e.kind == EventKind::Moved)
    });
    (running, local, victim, id)
}

/// Waits (up to 120 s: the suite runs its tests side by side on 2 CPUs)
/// until `id` holds no copy and every vRegion is
/// healthy without the components `gone`, the program still running (its
/// vRegions still there).
fn wait_emptied(c: &TestCluster, id: u64, gone: &[u64]) {
    wait_for(Duration::from_secs(120), "the drain to end", || {
        let s = c.state().ok()?;
        (copies_on(&s, id) == 0 && all_healthy_without(&s, gone)).then_some(())
    });
}

#[test]
fn a_drain_whose_target_dies_is_planned_again_and_loses_nothing() {
    let mut c = cluster(4);
    let (running, local, victim, id) = slow_drain(&c);
    // The monitor with the fewest copies is where copies are moving to.
    let st = c.cluster_state();
    let target = alive_memory(&st)
        .into_iter()
        .filter(|m| m.id != id)
        .min_by_key(|m| (copies_on(&st, m.id), m.id))
        .map(|m| (m.id, m.addr.clone()))
        .unwrap();
    c.memory_at(&target.1).unwrap().kill9();
    wait_emptied(&c, id, &[id, target.0]);
    ends_right_and_empty(&c, running, &local, victim, "a drain and a death");
}

#[test]
fn a_drain_goes_on_after_the_manager_restarts() {
    let mut c = cluster(3);
    let (running, local, victim, id) = slow_drain(&c);
    c.kill_manager();
    std::thread::sleep(Duration::from_millis(500));
    c.restart_manager();
    // Still drained, at the same rate, and it goes on to the end.
    let st = c.wait_until("the monitors back", |s| alive_memory(s).len() == 3);
    assert!(st
        .components
        .iter()
        .any(|m| m.id == id && m.drain.is_some()));
    wait_emptied(&c, id, &[id]);
    ends_right_and_empty(
        &c,
        running,
        &local,
        victim,
        "a drain across a manager restart",
    );
}

/// The program ends with the output it has without lego, the drained
/// monitor (`c.memories[victim]`) holds no page, and no monitor does once
/// the program is gone.
fn ends_right_and_empty(
    c: &TestCluster,
    running: Running,
    local: &[u8],
    victim: usize,
    after: &str,
) {
    let (status, out, err) = finish(running, Duration::from_secs(300));
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
    let monitor = Client::connect(
        &c.memories[victim].addr,
        &c.creds(),
        &ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(
        mem_stats(&monitor).pages_held,
        0,
        "the drained monitor is empty"
    );
    c.assert_no_pages(&format!("the program, after {after}"));
}

/// Writes page `p` of `asid` at `version` (its content seeded with the
/// version) to the copy at `addr`, as a process of `vnode` does, naming
/// `peer` as the other copy.
fn write_page(
    c: &TestCluster,
    vnode: u32,
    addr: &str,
    asid: Asid,
    p: u64,
    version: u64,
    peer: u64,
) {
    let data = page_content(version, p);
    let f = c
        .vnode_client(addr, vnode)
        .call_raw(
            Op::WritePages,
            &[&WritePages {
                asid,
                version,
                peer,
                pages: vec![PageNo(p)],
                data: &data,
            }
            .encode()],
        )
        .unwrap();
    assert_eq!(WriteReply::decode(&f.body).unwrap().stored, 1);
}

/// Page `p` of `asid` as the copy at `addr` holds it.
fn read_page(c: &TestCluster, vnode: u32, addr: &str, asid: Asid, p: u64) -> Vec<u8> {
    let f = c
        .vnode_client(addr, vnode)
        .call_raw(
            Op::ReadPages,
            &[&ReadPages {
                asid,
                pages: vec![PageNo(p)],
            }
            .encode()],
        )
        .unwrap();
    let r = ReadPagesReply::decode(&f.body).unwrap();
    assert_eq!(r.present, vec![1], "{addr} holds page {p}");
    r.data.to_vec()
}

/// A write that reached the moving copy but not the one that stays (the
/// process then reports that copy as having missed it) is on the new copy
/// when the move commits: the old copy hands over what it holds newer, so
/// withdrawing it loses nothing, and the copy rebuilt from the new one has
/// it too.
#[test]
fn a_write_only_the_moving_copy_took_is_on_the_new_copy() {
    let c = TestCluster::start_with(3, "1GiB", 200, &["--vregion-size", "16MiB"]);
    let (vnode, asid) = c.vnode_space("elastic-sync");
    let placed = c.assign(asid, 0);
    let (s, o) = (
        placed.primary.clone(),
        placed.backup.unwrap().on().unwrap().clone(),
    );
    // Pages 1..=64 on both copies at version 1; page 7 again at version 2,
    // on the copy that will move only.
    for p in 1..=64 {
        write_page(&c, vnode, &s.addr, asid, p, 1, o.id);
        write_page(&c, vnode, &o.addr, asid, p, 1, s.id);
    }
    write_page(&c, vnode, &o.addr, asid, 7, 2, s.id);
    let out = c.cli(&["memory", "drain", &o.id.to_string(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = c.assign(asid, 0);
    let t = [
        Some(&moved.primary),
        moved.backup.as_ref().and_then(|b| b.on()),
    ]
    .into_iter()
    .flatten()
    .find(|e| e.id != s.id)
    .expect("a new copy")
    .clone();
    assert_ne!(t.id, o.id, "the copy moved");
    assert!(
        read_page(&c, vnode, &t.addr, asid, 7) == page_content(2, 7),
        "the newer page is on the new copy"
    );
    assert!(
        read_page(&c, vnode, &t.addr, asid, 8) == page_content(1, 8),
        "page 8 holds what was written last"
    );
    // The process reports that the copy that stayed missed the write: it
    // is rebuilt from the new copy, and holds the newer page too.
    let mgr = c.vnode_client(&c.manager_addr, vnode);
    mgr.call(&MissedReq {
        asid,
        index: VRegionIdx(0),
        id: s.id,
    })
    .unwrap();
    let st = c.wait_until("the copy that missed the write rebuilt", |st| {
        st.vregions.iter().all(|r| r.state == VRegionState::Healthy)
    });
    let r = st.vregions.iter().find(|r| r.asid == asid).unwrap();
    for id in [Some(r.primary), r.backup.and_then(|b| b.on().copied())]
        .into_iter()
        .flatten()
    {
        let addr = &st.components.iter().find(|m| m.id == id).unwrap().addr;
        assert!(
            read_page(&c, vnode, addr, asid, 7) == page_content(2, 7),
            "copy on {id}"
        );
    }
}

/// Copies moved off a monitor and later back onto it are trusted again:
/// python reads through a drain of monitor A (its reads from A refused once
/// A's copies moved), A taken back and B drained (copies come back to A),
/// then the third monitor killed. Every vRegion then has its one live copy
/// on A, and the program reads it there to the right output.
#[test]
fn copies_moved_back_onto_a_monitor_are_read_there() {
    let mut c = cluster(3);
    let script = hashing(192, 30);
    let local = local_output(&script);
    let running = start_cmd(c.run_command(&["--excache", "48MiB"], &[&python(), "-c", &script]));
    let st = c.wait_until("the program's vRegions placed", |s| s.vregions.len() >= 12);
    let (_, a) = busiest_primary(&c, &st);
    let drain = |id: u64| {
        let out = c.cli(&["memory", "drain", &id.to_string(), "--wait"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let t = std::time::Instant::now();
    drain(a);
    eprintln!("monitor {a} drained after {:?}", t.elapsed());
    // Let the program read through the move (and be refused by A).
    std::thread::sleep(Duration::from_secs(2));
    let out = c.cli(&["memory", "undrain", &a.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.cluster_state();
    let b = alive_memory(&st)
        .into_iter()
        .map(|m| m.id)
        .find(|&id| id != a)
        .unwrap();
    drain(b);
    eprintln!("monitor {b} drained after {:?}", t.elapsed());
    let st = c.cluster_state();
    let other = alive_memory(&st)
        .into_iter()
        .find(|m| m.id != a && m.id != b)
        .map(|m| m.addr.clone())
        .unwrap();
    assert!(
        st.vregions.iter().all(|r| copies_on(&st, a) > 0
            && (r.primary == a || r.backup.and_then(|x| x.on().copied()) == Some(a))),
        "every vRegion has a copy on A after B's drain"
    );
    let mut running = running;
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the program still runs when the third monitor dies (make it longer)"
    );
    c.memory_at(&other).unwrap().kill9();
    eprintln!("killed the third monitor after {:?}", t.elapsed());
    let (status, out, err) = finish(running, Duration::from_secs(300));
    eprintln!("the program ended after {:?}", t.elapsed());
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");
}
