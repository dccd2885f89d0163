//! The runtime's counters: what a user asks about (faults, hits, evictions,
//! bytes moved), written as JSON to `$LEGO_RT_STATS` every half second and at
//! exit, where the processor monitor and `lego run --stats` read them.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// All counters of this process.
        pub struct Counters { $(pub $name: AtomicU64,)* }
        pub static COUNTERS: Counters = Counters { $($name: AtomicU64::new(0),)* };
        impl Counters {
            /// (name, value) pairs.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    faults_zero_filled,
    zero_pages_ahead,
    faults_fetched,
    faults_write_protect,
    prefetched_pages,
    prefetch_used,
    prefetch_wasted,
    evictions_clean,
    evictions_dirty,
    bytes_fetched,
    bytes_written_back,
    resident_pages,
    resident_peak_pages,
    excache_pages,
    backup_reads,
    degraded_writes,
    remote_fault_ns_total,
    remote_faults_timed,
    pages_freed,
    forks,
    local_shared_maps,
}

/// Log2 histogram of remote fault latencies in microseconds (bucket i holds [2^i, 2^(i+1)) µs).
pub static FAULT_HIST: [AtomicU64; 24] = [const { AtomicU64::new(0) }; 24];

impl Counters {
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    pub fn record_fault(&self, ns: u64) {
        self.add(&self.remote_fault_ns_total, ns);
        self.add(&self.remote_faults_timed, 1);
        let us = (ns / 1000).max(1);
        let b = (63 - us.leading_zeros() as usize).min(FAULT_HIST.len() - 1);
        FAULT_HIST[b].fetch_add(1, Ordering::Relaxed);
    }
}

/// Median remote fault latency in µs, from the histogram (bucket midpoint).
pub fn fault_p50_us() -> u64 {
    let counts: Vec<u64> = FAULT_HIST
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen * 2 >= total {
            return (1u64 << i) * 3 / 2;
        }
    }
    0
}

/// The counters as a JSON object.
pub fn to_json(asid: u64) -> String {
    let mut s = String::from("{");
    for (k, v) in COUNTERS.snapshot() {
        s.push_str(&format!("\"{k}\":{v},"));
    }
    s.push_str(&format!(
        "\"remote_fault_p50_us\":{},\"asid\":{asid}}}",
        fault_p50_us()
    ));
    s
}

/// Writes the counters atomically to `path`.
pub fn write(path: &str, asid: u64) {
    let tmp = format!("{path}.tmp{}", std::process::id());
    if std::fs::write(&tmp, to_json(asid)).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
