//! lego's wire protocol.
//!
//! Every message between lego components is a *frame*: a fixed 24-byte header
//! ([`frame::Header`]) followed by a body of at most a negotiated maximum size.
//! The header carries a protocol version, an operation code ([`Op`]), flags
//! (response, error) and a request id, so that many requests can be in flight on
//! one connection and their answers may come back in any order.
//!
//! Bodies of the data path (page reads and writes) have fixed binary layouts with
//! raw 4 KiB page payloads ([`pages`]); control-plane bodies (registration,
//! placement, vNodes, cluster state) are JSON ([`control`], [`jobs`]); the file
//! protocol between processor and storage monitors is postcard ([`fs`]). Each
//! request is a type of its own that names its op code and its reply type
//! ([`request::Request`]). Address spaces, pages and vRegions are types too
//! ([`types`]). Errors travel as frames with the error flag and an
//! [`ErrorBody`]. Connections start with a mutual challenge-response handshake
//! over HMAC-SHA256 ([`auth`]).
//!
//! Every decoder in this crate returns [`WireError`] on malformed input and never
//! panics; `fuzz/` at the workspace root holds a cargo-fuzz target for them.
#![forbid(unsafe_code)]

pub mod auth;
pub mod control;
pub mod elastic;
pub mod error;
pub mod frame;
pub mod fs;
pub mod identity;
pub mod jobs;
pub mod ops;
pub mod pages;
pub mod request;
pub mod types;

pub use error::{ErrorBody, WireError};
pub use frame::{Frame, Header, FLAG_ERROR, FLAG_RESPONSE, HEADER_LEN};
pub use ops::{ErrorCode, Op};
pub use request::{Empty, Ping, Request};
pub use types::{
    Asid, Backup, ComponentId, Health, PageNo, Role, VRegionIdx, VRegionState, VnodeId,
};

/// Protocol version spoken by this build. A peer with another version is refused.
pub const VERSION: u8 = 2;
/// Size of a page in bytes: the unit of memory paged between components.
pub const PAGE_SIZE: usize = 4096;
/// Default maximum body size of a frame (8 MiB).
pub const DEFAULT_MAX_BODY: u32 = 8 << 20;
/// Most pages one read or write request may carry.
pub const MAX_BATCH_PAGES: usize = 1024;
