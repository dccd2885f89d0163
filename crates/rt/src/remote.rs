//! Where the pages live: the address space at the manager, vRegion placements
//! (a primary and a backup memory monitor each), and connections to them.
//!
//! Reads go to the primary and fall back to the backup; write-backs go to
//! both and succeed when at least one copy was stored (a lost replica is
//! counted and logged once). When neither holds a page that should exist, the
//! vRegion is lost and the caller stops the process.

use std::collections::HashMap;
use std::time::Duration;

use lego_transport::{Client, ClientOptions, Credentials, TransportError};
use lego_wire::control::{
    AssignReq, AssignResp, CreateSpaceReq, CreateSpaceResp, Endpoint, ReleaseSpaceReq,
    ReleaseSpaceResp,
};
use lego_wire::pages::{FreeRange, ReadPages, ReadPagesReply, WritePages};
use lego_wire::{Op, PAGE_SIZE};

use crate::stats::COUNTERS;

/// A vRegion whose pages can no longer be reached: the process must stop.
#[derive(Debug)]
pub struct Lost {
    pub vregion: u64,
    pub asid: u64,
    pub detail: String,
}

/// Where to put the answer to a read request of `request_len` bytes in a
/// page-aligned buffer so that its page data starts on a page boundary:
/// UFFDIO_COPY copies from an aligned source several times faster.
fn data_alignment(request_len: usize) -> usize {
    let count = (request_len - 16) / 8;
    let head = ReadPagesReply::head_len(count);
    (PAGE_SIZE - head % PAGE_SIZE) % PAGE_SIZE
}

/// What it takes to reconnect to a component.
#[derive(Clone)]
pub struct Dialer {
    pub addr: String,
    pub creds: Credentials,
    pub opts: ClientOptions,
}

impl Dialer {
    pub fn connect(&self) -> Result<Client, TransportError> {
        Client::connect(&self.addr, &self.creds, &self.opts)
    }
}

/// A page read sent to a vRegion's primary, not yet answered.
pub struct PendingRead {
    index: u64,
    body: Vec<u8>,
    sent: Option<(Client, u64)>,
    primary: Endpoint,
    backup: Endpoint,
    why: Vec<String>,
}

/// The runtime's configuration, from the environment the processor monitor sets.
#[derive(Clone, Debug)]
pub struct Config {
    pub manager: String,
    pub vnode: String,
    pub vnode_id: u32,
    pub key: [u8; 32],
    pub excache: usize,
    pub job: Option<u64>,
    pub stats: Option<String>,
    /// The vNode has a memory quota: lease memory before giving it out.
    pub quota: bool,
}

pub struct Remote {
    manager: Client,
    creds: Credentials,
    pub asid: u64,
    vregion_shift: u32,
    regions: HashMap<u64, (Endpoint, Endpoint)>,
    /// Replicas that missed a write-back: (vRegion, component). They hold
    /// an old copy of some page, so they are never read or written again.
    stale: std::collections::HashSet<(u64, u64)>,
    clients: HashMap<String, Client>,
    opts: ClientOptions,
}

/// How long a process waits for an unreachable manager to come back when it
/// needs a new vRegion placed.
const MANAGER_PATIENCE: Duration = Duration::from_secs(30);

fn opts() -> ClientOptions {
    // The fault handler busy-waits briefly for page replies: a sleeping
    // thread's wakeup costs more than the round trip itself on many hosts.

    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        spin: crate::spin(),
        ..ClientOptions::default()
    }
}

impl Remote {
    /// Connects to the manager and creates this process's address space.
    pub fn connect(cfg: &Config) -> Result<Remote, String> {
        let creds = Credentials::vnode(cfg.vnode_id, cfg.key);
        let opts = opts();
        let manager = Client::connect(&cfg.manager, &creds, &opts).map_err(|e| format!("{e}"))?;
        let space: CreateSpaceResp = manager
            .call_json(
                Op::CreateSpace,
                &CreateSpaceReq {
                    vnode: cfg.vnode.clone(),
                    owner: cfg.job,
                },
            )
            .map_err(|e| format!("{e}"))?;
        Ok(Remote {
            manager,
            creds,
            asid: space.asid,
            vregion_shift: space
                .vregion_bytes
                .max(1 << 21)
                .next_power_of_two()
                .trailing_zeros(),
            regions: HashMap::new(),
            stale: std::collections::HashSet::new(),
            clients: HashMap::new(),
            opts,
        })
    }

    /// The vRegion index of an absolute page number.
    pub fn vregion_of(&self, page: u64) -> u64 {
        (page * PAGE_SIZE as u64) >> self.vregion_shift
    }

    fn lost(&self, vregion: u64, detail: String) -> Lost {
        Lost {
            vregion,
            asid: self.asid,
            detail,
        }
    }

    fn region(&mut self, index: u64, refresh: bool) -> Result<(Endpoint, Endpoint), Lost> {
        if !refresh {
            if let Some(r) = self.regions.get(&index) {
                return Ok(r.clone());
            }
        }
        let req = AssignReq {
            asid: self.asid,
            index,
        };
        // The data path does not need the manager, but a vRegion touched for
        // the first time does: while the manager is away (restarting), wait
        // for it rather than lose the process.
        let deadline = std::time::Instant::now() + MANAGER_PATIENCE;
        let a: AssignResp = loop {
            match self.manager.call_json(Op::AssignVRegion, &req) {
                Ok(a) => break a,
                // Unreachable, or just restarted and its memory monitors
                // not yet back: wait.
                Err(e)
                    if (e.is_unreachable()
                        || e.remote_code() == Some(lego_wire::ErrorCode::Unavailable))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                    if self.manager.is_broken() {
                        if let Ok(c) = Client::connect(self.manager.peer(), &self.creds, &self.opts)
                        {
                            self.manager = c;
                        }
                    }
                }
                Err(e) => return Err(self.lost(index, format!("the manager cannot place it: {e}"))),
            }
        };
        self.regions
            .insert(index, (a.primary.clone(), a.backup.clone()));
        Ok((a.primary, a.backup))
    }

    fn client(&mut self, addr: &str) -> Result<Client, TransportError> {
        if let Some(c) = self.clients.get(addr).filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let c = Client::connect(addr, &self.creds, &self.opts)?;
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Sends a read of pages (absolute page numbers, all in one vRegion) to
    /// the vRegion's primary without waiting: [`Remote::finish_read`] takes
    /// the answer, and falls back to the backup if the primary failed.
    pub fn start_read(&mut self, pages: &[u64]) -> Result<PendingRead, Lost> {
        let index = self.vregion_of(pages[0]);
        let (primary, backup) = self.region(index, false)?;
        let body = ReadPages {
            asid: self.asid,
            pages: pages.to_vec(),
        }
        .encode();
        let mut why = Vec::new();
        let mut sent = None;
        if self.stale.contains(&(index, primary.id)) {
            why.push(self.untrusted("primary", &primary));
        } else {
            match self
                .client(&primary.addr)
                .and_then(|c| c.send(Op::ReadPages, &[&body]).map(|id| (c, id)))
            {
                Ok(s) => sent = Some(s),
                Err(e) => why.push(format!("primary {} ({}): {e}", primary.id, primary.addr)),
            }
        }
        Ok(PendingRead {
            index,
            body,
            sent,
            primary,
            backup,
            why,
        })
    }

    /// Waits for a read started by [`Remote::start_read`]. The answer's body
    /// is left in `out`; returns the offset of the page data in it, 4 KiB a
    /// page in request order. Every page must exist on a replica.
    pub fn finish_read(&mut self, p: PendingRead, out: &mut Vec<u8>) -> Result<usize, Lost> {
        let PendingRead {
            index,
            body,
            sent,
            primary,
            backup,
            mut why,
        } = p;
        let at = data_alignment(body.len());
        if let Some((c, id)) = sent {
            let r = c.wait_into(id, out, at);
            match self.take_pages(r, out, at, "primary") {
                Ok(at) => return Ok(at),
                Err(e) => why.push(format!("primary {} ({}): {e}", primary.id, primary.addr)),
            }
        }
        if self.stale.contains(&(index, backup.id)) {
            why.push(self.untrusted("backup", &backup));
        } else {
            let r = self
                .client(&backup.addr)
                .and_then(|c| c.call_into(Op::ReadPages, &[&body], out, at));
            match self.take_pages(r, out, at, "backup") {
                Ok(at) => {
                    COUNTERS.add(&COUNTERS.backup_reads, 1);
                    return Ok(at);
                }
                Err(e) => why.push(format!("backup {} ({}): {e}", backup.id, backup.addr)),
            }
        }
        Err(self.lost(index, why.join("; ")))
    }

    /// Waits for a read started by [`Remote::start_read`] and drops its answer.
    pub fn discard_read(&mut self, p: PendingRead, scratch: &mut Vec<u8>) {
        if let Some((c, id)) = p.sent {
            let _ = c.wait_into(id, scratch, 0);
        }
    }

    /// Reads pages (all in one vRegion) into `out`; returns the offset of the
    /// page data (see [`Remote::finish_read`]).
    pub fn read(&mut self, pages: &[u64], out: &mut Vec<u8>) -> Result<usize, Lost> {
        let p = self.start_read(pages)?;
        self.finish_read(p, out)
    }

    fn untrusted(&self, role: &str, ep: &Endpoint) -> String {
        format!(
            "{role} {} ({}) missed a write and is not trusted",
            ep.id, ep.addr
        )
    }

    /// Checks a read answer left in `out`: every page present.
    fn take_pages(
        &self,
        r: Result<lego_wire::frame::Header, TransportError>,
        out: &[u8],
        at: usize,
        role: &str,
    ) -> Result<usize, String> {
        r.map_err(|e| e.to_string())?;
        let reply = ReadPagesReply::decode(&out[at..]).map_err(|e| e.to_string())?;
        if !reply.present.iter().all(|&p| p == 1) {
            return Err(format!("the {role} does not hold the pages"));
        }
        COUNTERS.add(&COUNTERS.bytes_fetched, reply.data.len() as u64);
        Ok(reply.data.as_ptr() as usize - out.as_ptr() as usize)
    }

    /// Writes pages (one vRegion) to the primary and the backup.
    pub fn write(&mut self, pages: &[u64], data: &[u8]) -> Result<(), Lost> {
        let index = self.vregion_of(pages[0]);
        let (primary, backup) = self.region(index, false)?;
        let body = WritePages {
            asid: self.asid,
            pages: pages.to_vec(),
            data,
        }
        .encode();
        let mut sent = Vec::new();
        for (role, ep) in [("primary", &primary), ("backup", &backup)] {
            if self.stale.contains(&(index, ep.id)) {
                continue;
            }
            let r = self
                .client(&ep.addr)
                .and_then(|c| c.send(Op::WritePages, &[&body]).map(|id| (c, id)));
            sent.push((role, ep, r));
        }
        let mut stored = 0;
        let mut why = Vec::new();
        let mut missed = Vec::new();
        for (role, ep, r) in sent {
            match r.and_then(|(c, id)| c.wait(id)) {
                Ok(_) => stored += 1,
                Err(e) => {
                    why.push(format!("{role} {} ({}): {e}", ep.id, ep.addr));
                    missed.push(ep.id);
                }
            }
        }
        COUNTERS.add(&COUNTERS.bytes_written_back, (data.len() * stored) as u64);
        if stored == 0 {
            return Err(self.lost(index, why.join("; ")));
        }
        // A replica that missed this write holds an old copy from now on.
        for id in missed {
            self.stale.insert((index, id));
        }
        if stored == 1 || self.stale.iter().any(|&(v, _)| v == index) {
            COUNTERS.add(&COUNTERS.degraded_writes, 1);
        }
        Ok(())
    }

    /// Frees a run of pages on both replicas (best effort).
    pub fn free(&mut self, first: u64, count: u64) {
        let index = self.vregion_of(first);
        let Some((primary, backup)) = self.regions.get(&index).cloned() else {
            return; // never placed: nothing remote
        };
        let body = FreeRange {
            asid: self.asid,
            first,
            count,
        }
        .encode();
        for ep in [primary, backup] {
            if let Ok(c) = self.client(&ep.addr) {
                let _ = c.call(Op::FreeRange, &[&body]);
            }
        }
    }

    /// Releases an address space (ours, or a previous image's after exec).
    pub fn release(&self, asid: u64) -> Option<ReleaseSpaceResp> {
        self.manager
            .call_json(Op::ReleaseSpace, &ReleaseSpaceReq { asid })
            .ok()
    }

    /// The manager connection (for fork).
    pub fn manager(&self) -> &Client {
        &self.manager
    }

    /// How to open another connection to the manager (for leases).
    pub fn manager_dialer(&self) -> Dialer {
        Dialer {
            addr: self.manager.peer().to_string(),
            creds: self.creds.clone(),
            opts: self.opts.clone(),
        }
    }

    /// After fork, in the child: the parent's connections are not ours.
    pub fn reset_after_fork(&mut self, asid: u64) -> Result<(), String> {
        let old = std::mem::take(&mut self.clients);
        std::mem::forget(old);
        let manager = Client::connect(self.manager.peer(), &self.creds, &self.opts)
            .map_err(|e| format!("{e}"))?;
        std::mem::forget(std::mem::replace(&mut self.manager, manager));
        self.asid = asid;
        Ok(())
    }
}
