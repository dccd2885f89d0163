//! Framing: the fixed 24-byte header and reading/writing whole frames.
//!
//! ```text
//!  0      2    3      4      6          8                16       20        24
//!  +------+----+------+------+----------+----------------+--------+---------+------
//!  |magic |ver |flags |  op  | reserved |   request id   |body len| reserved| body..
//!  |"LG"  | 1  |R|E   | u16  |    0     |      u64       |  u32   |    0    |
//!  +------+----+------+------+----------+----------------+--------+---------+------
//!  all integers little-endian; R = response, E = error
//! ```

use std::io::{self, Read, Write};

use crate::{ops::Op, ErrorBody, WireError, VERSION};

/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;
/// The two magic bytes "LG", read as a little-endian u16.
pub const MAGIC: u16 = u16::from_le_bytes(*b"LG");
/// Flag: this frame answers a request.
pub const FLAG_RESPONSE: u8 = 0x01;
/// Flag: this frame is an error answer; the body is an [`ErrorBody`].
pub const FLAG_ERROR: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_RESPONSE | FLAG_ERROR;

/// The fixed header of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub flags: u8,
    pub req_id: u64,
    pub len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.flags;
        b[4..6].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[8..16].copy_from_slice(&self.req_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and checks a header; `max_body` bounds the announced body length.
    pub fn decode(b: &[u8; HEADER_LEN], max_body: u32) -> Result<Header, WireError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[2] != VERSION {
            return Err(WireError::BadVersion(b[2]));
        }
        let flags = b[3];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::malformed(
                "header",
                format!("unknown flags {flags:#04x}"),
            ));
        }
        let reserved = u16::from_le_bytes([b[6], b[7]]);
        if reserved != 0 {
            return Err(WireError::Reserved(reserved));
        }
        let reserved2 = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if reserved2 != 0 {
            return Err(WireError::Reserved(reserved2 as u16 | 0x8000));
        }
        let len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        if len > max_body {
            return Err(WireError::TooLarge { len, max: max_body });
        }
        let op = Op::try_from(u16::from_le_bytes([b[4], b[5]]))?;
        let req_id = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        Ok(Header {
            op,
            flags,
            req_id,
            len,
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
}

/// A whole frame: header and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Vec<u8>,
}

impl Frame {
    /// If this is an error frame, its decoded error body.
    pub fn error(&self) -> Option<ErrorBody> {
        if !self.header.is_error() {
            return None;
        }
        Some(ErrorBody::decode(&self.body).unwrap_or_else(|e| {
            ErrorBody::new(
                crate::ErrorCode::BadFrame,
                format!("undecodable error body: {e}"),
            )
        }))
    }
}

/// Reads the header of the next frame. `Closed` on a clean end of stream before
/// any byte of it, `Truncated` if the stream ends inside it.
pub fn read_header(r: &mut impl Read, max_body: u32) -> Result<Header, WireError> {
    let mut hb = [0u8; HEADER_LEN];
    read_full(r, &mut hb, true)?;
    Header::decode(&hb, max_body)
}

/// Reads the body announced by `header`.
pub fn read_body(r: &mut impl Read, header: &Header) -> Result<Vec<u8>, WireError> {
    let mut body = vec![0u8; header.len as usize];
    read_full(r, &mut body, false)?;
    Ok(body)
}

/// Reads one whole frame.
/// Reads the body of a frame whose header was just read into `buf` from
/// byte `at` on (so that a caller can align what follows a known-size
/// prefix); `buf` is resized to `at` plus the body's length. A buffer reused
/// across frames is never cleared or zeroed again: only bytes past its old
/// length are initialised.
pub fn read_body_into(
    r: &mut impl Read,
    header: &Header,
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<(), WireError> {
    let len = at + header.len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
    read_full(r, &mut buf[at..], false)
}

pub fn read_frame(r: &mut impl Read, max_body: u32) -> Result<Frame, WireError> {
    let header = read_header(r, max_body)?;
    let body = read_body(r, &header)?;
    Ok(Frame { header, body })
}

fn read_full(r: &mut impl Read, buf: &mut [u8], at_boundary: bool) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_boundary => return Err(WireError::Closed),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(())
}

/// Writes one frame whose body is the concatenation of `parts` (no flush).
pub fn write_frame(
    w: &mut impl Write,
    op: Op,
    flags: u8,
    req_id: u64,
    parts: &[&[u8]],
) -> Result<(), WireError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    let header = Header {
        op,
        flags,
        req_id,
        len,
    };
    w.write_all(&header.encode())?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Writes an error answer to request `req_id` of operation `op`.
pub fn write_error(
    w: &mut impl Write,
    op: Op,
    req_id: u64,
    err: &ErrorBody,
) -> Result<(), WireError> {
    write_frame(w, op, FLAG_RESPONSE | FLAG_ERROR, req_id, &[&err.encode()])
}
