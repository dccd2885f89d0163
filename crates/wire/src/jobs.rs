//! A processor monitor's requests: starting a program (`Launch`), its
//! output and exit (`Output`, a long poll), its stdin, signals, and the list
//! of jobs. Launch, Signal and Jobs are JSON; the bodies that carry a job's
//! standard streams are raw bytes, no JSON:
//!
//! ```text
//! Output reply   chunk*      chunk = kind u8 | 0 u8 x3 | len u32 | bytes
//!                kind 1 stdout, 2 stderr, 3 exit (bytes = i32 LE exit code, see below)
//! Stdin          job u64 | bytes (none: end of input)
//! ```
//! The exit chunk carries the exit code as `lego run` should return it:
//! the program's exit status, or 128+N when it was killed by signal N.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::request::{Empty, Request};
use crate::{Op, WireError};

/// `Launch`: start a program under the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchReq {
    pub argv: Vec<String>,
    /// The environment of the program (the processor adds the runtime's).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub vnode: String,
    /// ExCache quota in bytes; `None` with `excache_percent` None: the default.
    pub excache: Option<u64>,
    /// ExCache quota as a percentage of the processor's ExCache.
    pub excache_percent: Option<u32>,
    /// Do not share `cwd` with the program (read-only) and start it in its
    /// vNode's `/data` (or `/`) instead.
    #[serde(default)]
    pub isolated: bool,
    /// Ports of the job's vIP to forward from the processor host, as
    /// (host port, vIP port); host port 0: any free one.
    #[serde(default)]
    pub publish: Vec<(u16, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchResp {
    pub job: u64,
    pub pid: u32,
    /// The quota granted, in bytes.
    pub excache: u64,
    /// Forwarded ports: (host address:port, vIP:port).
    #[serde(default)]
    pub published: Vec<(String, String)>,
}

/// `Output`: what the job wrote since the last call, waiting up to
/// `max_wait_ms` for something to report; answered by [`OutputChunks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputReq {
    pub job: u64,
    /// Longest time to wait for something to report.
    pub max_wait_ms: u64,
}

/// The answer to [`OutputReq`]: encoded chunks (see [`decode_chunks`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputChunks(pub Vec<u8>);

impl OutputChunks {
    pub fn chunks(&self) -> Result<Vec<Chunk<'_>>, WireError> {
        decode_chunks(&self.0)
    }
}

impl Request for OutputReq {
    const OP: Op = Op::Output;
    type Reply = OutputChunks;

    fn encode(&self) -> Vec<u8> {
        crate::request::to_body(self)
    }
    fn decode(body: &[u8]) -> Result<Self, WireError> {
        crate::request::from_body(body)
    }
    fn encode_reply(reply: OutputChunks) -> Vec<u8> {
        reply.0
    }
    fn decode_reply(body: &[u8]) -> Result<OutputChunks, WireError> {
        decode_chunks(body)?;
        Ok(OutputChunks(body.to_vec()))
    }
}

/// `Signal`: a signal to the job's process group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReq {
    pub job: u64,
    pub signal: i32,
}

/// `Jobs`: every job a processor monitor knows, with its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsReq;

/// One job of a processor monitor, for `Jobs` and `lego status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job: u64,
    pub pid: u32,
    pub vnode: String,
    pub argv: Vec<String>,
    pub excache: u64,
    pub running: bool,
    /// The runtime's counters (faults, evictions, bytes moved, ...).
    pub counters: BTreeMap<String, u64>,
}

/// `Stdin`: bytes for the job's stdin; none closes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StdinReq {
    pub job: u64,
    pub data: Vec<u8>,
}

impl Request for StdinReq {
    const OP: Op = Op::Stdin;
    type Reply = ();

    fn encode(&self) -> Vec<u8> {
        encode_stdin(self.job, &self.data)
    }
    fn decode(body: &[u8]) -> Result<Self, WireError> {
        let (job, data) = decode_stdin(body)?;
        Ok(StdinReq {
            job,
            data: data.to_vec(),
        })
    }
    fn encode_reply(_: ()) -> Vec<u8> {
        Vec::new()
    }
    fn decode_reply(_: &[u8]) -> Result<(), WireError> {
        Ok(())
    }
}

crate::json_request! {
    LaunchReq => LaunchResp, Op::Launch;
    SignalReq => Empty, Op::Signal;
    JobsReq => Vec<JobInfo>, Op::Jobs;
}

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

/// The counters the ExCache runtime reports (`lego_rt::stats`): a
/// processor monitor keeps these names only (and [`RT_HIST_PREFIX`]
/// buckets), whatever else a job's process sends.
pub const RT_COUNTERS: &[&str] = &[
    "faults_zero_filled",
    "zero_pages_ahead",
    "faults_fetched",
    "faults_fetched_together",
    "faults_write_protect",
    "prefetched_pages",
    "prefetch_used",
    "prefetch_wasted",
    "readahead_hits",
    "readahead_dropped",
    "evictions_clean",
    "evictions_dirty",
    "refaults",
    "second_chances",
    "bytes_fetched",
    "bytes_written_back",
    "resident_pages",
    "resident_peak_pages",
    "excache_pages",
    "backup_reads",
    "degraded_writes",
    "moved_copies",
    "remote_fault_ns_total",
    "remote_faults_timed",
    "pages_freed",
    "forks",
    "local_shared_maps",
    "quota_refusals",
    "leases_ahead",
    "leases_waited",
    "remote_fault_p50_us",
    "remote_fault_p99_us",
    "asid",
];

/// The runtime's fault-latency histogram buckets: this prefix, then the
/// bucket's midpoint in µs, rounded down.
pub const RT_HIST_PREFIX: &str = "remote_fault_hist_us_";

/// The fault-latency histogram among `counters`: (bucket's µs, faults) of
/// every key that is `prefix` (before [`RT_HIST_PREFIX`]: "" in a job's
/// counters, "rt_" in a processor monitor's) + `RT_HIST_PREFIX` + µs.
pub fn rt_histogram<'a>(
    counters: impl IntoIterator<Item = (&'a String, &'a u64)>,
    prefix: &str,
) -> Vec<(u64, u64)> {
    counters
        .into_iter()
        .filter_map(|(k, v)| {
            let us = k.strip_prefix(prefix)?.strip_prefix(RT_HIST_PREFIX)?;
            Some((us.parse().ok()?, *v))
        })
        .collect()
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
