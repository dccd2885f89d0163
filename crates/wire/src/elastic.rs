//! Elastic memory: draining a memory monitor, rebalancing copies across
//! them, and what a monitor is told when a copy it held moved away.
//!
//! ```text
//! operator --Drain{id, drained, rate}--> manager       marks it, moves copies away
//! operator --Rebalance{threshold, dry_run}--> manager  the plan (and runs it)
//! manager --Replicate{..}--> the copy that stays       copies onto the new monitor,
//!                                                      forwarding writes meanwhile
//! manager --Withdraw{asid, index}--> the old monitor   refuses the vRegion's writes
//!                                                      from now on, frees its pages
//! ```

use serde::{Deserialize, Serialize};

use crate::{Asid, ComponentId, Op, PageNo, VRegionIdx};

/// `Drain` (operator only): empty memory monitor `id` (`drained`), moving
/// at most `rate` bytes a second (None: as fast as copies go); or take it
/// back (`drained: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReq {
    pub id: ComponentId,
    pub drained: bool,
    #[serde(default)]
    pub rate: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainResp {
    /// Copies of vRegions it holds now (to move away).
    pub copies: u64,
}

/// `Rebalance` (operator only): moves that even out the use of memory
/// monitors to within `threshold` (a fraction of capacity); run them
/// unless `dry_run`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceReq {
    pub threshold: f64,
    pub dry_run: bool,
    /// Most moves planned.
    pub max: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveInfo {
    pub asid: Asid,
    pub index: VRegionIdx,
    pub from: ComponentId,
    pub to: ComponentId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalancePlan {
    pub moves: Vec<MoveInfo>,
    /// Whether they were queued to run.
    pub started: bool,
}

/// Progress of a drain, in `lego status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainInfo {
    /// Copies still on it.
    pub copies: u64,
    pub copies_moved: u64,
    pub bytes_moved: u64,
    /// Bytes a second since the drain started.
    pub rate: u64,
    /// Seconds left at that rate (None: not known yet).
    pub eta_s: Option<u64>,
}

/// `Withdraw` (manager to memory monitor): vRegion `index` of `asid` is
/// no longer placed here (its copy moved): its writes are refused from
/// now on (the writer then learns where it moved), its pages freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawReq {
    pub asid: Asid,
    pub index: VRegionIdx,
    pub vregion_bytes: u64,
}

/// `PageVersions` (memory monitor to memory monitor): the pages of
/// `first..first + count` of `asid` held, each with its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageVersionsReq {
    pub asid: Asid,
    pub first: PageNo,
    pub count: u64,
}

/// The answer to [`PageVersionsReq`]: (page, version) of each page held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageVersions {
    pub held: Vec<(u64, u64)>,
}

crate::json_request! {
    PageVersionsReq => PageVersions, Op::PageVersions;
    DrainReq => DrainResp, Op::Drain;
    RebalanceReq => RebalancePlan, Op::Rebalance;
    WithdrawReq => u64, Op::Withdraw;
}
