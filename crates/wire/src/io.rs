//! Bodies that carry a job's standard streams between `lego run` and the
//! processor monitor: raw bytes, no JSON.
//!
//! ```text
//! Output reply   chunk*      chunk = kind u8 | 0 u8 x3 | len u32 | bytes
//!                kind 1 stdout, 2 stderr, 3 exit (bytes = i32 LE wait status code, see below)
//! Stdin          job u64 | bytes (none: end of input)
//! ```
//! The exit chunk carries the exit code as `lego run` should return it:
//! the program's exit status, or 128+N when it was killed by signal N.

use crate::WireError;

/// Kinds of output chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
    Exit = 3,
}

/// One chunk of a job's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub kind: Stream,
    pub data: &'a [u8],
}

pub fn push_chunk(out: &mut Vec<u8>, kind: Stream, data: &[u8]) {
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

pub fn decode_chunks(mut body: &[u8]) -> Result<Vec<Chunk<'_>>, WireError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 8 {
            return Err(WireError::malformed("output", "chunk header cut short"));
        }
        let kind = match body[0] {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            3 => Stream::Exit,
            k => {
                return Err(WireError::malformed(
                    "output",
                    format!("unknown stream {k}"),
                ))
            }
        };
        let len = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
        if body.len() < 8 + len {
            return Err(WireError::malformed("output", "chunk data cut short"));
        }
        if kind == Stream::Exit && len != 4 {
            return Err(WireError::malformed("output", "exit chunk is not 4 bytes"));
        }
        out.push(Chunk {
            kind,
            data: &body[8..8 + len],
        });
        body = &body[8 + len..];
    }
    Ok(out)
}

pub fn encode_stdin(job: u64, data: &[u8]) -> Vec<u8> {
    [&job.to_le_bytes()[..], data].concat()
}

pub fn decode_stdin(body: &[u8]) -> Result<(u64, &[u8]), WireError> {
    if body.len() < 8 {
        return Err(WireError::malformed("stdin", "shorter than 8 bytes"));
    }
    Ok((
        u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
        &body[8..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_reject_garbage() {
        let mut b = Vec::new();
        push_chunk(&mut b, Stream::Stdout, b"hello");
        push_chunk(&mut b, Stream::Stderr, b"");
        push_chunk(&mut b, Stream::Exit, &7i32.to_le_bytes());
        let c = decode_chunks(&b).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c[0],
            Chunk {
                kind: Stream::Stdout,
                data: b"hello"
            }
        );
        assert!(decode_chunks(&b[..b.len() - 1]).is_err());
        assert!(decode_chunks(&[9, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(
            decode_stdin(&encode_stdin(5, b"x")).unwrap(),
            (5, &b"x"[..])
        );
    }
}
