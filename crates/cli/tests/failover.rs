//! Memory failures while programs run: a memory monitor killed under a
//! program with a 25% ExCache (its backups take over, every vRegion gets a
//! second live copy again within 10 s, the output is byte for byte the same
//! as without lego); both copies of a vRegion killed (the program stops with
//! a clear error naming the vRegion); a memory monitor that was declared
//! dead while stopped comes back (new id, old pages dropped, new placements);
//! a memory monitor that dies while the manager is down is replaced once the
//! manager is back; a memory host cut off by its link for 5 s (on a rack of
//! network namespaces) while its monitor runs on is treated as dead and
//! comes back as a new monitor whose old pages are never read; the manager's
//! own host cut off for 5 s: it hears no one, takes itself for cut off, and
//! declares nobody dead, so the program goes on and nothing is lost; a
//! processor host cut off until declared dead: its job's memory is freed,
//! the job is ended with the reason, and the monitor comes back new.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lego_wire::types::EventKind;
use lego_wire::{Backup, Health};

/// Three memory monitors, 16 MiB vRegions, 300 ms heartbeats, a processor.
fn cluster() -> TestCluster {
    cluster_of(3)
}

fn cluster_of(memory_monitors: usize) -> TestCluster {
    ensure_runtime();
    let mut c = TestCluster::start_with(memory_monitors, "2GiB", 300, &["--vregion-size", "16MiB"]);
    c.start_processor("1GiB");
    c
}

/// `lego run` of `script` from rack host `host` (not the test's own).
fn start_on_host(c: &TestCluster, host: usize, script: &str) -> Running {
    let mut cmd = c.rack().unwrap().command(host, std::ffi::OsStr::new(LEGO));
    cmd.current_dir(c.work())
        .args(["run", "--manager", &c.manager_addr, "--secret-file"])
        .arg(c.path().join("secret"))
        .args(["--excache", "40MiB", "--", &python(), "-c", script]);
    start_cmd(cmd)
}

/// A rack of `hosts` hosts: the manager, `memories` memory monitors
/// (16 MiB vRegions) and a processor monitor, each on a host of its own.
fn rack_cluster(hosts: usize, memories: usize) -> TestCluster {
    ensure_runtime();
    let mut c = TestCluster::rack_of(
        hosts,
        Some("10gbit"),
        memories,
        "2GiB",
        &["--vregion-size", "16MiB"],
        false,
    );
    c.start_processor("1GiB");
    c
}

#[test]
fn a_killed_memory_monitor_is_replaced_while_the_program_runs() {
    let mut c = cluster();
    let script = script(6);
    let local = local_output(&script);
    let run = start(&c, &script);
    let s = c.cluster_state();
    let (victim, victim_id) = busiest_primary(&c, &s);
    let held = s.vregions.iter().filter(|r| r.primary == victim_id).count();
    assert!(held > 0, "the victim holds primaries: {:?}", s.vregions);
    let killed = Instant::now();
    c.memories[victim].kill9();
    let healthy = wait_for(
        Duration::from_secs(10),
        "two live copies of every vRegion",
        || {
            let s = c.cluster_state();
            all_healthy_without(&s, &[victim_id]).then_some(s)
        },
    );
    let took = killed.elapsed();
    // What an operator waits on: every vRegion healthy again.
    let waited = c.cli(&["status", "--wait-healthy", "30"]);
    let said = String::from_utf8_lossy(&waited.stdout);
    assert!(waited.status.success(), "{said}");
    assert!(said.contains("every vRegion is healthy"), "{said}");
    let (status, out, err) = finish(run, Duration::from_secs(240));
    assert!(status.success(), "{status}: {err}");
    assert!(
        out == local,
        "output differs from the run without lego:\n{}",
        String::from_utf8_lossy(&out)
    );
    let kinds: Vec<EventKind> = healthy.events.iter().map(|e| e.kind).collect();
    for k in [
        EventKind::Dead,
        EventKind::Failover,
        EventKind::ReReplicated,
    ] {
        assert!(kinds.contains(&k), "journal has {k}: {:?}", healthy.events);
    }
    let text = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("0 degraded, 0 lost"), "{text}");
    assert!(text.contains("re-replicated"), "{text}");
    eprintln!(
        "{held} primaries on the killed monitor; every vRegion had two live copies {took:?} after the kill; {} vRegions",
        healthy.vregions.len()
    );
    c.assert_no_pages("the program that outlived a memory monitor");
}

#[test]
fn killing_both_copies_of_a_vregion_stops_the_program_naming_it() {
    // Four monitors: with two killed, new vRegions can still be placed, so
    // the program can only stop for the one whose copies are gone.
    let mut c = cluster_of(4);
    let run = start(&c, &script(1000));
    let s = c.cluster_state();
    // A vRegion of the program's holding data, and both of its monitors.
    let r = s
        .vregions
        .iter()
        .find(|r| r.backup.is_some())
        .cloned()
        .unwrap();
    let ids = [r.primary, *r.backup.unwrap().on().expect("a live backup")];
    let addrs: Vec<String> = s
        .components
        .iter()
        .filter(|x| ids.contains(&x.id))
        .map(|x| x.addr.clone())
        .collect();
    for m in c.memories.iter_mut().filter(|m| addrs.contains(&m.addr)) {
        m.kill9();
    }
    // Lost: every copy on a killed monitor (or a copy the program reported
    // as having missed a write, marked bad).
    let gone = |id: u64| ids.contains(&id);
    let lost: Vec<u64> = c
        .cluster_state()
        .vregions
        .iter()
        .filter(|v| {
            gone(v.primary)
                && v.backup.is_some_and(|b| match b {
                    Backup::On(id) => gone(id),
                    Backup::Bad => true,
                })
        })
        .map(|v| v.index.0)
        .collect();
    let (status, out, err) = finish(run, Duration::from_secs(60));
    assert_eq!(status.code(), Some(117), "stopped as lost memory: {err}");
    // It names a vRegion: one of those whose copies were killed, or one
    // placed on the killed monitors just before the manager saw them die
    // (its error then names only killed monitors).
    let number_after = |word: &str| -> Option<u64> {
        let at = err.find(word)? + word.len();
        err[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let named = number_after("memory lost: vRegion ").expect("a vRegion is named");
    let copies = [number_after("primary "), number_after("backup ")];
    let on_killed = copies.iter().all(|c| c.is_some_and(gone));
    assert!(
        lost.contains(&named) || on_killed,
        "the error names a lost vRegion ({lost:?}, killed {ids:?}):\n{err}"
    );
    // Whatever it printed before it stopped is right: each line is a pass
    // the run without lego prints too.
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("started\n"));
    let st = wait_for(
        Duration::from_secs(10),
        "the lost vRegions reported",
        || {
            let s = c.cluster_state();
            s.events
                .iter()
                .any(|e| e.kind == EventKind::Lost)
                .then_some(s)
        },
    );
    eprintln!("{}", err.lines().next().unwrap_or(""));
    let _ = st;
}

/// The 4-pass script started under lego, with its output run locally, and
/// the memory monitor (index, id) that is primary of the most of its vRegions.
fn running_with_victim(c: &TestCluster) -> (String, Vec<u8>, Running, usize, u64) {
    let script = script(4);
    let local = local_output(&script);
    let run = start(c, &script);
    let (victim, victim_id) = busiest_primary(c, &c.cluster_state());
    (script, local, run, victim, victim_id)
}

/// Waits until every vRegion has two live copies on monitors other than `dead`.
fn wait_rebuilt_without(c: &TestCluster, dead: u64) {
    wait_for(Duration::from_secs(10), "copies rebuilt elsewhere", || {
        all_healthy_without(&c.cluster_state(), &[dead]).then_some(())
    });
}

/// Memory monitor `victim` (id `victim_id`), declared dead while it was
/// stopped or cut off, is back: it rejoins under a new id (returned), the
/// program `run` ends with the `local` output, the journal says "stale", and
/// the monitor drops every page it held under the old id.
fn comes_back_new(
    c: &TestCluster,
    victim: usize,
    victim_id: u64,
    run: Running,
    local: &[u8],
) -> u64 {
    let addr = c.memories[victim].addr.clone();
    let back = wait_for(Duration::from_secs(15), "it rejoins under a new id", || {
        c.cluster_state()
            .components
            .iter()
            .find(|x| x.addr == addr && x.id != victim_id && x.health == Health::Alive)
            .map(|x| x.id)
    });
    let (status, out, err) = finish(run, Duration::from_secs(240));
    assert!(status.success(), "{status}: {err}");
    assert!(out == local, "output differs from the run without lego");
    let s = c.cluster_state();
    assert!(
        s.events.iter().any(|e| e.kind == EventKind::Stale),
        "{:?}",
        s.events
    );
    // The wipe follows the new id by a moment.
    wait_for(
        Duration::from_secs(20),
        "the returning monitor to drop what it held",
        || {
            c.memories[victim]
                .log_text()
                .contains("dropped every page held under the old identity")
                .then_some(())
        },
    );
    back
}

#[test]
fn a_memory_monitor_declared_dead_while_stopped_comes_back_as_a_new_one() {
    let c = cluster();
    let (script, local, run, victim, victim_id) = running_with_victim(&c);
    c.memories[victim].signal(Signal::SIGSTOP).unwrap();
    wait_rebuilt_without(&c, victim_id);
    c.memories[victim].signal(Signal::SIGCONT).unwrap();
    let back = comes_back_new(&c, victim, victim_id, run, &local);
    // It takes new placements: a second run with its 16 MiB vRegions on
    // three live monitors uses it.
    let again = start(&c, &script);
    let s = c.cluster_state();
    assert!(
        s.vregions
            .iter()
            .any(|r| r.primary == back || r.backup == Some(Backup::On(back))),
        "new vRegions on the monitor that came back: {:?}",
        s.vregions
    );
    let (status, out, _) = finish(again, Duration::from_secs(240));
    assert!(status.success() && out == local);
    c.assert_no_pages("both runs");
}

#[test]
fn a_memory_monitor_that_dies_while_the_manager_is_down_is_replaced_when_it_is_back() {
    let mut c = cluster();

    // Long enough to outlive the restarted manager's grace and the rebuild.
    let script = script(16);
    let local = local_output(&script);
    let run = start(&c, &script);
    let s = c.cluster_state();
    let (victim, victim_id) = busiest_primary(&c, &s);
    c.kill_manager();
    c.memories[victim].kill9();
    std::thread::sleep(Duration::from_secs(1));
    let back = Instant::now();
    c.restart_manager();
    let s = wait_for(
        Duration::from_secs(20),
        "every vRegion rebuilt after the restart",
        || {
            let s = c.cluster_state();
            all_healthy_without(&s, &[victim_id]).then_some(s)
        },
    );
    eprintln!(
        "two live copies of every vRegion {:?} after the manager came back",
        back.elapsed()
    );
    // Declared dead once the restarted manager's grace is over (its
    // vRegions may have moved earlier: the program reported the copies on
    // it as having missed writes).
    wait_for(Duration::from_secs(10), "the victim declared dead", || {
        let s = c.cluster_state();
        let v = s.components.iter().find(|x| x.id == victim_id)?;
        (v.health == Health::Dead).then_some(())
    });
    let _ = s;
    let (status, out, err) = finish(run, Duration::from_secs(240));
    assert!(status.success(), "{status}: {err}");
    assert!(out == local, "output differs from the run without lego");
    let kinds: Vec<EventKind> = c.cluster_state().events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::ReReplicated), "{kinds:?}");
    c.assert_no_pages("the program whose memory monitor died while the manager was down");
}

#[test]
fn a_memory_host_cut_off_for_5_s_comes_back_new_and_its_old_pages_are_never_read() {
    // Five hosts: the manager, three memory monitors, the processor.
    let c = rack_cluster(5, 3);
    let (_, local, run, victim, victim_id) = running_with_victim(&c);
    let host = c.host_index(&c.memories[victim].name).expect("on the rack");
    let cut = Instant::now();
    c.rack().unwrap().set_link(host, false).unwrap();
    wait_rebuilt_without(&c, victim_id);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed()));
    c.rack().unwrap().set_link(host, true).unwrap();
    comes_back_new(&c, victim, victim_id, run, &local);
    c.assert_no_pages("the run across the partition");
}

#[test]
fn the_manager_host_cut_off_for_5_s_loses_nothing() {
    // Five hosts: the manager, three memory monitors, the processor; the
    // program is run from the processor's host, so that only the manager
    // is cut off.
    let c = rack_cluster(5, 3);
    let script = script(6);
    let local = local_output(&script);
    let run = start_on_host(&c, 4, &script);
    let rack = c.rack().unwrap();
    let before = c.cluster_state();
    let ids: Vec<u64> = before.components.iter().map(|m| m.id).collect();
    rack.set_link(0, false).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    rack.set_link(0, true).unwrap();
    let (status, out, err) = finish(run, Duration::from_secs(240));
    let after = c.cluster_state();
    let events: Vec<String> = after
        .events
        .iter()
        .map(|e| format!("{:?}: {}", e.kind, e.text))
        .collect();
    assert!(status.success(), "{status}: {err}\n{events:#?}");
    assert!(out == local, "output differs from the run without lego");
    // The manager took itself for cut off: nobody declared dead, no copy
    // dropped, every component still under its id.
    assert!(
        after.events.iter().any(|e| e.kind == EventKind::Isolated),
        "{events:#?}"
    );
    assert!(
        !after
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Dead | EventKind::Lost | EventKind::Stale)),
        "{events:#?}"
    );
    for id in ids {
        let c = after.components.iter().find(|x| x.id == id).unwrap();
        assert_eq!(c.health, Health::Alive, "component {id}");
    }
    c.assert_no_pages("the run across the manager's partition");
}

#[test]
fn a_processor_host_declared_dead_comes_back_new_and_its_jobs_are_told() {
    // The manager, two memory monitors, the processor on its own host; the
    // program is run from the processor's host.
    let c = rack_cluster(4, 2);
    let processor = c.processor.as_ref().unwrap().addr.clone();
    let host = c.host_index("processor").expect("on the rack");
    let run = start_on_host(&c, host, &script(400));
    let rack = c.rack().unwrap();
    let old = c
        .cluster_state()
        .components
        .iter()
        .find(|x| x.addr == processor)
        .unwrap()
        .id;
    rack.set_link(host, false).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the processor declared dead",
        || {
            let s = c.cluster_state();
            let p = s.components.iter().find(|x| x.id == old)?;
            (p.health == Health::Dead).then_some(())
        },
    );
    // Its job's memory is freed while it is away.
    wait_for(
        Duration::from_secs(10),
        "the lost job's memory freed",
        || {
            (c.pages_held()
                .iter()
                .all(|(_, h)| h.as_ref().is_ok_and(|&n| n == 0)))
            .then_some(())
        },
    );
    rack.set_link(host, true).unwrap();
    let (status, _, err) = finish(run, Duration::from_secs(60));
    assert!(
        !status.success(),
        "the lost job was ended, not left running"
    );
    // Whichever comes first once the link is back: the processor monitor,
    // told it was declared dead, kills the job; or the job's runtime finds
    // its address space released. Either way it is told why, and never
    // reads wrong data.
    assert!(
        err.contains("was declared dead while the manager could not hear it")
            || (err.contains("memory lost") && err.contains("released")),
        "the job is told why: {err}"
    );
    let (s, back) = wait_for(
        Duration::from_secs(10),
        "the processor monitor back",
        || {
            let s = c.cluster_state();
            let back = s
                .components
                .iter()
                .find(|x| x.addr == processor && x.health == Health::Alive)?
                .id;
            // The journal's line is written by the manager's event loop,
            // just after the new registration is answered.
            s.events
                .iter()
                .any(|e| e.kind == EventKind::Stale)
                .then_some((s, back))
        },
    );
    assert_ne!(back, old, "under a new id");
    assert!(s.events.iter().any(|e| e.kind == EventKind::Stale));
    // It runs programs again.
    let o = c
        .run_command(
            &["--excache", "40MiB"],
            &[&python(), "-c", "print(sum(range(10**6)))"],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"499999500000\n");
    c.assert_no_pages("the lost job and the next");
}
