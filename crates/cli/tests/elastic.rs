//! Elastic memory (issue 14): a memory monitor drained while python pages
//! through its memory: every copy it held moves to the others while the
//! program runs, no vRegion is ever degraded (watched every 20 ms), the
//! drained monitor ends with no page, and the output is byte for byte the
//! same as without lego; a monitor added to a loaded cluster takes copies
//! (`lego rebalance`) until use is even within the threshold, while the
//! program runs on with the right output.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lego_transport::{Client, ClientOptions};
use lego_wire::types::EventKind;
use lego_wire::{Role, VRegionState};

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
    let st = c.wait_until("copies even within 2% of capacity", |s| even(s, 3, 3));
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
    let st = c.wait_until("copies even within 2% of capacity", |s| even(s, 3, 3));
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

/// Waits (up to 60 s) until `id` holds no copy and every vRegion is
/// healthy without the components `gone`, the program still running (its
/// vRegions still there).
fn wait_emptied(c: &TestCluster, id: u64, gone: &[u64]) {
    wait_for(Duration::from_secs(60), "the drain to end", || {
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
