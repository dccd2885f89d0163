//! What the dashboard's charts draw: once a second, from the counters the
//! components report in their heartbeats, each component's use and bytes a
//! second in and out, and the processor monitors' faults a second by kind,
//! for the last [`KEPT`] seconds. Served as JSON at `/api/history` (with the
//! same token as `/state`). Rates are differences of totals between two
//! samples; a component that restarted (its totals went down) counts 0 for
//! that second.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lego_transport::lock;
use lego_wire::control::ComponentInfo;
use lego_wire::{Health, Role};
use serde::Serialize;

use crate::service::ManagerService;

/// Samples kept (one a second).
pub const KEPT: usize = 300;

/// One component at one sample.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    pub role: String,
    pub alive: bool,
    pub used: u64,
    pub capacity: u64,
    /// Bytes a second it took in (a memory or storage monitor: requests'
    /// bytes; a processor monitor: pages its jobs fetched).
    pub in_bps: f64,
    /// Bytes a second it sent out (a processor monitor: pages written back).
    pub out_bps: f64,
}

/// One sample of the whole cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Unix time, ms.
    pub t: u64,
    pub components: BTreeMap<u64, Point>,
    /// Faults a second over all processor monitors: zero-filled, fetched
    /// from a memory monitor, write-protect.
    pub zero_faults: f64,
    pub remote_faults: f64,
    pub wp_faults: f64,
    /// Jobs running over all processor monitors.
    pub jobs: u64,
}

/// The totals a rate is taken of, by component.
#[derive(Clone, Copy, Default)]
struct Totals {
    bytes_in: u64,
    bytes_out: u64,
    zero: u64,
    remote: u64,
    wp: u64,
}

/// A component's totals of bytes in and out: a memory or storage
/// monitor's request bytes; a processor monitor's pages fetched and
/// written back by its jobs. `lego top` takes its rates the same way.
pub fn bytes_in_out(c: &ComponentInfo) -> (u64, u64) {
    let g = |k: &str| c.counters.get(k).copied().unwrap_or(0);
    match c.role {
        Role::Processor => (
            g("rt_bytes_fetched_total"),
            g("rt_bytes_written_back_total"),
        ),
        _ => (g("bytes_in_total"), g("bytes_out_total")),
    }
}

fn totals(c: &ComponentInfo) -> Totals {
    let g = |k: &str| c.counters.get(k).copied().unwrap_or(0);
    let (bytes_in, bytes_out) = bytes_in_out(c);
    Totals {
        bytes_in,
        bytes_out,
        zero: g("rt_faults_zero_filled_total"),
        remote: g("rt_faults_fetched_total"),
        wp: g("rt_faults_write_protect_total"),
    }
}

/// The last [`KEPT`] samples, newest last.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    last: Mutex<Option<(u64, BTreeMap<u64, Totals>)>>,
}

impl History {
    /// Takes a sample of `components` at unix time `t_ms`.
    pub fn record(&self, t_ms: u64, components: &[ComponentInfo]) {
        let now: BTreeMap<u64, Totals> = components.iter().map(|c| (c.id, totals(c))).collect();
        let mut last = lock(&self.last);
        let (secs, before) = match last.as_ref() {
            Some((t0, b)) if t_ms > *t0 => ((t_ms - t0) as f64 / 1000.0, Some(b)),
            _ => (1.0, None),
        };
        let rate = |id: u64, f: fn(&Totals) -> u64| -> f64 {
            let (Some(b), Some(n)) = (before.and_then(|b| b.get(&id)), now.get(&id)) else {
                return 0.0;
            };
            f(n).saturating_sub(f(b)) as f64 / secs
        };
        let mut s = Sample {
            t: t_ms,
            ..Sample::default()
        };
        for c in components {
            s.components.insert(
                c.id,
                Point {
                    role: c.role.to_string(),
                    alive: c.health == Health::Alive,
                    used: c.used,
                    capacity: c.capacity,
                    in_bps: rate(c.id, |t| t.bytes_in),
                    out_bps: rate(c.id, |t| t.bytes_out),
                },
            );
            if c.role == Role::Processor {
                s.zero_faults += rate(c.id, |t| t.zero);
                s.remote_faults += rate(c.id, |t| t.remote);
                s.wp_faults += rate(c.id, |t| t.wp);
                s.jobs += c.counters.get("jobs_running").copied().unwrap_or(0);
            }
        }
        *last = Some((t_ms, now));
        drop(last);
        let mut samples = lock(&self.samples);
        samples.push_back(s);
        while samples.len() > KEPT {
            samples.pop_front();
        }
    }

    /// The samples as JSON: `{"interval_ms": 1000, "samples": [...]}`.
    pub fn json(&self) -> String {
        let samples = lock(&self.samples);
        serde_json::json!({ "interval_ms": 1000, "samples": &*samples }).to_string()
    }
}

/// Starts the thread that samples `svc` every second into a new history.
pub fn start(svc: Arc<ManagerService>) -> std::io::Result<Arc<History>> {
    let h = Arc::new(History::default());
    let hist = h.clone();
    std::thread::Builder::new()
        .name("manager-history".into())
        .spawn(move || loop {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            hist.record(t, &svc.cluster_state().components);
            std::thread::sleep(Duration::from_secs(1));
        })?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(id: u64, role: Role, counters: &[(&str, u64)]) -> ComponentInfo {
        ComponentInfo {
            id,
            role,
            addr: "a".into(),
            health: Health::Alive,
            capacity: 100,
            used: 10,
            last_heard_ms_ago: 0,
            counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            vips: vec![],
            drain: None,
        }
    }

    #[test]
    fn rates_are_differences_over_the_time_between_samples() {
        let h = History::default();
        h.record(
            1000,
            &[
                comp(1, Role::Memory, &[("bytes_in_total", 100)]),
                comp(2, Role::Processor, &[("rt_faults_fetched_total", 5)]),
            ],
        );
        h.record(
            3000,
            &[
                comp(1, Role::Memory, &[("bytes_in_total", 4100)]),
                comp(2, Role::Processor, &[("rt_faults_fetched_total", 25)]),
            ],
        );
        // A restart: totals went down; that second counts 0.
        h.record(4000, &[comp(1, Role::Memory, &[("bytes_in_total", 50)])]);
        let s = lock(&h.samples);
        assert_eq!(s[0].components[&1].in_bps, 0.0);
        assert_eq!(s[1].components[&1].in_bps, 2000.0);
        assert_eq!(s[1].remote_faults, 10.0);
        assert_eq!(s[2].components[&1].in_bps, 0.0);
        drop(s);
        assert!(h.json().starts_with("{\"interval_ms\":1000,\"samples\":[{"));
    }
}
