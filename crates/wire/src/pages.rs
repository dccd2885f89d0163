//! Bodies of the memory data path, with fixed binary layouts and raw page payloads.
//!
//! ```text
//! ReadPages      asid u64 | count u32 | 0 u32 | page numbers u64 x count
//! ReadPagesReply count u32 | 0 u32 | present u8 x count | pad to 8 | 4 KiB x (number present)
//! WritePages     asid u64 | count u32 | 0 u32 | version u64 | peer u64 |
//!                page numbers u64 x count | 4 KiB x count
//! WriteReply     stored u32 | newly allocated u32 | missed u64
//! CopyPages      asid u64 | count u32 | 0 u32 | (page u64, version u64) x count |
//!                4 KiB x count
//! FreeRange      asid u64 | first page u64 | count u64
//! FreeSpace      asid u64
//! CloneSpace     from asid u64 | to asid u64
//! Freed, Cloned  pages u64
//! ```
//!
//! A page number is a virtual address divided by [`PAGE_SIZE`]. A page that was
//! never written (or was freed) reads as absent: the reader zero-fills it.
//!
//! Versions order the writes of one page: the writer (a process's runtime)
//! stamps each write with a number larger than any before it, and a memory
//! monitor keeps a page's copy with the highest version it has seen, so
//! copies that cross on the network (re-replication, forwarding) cannot
//! bring back old data. `peer` names the other replica the writer sent the
//! same write to (0: none), so a replica that forwards writes to a new copy
//! knows which ones that copy already has.

use crate::request::Request;
use crate::types::{Asid, ComponentId, PageNo};
use crate::{Op, WireError, MAX_BATCH_PAGES, PAGE_SIZE};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn check_len(what: &'static str, body: &[u8], want: usize) -> Result<(), WireError> {
    if body.len() != want {
        return Err(WireError::malformed(
            what,
            format!("body is {} bytes, expected {want}", body.len()),
        ));
    }
    Ok(())
}

/// Reads the `asid | count | 0` head of ReadPages and the page numbers after
/// it; checks the count against [`MAX_BATCH_PAGES`].
fn decode_batch_head(what: &'static str, body: &[u8]) -> Result<(Asid, Vec<PageNo>), WireError> {
    let count = batch_count(what, body, 16)?;
    if body.len() < 16 + 8 * count {
        return Err(WireError::malformed(what, "page list is cut short"));
    }
    let pages = (0..count)
        .map(|i| PageNo(u64_at(body, 16 + 8 * i)))
        .collect();
    Ok((Asid(u64_at(body, 0)), pages))
}

fn encode_batch_head(asid: Asid, pages: &[PageNo]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 * pages.len());
    out.extend_from_slice(&asid.0.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for p in pages {
        out.extend_from_slice(&p.0.to_le_bytes());
    }
    out
}

/// Read a batch of pages of one address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPages {
    pub asid: Asid,
    pub pages: Vec<PageNo>,
}

impl ReadPages {
    pub fn encode(&self) -> Vec<u8> {
        encode_batch_head(self.asid, &self.pages)
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let (asid, pages) = decode_batch_head("read_pages", body)?;
        check_len("read_pages", body, 16 + 8 * pages.len())?;
        Ok(ReadPages { asid, pages })
    }
}

/// Answer to [`ReadPages`]: for each requested page, absent or its 4 KiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPagesReply<'a> {
    pub present: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> ReadPagesReply<'a> {
    /// Length of the flag block including its padding to 8 bytes.
    fn flags_len(count: usize) -> usize {
        count.div_ceil(8) * 8
    }

    /// Length of the head of a reply to `count` pages (count and flags): the
    /// page data starts at this offset.
    pub fn head_len(count: usize) -> usize {
        8 + Self::flags_len(count)
    }

    /// Encodes the head of a reply (count and flags); the page data follows it.
    pub fn encode_head(present: &[bool]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + Self::flags_len(present.len()));
        out.extend_from_slice(&(present.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend(present.iter().map(|&p| p as u8));
        out.resize(8 + Self::flags_len(present.len()), 0);
        out
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        const WHAT: &str = "read_pages reply";
        if body.len() < 8 {
            return Err(WireError::malformed(WHAT, "shorter than 8 bytes"));
        }
        let count = u32_at(body, 0) as usize;
        if count > MAX_BATCH_PAGES {
            return Err(WireError::malformed(WHAT, format!("{count} pages")));
        }
        let flags_end = 8 + Self::flags_len(count);
        if body.len() < flags_end {
            return Err(WireError::malformed(WHAT, "flags are cut short"));
        }
        let present = &body[8..8 + count];
        if present.iter().any(|&p| p > 1) {
            return Err(WireError::malformed(WHAT, "a presence flag is not 0 or 1"));
        }
        let n_present = present.iter().filter(|&&p| p == 1).count();
        check_len(WHAT, body, flags_end + n_present * PAGE_SIZE)?;
        Ok(ReadPagesReply {
            present,
            data: &body[flags_end..],
        })
    }

    /// The pages in request order: `Some(data)` for present ones, `None` for absent.
    pub fn pages(&self) -> impl Iterator<Item = Option<&'a [u8]>> + '_ {
        let mut next = 0usize;
        self.present.iter().map(move |&p| {
            (p == 1).then(|| {
                let page = &self.data[next * PAGE_SIZE..(next + 1) * PAGE_SIZE];
                next += 1;
                page
            })
        })
    }
}

/// Write a batch of pages of one address space; `data` holds 4 KiB per page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePages<'a> {
    pub asid: Asid,
    /// Orders this write after every earlier one of the same pages.
    pub version: u64,
    /// The other replica this write was also sent to (0: none).
    pub peer: ComponentId,
    pub pages: Vec<PageNo>,
    pub data: &'a [u8],
}

impl<'a> WritePages<'a> {
    pub fn encode(&self) -> Vec<u8> {
        assert_eq!(
            self.data.len(),
            self.pages.len() * PAGE_SIZE,
            "4 KiB per page"
        );
        let mut out = Self::encode_head(self.asid, self.version, self.peer, &self.pages);
        out.extend_from_slice(self.data);
        out
    }

    /// Everything but the page data, which follows it on the wire (send it
    /// as a second part to avoid copying it).
    pub fn encode_head(asid: Asid, version: u64, peer: ComponentId, pages: &[PageNo]) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 8 * pages.len());
        out.extend_from_slice(&asid.0.to_le_bytes());
        out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&peer.to_le_bytes());
        for p in pages {
            out.extend_from_slice(&p.0.to_le_bytes());
        }
        out
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        const WHAT: &str = "write_pages";
        let count = batch_count(WHAT, body, 32)?;
        let head = 32 + 8 * count;
        check_len(WHAT, body, head + PAGE_SIZE * count)?;
        Ok(WritePages {
            asid: Asid(u64_at(body, 0)),
            version: u64_at(body, 16),
            peer: u64_at(body, 24),
            pages: (0..count)
                .map(|i| PageNo(u64_at(body, 32 + 8 * i)))
                .collect(),
            data: &body[head..],
        })
    }
}

/// Reads and checks the count of a batch whose fixed head is `fixed` bytes
/// (`asid | count | 0 | ...`).
fn batch_count(what: &'static str, body: &[u8], fixed: usize) -> Result<usize, WireError> {
    if body.len() < fixed {
        return Err(WireError::malformed(
            what,
            format!("shorter than {fixed} bytes"),
        ));
    }
    let count = u32_at(body, 8) as usize;
    if u32_at(body, 12) != 0 {
        return Err(WireError::malformed(what, "padding is not zero"));
    }
    if count == 0 || count > MAX_BATCH_PAGES {
        return Err(WireError::malformed(
            what,
            format!("{count} pages; a batch holds 1 to {MAX_BATCH_PAGES}"),
        ));
    }
    Ok(count)
}

/// Pages with their versions, from one memory monitor to another: a
/// vRegion's copy being rebuilt, or a write forwarded to it. A page is kept
/// only if its version is at least the one held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPages<'a> {
    pub asid: Asid,
    /// (page number, version), one per 4 KiB of `data`.
    pub pages: Vec<(PageNo, u64)>,
    pub data: &'a [u8],
}

impl<'a> CopyPages<'a> {
    /// The encoded head (everything but the page data, which follows it).
    pub fn encode_head(asid: Asid, pages: &[(PageNo, u64)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 16 * pages.len());
        out.extend_from_slice(&asid.0.to_le_bytes());
        out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for (p, v) in pages {
            out.extend_from_slice(&p.0.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        assert_eq!(self.data.len(), self.pages.len() * PAGE_SIZE);
        let mut out = Self::encode_head(self.asid, &self.pages);
        out.extend_from_slice(self.data);
        out
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        const WHAT: &str = "copy_pages";
        let count = batch_count(WHAT, body, 16)?;
        let head = 16 + 16 * count;
        check_len(WHAT, body, head.saturating_add(PAGE_SIZE * count))?;
        Ok(CopyPages {
            asid: Asid(u64_at(body, 0)),
            pages: (0..count)
                .map(|i| (PageNo(u64_at(body, 16 + 16 * i)), u64_at(body, 24 + 16 * i)))
                .collect(),
            data: &body[head..],
        })
    }
}

/// Answer to [`WritePages`]: `missed` names a new copy of the vRegion that
/// this replica forwarded the write to and that did not take it (0: none),
/// so the writer never trusts that copy for these pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteReply {
    pub stored: u32,
    pub allocated: u32,
    pub missed: u64,
}

impl WriteReply {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.stored.to_le_bytes());
        b[4..8].copy_from_slice(&self.allocated.to_le_bytes());
        b[8..].copy_from_slice(&self.missed.to_le_bytes());
        b
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        check_len("write reply", body, 16)?;
        Ok(WriteReply {
            stored: u32_at(body, 0),
            allocated: u32_at(body, 4),
            missed: u64_at(body, 8),
        })
    }
}

/// Free `count` pages starting at page `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeRange {
    pub asid: Asid,
    pub first: PageNo,
    pub count: u64,
}

impl FreeRange {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.asid.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.first.0.to_le_bytes());
        b[16..].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        check_len("free_range", body, 24)?;
        let r = FreeRange {
            asid: Asid(u64_at(body, 0)),
            first: PageNo(u64_at(body, 8)),
            count: u64_at(body, 16),
        };
        if r.first.0.checked_add(r.count).is_none() {
            return Err(WireError::malformed("free_range", "range wraps around"));
        }
        Ok(r)
    }
}

fn check_u64(what: &'static str, body: &[u8]) -> Result<u64, WireError> {
    check_len(what, body, 8)?;
    Ok(u64_at(body, 0))
}

/// Free every page of one address space (its vRegions on this monitor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeSpace {
    pub asid: Asid,
}

/// Copy every page of address space `from` into `to` (a fork: both hold
/// the same vRegions on this monitor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneSpace {
    pub from: Asid,
    pub to: Asid,
}

/// `FreeRange`, `FreeSpace` and `CloneSpace` answer with a page count.
macro_rules! counted_request {
    ($req:ty, $op:expr) => {
        impl Request for $req {
            const OP: Op = $op;
            /// Pages freed (or copied).
            type Reply = u64;

            fn encode(&self) -> Vec<u8> {
                self.encode_body()
            }
            fn decode(body: &[u8]) -> Result<Self, WireError> {
                Self::decode_body(body)
            }
            fn encode_reply(n: u64) -> Vec<u8> {
                n.to_le_bytes().to_vec()
            }
            fn decode_reply(body: &[u8]) -> Result<u64, WireError> {
                check_u64("page count", body)
            }
        }
    };
}

counted_request!(FreeRange, Op::FreeRange);
counted_request!(FreeSpace, Op::FreeSpace);
counted_request!(CloneSpace, Op::CloneSpace);

impl FreeSpace {
    fn encode_body(&self) -> Vec<u8> {
        self.asid.0.to_le_bytes().to_vec()
    }
    fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        Ok(FreeSpace {
            asid: Asid(check_u64("free_space", body)?),
        })
    }
}

impl CloneSpace {
    fn encode_body(&self) -> Vec<u8> {
        [self.from.0.to_le_bytes(), self.to.0.to_le_bytes()].concat()
    }
    fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        check_len("clone_space", body, 16)?;
        Ok(CloneSpace {
            from: Asid(u64_at(body, 0)),
            to: Asid(u64_at(body, 8)),
        })
    }
}

impl FreeRange {
    fn encode_body(&self) -> Vec<u8> {
        self.encode().to_vec()
    }
    fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        Self::decode(body)
    }
}
