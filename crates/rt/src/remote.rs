//! Where the pages live: the address space at the manager, vRegion placements
//! (a primary and a backup memory monitor each), and connections to them.
//!
//! Reads go to the primary and fall back to the backup; write-backs go to
//! both and succeed when at least one copy was stored. A replica that missed
//! a write (or that a forwarding replica reports missed it) is never read or
//! written again for that vRegion. When a replica fails, the process tells
//! the manager (which checks and may declare it dead at once) and refreshes
//! the vRegion's placement to learn of the copy that replaces it. When no
//! copy can give a page that should exist, the vRegion is lost and the
//! caller stops the process.
//!
//! Every write carries a version, larger than any before it from this
//! process (and its fork ancestors), and names the other replica it went
//! to: the memory monitors need both to rebuild copies safely (see
//! `lego_wire::pages`).

use std::collections::HashMap;
use std::time::Duration;

use lego_transport::{Client, ClientOptions, Credentials, TransportError};
use lego_wire::control::UnreachableReq;
use lego_wire::control::{
    AssignReq, AssignResp, CreateSpaceReq, CreateSpaceResp, Endpoint, ReleaseSpaceReq,
    ReleaseSpaceResp,
};
use lego_wire::pages::{FreeRange, ReadPages, ReadPagesReply, WritePages, WriteReply};
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

/// Connects to a component from the host's network namespace, whichever
/// thread asks (an application thread of a vNode with a network namespace
/// of its own cannot reach the cluster from there; see `netns`).
fn dial(addr: &str, creds: &Credentials, opts: &ClientOptions) -> Result<Client, TransportError> {
    crate::netns::host_net(|| Client::connect(addr, creds, opts)).unwrap_or_else(|why| {
        Err(TransportError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::other(why),
        })
    })
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
        dial(&self.addr, &self.creds, &self.opts)
    }
}

/// A page read sent to a vRegion's primary, not yet answered.
pub struct PendingRead {
    index: u64,
    body: Vec<u8>,
    sent: Option<(Client, u64)>,
    primary: Endpoint,
    backup: Option<Endpoint>,
    why: Vec<String>,
}

/// A vRegion's copies as this process last learned them.
type Copies = (Endpoint, Option<Endpoint>);

/// How often a degraded vRegion's placement may be asked again.
const REFRESH_EVERY: Duration = Duration::from_millis(250);

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
    regions: HashMap<u64, Copies>,
    /// Replicas that missed a write-back: (vRegion, component). They hold
    /// an old copy of some page, so they are never read or written again.
    stale: std::collections::HashSet<(u64, u64)>,
    /// When each degraded vRegion's placement was last asked again.
    refreshed: HashMap<u64, std::time::Instant>,
    /// Memory monitors already reported unreachable to the manager.
    reported: std::collections::HashSet<u64>,
    /// vRegions whose placement was inherited from a fork's parent and not
    /// yet asked for in this process.
    unconfirmed: std::collections::HashSet<u64>,
    /// The version of the last write (see the module doc).
    version: u64,
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
    /// A manager that is away (restarting) is waited for, up to
    /// [`MANAGER_PATIENCE`].
    pub fn connect(cfg: &Config) -> Result<Remote, String> {
        let creds = Credentials::vnode(cfg.vnode_id, cfg.key);
        let opts = opts();
        let deadline = std::time::Instant::now() + MANAGER_PATIENCE;
        let req = CreateSpaceReq {
            vnode: cfg.vnode.clone(),
            owner: cfg.job,
        };
        let (manager, space) = loop {
            let r = dial(&cfg.manager, &creds, &opts).and_then(|m| {
                let s: CreateSpaceResp = m.call_json(Op::CreateSpace, &req)?;
                Ok((m, s))
            });
            match r {
                Ok(ms) => break ms,
                Err(e)
                    if (e.is_unreachable()
                        || e.remote_code() == Some(lego_wire::ErrorCode::Unavailable))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("{e}")),
            }
        };
        Ok(Remote {
            manager,
            creds,
            asid: space.asid,
            vregion_shift: lego_wire::control::vregion_shift(space.vregion_bytes),
            regions: HashMap::new(),
            stale: std::collections::HashSet::new(),
            refreshed: HashMap::new(),
            reported: std::collections::HashSet::new(),
            unconfirmed: std::collections::HashSet::new(),
            version: 0,
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

    fn region(&mut self, index: u64, refresh: bool) -> Result<Copies, Lost> {
        let inherited = self.unconfirmed.remove(&index);
        if !refresh && !inherited {
            if let Some(r) = self.regions.get(&index) {
                return Ok(r.clone());
            }
        }
        let a = self.ask_placement(index, MANAGER_PATIENCE)?;
        Ok(self.adopt(index, (a.primary, a.backup)))
    }

    /// Takes a vRegion's placement as the manager gives it. A copy that is
    /// new to this process was rebuilt from one it already knew; if every
    /// such known copy missed one of its writes, the new one holds the same
    /// old pages, and is not trusted either.
    fn adopt(&mut self, index: u64, new: Copies) -> Copies {
        if let Some((p, b)) = self.regions.get(&index) {
            let known: Vec<u64> = std::iter::once(p.id)
                .chain(b.iter().map(|e| e.id))
                .collect();
            let ids: Vec<u64> = std::iter::once(new.0.id)
                .chain(new.1.iter().map(|e| e.id))
                .collect();
            let kept: Vec<u64> = ids.iter().copied().filter(|i| known.contains(i)).collect();
            if !kept.is_empty() && kept.iter().all(|&i| self.stale.contains(&(index, i))) {
                for &i in ids.iter().filter(|i| !known.contains(i)) {
                    self.stale.insert((index, i));
                }
            }
        }
        self.regions.insert(index, new.clone());
        new
    }

    /// Asks the manager where a vRegion lives (placing it if new). The data
    /// path does not need the manager, but a vRegion touched for the first
    /// time does: while the manager is away (restarting), wait up to
    /// `patience` for it rather than lose the process.
    fn ask_placement(&mut self, index: u64, patience: Duration) -> Result<AssignResp, Lost> {
        let req = AssignReq {
            asid: self.asid,
            index,
        };
        self.call_manager(Op::AssignVRegion, &req, patience)
            .map_err(|e| self.lost(index, format!("the manager cannot place it: {e}")))
    }

    /// Calls the manager, waiting up to `patience` while it is unreachable
    /// (reconnecting) or answers `Unavailable` (just restarted, its memory
    /// monitors not back yet, or a copy that cannot be made yet).
    fn call_manager<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &mut self,
        op: Op,
        req: &Req,
        patience: Duration,
    ) -> Result<Resp, TransportError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.manager.call_json(op, req) {
                Ok(r) => return Ok(r),
                Err(e)
                    if (e.is_unreachable()
                        || e.remote_code() == Some(lego_wire::ErrorCode::Unavailable))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                    if self.manager.is_broken() {
                        if let Ok(c) = dial(self.manager.peer(), &self.creds, &self.opts) {
                            self.manager = c;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A vRegion lost a copy: ask (at most every [`REFRESH_EVERY`], without
    /// waiting for an absent manager) whether a new copy replaced it.
    fn maybe_refresh(&mut self, index: u64) {
        let due = self
            .refreshed
            .get(&index)
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        if !due {
            return;
        }
        self.refreshed.insert(index, std::time::Instant::now());
        if self.manager.is_broken() {
            match dial(self.manager.peer(), &self.creds, &self.opts) {
                Ok(c) => self.manager = c,
                Err(_) => return,
            }
        }
        if let Ok(a) = self.ask_placement(index, Duration::ZERO) {
            self.adopt(index, (a.primary, a.backup));
        }
    }

    /// Tells the manager once that a memory monitor does not answer.
    fn report_unreachable(&mut self, ep: &Endpoint, e: &TransportError) {
        if !e.is_unreachable() || !self.reported.insert(ep.id) {
            return;
        }
        let req = UnreachableReq {
            id: ep.id,
            why: e.to_string(),
        };
        let _ = self
            .manager
            .call_json::<_, serde_json::Value>(Op::ReportUnreachable, &req);
    }

    fn client(&mut self, addr: &str) -> Result<Client, TransportError> {
        if let Some(c) = self.clients.get(addr).filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let c = dial(addr, &self.creds, &self.opts)?;
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
                Err(e) => {
                    why.push(format!("primary {} ({}): {e}", primary.id, primary.addr));
                    self.report_unreachable(&primary, &e);
                }
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
    /// page in request order. Every page must exist on a replica: when
    /// neither known copy gives them, the vRegion's placement is asked
    /// again (a copy may have been rebuilt elsewhere) before giving up.
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
            if let Err(e) = &r {
                self.report_unreachable(&primary, e);
            }
            match self.take_pages(r, out, at, "primary") {
                Ok(at) => return Ok(at),
                Err(e) => why.push(format!("primary {} ({}): {e}", primary.id, primary.addr)),
            }
        }
        let mut tried = vec![primary.id];
        let mut candidates: Vec<(&'static str, Endpoint)> =
            backup.into_iter().map(|b| ("backup", b)).collect();
        let mut refreshed = false;
        loop {
            while let Some((role, ep)) = candidates.pop() {
                tried.push(ep.id);
                if ep.addr.is_empty() {
                    why.push(format!("{role}: a copy being rebuilt"));
                    continue;
                }
                if self.stale.contains(&(index, ep.id)) {
                    why.push(self.untrusted(role, &ep));
                    continue;
                }
                let r = self
                    .client(&ep.addr)
                    .and_then(|c| c.call_into(Op::ReadPages, &[&body], out, at));
                if let Err(e) = &r {
                    self.report_unreachable(&ep, e);
                }
                match self.take_pages(r, out, at, role) {
                    Ok(at) => {
                        COUNTERS.add(&COUNTERS.backup_reads, 1);
                        return Ok(at);
                    }
                    Err(e) => why.push(format!("{role} {} ({}): {e}", ep.id, ep.addr)),
                }
            }
            if refreshed {
                return Err(self.lost(index, why.join("; ")));
            }
            refreshed = true;
            // Both known copies failed: the manager may know of a new one.
            let (p, b) = self.region(index, true)?;
            candidates = [("backup", b), ("primary", Some(p))]
                .into_iter()
                .filter_map(|(r, e)| e.map(|e| (r, e)))
                .filter(|(_, e)| !tried.contains(&e.id))
                .collect();
        }
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

    /// Writes pages (one vRegion) to its copies. When no copy took them,
    /// the placement is asked again once (the copies may have moved).
    pub fn write(&mut self, pages: &[u64], data: &[u8]) -> Result<(), Lost> {
        let index = self.vregion_of(pages[0]);
        self.version += 1;
        let copies = self.region(index, false)?;
        match self.write_to(index, &copies, pages, data) {
            Ok(()) => Ok(()),
            Err(why) => {
                let now = self.region(index, true)?;
                if now == copies {
                    return Err(self.lost(index, why));
                }
                self.write_to(index, &now, pages, data)
                    .map_err(|w| self.lost(index, format!("{why}; then {w}")))
            }
        }
    }

    fn write_to(
        &mut self,
        index: u64,
        (primary, backup): &Copies,
        pages: &[u64],
        data: &[u8],
    ) -> Result<(), String> {
        let targets: Vec<(&str, &Endpoint)> =
            [("primary", Some(primary)), ("backup", backup.as_ref())]
                .into_iter()
                .filter_map(|(r, e)| e.map(|e| (r, e)))
                // No address: a copy known to be bad, being rebuilt.
                .filter(|(_, e)| !e.addr.is_empty() && !self.stale.contains(&(index, e.id)))
                .collect();
        let mut sent = Vec::new();
        for &(role, ep) in &targets {
            // The other copy this write goes to, so that a copy forwarding
            // writes to a new one knows whether it has this one.
            let peer = targets
                .iter()
                .find(|(_, o)| o.id != ep.id)
                .map_or(0, |(_, o)| o.id);
            let head = WritePages::encode_head(self.asid, self.version, peer, pages);
            let r = self
                .client(&ep.addr)
                .and_then(|c| c.send(Op::WritePages, &[&head, data]).map(|id| (c, id)));
            sent.push((role, ep.clone(), r));
        }
        let mut stored = 0;
        let mut why = Vec::new();
        let mut missed = Vec::new();
        for (role, ep, r) in sent {
            match r.and_then(|(c, id)| c.wait(id)) {
                Ok(f) => {
                    stored += 1;
                    // A copy being rebuilt that this one forwarded to, and
                    // that did not take the write.
                    if let Ok(w) = WriteReply::decode(&f.body) {
                        if w.missed != 0 {
                            missed.push(w.missed);
                        }
                    }
                }
                Err(e) => {
                    why.push(format!("{role} {} ({}): {e}", ep.id, ep.addr));
                    self.report_unreachable(&ep, &e);
                    missed.push(ep.id);
                }
            }
        }
        COUNTERS.add(&COUNTERS.bytes_written_back, (data.len() * stored) as u64);
        // A replica that missed this write holds an old copy from now on;
        // the manager is told, so that it rebuilds that copy from the good one.
        for id in missed {
            if self.stale.insert((index, id)) {
                let req = lego_wire::control::MissedReq {
                    asid: self.asid,
                    index,
                    id,
                };
                let _ = self
                    .manager
                    .call_json::<_, serde_json::Value>(Op::ReportMissed, &req);
            }
        }
        if stored == 0 {
            if targets.is_empty() {
                why.push("every copy missed an earlier write".to_string());
            }
            return Err(why.join("; "));
        }
        let wanted = 1 + backup.is_some() as usize;
        if stored < wanted {
            COUNTERS.add(&COUNTERS.degraded_writes, 1);
            self.maybe_refresh(index);
        }
        Ok(())
    }

    /// Frees a run of pages on its copies (best effort).
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
        for ep in std::iter::once(primary).chain(backup) {
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

    /// The manager connection (for leases).
    pub fn manager(&self) -> &Client {
        &self.manager
    }

    /// Asks the manager for a forked child's address space (a copy of
    /// ours), waiting up to [`MANAGER_PATIENCE`] for a manager that is away
    /// or a copy that cannot be made yet (a memory monitor just died).
    pub fn fork_space(&mut self) -> Result<CreateSpaceResp, TransportError> {
        let req = lego_wire::control::ForkSpaceReq { asid: self.asid };
        self.call_manager(Op::ForkSpace, &req, MANAGER_PATIENCE)
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
        // The child's placements are its own (copied from the parent's
        // current ones, which may be newer than what the parent last
        // learned): each is asked for before its first use. What the parent
        // knows of stale copies holds for the child's clones of them too.
        self.unconfirmed = self.regions.keys().copied().collect();
        self.refreshed.clear();
        // A manager that is away (restarting) is waited for.
        let deadline = std::time::Instant::now() + MANAGER_PATIENCE;
        let manager = loop {
            match dial(self.manager.peer(), &self.creds, &self.opts) {
                Ok(m) => break m,
                Err(e) if e.is_unreachable() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("{e}")),
            }
        };
        std::mem::forget(std::mem::replace(&mut self.manager, manager));
        self.asid = asid;
        Ok(())
    }
}
