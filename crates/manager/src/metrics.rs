//! The manager's metrics in Prometheus text: its own counters, each
//! component's health, capacity and use, and every counter the components
//! report in their heartbeats (labelled with the component's id and role).
//! Nothing in them names a job's command or a vNode's files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use lego_wire::jobs::{rt_histogram, RT_HIST_PREFIX};
use lego_wire::{Health, VRegionState};

use crate::service::ManagerService;

/// One metric family: its type and samples of (labels, value).
type Family = (&'static str, Vec<(String, u64)>);

/// Metric families by name.
#[derive(Default)]
struct Families(BTreeMap<String, Family>);

impl Families {
    fn add(&mut self, name: &str, labels: String, value: u64) {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        self.0
            .entry(name.to_string())
            .or_insert_with(|| (kind, Vec::new()))
            .1
            .push((labels, value));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, (kind, samples)) in &self.0 {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
        out
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Renders all metrics as Prometheus text.
pub fn metrics(svc: &ManagerService) -> String {
    let st = svc.cluster_state();
    let mut f = Families::default();
    let c = &svc.counters;
    for (name, v) in [
        ("lego_manager_registrations_total", &c.registrations),
        ("lego_manager_heartbeats_total", &c.heartbeats),
        ("lego_manager_component_deaths_total", &c.deaths),
        ("lego_manager_vregions_assigned_total", &c.vregions_assigned),
        ("lego_manager_spaces_created_total", &c.spaces_created),
        ("lego_manager_spaces_released_total", &c.spaces_released),
        ("lego_manager_failovers_total", &c.failovers),
        ("lego_manager_vregions_lost_total", &c.vregions_lost),
        ("lego_manager_rereplications_total", &c.rereplications),
        (
            "lego_manager_rereplications_failed_total",
            &c.rereplications_failed,
        ),
        ("lego_manager_refused_total", &c.refused),
        ("lego_manager_revocations_total", &c.revocations),
        ("lego_manager_moves_total", &c.moves),
        ("lego_manager_moves_failed_total", &c.moves_failed),
        ("lego_manager_withdrawals_total", &c.withdrawals),
        ("lego_manager_moved_bytes_total", &c.bytes_moved),
    ] {
        f.add(name, String::new(), v.load(Ordering::Relaxed));
    }
    f.add("lego_manager_vnodes", String::new(), st.vnodes.len() as u64);
    for &state in VRegionState::ALL {
        let n = st.vregions.iter().filter(|v| v.state == state).count();
        f.add(
            "lego_manager_vregions_by_state",
            format!("{{state=\"{state}\"}}"),
            n as u64,
        );
    }
    f.add(
        "lego_manager_vregions",
        String::new(),
        st.vregions.len() as u64,
    );
    for comp in &st.components {
        let labels = format!(
            "{{id=\"{}\",role=\"{}\",addr=\"{}\"}}",
            comp.id,
            comp.role,
            comp.addr.replace(['"', '\\'], "_")
        );
        f.add(
            "lego_component_up",
            labels.clone(),
            (comp.health == Health::Alive) as u64,
        );
        f.add(
            "lego_component_capacity_bytes",
            labels.clone(),
            comp.capacity,
        );
        f.add("lego_component_used_bytes", labels.clone(), comp.used);
        for (k, v) in &comp.counters {
            if k.strip_prefix("rt_")
                .is_some_and(|k| k.starts_with(RT_HIST_PREFIX))
            {
                continue;
            }
            f.add(
                &format!("lego_{}_{}", comp.role, sanitize(k)),
                labels.clone(),
                *v,
            );
        }
    }
    let mut out = f.render();
    out.push_str(&fault_histogram(&st.components));
    out
}

/// Upper bounds of the exported histogram, in µs: powers of two from 2 µs
/// to 8 s (the runtime's buckets, four per power of two, fall inside one).
fn bounds_us() -> impl Iterator<Item = u64> {
    (1..=23).map(|e| 1u64 << e)
}

/// Every processor monitor's remote fault latency as a Prometheus
/// histogram (cumulative buckets, `_sum` in seconds, `_count`).
fn fault_histogram(components: &[lego_wire::control::ComponentInfo]) -> String {
    let name = "lego_processor_remote_fault_latency_seconds";
    let mut out = format!(
        "# HELP {name} Time from a page fault to its page in place, for faults served by a memory monitor.\n# TYPE {name} histogram\n"
    );
    for comp in components
        .iter()
        .filter(|c| c.role == lego_wire::Role::Processor)
    {
        let labels = format!(
            "id=\"{}\",role=\"{}\",addr=\"{}\"",
            comp.id,
            comp.role,
            comp.addr.replace(['"', '\\'], "_")
        );
        // The processor monitor's sums of the runtime's buckets, `rt_`-named.
        let mids = rt_histogram(&comp.counters, "rt_");
        for le in bounds_us() {
            let count: u64 = mids
                .iter()
                .filter(|(mid, _)| *mid < le)
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {count}",
                le as f64 / 1e6
            );
        }
        let all: u64 = mids.iter().map(|(_, n)| n).sum();
        let ns = comp
            .counters
            .get("rt_remote_fault_ns_total")
            .copied()
            .unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {all}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {all}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lego_wire::control::ComponentInfo;
    use lego_wire::{Health, Role};

    #[test]
    fn the_fault_histogram_is_cumulative_and_counts_every_fault() {
        let counters: BTreeMap<String, u64> = [
            ("rt_remote_fault_hist_us_23", 5),
            ("rt_remote_fault_hist_us_27", 2),
            ("rt_remote_fault_hist_us_300", 1),
            ("rt_remote_fault_ns_total", 400_000),
            ("rt_faults_fetched_total", 8),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let comp = ComponentInfo {
            id: 7,
            role: Role::Processor,
            addr: "a".into(),
            health: Health::Alive,
            capacity: 0,
            used: 0,
            last_heard_ms_ago: 0,
            counters,
            vips: vec![],
            drain: None,
        };
        let h = super::fault_histogram(&[comp]);
        let get = |le: &str| -> u64 {
            let key = format!("_bucket{{id=\"7\",role=\"processor\",addr=\"a\",le=\"{le}\"}} ");
            let line = h
                .lines()
                .find(|l| l.contains(&key))
                .unwrap_or_else(|| panic!("{le}: {h}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert_eq!(get("0.000016"), 0);
        assert_eq!(get("0.000032"), 7);
        assert_eq!(get("0.000256"), 7);
        assert_eq!(get("0.000512"), 8);
        assert_eq!(get("+Inf"), 8);
        assert!(
            h.contains("_sum{id=\"7\",role=\"processor\",addr=\"a\"} 0.0004\n"),
            "{h}"
        );
        assert!(
            h.contains("_count{id=\"7\",role=\"processor\",addr=\"a\"} 8\n"),
            "{h}"
        );
        assert!(h.contains("# TYPE lego_processor_remote_fault_latency_seconds histogram"));
    }
}
