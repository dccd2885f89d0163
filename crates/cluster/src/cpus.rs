//! CPU lists (`0`, `1-3`, `0,2-5`) and pinning: a processor monitor owns
//! CPUs the way a pComponent does, and a memory monitor can be kept off them,
//! which is how one machine stands in for several in `lego bench`.

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::ClusterError;

/// A set of CPUs, ascending, from a list such as `0,2-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl std::fmt::Display for CpuList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_cpus(&self.0))
    }
}

/// Parses a CPU list such as `0`, `2-3` or `0,4-7` (for clap).
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    parse_cpus(s).map(CpuList)
}

/// Parses a CPU list such as `0`, `2-3` or `0,4-7`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let num = |v: &str| {
            v.parse::<usize>().map_err(|_| {
                format!("'{part}' is not a CPU number or range (like 0, 2-3 or 0,4-7)")
            })
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(format!("the range '{part}' runs backwards"));
        }
        if hi >= CpuSet::count() {
            return Err(format!(
                "CPU {hi} is beyond the {} a CPU set holds",
                CpuSet::count()
            ));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("the CPU list is empty".into());
    }
    Ok(out)
}

/// Formats CPUs as a list (`0-2,5`).
pub fn format_cpus(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Confines the calling thread, and every thread and process it starts from
/// now on, to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), ClusterError> {
    let refused = |source| ClusterError::Pin {
        cpus: format_cpus(cpus),
        source,
    };
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(refused)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(refused)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    nix::sched::sched_getaffinity(Pid::from_raw(0))
        .map(|set| {
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect::<Vec<_>>()
        })
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_back() {
        assert_eq!(parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(parse_cpus("0,2-4, 3").unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(format_cpus(&[0, 2, 3, 4, 7]), "0,2-4,7");
        for bad in ["", "a", "3-1", "1-", "99999"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
