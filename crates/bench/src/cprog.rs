//! The C programs of `lego bench`, compiled here with `gcc -O2` so that they
//! are unmodified programs in every configuration: the excache workload, the
//! probe of the kernel's userfaultfd floor (`floor.c`), the programs of its
//! program rows (`programs.c`), and the file workload of `lego bench storage` (`fsbench.c`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{fail, IoContext, Result};

/// The workload's source, written next to its binary in the bench's directory.
const WORKLOAD_C: &str = include_str!("workload.c");
/// The floor probe's source.
const FLOOR_C: &str = include_str!("floor.c");
/// The file workload of `lego bench storage`.
const FSBENCH_C: &str = include_str!("fsbench.c");
/// The C programs of `lego bench excache`'s program rows.
const PROGRAMS_C: &str = include_str!("programs.c");

fn compile(dir: &Path, name: &str, source: &str) -> Result<PathBuf> {
    compile_with(dir, name, source, &[])
}

fn compile_with(dir: &Path, name: &str, source: &str, flags: &[&str]) -> Result<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source).io(|| format!("cannot write {}", src.display()))?;
    let out = Command::new("gcc")
        .arg("-O2")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .io(|| "cannot run gcc (the bench compiles its C programs with gcc -O2)".into())?;
    if !out.status.success() {
        fail!(
            "gcc could not compile {name}.c: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(bin)
}

pub fn compile_workload(dir: &Path) -> Result<PathBuf> {
    compile(dir, "workload", WORKLOAD_C)
}

pub fn compile_programs(dir: &Path) -> Result<PathBuf> {
    compile_with(dir, "programs", PROGRAMS_C, &["-pthread"])
}

pub fn compile_fsbench(dir: &Path) -> Result<PathBuf> {
    compile(dir, "fsbench", FSBENCH_C)
}

/// What a page costs the kernel alone, in µs: installed with UFFDIO_COPY,
/// read once and dropped with MADV_DONTNEED, against read while resident.
pub struct Floor {
    pub install_us: f64,
    pub local_us: f64,
}

impl Floor {
    /// The least slowdown of a sequential pass that must fetch `fraction`
    /// of its pages, whatever the network.
    pub fn least_slowdown(&self, fraction: f64) -> f64 {
        (fraction * self.install_us + (1.0 - fraction) * self.local_us) / self.local_us
    }
}

/// Compiles and runs the floor probe; an error says why there is no figure.
pub fn measure_floor(dir: &Path) -> Result<Floor, String> {
    let bin = compile(dir, "floor", FLOOR_C).map_err(|e| e.to_string())?;
    let out = Command::new(&bin)
        .output()
        .map_err(|e| format!("cannot run the floor probe: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the floor probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let w: Vec<&str> = text.split_whitespace().collect();
    match (w.first(), w.get(1), w.get(2), w.get(3)) {
        (Some(&"floor_us_per_page"), Some(f), Some(&"local_us_per_page"), Some(l)) => {
            match (f.parse(), l.parse()) {
                (Ok(install_us), Ok(local_us)) => Ok(Floor {
                    install_us,
                    local_us,
                }),
                _ => Err(format!("the floor probe printed {text:?}")),
            }
        }
        _ => Err(format!("the floor probe printed {text:?}")),
    }
}
