//! Sealed links: every byte after the handshake encrypted and authenticated.
//!
//! A sealed half wraps a link's plain half. The writer turns each write into
//! one record, the reader takes records apart again; the frame code above
//! sees the same byte stream as on a plaintext link.
//!
//! ```text
//! record = len: u32 LE (of what follows) | AES-256-GCM(plaintext) | tag (16)
//! nonce  = 0u32 | record number u64 LE   (one key per direction, so no
//!          nonce repeats; the length is the associated data)
//! ```
//!
//! A record that fails authentication (a byte altered on the wire, a record
//! dropped, replayed or reordered: its number no longer matches) is a read
//! error of kind `InvalidData`; the connection ends and nothing of the
//! record reaches the handler. The keys come from the handshake
//! ([`lego_wire::auth::Hello::session_keys`]) after an X25519 exchange.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::SystemRandom;

use lego_wire::auth::KEY_LEN;

use crate::link::{LinkRead, ReadHalf, WriteHalf};

/// How far a record's reads may run past its deadline (the link's timeout
/// is shortened only once this much of it is used).
const SLACK: Duration = Duration::from_millis(5);

/// Most plaintext in one record.
pub const MAX_RECORD: usize = 64 << 10;
const TAG: usize = 16;

/// What a record that fails to open is called in errors and logs.
pub const TAMPERED: &str =
    "a sealed record failed authentication (altered, dropped or replayed on the wire)";

fn key(k: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte AES-256 key"))
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One side's ephemeral X25519 key for a handshake.
pub(crate) struct Ephemeral {
    private: EphemeralPrivateKey,
    pub public: [u8; KEY_LEN],
}

impl Ephemeral {
    pub fn generate() -> io::Result<Self> {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng)
            .map_err(|_| io::Error::other("cannot make an X25519 key"))?;
        let public = private
            .compute_public_key()
            .map_err(|_| io::Error::other("cannot make an X25519 key"))?;
        let public = public
            .as_ref()
            .try_into()
            .expect("X25519 keys are 32 bytes");
        Ok(Ephemeral { private, public })
    }

    /// The shared secret with the peer whose public key is `peer`.
    pub fn agree(self, peer: &[u8; KEY_LEN]) -> io::Result<[u8; KEY_LEN]> {
        agreement::agree_ephemeral(self.private, &UnparsedPublicKey::new(&X25519, peer), |s| {
            s.try_into().expect("X25519 secrets are 32 bytes")
        })
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a bad X25519 public key"))
    }
}

/// The writing half of a sealed link.
pub struct SealedWrite {
    inner: WriteHalf,
    key: LessSafeKey,
    seq: u64,
    buf: Vec<u8>,
}

impl SealedWrite {
    pub fn new(inner: WriteHalf, k: &[u8; KEY_LEN]) -> Self {
        SealedWrite {
            inner,
            key: key(k),
            seq: 0,
            buf: Vec::with_capacity(MAX_RECORD + TAG + 4),
        }
    }
}

impl Write for SealedWrite {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(MAX_RECORD);
        let len = ((n + TAG) as u32).to_le_bytes();
        self.buf.clear();
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(&data[..n]);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.seq), Aad::from(len), &mut self.buf[4..])
            .map_err(|_| io::Error::other("cannot seal a record"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.seq += 1;
        // A record is written whole or the link is broken: a partial one
        // could not be finished later without breaking the stream anyway.
        self.inner.write_all(&self.buf)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The reading half of a sealed link. Bytes of a record read before a
/// timeout are kept, so a read that timed out can be tried again.
pub struct SealedRead {
    inner: ReadHalf,
    key: LessSafeKey,
    seq: u64,
    /// Bytes read from the link with the handshake, not yet taken.
    early: Vec<u8>,
    /// The record being read: its ciphertext so far, then its plaintext.
    rec: Vec<u8>,
    /// Bytes of `rec` read from the link (while reading), or the end of the
    /// plaintext (once opened).
    filled: usize,
    /// Next plaintext byte to hand out; `None` while a record is being read.
    pos: Option<usize>,
    /// The read timeout: it bounds each whole read of this half, however
    /// many reads of the link one record takes (a peer trickling a byte at
    /// a time cannot stretch it).
    timeout: std::cell::Cell<Option<Duration>>,
    /// The link's timeout was shortened for a record's deadline.
    shortened: bool,
}

impl SealedRead {
    /// `early`: bytes read from the link past the handshake, before sealing began.
    pub fn new(inner: ReadHalf, k: &[u8; KEY_LEN], early: &[u8]) -> Self {
        SealedRead {
            inner,
            key: key(k),
            seq: 0,
            early: early.to_vec(),
            rec: Vec::with_capacity(MAX_RECORD + TAG + 4),
            filled: 0,
            pos: None,
            timeout: std::cell::Cell::new(None),
            shortened: false,
        }
    }

    fn bad(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_string())
    }

    /// Reads from the link until `self.rec` holds `want` bytes (never more),
    /// all by `deadline`.
    fn fill_to(&mut self, want: usize, deadline: Option<Instant>) -> io::Result<()> {
        if self.rec.len() < want {
            self.rec.resize(want, 0);
        }
        while self.filled < want {
            let dst = &mut self.rec[self.filled..want];
            let n = if self.early.is_empty() {
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
                    }
                    // The link's own timeout is the whole one: shorten it
                    // only once a record has taken a while (a system call
                    // saved on the usual record, read at once).
                    let whole = self.timeout.get().unwrap_or(left);
                    if whole.saturating_sub(left) > SLACK {
                        self.inner.set_read_timeout(Some(left))?;
                        self.shortened = true;
                    }
                }
                self.inner.read(dst)?
            } else {
                let n = dst.len().min(self.early.len());
                dst[..n].copy_from_slice(&self.early[..n]);
                self.early.drain(..n);
                n
            };
            match n {
                0 if self.filled == 0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                0 => return Err(Self::bad("the link ended inside a sealed record")),
                n => self.filled += n,
            }
        }
        Ok(())
    }

    /// Reads and opens the next record.
    fn next_record(&mut self) -> io::Result<()> {
        let deadline = self.timeout.get().map(|t| Instant::now() + t);
        self.fill_to(4, deadline)?;
        let len = u32::from_le_bytes(self.rec[..4].try_into().expect("4 bytes")) as usize;
        if !(TAG + 1..=MAX_RECORD + TAG).contains(&len) {
            return Err(Self::bad(TAMPERED));
        }
        self.fill_to(4 + len, deadline)?;
        let aad = Aad::from(<[u8; 4]>::try_from(&self.rec[..4]).expect("4 bytes"));
        let plain = self
            .key
            .open_in_place(nonce(self.seq), aad, &mut self.rec[4..4 + len])
            .map_err(|_| Self::bad(TAMPERED))?
            .len();
        self.seq += 1;
        if std::mem::take(&mut self.shortened) {
            self.inner.set_read_timeout(self.timeout.get())?;
        }
        self.pos = Some(4);
        self.filled = 4 + plain;
        Ok(())
    }

    /// Whether plaintext is waiting to be read.
    fn has_plain(&self) -> bool {
        self.pos.is_some_and(|p| p < self.filled)
    }
}

impl Read for SealedRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if !self.has_plain() {
            if self.pos.take().is_some() {
                self.filled = 0;
            }
            match self.next_record() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let pos = self.pos.expect("an opened record");
        let n = out.len().min(self.filled - pos);
        out[..n].copy_from_slice(&self.rec[pos..pos + n]);
        self.pos = Some(pos + n);
        Ok(n)
    }
}

impl LinkRead for SealedRead {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.timeout.set(t);
        self.inner.set_read_timeout(t)
    }

    fn spin_until_readable(&self, spin: Duration) {
        if !self.has_plain() && self.early.is_empty() {
            self.inner.spin_until_readable(spin)
        }
    }
}
