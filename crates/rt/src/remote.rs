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

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lego_transport::{Client, ClientOptions, Credentials, Patience, Pool, Redial, TransportError};
use lego_wire::control::{
    AssignReq, AssignResp, CreateSpaceReq, CreateSpaceResp, Endpoint, ForkSpaceReq, MissedReq,
    UnreachableReq,
};
use lego_wire::pages::{FreeRange, ReadPages, ReadPagesReply, WritePages, WriteReply};
use lego_wire::types::vregion_shift;
use lego_wire::{Asid, Backup, ComponentId, Op, PageNo, VRegionIdx, PAGE_SIZE};

use crate::stats::COUNTERS;

/// A vRegion whose pages can no longer be reached: the process must stop.
#[derive(Debug)]
pub struct Lost {
    pub vregion: VRegionIdx,
    pub asid: Asid,
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

/// Connects to a component: through the broker when the program runs in
/// its vNode's jail (it has no route to the cluster of its own), else
/// directly.
fn dial(addr: &str, creds: &Credentials, opts: &ClientOptions) -> Result<Client, TransportError> {
    if !crate::broker::present() {
        return Client::connect(addr, creds, opts);
    }
    let connect_err = |source| TransportError::Connect {
        addr: addr.to_string(),
        source,
    };
    let fd = crate::broker::connect(addr, opts.connect_timeout).map_err(connect_err)?;
    let link = lego_transport::link::adopt(fd).map_err(connect_err)?;
    Client::over(link, addr, creds, opts)
}

/// A page read sent to a vRegion's primary, not yet answered.
pub struct PendingRead {
    index: VRegionIdx,
    body: Vec<u8>,
    sent: Option<(Client, u64)>,
    copies: Copies,
    why: Vec<String>,
}

/// A write sent to a vRegion's copies, not yet answered (see
/// [`Remote::start_write`]).
pub struct PendingWrite {
    index: VRegionIdx,
    copies: Copies,
    pages: Vec<PageNo>,
    version: u64,
    sent: Vec<SentWrite>,
}

/// A write sent to one copy.
struct SentWrite {
    role: &'static str,
    ep: Endpoint,
    sent: Result<(Client, u64), TransportError>,
}

/// A vRegion's copies as this process last learned them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Copies {
    primary: Endpoint,
    /// `None`: one copy only; `Bad`: a copy that missed writes, being rebuilt.
    backup: Option<Backup<Endpoint>>,
}

impl Copies {
    fn of(a: AssignResp) -> Copies {
        Copies {
            primary: a.primary,
            backup: a.backup,
        }
    }

    /// The ids of the copies that can be read or written.
    fn ids(&self) -> impl Iterator<Item = ComponentId> + '_ {
        std::iter::once(self.primary.id).chain(self.live_backup().map(|b| b.id))
    }

    fn live_backup(&self) -> Option<&Endpoint> {
        self.backup.as_ref().and_then(|b| b.on())
    }
}

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
    /// The job's proof (hex), given by the processor monitor.
    pub job_proof: Option<String>,
    /// The vNode has a memory quota: lease memory before giving it out.
    pub quota: bool,
}

pub struct Remote {
    manager: Redial,
    pub asid: Asid,
    vregion_shift: u32,
    regions: HashMap<VRegionIdx, Copies>,
    /// Replicas that missed a write-back: (vRegion, component). They hold
    /// an old copy of some page, so they are never read or written again.
    stale: HashSet<(VRegionIdx, ComponentId)>,
    /// Of those, the copies that moved away (a drain, a rebalance) rather
    /// than missed a write: trusted again if the manager places the
    /// vRegion on that monitor anew (a later move brought it back).
    moved: HashSet<(VRegionIdx, ComponentId)>,
    /// When each degraded vRegion's placement was last asked again.
    refreshed: HashMap<VRegionIdx, Instant>,
    /// Memory monitors already reported unreachable to the manager.
    reported: HashSet<ComponentId>,
    /// vRegions whose placement was inherited from a fork's parent and not
    /// yet asked for in this process.
    unconfirmed: HashSet<VRegionIdx>,
    /// The version of the last write (see the module doc).
    version: u64,
    monitors: Pool,
    /// Frees sent and not yet answered, oldest first: the program does not
    /// wait for them (a later request on the same connection is served
    /// after them), and their answers are taken in later.
    pending_frees: std::collections::VecDeque<(Client, u64)>,
}

/// Frees left unanswered at most; past it the oldest answers are waited for.
const MAX_PENDING_FREES: usize = 64;

/// How long a process waits for an unreachable manager (or one that
/// answers `Unavailable`: just restarted, its memory monitors not back yet,
/// or a copy that cannot be made yet) when it needs a new vRegion placed.
const MANAGER_PATIENCE: Patience = Patience {
    within: Duration::from_secs(30),
    pause: Duration::from_millis(200),
    max_pause: Duration::from_millis(200),
    unavailable: true,
};

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
        let creds = Credentials::vnode(cfg.vnode_id, cfg.key).fetching_via(&cfg.manager, dial);
        let manager = Redial::new(cfg.manager.clone(), creds.clone(), opts()).with_dial(dial);
        let req = CreateSpaceReq {
            vnode: cfg.vnode.clone(),
            owner: cfg.job,
            proof: cfg.job_proof.clone(),
        };
        let space: CreateSpaceResp = manager
            .call_patiently(&req, &MANAGER_PATIENCE)
            .map_err(|e| e.to_string())?;
        Ok(Remote {
            manager,
            asid: space.asid,
            vregion_shift: vregion_shift(space.vregion_bytes),
            regions: HashMap::new(),
            stale: HashSet::new(),
            moved: HashSet::new(),
            refreshed: HashMap::new(),
            reported: HashSet::new(),
            unconfirmed: HashSet::new(),
            version: 0,
            monitors: Pool::new(creds, opts()).with_dial(dial),
            pending_frees: std::collections::VecDeque::new(),
        })
    }

    /// The vRegion of a page.
    pub fn vregion_of(&self, page: PageNo) -> VRegionIdx {
        page.vregion(self.vregion_shift)
    }

    /// log2 of the vRegion size in bytes.
    pub fn vregion_shift(&self) -> u32 {
        self.vregion_shift
    }

    fn lost(&self, vregion: VRegionIdx, detail: String) -> Lost {
        Lost {
            vregion,
            asid: self.asid,
            detail,
        }
    }

    fn region(&mut self, index: VRegionIdx, refresh: bool) -> Result<Copies, Lost> {
        let inherited = self.unconfirmed.remove(&index);
        if !refresh && !inherited {
            if let Some(r) = self.regions.get(&index) {
                return Ok(r.clone());
            }
        }
        let a = self.ask_placement(index, &MANAGER_PATIENCE)?;
        Ok(self.adopt(index, Copies::of(a)))
    }

    /// Takes a vRegion's placement as the manager gives it. A copy that is
    /// new to this process was rebuilt from one it already knew; if every
    /// such known copy missed one of its writes, the new one holds the same
    /// old pages, and is not trusted either.
    fn adopt(&mut self, index: VRegionIdx, new: Copies) -> Copies {
        // A copy that moved away and is placed here again was copied anew
        // (after the commit that moved it, which came before its refusal).
        for id in new.ids() {
            if self.moved.remove(&(index, id)) {
                self.stale.remove(&(index, id));
            }
        }
        if let Some(old) = self.regions.get(&index) {
            let known: Vec<ComponentId> = old.ids().collect();
            let ids: Vec<ComponentId> = new.ids().collect();
            let kept: Vec<ComponentId> =
                ids.iter().copied().filter(|i| known.contains(i)).collect();
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
    /// time does: while the manager is away (restarting), wait as
    /// `patience` says rather than lose the process.
    fn ask_placement(
        &mut self,
        index: VRegionIdx,
        patience: &Patience,
    ) -> Result<AssignResp, Lost> {
        let req = AssignReq {
            asid: self.asid,
            index,
        };
        self.manager
            .call_patiently(&req, patience)
            .map_err(|e| self.lost(index, format!("the manager cannot place it: {e}")))
    }

    /// A vRegion lost a copy: ask (at most every [`REFRESH_EVERY`], without
    /// waiting for an absent manager) whether a new copy replaced it.
    fn maybe_refresh(&mut self, index: VRegionIdx) {
        let due = self
            .refreshed
            .get(&index)
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        if !due {
            return;
        }
        self.refreshed.insert(index, Instant::now());
        if let Ok(a) = self.ask_placement(index, &Patience::NONE) {
            self.adopt(index, Copies::of(a));
        }
    }

    /// The copy of `index` on `id` refused us: it moved away. Never used
    /// again, unless placed there anew.
    fn copy_moved(&mut self, index: VRegionIdx, id: ComponentId) {
        self.stale.insert((index, id));
        self.moved.insert((index, id));
    }

    /// The primary of `index` failed a read that the copy on `id` served:
    /// read there first from now on (a dead primary with no spare monitor
    /// to rebuild on stays in the placement, and would cost every read a
    /// failed try).
    fn prefer(&mut self, index: VRegionIdx, id: ComponentId) {
        if let Some(c) = self.regions.get_mut(&index) {
            if let Some(Backup::On(b)) = &mut c.backup {
                if b.id == id {
                    std::mem::swap(&mut c.primary, b);
                }
            }
        }
    }

    /// A copy of `index` moved away (a drain, a rebalance): ask the manager
    /// where it is now, at once.
    fn moved_away(&mut self, index: VRegionIdx) {
        COUNTERS.add(&COUNTERS.moved_copies, 1);
        self.refreshed.remove(&index);
        self.maybe_refresh(index);
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
        let _ = self.manager.call(&req);
    }

    fn client(&self, addr: &str) -> Result<Client, TransportError> {
        self.monitors.client(addr)
    }

    /// Sends a read of pages (all in one vRegion) to the vRegion's primary
    /// without waiting: [`Remote::finish_read`] takes the answer, and falls
    /// back to the backup if the primary failed.
    pub fn start_read(&mut self, pages: &[PageNo]) -> Result<PendingRead, Lost> {
        let index = self.vregion_of(pages[0]);
        let copies = self.region(index, false)?;
        let body = ReadPages {
            asid: self.asid,
            pages: pages.to_vec(),
        }
        .encode();
        let mut why = Vec::new();
        let mut sent = None;
        let primary = &copies.primary;
        if self.stale.contains(&(index, primary.id)) {
            why.push(untrusted("primary", primary));
        } else {
            match self
                .client(&primary.addr)
                .and_then(|c| c.send(Op::ReadPages, &[&body]).map(|id| (c, id)))
            {
                Ok(s) => sent = Some(s),
                Err(e) => {
                    why.push(format!("primary {} ({}): {e}", primary.id, primary.addr));
                    let primary = primary.clone();
                    self.report_unreachable(&primary, &e);
                }
            }
        }
        Ok(PendingRead {
            index,
            body,
            sent,
            copies,
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
            copies,
            mut why,
        } = p;
        let at = data_alignment(body.len());
        let primary = copies.primary;
        let mut moved = false;
        if let Some((c, id)) = sent {
            let r = c.wait_into(id, out, at);
            if let Err(e) = &r {
                self.report_unreachable(&primary, e);
                // Its copy moved away (a drain): never asked again; the
                // placement is asked anew once the read is served.
                if e.remote_code() == Some(lego_wire::ErrorCode::Conflict) {
                    self.copy_moved(index, primary.id);
                    moved = true;
                }
            }
            match take_pages(r, out, at, "primary") {
                Ok(at) => return Ok(at),
                Err(e) => why.push(format!("primary {} ({}): {e}", primary.id, primary.addr)),
            }
        }
        let mut tried = vec![primary.id];
        let mut candidates: Vec<(&'static str, Backup<Endpoint>)> =
            copies.backup.into_iter().map(|b| ("backup", b)).collect();
        let mut refreshed = false;
        loop {
            while let Some((role, copy)) = candidates.pop() {
                let Backup::On(ep) = copy else {
                    why.push(format!("{role}: a copy being rebuilt"));
                    continue;
                };
                tried.push(ep.id);
                if self.stale.contains(&(index, ep.id)) {
                    why.push(untrusted(role, &ep));
                    continue;
                }
                let r = self
                    .client(&ep.addr)
                    .and_then(|c| c.call_into(Op::ReadPages, &[&body], out, at));
                if let Err(e) = &r {
                    self.report_unreachable(&ep, e);
                }
                match take_pages(r, out, at, role) {
                    Ok(at) => {
                        COUNTERS.add(&COUNTERS.backup_reads, 1);
                        if moved {
                            self.moved_away(index);
                        } else {
                            self.prefer(index, ep.id);
                        }
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
            let now = self.region(index, true)?;
            candidates = [
                ("backup", now.backup),
                ("primary", Some(Backup::On(now.primary))),
            ]
            .into_iter()
            .filter_map(|(r, c)| c.map(|c| (r, c)))
            .filter(|(_, c)| c.on().is_none_or(|e| !tried.contains(&e.id)))
            .collect();
        }
    }

    /// Waits for a read started by [`Remote::start_read`] and drops its answer.
    pub fn discard_read(&mut self, p: PendingRead, scratch: &mut Vec<u8>) {
        if let Some((c, id)) = p.sent {
            let _ = c.wait_into(id, scratch, 0);
        }
    }

    /// Sends a write of pages (one vRegion) to its copies without waiting
    /// for the answers: [`Remote::finish_write`] takes them, with the same
    /// `data` (kept by the caller until then, for a second try).
    pub fn start_write(&mut self, pages: &[PageNo], data: &[u8]) -> Result<PendingWrite, Lost> {
        let index = self.vregion_of(pages[0]);
        self.version += 1;
        let copies = self.region(index, false)?;
        let sent = self.send_write(index, &copies, pages, data, self.version);
        Ok(PendingWrite {
            index,
            copies,
            pages: pages.to_vec(),
            version: self.version,
            sent,
        })
    }

    /// Takes the answers of a write. When no copy took it, the placement is
    /// asked again once and the write sent again, at its own version (a
    /// newer write of the same pages may have gone out meanwhile).
    pub fn finish_write(&mut self, w: PendingWrite, data: &[u8]) -> Result<(), Lost> {
        let PendingWrite {
            index,
            copies,
            pages,
            version,
            sent,
        } = w;
        let stale_before: Vec<ComponentId> = copies
            .ids()
            .filter(|&id| self.stale.contains(&(index, id)))
            .collect();
        match self.take_write(index, &copies, sent, data.len()) {
            Ok(()) => Ok(()),
            Err(why) => {
                // Copies that missed only this write (one died, one moved
                // away) hold every write before it: a copy made from them
                // lacks only this one, which is sent to it again below. So
                // they do not make new copies untrusted (see `adopt`).
                let fresh: Vec<ComponentId> = copies
                    .ids()
                    .filter(|&id| self.stale.contains(&(index, id)) && !stale_before.contains(&id))
                    .collect();
                for &id in &fresh {
                    self.stale.remove(&(index, id));
                }
                let now = self.region(index, true);
                for &id in &fresh {
                    self.stale.insert((index, id));
                }
                let now = now?;
                if now == copies {
                    return Err(self.lost(index, why));
                }
                let again = self.send_write(index, &now, &pages, data, version);
                self.take_write(index, &now, again, data.len())
                    .map_err(|w| self.lost(index, format!("{why}; then {w}")))
            }
        }
    }

    /// Sends one write to the copies that take writes (a bad backup being
    /// rebuilt, and copies that missed a write, never do).
    fn send_write(
        &mut self,
        index: VRegionIdx,
        copies: &Copies,
        pages: &[PageNo],
        data: &[u8],
        version: u64,
    ) -> Vec<SentWrite> {
        let targets: Vec<(&'static str, Endpoint)> = [
            ("primary", Some(&copies.primary)),
            ("backup", copies.live_backup()),
        ]
        .into_iter()
        .filter_map(|(r, e)| e.map(|e| (r, e.clone())))
        .filter(|(_, e)| !self.stale.contains(&(index, e.id)))
        .collect();
        let mut sent = Vec::new();
        for (role, ep) in &targets {
            // The other copy this write goes to, so that a copy forwarding
            // writes to a new one knows whether it has this one.
            let peer = targets
                .iter()
                .find(|(_, o)| o.id != ep.id)
                .map_or(0, |(_, o)| o.id);
            let head = WritePages::encode_head(self.asid, version, peer, pages);
            let r = self
                .client(&ep.addr)
                .and_then(|c| c.send(Op::WritePages, &[&head, data]).map(|id| (c, id)));
            sent.push(SentWrite {
                role,
                ep: ep.clone(),
                sent: r,
            });
        }
        sent
    }

    /// Waits for a write's answers; counts, reports copies that missed it.
    fn take_write(
        &mut self,
        index: VRegionIdx,
        copies: &Copies,
        sent: Vec<SentWrite>,
        len: usize,
    ) -> Result<(), String> {
        let targets = sent.len();
        let mut stored = 0;
        let mut why = Vec::new();
        let mut missed = Vec::new();
        let mut moved = false;
        for SentWrite { role, ep, sent } in sent {
            match sent.and_then(|(c, id)| c.wait(id)) {
                // Its copy moved away (a drain, a rebalance): nothing is
                // wrong with it, and the manager knows where the copy is.
                Err(e) if e.remote_code() == Some(lego_wire::ErrorCode::Conflict) => {
                    why.push(format!("{role} {} ({}): {e}", ep.id, ep.addr));
                    self.copy_moved(index, ep.id);
                    moved = true;
                }
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
        COUNTERS.add(&COUNTERS.bytes_written_back, (len * stored) as u64);
        // A replica that missed this write holds an old copy from now on;
        // the manager is told, so that it rebuilds that copy from the good one.
        for id in missed {
            if self.stale.insert((index, id)) {
                let req = MissedReq {
                    asid: self.asid,
                    index,
                    id,
                };
                let _ = self.manager.call(&req);
            }
        }
        if stored == 0 {
            if targets == 0 {
                why.push("every copy missed an earlier write".to_string());
            }
            return Err(why.join("; "));
        }
        if moved {
            self.moved_away(index);
        } else if stored < 1 + copies.backup.is_some() as usize {
            COUNTERS.add(&COUNTERS.degraded_writes, 1);
            self.maybe_refresh(index);
        }
        Ok(())
    }

    /// Frees a run of pages on its copies (best effort), without waiting:
    /// each copy's connection serves it before anything sent later, so a
    /// later write of the same pages is never undone by it.
    pub fn free(&mut self, first: PageNo, count: u64) {
        let index = self.vregion_of(first);
        let Some(copies) = self.regions.get(&index) else {
            return; // never placed: nothing remote
        };
        let req = FreeRange {
            asid: self.asid,
            first,
            count,
        };
        let addrs: Vec<String> = std::iter::once(&copies.primary)
            .chain(copies.live_backup())
            .map(|e| e.addr.clone())
            .collect();
        let body = lego_wire::Request::encode(&req);
        for addr in addrs {
            if let Ok(sent) = self
                .client(&addr)
                .and_then(|c| c.send(Op::FreeRange, &[&body]).map(|id| (c, id)))
            {
                self.pending_frees.push_back(sent);
            }
        }
        self.settle_frees(MAX_PENDING_FREES);
    }

    /// Takes in the answers of pending frees until at most `keep` are left
    /// (0: all, before a fork copies the space on the memory monitors).
    /// A free that failed is let go: its pages go with the address space.
    pub fn settle_frees(&mut self, keep: usize) {
        while self.pending_frees.len() > keep {
            if let Some((c, id)) = self.pending_frees.pop_front() {
                let _ = c.wait(id);
            }
        }
    }

    /// Asks the manager for a forked child's address space (a copy of
    /// ours), waiting as [`MANAGER_PATIENCE`] says for a manager that is
    /// away or a copy that cannot be made yet (a memory monitor just died).
    pub fn fork_space(&mut self) -> Result<CreateSpaceResp, TransportError> {
        self.manager
            .call_patiently(&ForkSpaceReq { asid: self.asid }, &MANAGER_PATIENCE)
    }

    /// Another connection to the manager (for leases, which are asked for
    /// under the heap's lock and must not wait behind a placement).
    pub fn manager_link(&self) -> Redial {
        self.manager.fresh()
    }

    /// After fork, in the child: the parent's connections are not ours.
    pub fn reset_after_fork(&mut self, asid: Asid) -> Result<(), String> {
        for (c, _) in self.pending_frees.drain(..) {
            std::mem::forget(c); // the parent's (see `Redial::abandon`)
        }
        self.monitors.abandon();
        self.manager.abandon();
        // The child's placements are its own (copied from the parent's
        // current ones, which may be newer than what the parent last
        // learned): each is asked for before its first use. What the parent
        // knows of stale copies holds for the child's clones of them too.
        self.unconfirmed = self.regions.keys().copied().collect();
        self.refreshed.clear();
        // A manager that is away (restarting) is waited for.
        let patience = Patience {
            unavailable: false,
            ..MANAGER_PATIENCE
        };
        patience
            .run(|| self.manager.client().map(drop), |_, _| {})
            .map_err(|e| e.to_string())?;
        self.asid = asid;
        Ok(())
    }
}

fn untrusted(role: &str, ep: &Endpoint) -> String {
    format!(
        "{role} {} ({}) missed a write and is not trusted",
        ep.id, ep.addr
    )
}

/// Checks a read answer left in `out`: every page present.
fn take_pages(
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
