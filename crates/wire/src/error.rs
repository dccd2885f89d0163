//! Errors of the wire protocol and the error body carried by error frames.

use crate::ops::ErrorCode;

/// Everything that can go wrong while decoding or checking a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#06x}: not a lego peer")]
    BadMagic(u16),
    #[error("protocol version {0} is not supported (this build speaks {v})", v = crate::VERSION)]
    BadVersion(u8),
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("unknown operation code {0:#06x}")]
    UnknownOp(u16),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    #[error("reserved header field is {0:#x}, expected 0")]
    Reserved(u16),
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("malformed JSON body")]
    Json(#[from] serde_json::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed by peer in the middle of a frame")]
    Truncated,
    #[error("i/o error on the connection")]
    Io(#[from] std::io::Error),
}

impl WireError {
    pub fn malformed(what: &'static str, why: impl Into<String>) -> Self {
        WireError::Malformed {
            what,
            why: why.into(),
        }
    }
}

/// The body of a frame with [`crate::FLAG_ERROR`] set: a code and a human message.
///
/// Layout: `code: u16 LE`, then the message as UTF-8 to the end of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.message.len());
        out.extend_from_slice(&(self.code as u16).to_le_bytes());
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        if body.len() < 2 {
            return Err(WireError::malformed("error body", "shorter than 2 bytes"));
        }
        let code = ErrorCode::try_from(u16::from_le_bytes([body[0], body[1]]))?;
        let message = String::from_utf8_lossy(&body[2..]).into_owned();
        Ok(ErrorBody { code, message })
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// An error and its sources on one line: `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
