//! What the manager asks of other components: memory monitors take grants,
//! free and clone address spaces and whole vNodes, and rebuild copies, processor monitors stop jobs,
//! storage monitors remove a deleted vNode's files, and any component can
//! be probed. One connection per component, made again when it broke.

use std::time::Duration;

use lego_transport::{ClientOptions, Credentials, Pool, Redial, TransportError};
use lego_wire::auth::Secret;
use lego_wire::control::{FreeVnodeReq, GrantReq, ReplicateReq, ReplicateResp};
use lego_wire::fs::{FsCall, FsRequest};
use lego_wire::jobs::SignalReq;
use lego_wire::pages::{CloneSpace, FreeSpace};
use lego_wire::{Asid, Op, Ping, VnodeId};

/// Connections to the cluster's components.
pub struct Peers {
    creds: Credentials,
    pool: Pool,
}

impl Peers {
    pub fn new(secret: &Secret) -> Peers {
        let creds = Credentials::component(secret);
        let opts = ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        };
        Peers {
            pool: Pool::new(creds.clone(), opts),
            creds,
        }
    }

    /// Frees address spaces on one memory monitor; returns pages freed.
    pub fn free_spaces(&self, addr: &str, spaces: &[Asid]) -> Result<u64, TransportError> {
        spaces.iter().try_fold(0, |n, &asid| {
            Ok(n + self.pool.call(addr, &FreeSpace { asid })?)
        })
    }

    /// Tells a memory monitor the vRegions placed on it.
    pub fn grant(&self, addr: &str, req: &GrantReq) -> Result<(), TransportError> {
        self.pool.call(addr, req).map(drop)
    }

    /// Frees every page of a deleted vNode on one memory monitor.
    pub fn free_vnode(&self, addr: &str, vnode: VnodeId) -> Result<u64, TransportError> {
        self.pool.call(addr, &FreeVnodeReq { vnode })
    }

    /// Copies address space `from` into `to` on one memory monitor (a fork).
    pub fn clone_space(&self, addr: &str, from: Asid, to: Asid) -> Result<u64, TransportError> {
        self.pool.call(addr, &CloneSpace { from, to })
    }

    /// Asks a vRegion's surviving copy to rebuild it on `req.target`: a
    /// connection of its own, since a copy takes as long as it takes.
    pub fn replicate(
        &self,
        addr: &str,
        req: &ReplicateReq,
    ) -> Result<ReplicateResp, TransportError> {
        // A copy paced to a rate takes as long as the rate says: twice that,
        // and never less than two minutes.
        let paced = req.rate.filter(|r| *r > 0).map_or(0, |r| {
            req.pages.saturating_mul(lego_wire::PAGE_SIZE as u64) / r * 2
        });
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(paced.max(120)),
            ..ClientOptions::default()
        };
        Redial::new(addr, self.creds.clone(), opts).call(req)
    }

    /// Tells a memory monitor that a vRegion's copy moved away from it.
    pub fn withdraw(
        &self,
        addr: &str,
        req: &lego_wire::elastic::WithdrawReq,
    ) -> Result<u64, TransportError> {
        self.pool.call(addr, req)
    }

    /// Kills a job at its processor monitor.
    pub fn kill_job(&self, addr: &str, job: u64) -> Result<(), TransportError> {
        self.pool
            .call(addr, &SignalReq { job, signal: 9 })
            .map(drop)
    }

    /// Removes a vNode's files from its storage monitor.
    pub fn destroy_files(&self, addr: &str, vnode: VnodeId) -> Result<(), TransportError> {
        let body = FsRequest {
            vnode,
            call: FsCall::Destroy,
        }
        .encode();
        self.pool.client(addr)?.call_raw(Op::Fs, &[&body]).map(drop)
    }

    /// Whether a component answers, asked twice on fresh connections with
    /// short timeouts (one slow moment on a loaded host is not a death).
    pub fn probe(&self, addr: &str) -> Result<(), TransportError> {
        let opts = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        let once = || Redial::new(addr, self.creds.clone(), opts.clone()).call(&Ping);
        once().or_else(|_| once())
    }
}
