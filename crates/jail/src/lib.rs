//! Confining a job of a vNode, the way a VMM's jailer confines a guest.
//!
//! The processor monitor starts each job through its helper (`lego
//! __vnode-enter`), which runs as root in the host's namespaces and calls
//! this crate:
//!
//! 1. [`Root::build`], in a mount namespace of the job's own (the caller
//!    made it): a tmpfs at the job's root directory holding the host's
//!    system trees read-only (`/usr`, `/etc`, and `/bin`, `/lib`, ... as
//!    the host has them), a private `/tmp` and `/dev/shm`, a `/dev` of the
//!    usual nodes (null, zero, full, random, urandom, tty), the few host
//!    files the job needs (the runtime, the program) read-only at their own
//!    paths, and, when asked, the working directory read-only (the job
//!    reads it with the rights any other local user has). Nothing else of
//!    the host: no cluster directory (hidden even under a shared working
//!    directory), no other job's state, no other device.
//! 2. The caller mounts the vNode's files (FUSE) under [`Root::path`] and
//!    gives the job a network of its own.
//! 3. [`Root::enter`] never returns. The helper stays outside as the job's
//!    main process (the processor monitor waits for it) and starts the
//!    job's init in new PID, IPC and UTS namespaces; the init mounts the
//!    job's own `/proc`, pivots into the root and detaches the host's, then
//!    moves into a user namespace of its own whose uid and gid 0 are the
//!    vNode's unprivileged host identity ([`identity`]), sets
//!    `no_new_privs`, and starts the program. It reaps orphans, passes on
//!    the program's end, and its end takes every process of the job with
//!    it. The helper then ends the same way (the same exit code, or killed
//!    by the same signal), so `lego run` behaves as before.
//!
//! What a root program inside the jail can still do: anything uid 0 of its
//! own user namespace may (capabilities there, over its own files, IPC and
//! hostname), but nothing that needs a capability over the host's
//! namespaces: it cannot mount or unmount (the mount namespace belongs to
//! the host's user namespace), see or signal processes outside its PID
//! namespace, enter another namespace, open a device beyond the usual
//! ones, gain privileges through setuid files (`no_new_privs`), or read a
//! host file its unprivileged identity may not read.
#![deny(unsafe_code)]

mod enter;
mod root;
mod sys;

use std::path::PathBuf;

pub use enter::{Ended, Program};
pub use root::Root;
pub use sys::cloexec_from_3;

pub use lego_wire::types::{identity, IDENTITY_BASE, IDS_PER_VNODE};

/// What goes into a job's root.
#[derive(Clone, Debug)]
pub struct Spec {
    /// An empty directory on the host where the root is built (it holds
    /// nothing once the job is gone).
    pub root: PathBuf,
    /// The vNode's host identity ([`identity`]).
    pub uid_base: u32,
    /// The job's working directory.
    pub cwd: PathBuf,
    /// Show the working directory to the job (read-only).
    pub share_cwd: bool,
    /// Host files the job sees read-only at their own paths (the runtime,
    /// the program).
    pub files: Vec<PathBuf>,
    /// Paths under which the vNode's own files appear (its mount points).
    pub mounts: Vec<String>,
    /// Host paths the job must never see (the cluster's directories), hidden
    /// under empty read-only mounts wherever the root shows them.
    pub hide: Vec<PathBuf>,
}

/// Why a job cannot be confined.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vnode identity out of range for vnode {0}")]
    Identity(u32),
}

impl JailError {
    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let what = what.into();
        move |source| JailError::Sys { what, source }
    }

    pub(crate) fn nix(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
        let what = what.into();
        move |e| JailError::Sys {
            what,
            source: e.into(),
        }
    }
}
