//! Latency samples and their percentiles.

use std::time::Duration;

/// Collected latencies of one measurement.
#[derive(Default)]
pub struct Samples {
    ns: Vec<u64>,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples {
            ns: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.ns.push(d.as_nanos() as u64);
    }

    /// The mean in microseconds.
    pub fn mean_us(&self) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        self.ns.iter().sum::<u64>() as f64 / self.ns.len() as f64 / 1000.0
    }

    /// The `p`-th percentile in microseconds (0 < p <= 100).
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        self.ns.sort_unstable();
        let i = ((p / 100.0) * (self.ns.len() - 1) as f64).round() as usize;
        self.ns[i.min(self.ns.len() - 1)] as f64 / 1000.0
    }
}

impl Samples {
    /// The distribution as `n` + 1 points (µs, % of samples at or below).
    pub fn cdf(&mut self, n: usize) -> Vec<(f64, f64)> {
        if self.ns.is_empty() {
            return Vec::new();
        }
        self.ns.sort_unstable();
        let last = self.ns.len() - 1;
        (0..=n)
            .map(|i| {
                let at = (last * i).div_ceil(n.max(1));
                (
                    self.ns[at] as f64 / 1000.0,
                    100.0 * (at + 1) as f64 / self.ns.len() as f64,
                )
            })
            .collect()
    }
}

/// A tiny deterministic generator for benchmark access patterns.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
