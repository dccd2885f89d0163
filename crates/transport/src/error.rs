//! Errors of the transport.

use lego_wire::{ErrorCode, Op, WireError};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer} refused the handshake: {message}")]
    AuthRefused { peer: String, message: String },
    #[error("no key to prove this connection to {peer} (member {server}): {why}")]
    NoKey {
        peer: String,
        server: u32,
        why: String,
    },
    #[error("{peer} failed to prove it holds the cluster secret")]
    ServerNotAuthentic { peer: String },
    #[error("handshake with {peer} failed")]
    Handshake {
        peer: String,
        #[source]
        source: WireError,
    },
    #[error("{op} refused by {peer}: {message} ({code})")]
    Remote {
        peer: String,
        op: Op,
        code: ErrorCode,
        message: String,
    },
    #[error("connection to {peer} is broken: {reason}")]
    Broken { peer: String, reason: String },
    #[error("{peer} did not answer within {after_ms} ms")]
    Timeout { peer: String, after_ms: u64 },
    #[error("unexpected answer from {peer}")]
    Protocol {
        peer: String,
        #[source]
        source: WireError,
    },
}

impl TransportError {
    /// The error code, when the peer refused the request.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            TransportError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the peer could not be reached or stopped answering (as opposed
    /// to answering with a refusal): the caller may try another replica.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::Handshake { .. }
                | TransportError::NoKey { .. }
                | TransportError::Broken { .. }
                | TransportError::Timeout { .. }
        )
    }
}
