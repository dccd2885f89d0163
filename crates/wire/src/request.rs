//! One type per request: each names its operation code and its reply type,
//! and knows how both travel, so that a caller cannot pair a request with
//! the wrong op or decode the wrong answer (`Client::call` and the servers'
//! `answer` are written once, over this trait).
//!
//! Control-plane requests are JSON ([`json_request!`]); the small binary
//! ones of the memory monitor (`FreeRange`, `FreeSpace`, `CloneSpace`) and a
//! job's stdin implement the trait by hand. The data path's page reads and
//! writes, whose bodies carry pages without copying, and the file protocol,
//! whose bodies borrow their data, have calls of their own.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{Op, WireError};

/// A request: its op code, its encoding, and its reply's.
pub trait Request: Sized {
    /// The operation code it travels under.
    const OP: Op;
    /// What a successful answer carries.
    type Reply;

    fn encode(&self) -> Vec<u8>;
    fn decode(body: &[u8]) -> Result<Self, WireError>;
    fn encode_reply(reply: Self::Reply) -> Vec<u8>;
    fn decode_reply(body: &[u8]) -> Result<Self::Reply, WireError>;
}

/// Encodes a JSON body.
pub fn to_body<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("control types always serialize")
}

/// Decodes a JSON body; malformed JSON is an error, never a panic.
pub fn from_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    Ok(serde_json::from_slice(body)?)
}

/// An answer that says only "done": `{}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Declares JSON requests: `Type => Reply, Op::Code;`.
#[macro_export]
macro_rules! json_request {
    ($($req:ty => $reply:ty, $op:expr;)*) => {$(
        impl $crate::request::Request for $req {
            const OP: $crate::Op = $op;
            type Reply = $reply;

            fn encode(&self) -> Vec<u8> {
                $crate::request::to_body(self)
            }
            fn decode(body: &[u8]) -> Result<Self, $crate::WireError> {
                $crate::request::from_body(body)
            }
            fn encode_reply(reply: $reply) -> Vec<u8> {
                $crate::request::to_body(&reply)
            }
            fn decode_reply(body: &[u8]) -> Result<$reply, $crate::WireError> {
                $crate::request::from_body(body)
            }
        }
    )*};
}

/// `Ping` -> an empty body: is the peer there and serving?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping;

impl Request for Ping {
    const OP: Op = Op::Ping;
    type Reply = ();

    fn encode(&self) -> Vec<u8> {
        Vec::new()
    }
    fn decode(_: &[u8]) -> Result<Self, WireError> {
        Ok(Ping)
    }
    fn encode_reply(_: ()) -> Vec<u8> {
        Vec::new()
    }
    fn decode_reply(_: &[u8]) -> Result<(), WireError> {
        Ok(())
    }
}
