//! The manager's metrics in Prometheus text: its own counters, each
//! component's health, capacity and use, and every counter the components
//! report in their heartbeats (labelled with the component's id and role).
//! Nothing in them names a job's command or a vNode's files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

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
            format!("state=\"{state}\""),
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
            f.add(
                &format!("lego_{}_{}", comp.role, sanitize(k)),
                labels.clone(),
                *v,
            );
        }
    }
    f.render()
}
