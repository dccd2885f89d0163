//! lego's transport.
//!
//! - [`link`]: the [`Transport`] trait and its implementations. A transport
//!   connects and listens on addresses and yields [`Link`]s: byte streams that
//!   split into a read half and a write half. TCP (`HOST:PORT`, with
//!   TCP_NODELAY) and Unix sockets (`unix:PATH`) exist today; shared-memory
//!   rings can slot in as one more implementation without touching a monitor.
//! - [`client`]: an authenticated connection on which many threads may have
//!   requests in flight at once (pipelining by request id, no extra thread on
//!   the reply path: whichever waiter holds the read half reads for everyone).
//! - [`server`]: the accept loop with its connection limits, and one thread
//!   per connection (`conn`: the handshake, deadlines, requests handed to a
//!   [`server::Handler`]) that survives bad peers; [`server::answer`] serves
//!   one typed request.
//! - [`redial`]: connections made again when they broke, and [`Patience`]:
//!   how long a call waits for a peer that cannot be reached.
//! - [`keys`]: who holds which key: a daemon's [`Identity`], a server's
//!   [`Keyring`] (with the members [`Revoked`]), a client's [`Credentials`].
//! - [`seal`]: sealed links: AES-256-GCM records keyed per session by an
//!   X25519 exchange inside the handshake.
//! - [`sync`]: the one lock helper.
#![forbid(unsafe_code)]

pub mod client;
mod conn;
pub mod error;
pub mod keys;
pub mod link;
pub mod redial;
pub mod seal;
pub mod server;
pub mod sync;

pub use client::{seal_by_default, Client, ClientOptions, Credentials};
pub use error::TransportError;
pub use keys::{Identity, Keyring, Revoked};
pub use link::{connect, listen, Link, Listener, Transport, BULK_TOS};
pub use redial::{DialFn, Patience, Pool, Redial};
pub use server::{
    answer, spawn_server, Handler, PeerInfo, Reject, ServerConfig, ServerCounters, ServerHandle,
};
pub use sync::lock;
