//! The memory monitor (LegoOS's mComponent).
//!
//! - [`store`]: the page store: pages of address spaces, allocated on first
//!   write, bounded by a capacity, freed by range or by whole address space.
//! - [`service`]: the request handler: decodes page requests, checks that the
//!   connection is entitled to the address space, and answers.
//! - [`grants`]: the vRegions the manager placed here, by address space,
//!   and vNodes' quotas: what a vNode's process may write.
//! - [`mirror`]: rebuilding a vRegion's second copy on another monitor, and
//!   forwarding writes to it meanwhile.
//! - [`daemon`]: `lego memory`: listens, registers with the manager and
//!   heartbeats its use and counters.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod grants;
pub mod mirror;
pub mod service;
pub mod store;

pub use daemon::{run, MemoryConfig};
pub use store::{PageStore, StoreError};
