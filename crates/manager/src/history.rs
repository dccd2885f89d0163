//! What the dashboard's charts draw: once a second, from the counters the
//! components report in their heartbeats, each component's use and bytes a
//! second in and out, and the processor monitors' faults a second by kind,
//! for the last [`KEPT`] seconds. Served as JSON at `/api/history` (with the
//! same token as `/state`). Rates are differences of totals between two
//! samples; a component that restarted (its totals went down) counts 0 for
//! that second.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The totals a rate is taken of, per component, by these indexes.
type Totals = [u64; 5];
const IN: usize = 0;
const OUT: usize = 1;
const ZERO: usize = 2;
const REMOTE: usize = 3;
const WP: usize = 4;

fn totals(c: &ComponentInfo) -> Totals {
    let g = |k: &str| c.counters.get(k).copied().unwrap_or(0);
    let (bytes_in, bytes_out) = bytes_in_out(c);
    [
        bytes_in,
        bytes_out,
        g("rt_faults_zero_filled_total"),
        g("rt_faults_fetched_total"),
        g("rt_faults_write_protect_total"),
    ]
}

/// What a component's last heartbeat said: when it was heard (ms on the
/// history's clock), its totals, and the rates last taken.
#[derive(Clone, Copy, Default)]
struct Heard {
    at_ms: u64,
    totals: Totals,
    rates: [f64; 5],
}

/// The last [`KEPT`] samples, newest last.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    last: Mutex<BTreeMap<u64, Heard>>,
}

impl History {
    /// Takes a sample of `components` at unix time `t_ms`, `mono_ms` on a
    /// clock that only goes forward. A component's rates are taken between
    /// two of its heartbeats (when each was heard, not when it was
    /// sampled), so that a sample that saw no new heartbeat keeps the
    /// last rates rather than drawing 0 and then twice the truth.
    pub fn record(&self, t_ms: u64, mono_ms: u64, components: &[ComponentInfo]) {
        let mut last = lock(&self.last);
        let mut s = Sample {
            t: t_ms,
            ..Sample::default()
        };
        for c in components {
            let (at_ms, totals) = (mono_ms.saturating_sub(c.last_heard_ms_ago), totals(c));
            let rates = match last.get(&c.id) {
                // A heartbeat since the last one: the rates between them.
                Some(b) if at_ms > b.at_ms + 100 => {
                    let secs = (at_ms - b.at_ms) as f64 / 1000.0;
                    let mut r = [0.0; 5];
                    for (i, r) in r.iter_mut().enumerate() {
                        *r = totals[i].saturating_sub(b.totals[i]) as f64 / secs;
                    }
                    last.insert(
                        c.id,
                        Heard {
                            at_ms,
                            totals,
                            rates: r,
                        },
                    );
                    r
                }
                // None since: the last rates stand.
                Some(b) => b.rates,
                None => {
                    last.insert(
                        c.id,
                        Heard {
                            at_ms,
                            totals,
                            rates: [0.0; 5],
                        },
                    );
                    [0.0; 5]
                }
            };
            s.components.insert(c.id, point(c, rates));
            if c.role == Role::Processor {
                s.zero_faults += rates[ZERO];
                s.remote_faults += rates[REMOTE];
                s.wp_faults += rates[WP];
                s.jobs += c.counters.get("jobs_running").copied().unwrap_or(0);
            }
        }
        last.retain(|id, _| components.iter().any(|c| c.id == *id));
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
    let started = Instant::now();
    std::thread::Builder::new()
        .name("manager-history".into())
        .spawn(move || loop {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let mono = started.elapsed().as_millis() as u64;
            hist.record(t, mono, &svc.components());
            std::thread::sleep(Duration::from_secs(1));
        })?;
    Ok(h)
}

fn point(c: &ComponentInfo, rates: [f64; 5]) -> Point {
    Point {
        role: c.role.to_string(),
        alive: c.health == Health::Alive,
        used: c.used,
        capacity: c.capacity,
        in_bps: rates[IN],
        out_bps: rates[OUT],
    }
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
            1000,
            &[
                comp(1, Role::Memory, &[("bytes_in_total", 100)]),
                comp(2, Role::Processor, &[("rt_faults_fetched_total", 5)]),
            ],
        );
        h.record(
            3000,
            3000,
            &[
                comp(1, Role::Memory, &[("bytes_in_total", 4100)]),
                comp(2, Role::Processor, &[("rt_faults_fetched_total", 25)]),
            ],
        );
        // A sample that saw no new heartbeat (heard 1 s ago): the last
        // rate stands.
        let mut same = comp(1, Role::Memory, &[("bytes_in_total", 4100)]);
        same.last_heard_ms_ago = 1000;
        h.record(4000, 4000, &[same]);
        // A restart: totals went down; that interval counts 0.
        h.record(
            5000,
            5000,
            &[comp(1, Role::Memory, &[("bytes_in_total", 50)])],
        );
        let s = lock(&h.samples);
        assert_eq!(s[0].components[&1].in_bps, 0.0);
        assert_eq!(s[1].components[&1].in_bps, 2000.0);
        assert_eq!(s[1].remote_faults, 10.0);
        assert_eq!(s[2].components[&1].in_bps, 2000.0);
        assert_eq!(s[3].components[&1].in_bps, 0.0);
        drop(s);
        assert!(h.json().starts_with("{\"interval_ms\":1000,\"samples\":[{"));
    }
}
