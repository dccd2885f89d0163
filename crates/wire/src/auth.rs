//! The cluster secret, per-vNode keys and the mutual challenge-response
//! handshake, which can also agree the keys of a sealed link.
//!
//! ```text
//! client                                          server
//!   |  <----- Challenge { server nonce sn, seal? }  |
//!   |  Hello { claim, client nonce cn,              |
//!   |          HMAC(key, "hello"|sn|cn|claim|cp),   |
//!   |          cp: client X25519 key if sealed } ----->  server checks the proof
//!   |  <----- Welcome { HMAC(key, "welcome"|cn|sn|claim|cp|sp), sp }
//!   |                                               client checks the server
//!   |  sealed: keys = HMAC(HMAC(key, "lego-seal-v1"|cn|sn|claim|cp|sp|DH), dir)
//! ```
//!
//! `key` depends on who the server is (its identity, in the challenge) and
//! what the client claims:
//!
//! ```text
//! server identity 0: the manager, or a daemon holding the cluster secret S
//!   Component (the CLI, daemons started with S)  S
//!   Vnode v   (a runtime inside an application)  HMAC(S, "lego-vnode-key-v1"|v)
//!   Member m  (a daemon that joined with a token) K_m = HMAC(S, "lego-member-key-v1"|m)
//!   Join t    (a daemon joining, manager only)   the join token's own key
//! server identity n: a daemon that joined, holding only K_n
//!   any claim c                                  HMAC(K_n, "lego-peer-key-v1"|c)
//! ```
//!
//! So a daemon that joined holds no key but its own: it proves itself to the
//! manager with `K_m`, and gets the key for server `n` from the manager
//! (which refuses once `m` or `n` is revoked); server `n` derives the same key
//! from `K_n` and the claim alone, and refuses a revoked member by its list.
//! Nonces are fresh random 32 bytes on both sides, so a recorded handshake
//! cannot be replayed; no key ever crosses the wire in the handshake.
//! The seal flag and both public keys are under the proofs, so a relay can
//! neither turn sealing off nor put itself in the middle of the key exchange.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::WireError;

type HmacSha256 = Hmac<Sha256>;

/// Length of secrets, keys, nonces and MACs.
pub const KEY_LEN: usize = 32;

/// The secret every component of a cluster holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; KEY_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Secret(b)
    }

    /// A fresh random secret.
    pub fn generate() -> Result<Self, WireError> {
        Ok(Secret(random_bytes()?))
    }

    /// Parses 64 hex digits (surrounding whitespace is ignored).
    pub fn from_hex(text: &str) -> Result<Self, WireError> {
        let t = text.trim();
        if t.len() != 2 * KEY_LEN || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(WireError::malformed(
                "secret",
                format!("expected {} hex digits", 2 * KEY_LEN),
            ));
        }
        let mut b = [0u8; KEY_LEN];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Secret(b))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The key a vNode's processes authenticate with.
    pub fn vnode_key(&self, vnode: u32) -> [u8; KEY_LEN] {
        mac(&self.0, &[b"lego-vnode-key-v1", &vnode.to_le_bytes()])
    }

    /// What proves that job `job` runs in vNode `vnode`: given by the
    /// processor monitor that started it to its runtime, checked by the
    /// manager when a process names the job as the owner of a new address
    /// space (so no vNode can make its spaces count as another's job).
    pub fn job_proof(&self, job: u64, vnode: u32) -> [u8; KEY_LEN] {
        mac(&self.0, &[&job_proof_message(job, vnode)])
    }

    /// [`Self::job_proof`] as 64 hex digits (how the runtime is given it).
    pub fn job_proof_hex(&self, job: u64, vnode: u32) -> String {
        hex(&self.job_proof(job, vnode))
    }

    /// Whether `proof` (hex) is the proof of `job` in `vnode`; compared in
    /// constant time.
    pub fn check_job_proof(&self, job: u64, vnode: u32, proof: &str) -> bool {
        self.check_hex_tag(&[&job_proof_message(job, vnode)], proof)
    }

    /// The bearer token of the manager's HTTP `/state`, 64 hex digits.
    pub fn http_token_hex(&self) -> String {
        hex(&mac(&self.0, &[b"lego-http-state-v1"]))
    }

    /// Whether `token` is [`Self::http_token_hex`]; compared in constant time.
    pub fn check_http_token(&self, token: &str) -> bool {
        self.check_hex_tag(&[b"lego-http-state-v1"], token)
    }

    /// Whether `tag` (64 hex digits) is the MAC of `parts` under the
    /// secret; compared in constant time.
    fn check_hex_tag(&self, parts: &[&[u8]], tag: &str) -> bool {
        Secret::from_hex(tag).is_ok_and(|t| verify(&self.0, parts, &t.0))
    }

    /// The key of member `id`: a daemon that joined with a token holds
    /// this and no other.
    pub fn member_key(&self, id: u32) -> [u8; KEY_LEN] {
        mac(&self.0, &[b"lego-member-key-v1", &id.to_le_bytes()])
    }

    /// The key that proves `claim` to a holder of the secret (a join
    /// token's key is the token's own, not derived: `None`).
    pub fn key_for(&self, claim: Claim) -> Option<[u8; KEY_LEN]> {
        match claim {
            Claim::Component => Some(self.0),
            Claim::Vnode(v) => Some(self.vnode_key(v)),
            Claim::Member(m) => Some(self.member_key(m)),
            Claim::Join(_) => None,
        }
    }

    /// The key that proves `claim` to server `server` (0: a holder of the
    /// secret; else the member of that id).
    pub fn key_at(&self, server: u32, claim: Claim) -> Option<[u8; KEY_LEN]> {
        match server {
            0 => self.key_for(claim),
            n => Some(peer_key(&self.member_key(n), claim)),
        }
    }
}

/// The key that proves `claim` to the member whose own key is `member_key`.
pub fn peer_key(member_key: &[u8; KEY_LEN], claim: Claim) -> [u8; KEY_LEN] {
    mac(member_key, &[b"lego-peer-key-v1", &claim.encode()])
}

/// A one-time join token, `lego-join-ID-KEY` (KEY: 64 hex digits): made by
/// `lego token create`, it lets one daemon join and get its own key.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: u32,
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}, ..)", self.id)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lego-join-{}-{}", self.id, hex(&self.key))
    }
}

impl std::str::FromStr for JoinToken {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, WireError> {
        let bad =
            || WireError::malformed("join token", "expected lego-join-ID-KEY (64 hex digits)");
        let rest = s.trim().strip_prefix("lego-join-").ok_or_else(bad)?;
        let (id, key) = rest.split_once('-').ok_or_else(bad)?;
        let id: u32 = id.parse().map_err(|_| bad())?;
        let key = Secret::from_hex(key).map_err(|_| bad())?;
        if id == 0 {
            return Err(bad());
        }
        Ok(JoinToken { id, key: key.0 })
    }
}

impl JoinToken {
    /// The member key the manager gives for this token, hidden from anyone
    /// without the token: `key XOR HMAC(token key, "lego-join-wrap-v1"|member)`.
    pub fn wrap(&self, member: u32, key: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        let pad = mac(&self.key, &[b"lego-join-wrap-v1", &member.to_le_bytes()]);
        std::array::from_fn(|i| key[i] ^ pad[i])
    }
}

/// What a client claims to be, and so what it may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Claim {
    /// A lego daemon or the CLI holding the cluster secret: every right.
    Component,
    /// A process of vNode `id`: holds only that vNode's key.
    Vnode(u32),
    /// A daemon that joined with a token and holds its own key: a
    /// component's rights, until the operator revokes it.
    Member(u32),
    /// A daemon joining with one-time token `id`: may only ask to join.
    Join(u32),
}

impl Claim {
    fn encode(self) -> [u8; 8] {
        let (tag, v) = match self {
            Claim::Component => (1, 0),
            Claim::Vnode(v) => (2, v),
            Claim::Member(m) => (3, m),
            Claim::Join(t) => (4, t),
        };
        let mut b = [0u8; 8];
        b[0] = tag;
        b[4..].copy_from_slice(&v.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self, WireError> {
        let v = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        match (b[0], b[1..4] == [0, 0, 0], v) {
            (1, true, 0) => Ok(Claim::Component),
            (2, true, v) if v != 0 => Ok(Claim::Vnode(v)),
            (3, true, m) if m != 0 => Ok(Claim::Member(m)),
            (4, true, t) if t != 0 => Ok(Claim::Join(t)),
            _ => Err(WireError::malformed("hello", "invalid claim")),
        }
    }

    /// Whether the claim is a lego daemon's or the CLI's (with or without
    /// the cluster secret), not a vNode's process or a joining daemon.
    pub fn is_component(self) -> bool {
        matches!(self, Claim::Component | Claim::Member(_))
    }
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Component => f.write_str("component"),
            Claim::Vnode(v) => write!(f, "vnode {v}"),
            Claim::Member(m) => write!(f, "member {m}"),
            Claim::Join(t) => write!(f, "join token {t}"),
        }
    }
}

/// Fresh random bytes from the OS.
pub fn random_bytes() -> Result<[u8; KEY_LEN], WireError> {
    let mut b = [0u8; KEY_LEN];
    getrandom::getrandom(&mut b)
        .map_err(|e| WireError::Io(std::io::Error::other(e.to_string())))?;
    Ok(b)
}

/// What a job's proof is the MAC of: its label, the job, the vNode.
fn job_proof_message(job: u64, vnode: u32) -> [u8; 29] {
    const LABEL: &[u8; 17] = b"lego-job-proof-v1";
    let mut m = [0u8; 29];
    m[..17].copy_from_slice(LABEL);
    m[17..25].copy_from_slice(&job.to_le_bytes());
    m[25..].copy_from_slice(&vnode.to_le_bytes());
    m
}

/// Lowercase hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

/// Body of [`crate::Op::Challenge`]: the server's nonce, one byte of flags
/// (bit 0: the server seals its links; a client must ask for sealing), then
/// the server's identity (u32: 0 for a holder of the cluster secret, else
/// its member id), which says which key the client must prove.
pub fn decode_challenge(body: &[u8]) -> Result<[u8; KEY_LEN], WireError> {
    match body.len() {
        KEY_LEN | 33 | 37 => Ok(body[..KEY_LEN].try_into().expect("32 bytes")),
        _ => Err(WireError::malformed(
            "challenge",
            "expected a 32-byte nonce",
        )),
    }
}

/// Whether a challenge says that the server seals its links.
pub fn challenge_requires_seal(body: &[u8]) -> bool {
    body.len() >= 33 && body[32] & 1 == 1
}

/// The server's identity in a challenge (0: holds the cluster secret).
pub fn challenge_server(body: &[u8]) -> u32 {
    match body.get(33..37) {
        Some(b) => u32::from_le_bytes(b.try_into().expect("4 bytes")),
        None => 0,
    }
}

/// A challenge's body: `nonce`, whether the server seals its links, and
/// the server's identity.
pub fn encode_challenge(nonce: &[u8; KEY_LEN], seal: bool, server: u32) -> [u8; 37] {
    let mut b = [0u8; 37];
    b[..KEY_LEN].copy_from_slice(nonce);
    b[32] = seal as u8;
    b[33..].copy_from_slice(&server.to_le_bytes());
    b
}

/// The keys that seal one session's frames, one per direction (so no
/// nonce is ever used twice under one key).
#[derive(Clone)]
pub struct SessionKeys {
    pub to_server: [u8; KEY_LEN],
    pub to_client: [u8; KEY_LEN],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// Body of [`crate::Op::Hello`]. With `seal`, the client asks for a sealed
/// link and gives its ephemeral X25519 public key; the proof covers it, so a
/// relay can neither strip the request nor swap the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub claim: Claim,
    pub nonce: [u8; KEY_LEN],
    pub proof: [u8; KEY_LEN],
    pub seal: Option<[u8; KEY_LEN]>,
}

impl Hello {
    /// Builds the client's hello answering `server_nonce`, for a plaintext link.
    pub fn new(
        secret_key: &[u8; KEY_LEN],
        claim: Claim,
        server_nonce: &[u8; KEY_LEN],
    ) -> Result<Self, WireError> {
        Hello::with_seal(secret_key, claim, server_nonce, None)
    }

    /// Builds the client's hello; `seal` is the client's ephemeral public key
    /// when it asks for a sealed link.
    pub fn with_seal(
        secret_key: &[u8; KEY_LEN],
        claim: Claim,
        server_nonce: &[u8; KEY_LEN],
        seal: Option<[u8; KEY_LEN]>,
    ) -> Result<Self, WireError> {
        let nonce = random_bytes()?;
        let mut hello = Hello {
            claim,
            nonce,
            proof: [0; KEY_LEN],
            seal,
        };
        hello.proof = mac(secret_key, &refs(&hello.proof_parts(server_nonce)));
        Ok(hello)
    }

    fn seal_bytes(&self) -> Vec<u8> {
        match &self.seal {
            None => vec![0],
            Some(k) => [&[1u8][..], k].concat(),
        }
    }

    fn proof_parts(&self, server_nonce: &[u8; KEY_LEN]) -> Vec<Vec<u8>> {
        vec![
            b"hello".to_vec(),
            server_nonce.to_vec(),
            self.nonce.to_vec(),
            self.claim.encode().to_vec(),
            self.seal_bytes(),
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        [
            &self.claim.encode()[..],
            &self.nonce,
            &self.proof,
            &self.seal_bytes(),
        ]
        .concat()
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let seal = match body.len() {
            73 if body[72] == 0 => None,
            105 if body[72] == 1 => Some(body[73..105].try_into().expect("32 bytes")),
            _ => return Err(WireError::malformed("hello", "wrong length")),
        };
        Ok(Hello {
            claim: Claim::decode(&body[..8])?,
            nonce: body[8..40].try_into().expect("32 bytes"),
            proof: body[40..72].try_into().expect("32 bytes"),
            seal,
        })
    }

    /// Server side: does the proof show `key`, the key for the claim?
    pub fn verify(&self, key: &[u8; KEY_LEN], server_nonce: &[u8; KEY_LEN]) -> bool {
        verify(key, &refs(&self.proof_parts(server_nonce)), &self.proof)
    }

    fn welcome_parts(
        &self,
        server_nonce: &[u8; KEY_LEN],
        server_seal: Option<&[u8; KEY_LEN]>,
    ) -> Vec<Vec<u8>> {
        let mut parts = vec![
            b"welcome".to_vec(),
            self.nonce.to_vec(),
            server_nonce.to_vec(),
            self.claim.encode().to_vec(),
        ];
        if let (Some(c), Some(s)) = (&self.seal, server_seal) {
            parts.push(c.to_vec());
            parts.push(s.to_vec());
        }
        parts
    }

    /// Server side: the welcome's body answering this hello: a proof of
    /// the key, then (for a sealed link) the server's ephemeral public key.
    pub fn welcome(
        &self,
        key: &[u8; KEY_LEN],
        server_nonce: &[u8; KEY_LEN],
        server_seal: Option<&[u8; KEY_LEN]>,
    ) -> Vec<u8> {
        let proof = mac(key, &refs(&self.welcome_parts(server_nonce, server_seal)));
        match server_seal {
            Some(s) => [&proof[..], s].concat(),
            None => proof.to_vec(),
        }
    }

    /// Client side: does the server's welcome show it holds the same key
    /// (and, for a sealed link, bring the server's public key)?
    pub fn check_welcome(
        &self,
        key: &[u8; KEY_LEN],
        server_nonce: &[u8; KEY_LEN],
        welcome: &[u8],
    ) -> bool {
        let server_seal = welcome_seal(welcome);
        let want = if self.seal.is_some() { 64 } else { 32 };
        welcome.len() == want
            && verify(
                key,
                &refs(&self.welcome_parts(server_nonce, server_seal.as_ref())),
                &welcome[..KEY_LEN],
            )
    }

    /// Both sides: the keys of a sealed session, from the key proving the
    /// claim, both nonces and public keys, and the X25519 shared secret.
    /// Without the claim's key a relay cannot derive them even if it ran its
    /// own key exchange; without the shared secret, neither can someone who
    /// later learns the claim's key from a recording.
    pub fn session_keys(
        &self,
        key: &[u8; KEY_LEN],
        server_nonce: &[u8; KEY_LEN],
        server_seal: &[u8; KEY_LEN],
        shared: &[u8],
    ) -> SessionKeys {
        let mut parts = self.welcome_parts(server_nonce, Some(server_seal));
        parts[0] = b"lego-seal-v1".to_vec();
        parts.push(shared.to_vec());
        let prk = mac(key, &refs(&parts));
        SessionKeys {
            to_server: mac(&prk, &[b"to-server"]),
            to_client: mac(&prk, &[b"to-client"]),
        }
    }
}

/// The server's ephemeral public key in a sealed link's welcome.
pub fn welcome_seal(welcome: &[u8]) -> Option<[u8; KEY_LEN]> {
    (welcome.len() == 2 * KEY_LEN).then(|| welcome[KEY_LEN..].try_into().expect("32 bytes"))
}

fn refs(parts: &[Vec<u8>]) -> Vec<&[u8]> {
    parts.iter().map(|p| &p[..]).collect()
}
