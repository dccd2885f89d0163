//! The vocabulary every part of lego shares: address spaces, page numbers
//! and vRegion indices as types of their own (never bare integers), the
//! roles and health of components, and the states of a vRegion's copies.
//!
//! These travel on the wire (as plain numbers and lower-case names: JSON
//! and the binary page bodies are unchanged by the types), are kept by the
//! placement state machine and are used by the runtime inside programs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PAGE_SIZE;

/// A component (memory, processor or storage daemon). Handed out by the
/// manager, starting at 1, never reused.
pub type ComponentId = u64;

/// A vNode. Handed out by the manager, starting at 1, never reused.
pub type VnodeId = u32;

/// An address space: `vnode << 32 | seq`, `seq` starting at 1 per vNode.
/// The vNode in its high half is what entitlement is checked against.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Asid(pub u64);

impl Asid {
    /// The address space `seq` of `vnode`.
    pub fn new(vnode: VnodeId, seq: u32) -> Asid {
        Asid((u64::from(vnode) << 32) | u64::from(seq))
    }

    /// The vNode it belongs to (the high 32 bits).
    pub fn vnode(self) -> VnodeId {
        (self.0 >> 32) as VnodeId
    }

    /// Its sequence number within the vNode (the low 32 bits).
    pub fn seq(self) -> u32 {
        self.0 as u32
    }

    /// The first and last address spaces a vNode can have.
    pub fn range_of(vnode: VnodeId) -> std::ops::RangeInclusive<Asid> {
        Asid::new(vnode, 0)..=Asid::new(vnode, u32::MAX)
    }
}

impl fmt::Display for Asid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A page of an address space: its virtual address divided by [`PAGE_SIZE`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PageNo(pub u64);

impl PageNo {
    /// The page holding virtual address `addr`.
    pub fn of_addr(addr: usize) -> PageNo {
        PageNo((addr / PAGE_SIZE) as u64)
    }

    /// The vRegion holding this page, for vRegions of `1 << shift` bytes
    /// (see [`vregion_shift`]).
    pub fn vregion(self, shift: u32) -> VRegionIdx {
        VRegionIdx((self.0 * PAGE_SIZE as u64) >> shift)
    }
}

/// The page `n` pages after this one.
impl std::ops::Add<u64> for PageNo {
    type Output = PageNo;

    fn add(self, n: u64) -> PageNo {
        PageNo(self.0 + n)
    }
}

impl fmt::Display for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}

/// A vRegion of an address space: its virtual address divided by the
/// vRegion size. The unit of memory placement.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct VRegionIdx(pub u64);

impl VRegionIdx {
    /// Its first page and how many pages it holds, for vRegions of
    /// `1 << shift` bytes.
    pub fn pages(self, shift: u32) -> (PageNo, u64) {
        let per = 1u64 << (shift - PAGE_SIZE.trailing_zeros());
        (PageNo(self.0.saturating_mul(per)), per)
    }
}

impl fmt::Display for VRegionIdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// log2 of the span of address space one vRegion covers, for a manager
/// configured with `vregion_bytes` (rounded up to a power of two, at least
/// 2 MiB).
pub fn vregion_shift(vregion_bytes: u64) -> u32 {
    vregion_bytes
        .max(1 << 21)
        .next_power_of_two()
        .trailing_zeros()
}

/// An unknown name where a closed set of names was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub expected: &'static str,
}

macro_rules! named_enum {
    ($(#[$m:meta])* pub enum $name:ident ($what:literal) { $($(#[$vm:meta])* $var:ident = $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $text)] $var,)* }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            /// Its name, as shown to people and sent on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            /// Parses a name, ignoring ASCII case.
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        name: s.to_string(),
                        expected: concat!($($text, " "),*),
                    })
            }
        }
    };
}

named_enum! {
    /// What a component is for.
    pub enum Role ("role") {
        Memory = "memory",
        Processor = "processor",
        Storage = "storage",
    }
}

named_enum! {
    /// What the manager believes about a component.
    pub enum Health ("health") {
        Alive = "alive",
        Dead = "dead",
        /// Restored from the manager's store after a restart and not yet heard from.
        Unknown = "unknown",
    }
}

named_enum! {
    /// How a vRegion's copies stand.
    pub enum VRegionState ("vregion state") {
        /// Every copy it should have is on a live memory monitor.
        Healthy = "healthy",
        /// A copy was lost and one survives: it is being (or will be) rebuilt.
        Degraded = "degraded",
        /// No copy is on a live memory monitor.
        Lost = "lost",
    }
}

named_enum! {
    /// What an entry of the manager's journal of failures and recoveries is about.
    pub enum EventKind ("event kind") {
        /// A component was declared dead.
        Dead = "dead",
        /// A dead primary's backup took over.
        Failover = "failover",
        /// A vRegion got its second copy back.
        ReReplicated = "re-replicated",
        /// A copy missed a write and is being replaced.
        BadCopy = "bad-copy",
        /// A vRegion's last copy died.
        Lost = "lost",
        /// A memory monitor declared dead came back and got a new id.
        Stale = "stale",
        /// A dead processor monitor's jobs were lost with it.
        JobsLost = "jobs-lost",
        /// The manager heard no component at all (cut off or paused), and
        /// when it heard them again.
        Isolated = "isolated",
        /// A daemon joined with a token and got a key of its own.
        Joined = "joined",
        /// The operator revoked a member's key.
        Revoked = "revoked",
        /// A memory monitor was drained, or undrained.
        Drain = "drain",
        /// A copy of a vRegion moved to another memory monitor.
        Moved = "moved",
    }
}

/// The second copy of a vRegion: on a component (`T` is its id in the
/// manager's state, its endpoint on the wire), or known to have missed
/// writes and waiting to be rebuilt from the primary, so never read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backup<T> {
    On(T),
    Bad,
}

impl<T> Backup<T> {
    /// The component holding it, unless it is bad.
    pub fn on(&self) -> Option<&T> {
        match self {
            Backup::On(t) => Some(t),
            Backup::Bad => None,
        }
    }

    /// The same slot with its component mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Backup<U> {
        match self {
            Backup::On(t) => Backup::On(f(t)),
            Backup::Bad => Backup::Bad,
        }
    }
}

impl<T: fmt::Display> fmt::Display for Backup<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backup::On(t) => t.fmt(f),
            Backup::Bad => f.write_str("bad"),
        }
    }
}

/// The first host uid of vNode identities: each vNode owns
/// [`IDS_PER_VNODE`] uids and gids from `IDENTITY_BASE + vid * IDS_PER_VNODE`.
pub const IDENTITY_BASE: u32 = 0x4000_0000;
/// How many uids (and gids) a vNode's identity range holds.
pub const IDS_PER_VNODE: u32 = 65536;

/// vNode `vid`'s host identity: the uid and gid that is root inside its
/// jails and owns its files on every host (`None` past the last vNode whose
/// range fits below `(uid_t)-1`).
pub fn identity(vid: VnodeId) -> Option<u32> {
    let base = vid.checked_mul(IDS_PER_VNODE)?.checked_add(IDENTITY_BASE)?;
    base.checked_add(IDS_PER_VNODE)?;
    Some(base)
}

/// Bytes for people: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_do_not_overlap() {
        assert_eq!(identity(0), Some(IDENTITY_BASE));
        assert_eq!(identity(2).unwrap() - identity(1).unwrap(), IDS_PER_VNODE);
        assert!(identity(u32::MAX).is_none());
        let last = (u32::MAX - IDENTITY_BASE) / IDS_PER_VNODE - 1;
        assert!(identity(last).unwrap().checked_add(IDS_PER_VNODE).is_some());
        assert!(identity(last + 1).is_none());
    }

    #[test]
    fn asids_split_into_vnode_and_seq() {
        let a = Asid::new(7, 3);
        assert_eq!((a.vnode(), a.seq()), (7, 3));
        assert_eq!(a.to_string(), "0x700000003");
        assert!(Asid::range_of(7).contains(&a));
        assert!(!Asid::range_of(6).contains(&a));
    }

    #[test]
    fn pages_map_to_vregions() {
        let shift = vregion_shift(16 << 20);
        assert_eq!(shift, 24);
        assert_eq!(PageNo(4095).vregion(shift), VRegionIdx(0));
        assert_eq!(PageNo(4096).vregion(shift), VRegionIdx(1));
        assert_eq!(VRegionIdx(2).pages(shift), (PageNo(8192), 4096));
        assert_eq!(vregion_shift(1), 21);
    }

    #[test]
    fn names_round_trip_and_stay_on_the_wire() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
            assert_eq!(
                serde_json::to_string(r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert_eq!("MEMORY".parse::<Role>().unwrap(), Role::Memory);
        assert!("cpu".parse::<Role>().is_err());
        assert_eq!(
            serde_json::to_string(&EventKind::ReReplicated).unwrap(),
            "\"re-replicated\""
        );
        assert_eq!(serde_json::to_string(&Asid(5)).unwrap(), "5");
        assert_eq!(
            serde_json::to_string(&Backup::On(3u64)).unwrap(),
            "{\"on\":3}"
        );
        assert_eq!(
            serde_json::to_string(&Backup::<u64>::Bad).unwrap(),
            "\"bad\""
        );
    }
}
