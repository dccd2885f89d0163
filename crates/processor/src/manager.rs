//! What the processor monitor asks of the manager: a vNode by name (its id,
//! for its key; its mounts and storage monitor), and freeing every address
//! space of a finished job.
//!
//! One connection, made again when it breaks ([`Redial`]). Freeing is
//! patient while the manager cannot be reached, since a job's pages must
//! not leak.

use std::time::Duration;

use lego_transport::{ClientOptions, Credentials, Patience, Redial, TransportError};
use lego_wire::control::{
    ClusterStateReq, ReleaseOwnerReq, ReleaseSpaceReq, ReleaseSpaceResp, VnodeInfo, VnodeListReq,
    VnodeMountReq,
};
use lego_wire::{Asid, ErrorCode, Health, Role, VnodeId};
use tracing::warn;

use crate::ProcessorError;

/// How long freeing a job's memory goes on trying (longer than a manager
/// restart takes), pausing up to a second between tries.
const RELEASE_PATIENCE: Patience = Patience {
    within: Duration::from_secs(40),
    pause: Duration::from_millis(100),
    max_pause: Duration::from_secs(1),
    unavailable: false,
};

/// The memory monitors the manager knows, by address.
#[derive(Clone, Debug, Default)]
pub struct MemoryMonitors {
    /// Alive or suspected: jobs may dial them.
    pub alive: Vec<String>,
    /// Declared dead: a job's dial is refused at once.
    pub dead: Vec<String>,
}

/// A connection to the manager, made again when it breaks.
pub struct ManagerLink {
    link: Redial,
}

impl ManagerLink {
    pub fn new(addr: String, creds: Credentials) -> Self {
        let opts = ClientOptions {
            // Freeing a big job's pages on every monitor takes a while.
            request_timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        ManagerLink {
            link: Redial::new(addr, creds, opts),
        }
    }

    /// The manager's address.
    pub fn addr(&self) -> &str {
        self.link.addr()
    }

    fn err(&self, source: TransportError) -> ProcessorError {
        ProcessorError::Manager {
            addr: self.link.addr().to_string(),
            source,
        }
    }

    /// A job's vNode key and proof (for a monitor without the secret).
    pub fn job_keys(
        &self,
        job: u64,
        vnode: VnodeId,
    ) -> Result<lego_wire::identity::JobKeys, ProcessorError> {
        self.link
            .call(&lego_wire::identity::JobKeysReq { job, vnode })
            .map_err(|e| self.err(e))
    }

    /// The id of vNode `name`.
    pub fn vnode_id(&self, name: &str) -> Result<VnodeId, ProcessorError> {
        let list = self.link.call(&VnodeListReq).map_err(|e| self.err(e))?;
        list.into_iter()
            .find(|v| v.name == name)
            .map(|v| v.id)
            .ok_or_else(|| ProcessorError::UnknownVnode(name.to_string()))
    }

    /// vNode `name` with its storage monitor, placed now if it had none
    /// (`storage` is `None` when the cluster has no live storage monitor,
    /// so the vNode has no files to mount).
    pub fn vnode_mount(&self, name: &str) -> Result<VnodeInfo, ProcessorError> {
        let req = VnodeMountReq {
            name: name.to_string(),
        };
        match self.link.call(&req) {
            Ok(v) => Ok(v),
            Err(e) if e.remote_code() == Some(ErrorCode::NotFound) => {
                Err(ProcessorError::UnknownVnode(name.to_string()))
            }
            Err(e) => Err(ProcessorError::NoFiles {
                vnode: name.to_string(),
                why: e.to_string(),
            }),
        }
    }

    /// Frees one address space of job `job` (a process of it exited or
    /// exec'd); refused by the manager unless the space is the job's.
    pub fn release_job_space(
        &self,
        job: u64,
        asid: Asid,
    ) -> Result<ReleaseSpaceResp, ProcessorError> {
        self.link
            .call(&ReleaseSpaceReq {
                asid,
                job: Some(job),
            })
            .map_err(|e| self.err(e))
    }

    /// Where the memory monitors the manager knows serve (alive or not yet
    /// heard from since a restart).
    pub fn memory_monitors(&self) -> Result<MemoryMonitors, ProcessorError> {
        let st = self.link.call(&ClusterStateReq).map_err(|e| self.err(e))?;
        let mut m = MemoryMonitors::default();
        for c in st.components.into_iter().filter(|c| c.role == Role::Memory) {
            match c.health {
                Health::Dead => m.dead.push(c.addr),
                _ => m.alive.push(c.addr),
            }
        }
        // An address in both (a monitor restarted where a dead one was)
        // is alive.
        m.dead.retain(|a| !m.alive.contains(a));
        Ok(m)
    }

    /// Frees every address space of job `owner` on every memory monitor,
    /// trying again while the manager is unreachable.
    pub fn release_owner(&self, owner: u64) -> Result<ReleaseSpaceResp, ProcessorError> {
        RELEASE_PATIENCE
            .run(
                || self.link.call(&ReleaseOwnerReq { owner }),
                |e, pause| {
                    warn!(
                        job = format_args!("{owner:x}"),
                        "cannot reach the manager to free the job's memory, retrying in {pause:?}: {e}"
                    )
                },
            )
            .map_err(|e| self.err(e))
    }
}
