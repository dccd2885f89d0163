//! The runtime's counters: what a user asks about (faults, hits, evictions,
//! bytes moved), sent as JSON to the processor monitor through the broker
//! every half second and at exit (`lego run --stats` and `lego status` show
//! them).

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
    faults_fetched_together,
    faults_write_protect,
    prefetched_pages,
    prefetch_used,
    prefetch_wasted,
    readahead_hits,
    readahead_dropped,
    evictions_clean,
    evictions_dirty,
    refaults,
    second_chances,
    bytes_fetched,
    bytes_written_back,
    resident_pages,
    resident_peak_pages,
    excache_pages,
    backup_reads,
    degraded_writes,
    moved_copies,
    remote_fault_ns_total,
    remote_faults_timed,
    pages_freed,
    forks,
    local_shared_maps,
    quota_refusals,
    leases_ahead,
    leases_waited,
}

/// Sub-buckets per power of two in the fault-latency histogram.
const SUB: usize = 4;
/// Histogram of remote fault latencies in µs: bucket `SUB*e + m` holds
/// latencies whose top bits are 2^e * (1 + m/SUB), i.e. four buckets per
/// power of two (within 19% of the true value).
pub static FAULT_HIST: [AtomicU64; 24 * SUB] = [const { AtomicU64::new(0) }; 24 * SUB];

fn bucket_of(us: u64) -> usize {
    let us = us.max(1);
    let e = 63 - us.leading_zeros() as usize;
    let m = if e >= 2 {
        ((us >> (e - 2)) & 3) as usize
    } else {
        ((us << (2 - e)) & 3) as usize
    };
    (e * SUB + m).min(FAULT_HIST.len() - 1)
}

/// The midpoint of a bucket, in µs.
fn bucket_mid(b: usize) -> f64 {
    let (e, m) = (b / SUB, b % SUB);
    let lo = (1u64 << e) as f64 * (1.0 + m as f64 / SUB as f64);
    lo + (1u64 << e) as f64 / (2 * SUB) as f64
}

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
        FAULT_HIST[bucket_of(ns / 1000)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Median remote fault latency in µs, from the histogram (bucket midpoint).
pub fn fault_p50_us() -> u64 {
    fault_percentile_us(50)
}

/// The `pct`-th percentile of remote fault latency in µs, from the
/// histogram (bucket midpoint).
pub fn fault_percentile_us(pct: u64) -> u64 {
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
        if seen * 100 >= total * pct {
            return bucket_mid(i).round() as u64;
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
    // The histogram itself, by bucket midpoint in µs (non-empty buckets
    // only), so that a reader can take percentiles over any interval.
    for (i, c) in FAULT_HIST.iter().enumerate() {
        let n = c.load(Ordering::Relaxed);
        if n > 0 {
            s.push_str(&format!(
                "\"{HIST_PREFIX}{}\":{n},",
                bucket_mid(i).floor() as u64
            ));
        }
    }
    s.push_str(&format!(
        "\"remote_fault_p50_us\":{},\"remote_fault_p99_us\":{},\"asid\":{asid}}}",
        fault_p50_us(),
        fault_percentile_us(99)
    ));
    s
}

/// Names of the histogram's buckets in [`to_json`]: the prefix, then the
/// bucket's midpoint in µs, rounded down (so that it lies below the next
/// power of two, as the bucket does).
pub const HIST_PREFIX: &str = lego_wire::jobs::RT_HIST_PREFIX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_one_the_processor_monitor_keeps() {
        for (name, _) in COUNTERS.snapshot() {
            assert!(lego_wire::jobs::RT_COUNTERS.contains(&name), "{name}");
        }
        // A bucket's name lies within it, below the next power of two.
        for us in 1..100_000 {
            let b = bucket_of(us);
            let named = bucket_mid(b).floor() as u64;
            assert_eq!(bucket_of(named), b, "{us} µs: bucket {b} named {named}");
        }
    }

    #[test]
    fn buckets_are_within_a_fifth_of_the_value() {
        for us in [
            1u64, 2, 3, 5, 7, 9, 12, 15, 17, 24, 31, 33, 100, 1000, 123_456,
        ] {
            let mid = bucket_mid(bucket_of(us));
            let err = (mid - us as f64).abs() / us as f64;
            assert!(err <= 0.2, "{us} µs lands in a bucket with midpoint {mid}");
        }
        assert!(bucket_of(15) < bucket_of(17));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        for _ in 0..98 {
            COUNTERS.record_fault(10_000);
        }
        for _ in 0..2 {
            COUNTERS.record_fault(1_000_000);
        }
        let near = |got: u64, want: f64| (got as f64 - want).abs() / want <= 0.2;
        assert!(near(fault_p50_us(), 10.0), "{}", fault_p50_us());
        assert!(
            near(fault_percentile_us(99), 1000.0),
            "{}",
            fault_percentile_us(99)
        );
    }
}
