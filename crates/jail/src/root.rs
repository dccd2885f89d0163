//! The job's root: a tmpfs holding the host's system trees read-only, a
//! private `/tmp`, a `/dev` of the usual nodes, the files the job needs,
//! and (when asked) its working directory, built by the helper as root in
//! the job's own mount namespace.

use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::{sys, JailError, Spec};

/// Host trees every job sees read-only (or, where the host has a symlink,
/// the same symlink).
const SYSTEM: &[&str] = &[
    "usr", "etc", "bin", "sbin", "lib", "lib64", "lib32", "libx32",
];
/// Device nodes every job sees.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A job's root, built and not yet entered.
pub struct Root {
    pub(crate) spec: Spec,
    /// Where the job starts, inside the root.
    pub(crate) start_dir: PathBuf,
}

/// Shows the host tree `src` at `dst`, read-only, without setuid or
/// device files, every mount under it included.
fn show_tree(src: &Path, dst: &Path) -> Result<(), JailError> {
    let what = || format!("cannot show {} to the job", src.display());
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| JailError::Sys {
        what: what(),
        source: e.into(),
    })?;
    sys::mount_setattr(
        tree.as_fd(),
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
    )
    .map_err(JailError::sys(format!("{}: read-only", what())))?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| JailError::Sys {
        what: what(),
        source: e.into(),
    })
}

/// Hides `p` (inside the root) under an empty read-only tmpfs, or a file
/// under an empty one.
fn hide(p: &Path) -> Result<(), JailError> {
    let what = format!("cannot hide {}", p.display());
    if p.is_dir() {
        tmpfs(
            p,
            "mode=0000,size=4k,nr_inodes=1",
            MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(JailError::nix(what))
    }
}

fn tmpfs(dst: &Path, options: &str, extra: MsFlags) -> Result<(), JailError> {
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | extra,
        Some(options),
    )
    .map_err(JailError::nix(format!(
        "cannot mount a tmpfs at {}",
        dst.display()
    )))
}

fn mkdirs(p: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(p).map_err(JailError::sys(format!("cannot create {}", p.display())))
}

/// The path of `p` (absolute, in the job's view) under `root`.
fn under(root: &Path, p: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in p.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

/// Whether the job sees `p` already (in a system tree, its `/tmp`, or one
/// of its mounts).
fn visible(p: &Path, mounts: &[String]) -> bool {
    let first = p.components().find_map(|c| match c {
        Component::Normal(n) => n.to_str(),
        _ => None,
    });
    first.is_some_and(|f| SYSTEM.contains(&f)) || mounts.iter().any(|m| p.starts_with(m))
}

impl Root {
    /// Builds the root at `spec.root`. The caller runs as root in a mount
    /// namespace of the job's own whose mounts do not propagate to the host.
    pub fn build(spec: Spec) -> Result<Root, JailError> {
        let root = spec.root.clone();
        mkdirs(&root)?;
        tmpfs(
            &root,
            "mode=0755,size=16m,nr_inodes=65536",
            MsFlags::MS_NODEV,
        )?;
        for name in SYSTEM {
            let host = Path::new("/").join(name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            let inside = root.join(name);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host)
                    .map_err(JailError::sys(format!("cannot read {}", host.display())))?;
                std::os::unix::fs::symlink(&target, &inside)
                    .map_err(JailError::sys(format!("cannot link {}", inside.display())))?;
            } else if meta.is_dir() {
                mkdirs(&inside)?;
                show_tree(&host, &inside)?;
            }
        }
        for dir in ["tmp", "dev/shm"] {
            let d = root.join(dir);
            mkdirs(&d)?;
            tmpfs(&d, "mode=1777,size=25%", MsFlags::MS_NODEV)?;
        }
        for dev in DEVICES {
            let host = Path::new("/dev").join(dev);
            if !host.exists() {
                continue;
            }
            let inside = root.join("dev").join(dev);
            std::fs::File::create(&inside).map_err(JailError::sys(format!(
                "cannot create {}",
                inside.display()
            )))?;
            mount(
                Some(&host),
                &inside,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(JailError::nix(format!(
                "cannot show {} to the job",
                host.display()
            )))?;
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let _ = std::os::unix::fs::symlink(target, root.join("dev").join(name));
        }
        mkdirs(&root.join("proc"))?;
        mkdirs(&root.join(".old"))?;
        for m in &spec.mounts {
            mkdirs(&under(&root, Path::new(m)))?;
        }
        for f in &spec.files {
            if visible(f, &spec.mounts) || !f.is_file() {
                continue;
            }
            let inside = under(&root, f);
            if let Some(parent) = inside.parent() {
                mkdirs(parent)?;
            }
            std::fs::File::create(&inside).map_err(JailError::sys(format!(
                "cannot create {}",
                inside.display()
            )))?;
            show_tree(f, &inside)?;
        }
        let start_dir = if visible(&spec.cwd, &spec.mounts) {
            spec.cwd.clone()
        } else if spec.share_cwd {
            let inside = under(&root, &spec.cwd);
            mkdirs(&inside)?;
            show_tree(&spec.cwd, &inside)?;
            spec.cwd.clone()
        } else {
            PathBuf::from("/")
        };
        // What must never be seen, even under a shared working directory.
        for h in &spec.hide {
            let inside = under(&root, h);
            if std::fs::symlink_metadata(&inside).is_ok() {
                hide(&inside)?;
            }
        }
        Ok(Root { spec, start_dir })
    }

    /// Where `p` (absolute, in the job's view) is on the host until the
    /// job enters its root: mount the vNode's files there.
    pub fn path(&self, p: &str) -> PathBuf {
        under(&self.spec.root, Path::new(p))
    }

    /// Where the job starts: its working directory when it sees it, else `/`.
    pub fn start_dir(&self) -> &Path {
        &self.start_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_and_what_is_visible() {
        assert_eq!(
            under(Path::new("/r"), Path::new("/data/x")),
            Path::new("/r/data/x")
        );
        assert_eq!(
            under(Path::new("/r"), Path::new("/../etc")),
            Path::new("/r/etc")
        );
        let mounts = vec!["/data".to_string()];
        assert!(visible(Path::new("/usr/bin/python3"), &mounts));
        assert!(visible(Path::new("/data/db"), &mounts));
        assert!(!visible(Path::new("/datax"), &mounts));
        assert!(!visible(Path::new("/root/x"), &mounts));
        assert!(!visible(Path::new("/tmp/build/prog"), &mounts));
    }
}
