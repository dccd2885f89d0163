//! What the processor monitor asks of the manager: a vNode by name (its id,
//! for its key; its mounts and storage monitor), and freeing every address
//! space of a finished job.
//!
//! One connection, reopened when it breaks. Freeing is retried with backoff
//! when the manager cannot be reached, since a job's pages must not leak.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use lego_transport::{Client, ClientOptions, Credentials, TransportError};
use lego_wire::auth::Secret;
use lego_wire::control::{ReleaseOwnerReq, ReleaseSpaceReq, ReleaseSpaceResp, VnodeInfo, VnodeReq};
use lego_wire::Op;
use tracing::warn;

use crate::ProcessorError;

/// How many times freeing a job's memory is tried (a second apart at most:
/// about 40 s, longer than a manager restart takes).
const RELEASE_TRIES: u32 = 45;

/// A connection to the manager, reopened on demand.
pub struct ManagerLink {
    pub addr: String,
    secret: Secret,
    client: Mutex<Option<Client>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ManagerLink {
    pub fn new(addr: String, secret: Secret) -> Self {
        ManagerLink {
            addr,
            secret,
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<Client, TransportError> {
        let mut c = lock(&self.client);
        if let Some(client) = c.as_ref().filter(|c| !c.is_broken()) {
            return Ok(client.clone());
        }
        let client = Client::connect(
            &self.addr,
            &Credentials::component(&self.secret),
            &ClientOptions {
                // Freeing a big job's pages on every monitor takes a while.
                request_timeout: Duration::from_secs(30),
                ..ClientOptions::default()
            },
        )?;
        *c = Some(client.clone());
        Ok(client)
    }

    fn err(&self, source: TransportError) -> ProcessorError {
        ProcessorError::Manager {
            addr: self.addr.clone(),
            source,
        }
    }

    /// The id of vNode `name`.
    pub fn vnode_id(&self, name: &str) -> Result<u32, ProcessorError> {
        let list: Vec<VnodeInfo> = self
            .client()
            .and_then(|c| c.call_json(Op::VnodeList, &()))
            .map_err(|e| self.err(e))?;
        list.into_iter()
            .find(|v| v.name == name)
            .map(|v| v.id)
            .ok_or_else(|| ProcessorError::UnknownVnode(name.to_string()))
    }

    /// vNode `name` with its storage monitor, placed now if it had none.
    /// `Ok(None)`: the cluster has no storage monitor, so the vNode has no
    /// files to mount.
    pub fn vnode_mount(&self, name: &str) -> Result<Option<VnodeInfo>, ProcessorError> {
        let req = VnodeReq {
            name: name.to_string(),
            ..VnodeReq::default()
        };
        match self
            .client()
            .and_then(|c| c.call_json(Op::VnodeMount, &req))
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.remote_code() == Some(lego_wire::ErrorCode::NotFound) => {
                Err(ProcessorError::UnknownVnode(name.to_string()))
            }
            Err(e) if e.to_string().contains("no alive storage monitor") => Ok(None),
            Err(e) => Err(ProcessorError::NoFiles {
                vnode: name.to_string(),
                why: e.to_string(),
            }),
        }
    }

    /// Frees one address space (a process of a job that has exited).
    pub fn release_space(&self, asid: u64) -> Result<ReleaseSpaceResp, ProcessorError> {
        self.client()
            .and_then(|c| c.call_json(Op::ReleaseSpace, &ReleaseSpaceReq { asid }))
            .map_err(|e| self.err(e))
    }

    /// Frees every address space of job `owner` on every memory monitor,
    /// retrying with backoff while the manager is unreachable.
    pub fn release_owner(&self, owner: u64) -> Result<ReleaseSpaceResp, ProcessorError> {
        let mut backoff = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            let res = self.client().and_then(|c| {
                c.call_json::<_, ReleaseSpaceResp>(Op::ReleaseOwner, &ReleaseOwnerReq { owner })
            });
            match res {
                Ok(r) => return Ok(r),
                Err(e) if e.is_unreachable() && tries < RELEASE_TRIES => {
                    warn!(
                        job = format_args!("{owner:x}"),
                        "cannot reach the manager to free the job's memory, retrying in {backoff:?}: {e}"
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }
}
