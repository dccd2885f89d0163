//! The storage monitor (LegoOS's sComponent).
//!
//! - [`store`]: each vNode's files as a tree on the local disk, every path
//!   confined to its tree, and the handles of open files.
//! - [`limits`]: who owns a vNode's files, which modes they may have, and
//!   how much disk and how many open files a vNode may hold.
//! - [`service`]: the request handler: decodes file requests, checks that the
//!   connection speaks for the vNode it names, and answers.
//! - [`daemon`]: `lego storage`: listens, registers with the manager and
//!   heartbeats its disk use and counters.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod limits;
pub mod service;
pub mod store;

pub use daemon::{run, StorageConfig};
pub use limits::Limits;
pub use store::{FileStore, FsError};
