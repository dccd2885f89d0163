//! A small simulation run with every invariant checked after every event:
//! no vRegion on a dead or full monitor (a dead monitor's copy listed only
//! while its replacement waits for room, never as a primary), copies on
//! distinct monitors, the placement indexes equal to a recomputation from
//! scratch; servers' jobs and free space adding up. Failures are frequent,
//! so failover, recovery, repair and re-registration all happen.

use lego_sim::{simulate, SimArgs};

fn small(replicas: u8, workload: &str, seed: u64) -> SimArgs {
    SimArgs {
        components: 60,
        hours: 3.0,
        workload: workload.into(),
        load: 1.1,
        processor_share: 0.4,
        storage_share: 0.05,
        cores: 16,
        memory_gib: 32,
        vregion_mib: 256,
        replicas,
        mtbf_days: 0.2,
        repair_hours: 0.5,
        max_wait_min: 30.0,
        seed,
        plot: None,
        check: true,
    }
}

#[test]
fn a_small_datacenter_keeps_every_invariant_after_every_step() {
    for (replicas, workload, seed) in [
        (1, "google2019", 1),
        (2, "google2019", 2),
        (2, "alibaba2018", 3),
    ] {
        let r = simulate(&small(replicas, workload, seed))
            .unwrap_or_else(|e| panic!("{replicas} copies, {workload}: {e}"));
        for (name, _, out, _) in [&r.mono, &r.disagg] {
            assert!(out.arrived > 500, "{name}: {} arrived", out.arrived);
            assert!(out.admitted > 0 && out.completed > 0, "{name}");
            assert!(out.failures > 5, "{name}: {} failures", out.failures);
            assert!(out.admitted <= out.arrived);
            assert!(!out.samples.is_empty());
        }
        assert!(r.lat.vregion.calls >= r.disagg.2.admitted);
        assert!(r.lat.failover.calls > 0, "memory monitors failed");
        if replicas == 2 {
            assert!(r.lat.recovery.calls > 0, "vRegions were recovered");
        }
        let report = lego_sim::report::text(&r);
        assert!(report.contains("stranded memory (mean)"), "{report}");
    }
}

#[test]
fn plots_are_svg_with_one_series_per_design_and_resource() {
    let mut a = small(1, "google2019", 4);
    a.check = false;
    let r = simulate(&a).unwrap();
    let dir = std::env::temp_dir().join(format!("lego-sim-plots-{}", std::process::id()));
    let written = lego_sim::report::plots(&r, &dir).unwrap();
    assert_eq!(written.len(), 4);
    let admitted = std::fs::read_to_string(dir.join("admitted.svg")).unwrap();
    assert_eq!(admitted.matches("class=\"series\"").count(), 2);
    let util = std::fs::read_to_string(dir.join("utilisation.svg")).unwrap();
    assert!(util.starts_with("<svg") && util.trim_end().ends_with("</svg>"));
    assert_eq!(util.matches("class=\"series\"").count(), 4);
    for label in ["monolithic CPU", "disaggregated memory"] {
        assert!(util.contains(&format!("data-label=\"{label}\"")), "{label}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let mut a = small(1, "google2019", 1);
    a.replicas = 3;
    let e = simulate(&a).err().expect("3 copies refused").to_string();
    assert!(e.contains("--replicas is 1 or 2"), "{e}");
    let mut a = small(1, "no-such-workload", 1);
    a.check = false;
    let e = simulate(&a)
        .err()
        .expect("unknown workload refused")
        .to_string();
    assert!(e.contains("no-such-workload"), "{e}");
}
