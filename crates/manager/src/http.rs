//! The manager's HTTP endpoint: `/state` (or `/`) serves the cluster state as
//! JSON, `/metrics` serves Prometheus text: the manager's own counters, each
//! component's health, capacity and use, and every counter the components
//! report in their heartbeats (labelled with the component's id and role).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use lego_wire::{Health, VRegionState};
use tracing::warn;

use crate::service::ManagerService;
use crate::ManagerError;

/// Binds `addr` and serves in a background thread; returns the bound address.
pub fn serve(addr: &str, svc: Arc<ManagerService>) -> Result<String, ManagerError> {
    let server = tiny_http::Server::http(addr).map_err(|e| ManagerError::Http {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let bound = match server.server_addr() {
        tiny_http::ListenAddr::IP(a) => a.to_string(),
        other => other.to_string(),
    };
    std::thread::Builder::new()
        .name("manager-http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let (status, ctype, body) = match req.url() {
                    "/" | "/state" => (
                        200,
                        "application/json",
                        serde_json::to_string_pretty(&svc.cluster_state()).unwrap_or_default(),
                    ),
                    "/metrics" => (200, "text/plain; version=0.0.4", metrics(&svc)),
                    _ => (
                        404,
                        "text/plain",
                        "not found: try /state or /metrics\n".into(),
                    ),
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", ctype).expect("valid header");
                let resp = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                if let Err(e) = req.respond(resp) {
                    warn!("http answer failed: {e}");
                }
            }
        })
        .map_err(ManagerError::Thread)?;
    Ok(bound)
}

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
