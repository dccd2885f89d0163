//! The simulated jobs: shapes read from small parameter files
//! (`workloads/*.toml`, built in; see each file for its source), and the
//! seeded generator that draws every job's CPU, memory, duration and
//! arrival from them. The generator is a fixed algorithm (splitmix64,
//! Box-Muller) so that a seed gives the same jobs on every build.

use serde::Deserialize;

use crate::SimError;

/// A workload's shape: log-normal CPU, memory and duration, with CPU and
/// memory correlated in log space.
#[derive(Clone, Debug, Deserialize)]
pub struct Shape {
    pub name: String,
    pub description: String,
    pub cpu_median_cores: f64,
    pub cpu_sigma: f64,
    pub cpu_min_cores: f64,
    pub cpu_max_cores: f64,
    pub mem_median_gib: f64,
    pub mem_sigma: f64,
    pub mem_min_gib: f64,
    pub mem_max_gib: f64,
    pub log_correlation: f64,
    pub duration_median_s: f64,
    pub duration_sigma: f64,
    pub duration_max_s: f64,
}

/// The built-in workloads, by name.
pub const BUILT_IN: [(&str, &str); 2] = [
    ("google2019", include_str!("../workloads/google2019.toml")),
    ("alibaba2018", include_str!("../workloads/alibaba2018.toml")),
];

impl Shape {
    /// A built-in workload by name, or a parameter file by path.
    pub fn load(name_or_path: &str) -> Result<Shape, SimError> {
        let text = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => t.to_string(),
            None => std::fs::read_to_string(name_or_path).map_err(|source| SimError::Read {
                path: name_or_path.into(),
                source,
            })?,
        };
        let s: Shape = toml::from_str(&text).map_err(|e| SimError::Workload {
            name: name_or_path.into(),
            why: e.to_string(),
        })?;
        if !(s.cpu_min_cores > 0.0
            && s.cpu_min_cores <= s.cpu_max_cores
            && s.mem_min_gib > 0.0
            && s.mem_min_gib <= s.mem_max_gib
            && s.duration_max_s > 0.0
            && (-1.0..=1.0).contains(&s.log_correlation))
        {
            return Err(SimError::Workload {
                name: name_or_path.into(),
                why: "minimums must be positive and below maximums, correlation in [-1, 1]".into(),
            });
        }
        Ok(s)
    }
}

/// One job: what it asks and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub arrival_ms: u64,
    /// CPU, in thousandths of a core.
    pub cpu_milli: u64,
    pub mem_bytes: u64,
    pub duration_ms: u64,
    /// Which tenant (vNode) it belongs to.
    pub tenant: usize,
}

/// splitmix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A pair of independent standard normals (Box-Muller).
    pub fn normals(&mut self) -> (f64, f64) {
        let (u, v) = (self.unit(), self.unit());
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        (r * t.cos(), r * t.sin())
    }

    /// Exponential with mean `mean`.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Draws jobs of a shape.
pub struct Generator {
    shape: Shape,
    rng: Rng,
}

impl Generator {
    pub fn new(shape: Shape, seed: u64) -> Generator {
        Generator {
            shape,
            rng: Rng(seed),
        }
    }

    /// CPU (milli-cores), memory (bytes) and duration (ms) of one job.
    pub fn demands(&mut self) -> (u64, u64, u64) {
        let s = &self.shape;
        let (z1, z2) = self.rng.normals();
        let rho = s.log_correlation;
        let zc = z1;
        let zm = rho * z1 + (1.0 - rho * rho).sqrt() * z2;
        let cpu =
            (s.cpu_median_cores * (s.cpu_sigma * zc).exp()).clamp(s.cpu_min_cores, s.cpu_max_cores);
        let mem = (s.mem_median_gib * (s.mem_sigma * zm).exp()).clamp(s.mem_min_gib, s.mem_max_gib);
        let (zd, _) = self.rng.normals();
        let dur = (s.duration_median_s * (s.duration_sigma * zd).exp()).min(s.duration_max_s);
        (
            (cpu * 1000.0).round().max(1.0) as u64,
            (mem * GIB) as u64,
            (dur * 1000.0).max(1000.0) as u64,
        )
    }

    /// The means of CPU x duration and memory x duration (core-ms and
    /// byte-ms per job), estimated from `n` draws of a copy of this generator.
    pub fn mean_work(&self, n: usize) -> (f64, f64) {
        let mut g = Generator {
            shape: self.shape.clone(),
            rng: Rng(self.rng.0 ^ 0x5eed),
        };
        let (mut c, mut m) = (0.0, 0.0);
        for _ in 0..n {
            let (cpu, mem, dur) = g.demands();
            c += cpu as f64 / 1000.0 * dur as f64;
            m += mem as f64 * dur as f64;
        }
        (c / n as f64, m / n as f64)
    }

    /// The median CPU (milli-cores) and memory (bytes) a job asks, from
    /// `n` draws of a copy: what "a typical job" needs in the stranding figures.
    pub fn medians(&self, n: usize) -> (u64, u64) {
        let mut g = Generator {
            shape: self.shape.clone(),
            rng: Rng(self.rng.0 ^ 0x3ed1),
        };
        let (mut cpus, mut mems): (Vec<u64>, Vec<u64>) =
            (0..n).map(|_| g.demands()).map(|(c, m, _)| (c, m)).unzip();
        cpus.sort_unstable();
        mems.sort_unstable();
        (cpus[n / 2], mems[n / 2])
    }

    /// The next job, arriving an exponential gap (mean `gap_ms`) after `after_ms`.
    pub fn next_job(&mut self, id: u64, after_ms: f64, gap_ms: f64, tenants: usize) -> (Job, f64) {
        let at = after_ms + self.rng.exp(gap_ms);
        let (cpu_milli, mem_bytes, duration_ms) = self.demands();
        let tenant = self.rng.below(tenants as u64) as usize;
        (
            Job {
                id,
                arrival_ms: at as u64,
                cpu_milli,
                mem_bytes,
                duration_ms,
                tenant,
            },
            at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_workloads_load_and_draw_within_their_bounds() {
        for (name, _) in BUILT_IN {
            let s = Shape::load(name).unwrap();
            let mut g = Generator::new(s.clone(), 7);
            for _ in 0..10_000 {
                let (c, m, d) = g.demands();
                assert!(c as f64 >= s.cpu_min_cores * 1000.0 - 1.0);
                assert!(c as f64 <= s.cpu_max_cores * 1000.0 + 1.0);
                assert!(m as f64 <= s.mem_max_gib * GIB + 1.0);
                assert!(d as f64 <= s.duration_max_s * 1000.0 + 1.0);
            }
            let (mc, _) = g.medians(20_001);
            let want = s.cpu_median_cores * 1000.0;
            assert!(
                (mc as f64 - want).abs() < want * 0.1,
                "{name}: median CPU {mc} against {want}"
            );
        }
    }

    #[test]
    fn a_bad_parameter_file_is_refused_with_its_reason() {
        let dir = std::env::temp_dir().join(format!("lego-sim-shape-{}", std::process::id()));
        std::fs::write(&dir, "name = \"x\"\n").unwrap();
        let e = Shape::load(dir.to_str().unwrap()).unwrap_err().to_string();
        let _ = std::fs::remove_file(&dir);
        assert!(e.contains("missing field"), "{e}");
    }
}
