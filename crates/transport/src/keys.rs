//! Who holds which key, on both ends of a handshake (the keys themselves
//! are in [`lego_wire::auth`]).
//!
//! - [`Identity`]: what a daemon holds: the cluster secret, or (a daemon that
//!   joined with a token) its own member key and nothing else.
//! - [`Keyring`]: a server's side: its identity (sent in the challenge), the
//!   key each claim must prove, the members revoked ([`Revoked`]), and for the
//!   manager the keys of unused join tokens.
//! - [`Credentials`]: a client's side: its claim, and the key for whichever
//!   server answers. A member (or a vNode's process) proves itself to the
//!   manager with its own key and gets the key for any other member server
//!   from the manager, once per server ([`KeyFetch`]); the manager refuses
//!   when either end is revoked.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use lego_wire::auth::{peer_key, Claim, JoinToken, Secret, KEY_LEN};
use lego_wire::identity::PeerKeyReq;

use crate::client::{Client, ClientOptions};
use crate::redial::DialFn;
use crate::sync::lock;

/// What a daemon holds to prove itself.
#[derive(Clone)]
pub enum Identity {
    /// The cluster secret: every right (the manager, the CLI, daemons of an
    /// embedded cluster).
    Secret(Secret),
    /// A member's own key, issued when it joined.
    Member { id: u32, key: [u8; KEY_LEN] },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Secret(_) => f.write_str("Identity::Secret(..)"),
            Identity::Member { id, .. } => write!(f, "Identity::Member({id}, ..)"),
        }
    }
}

impl Identity {
    /// The id servers send in their challenge (0: holds the secret).
    pub fn server_id(&self) -> u32 {
        match self {
            Identity::Secret(_) => 0,
            Identity::Member { id, .. } => *id,
        }
    }

    /// The cluster secret, if this identity holds it.
    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Identity::Secret(s) => Some(s),
            Identity::Member { .. } => None,
        }
    }

    /// How this daemon proves itself as a client: a member gets the keys of
    /// other members' servers from the manager at `manager`.
    pub fn credentials(&self, manager: &str) -> Credentials {
        match self {
            Identity::Secret(s) => Credentials::component(s),
            Identity::Member { id, key } => Credentials::member(*id, *key).fetching_from(manager),
        }
    }
}

impl From<Secret> for Identity {
    fn from(s: Secret) -> Self {
        Identity::Secret(s)
    }
}

type Watcher = Box<dyn Fn(&BTreeSet<u32>) + Send + Sync>;

/// The members whose keys are revoked, as the manager last said; servers
/// refuse them and close their connections as soon as they learn of them.
#[derive(Default)]
pub struct Revoked {
    set: RwLock<BTreeSet<u32>>,
    watchers: Mutex<Vec<Watcher>>,
}

impl std::fmt::Debug for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revoked({:?})", self.all())
    }
}

impl Revoked {
    pub fn contains(&self, member: u32) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&member)
    }

    pub fn all(&self) -> Vec<u32> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        set.iter().copied().collect()
    }

    /// Adds `ids`; if any is new, every watcher is told the whole set.
    /// Returns whether any was new.
    pub fn extend(&self, ids: impl IntoIterator<Item = u32>) -> bool {
        let now = {
            let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
            let before = set.len();
            set.extend(ids);
            if set.len() == before {
                return false;
            }
            set.clone()
        };
        for w in lock(&self.watchers).iter() {
            w(&now);
        }
        true
    }

    /// Calls `f` with the whole set each time it grows.
    pub fn watch(&self, f: impl Fn(&BTreeSet<u32>) + Send + Sync + 'static) {
        lock(&self.watchers).push(Box::new(f));
    }
}

/// The keys of join tokens still usable (the manager's): `None` for a
/// token unknown, used or expired.
pub type TokenKeys = Arc<dyn Fn(u32) -> Option<[u8; KEY_LEN]> + Send + Sync>;

/// A server's keys: which key each claim must prove.
#[derive(Clone)]
pub struct Keyring {
    identity: Identity,
    pub revoked: Arc<Revoked>,
    tokens: Option<TokenKeys>,
    /// Every link must be sealed: set for a member, and for a holder of the
    /// secret once its cluster has members (a member relaying a plaintext
    /// handshake between a client and another server could then speak on
    /// the relayed connection; a sealed one it can only pass on or drop).
    pub seal: Arc<AtomicBool>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({:?}, {:?})", self.identity, self.revoked)
    }
}

impl From<Secret> for Keyring {
    fn from(s: Secret) -> Self {
        Keyring::new(Identity::Secret(s))
    }
}

impl From<Identity> for Keyring {
    fn from(i: Identity) -> Self {
        Keyring::new(i)
    }
}

impl Keyring {
    pub fn new(identity: Identity) -> Self {
        let member = matches!(identity, Identity::Member { .. });
        Keyring {
            identity,
            revoked: Arc::new(Revoked::default()),
            tokens: None,
            seal: Arc::new(AtomicBool::new(member)),
        }
    }

    /// Shares the flag that says every link must be sealed (the manager's
    /// members, or what heartbeats say); a member seals regardless.
    pub fn with_seal(mut self, seal: Arc<AtomicBool>) -> Self {
        if matches!(self.identity, Identity::Member { .. }) {
            seal.store(true, Ordering::Relaxed);
        }
        self.seal = seal;
        self
    }

    /// Whether every link must be sealed, whatever the server's own setting.
    pub fn must_seal(&self) -> bool {
        self.seal.load(Ordering::Relaxed)
    }

    /// Shares `revoked` (kept up to date by the daemon's agent or, in the
    /// manager, by revocations).
    pub fn with_revoked(mut self, revoked: Arc<Revoked>) -> Self {
        self.revoked = revoked;
        self
    }

    /// Takes join tokens (the manager).
    pub fn with_tokens(mut self, tokens: TokenKeys) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The id this server sends in its challenge.
    pub fn server_id(&self) -> u32 {
        self.identity.server_id()
    }

    /// The key a client claiming `claim` must prove, or why none will do.
    pub fn key_for(&self, claim: Claim) -> Result<[u8; KEY_LEN], String> {
        if let Claim::Member(m) = claim {
            if self.revoked.contains(m) {
                return Err(format!("the key of member {m} has been revoked"));
            }
        }
        match (&self.identity, claim) {
            (Identity::Secret(_), Claim::Join(t)) => self
                .tokens
                .as_ref()
                .and_then(|f| f(t))
                .ok_or_else(|| format!("join token {t} is unknown, used or expired")),
            (Identity::Member { .. }, Claim::Join(t)) => Err(format!(
                "join token {t} offered to a monitor: only the manager takes join tokens"
            )),
            (Identity::Secret(s), c) => s.key_for(c).ok_or_else(|| format!("no key for {c}")),
            (Identity::Member { key, .. }, c) => Ok(peer_key(key, c)),
        }
    }
}

/// Where a client's key comes from.
#[derive(Clone)]
enum Source {
    /// The cluster secret: every key can be derived.
    Secret(Secret),
    /// A key that proves the claim to a holder of the secret (server 0).
    Key([u8; KEY_LEN]),
}

/// Who we are, and the key that proves it to whichever server answers.
#[derive(Clone)]
pub struct Credentials {
    pub claim: Claim,
    source: Source,
    fetch: Option<Arc<KeyFetch>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.claim)
    }
}

impl Credentials {
    /// A daemon or the CLI holding the cluster secret.
    pub fn component(secret: &Secret) -> Self {
        Credentials {
            claim: Claim::Component,
            source: Source::Secret(secret.clone()),
            fetch: None,
        }
    }

    /// A process of a vNode, holding only that vNode's key.
    pub fn vnode(vnode: u32, key: [u8; KEY_LEN]) -> Self {
        Credentials {
            claim: Claim::Vnode(vnode),
            source: Source::Key(key),
            fetch: None,
        }
    }

    /// A member holding its own key.
    pub fn member(id: u32, key: [u8; KEY_LEN]) -> Self {
        Credentials {
            claim: Claim::Member(id),
            source: Source::Key(key),
            fetch: None,
        }
    }

    /// A daemon joining with a one-time token (to the manager only).
    pub fn join(token: &JoinToken) -> Self {
        Credentials {
            claim: Claim::Join(token.id),
            source: Source::Key(token.key),
            fetch: None,
        }
    }

    /// Gets the keys for servers that are members from the manager at
    /// `manager` (a holder of the secret derives them itself).
    pub fn fetching_from(self, manager: &str) -> Self {
        self.fetching_via(manager, Client::connect)
    }

    /// [`Self::fetching_from`], connecting to the manager with `dial` (a
    /// confined job's runtime connects through its broker).
    pub fn fetching_via(mut self, manager: &str, dial: DialFn) -> Self {
        if let Source::Key(_) = self.source {
            let own = Credentials {
                fetch: None,
                ..self.clone()
            };
            self.fetch = Some(Arc::new(KeyFetch::new(manager, own, dial)));
        }
        self
    }

    /// The key proving the claim to server `server` (from a challenge).
    pub(crate) fn key_for_server(&self, server: u32) -> Result<[u8; KEY_LEN], String> {
        match (&self.source, server, &self.fetch) {
            (Source::Secret(s), n, _) => s
                .key_at(n, self.claim)
                .ok_or_else(|| format!("no key for {}", self.claim)),
            (Source::Key(k), 0, _) => Ok(*k),
            (Source::Key(_), n, Some(fetch)) => fetch.get(n),
            (Source::Key(_), n, None) => Err(format!(
                "the server is member {n}, and these credentials ({}) know no manager to ask for its key",
                self.claim
            )),
        }
    }
}

/// The keys for member servers, got from the manager once each.
pub struct KeyFetch {
    manager: String,
    creds: Credentials,
    dial: DialFn,
    cache: Mutex<HashMap<u32, [u8; KEY_LEN]>>,
    conn: Mutex<Option<Client>>,
}

impl KeyFetch {
    fn new(manager: &str, creds: Credentials, dial: DialFn) -> Self {
        KeyFetch {
            manager: manager.to_string(),
            creds,
            dial,
            cache: Mutex::new(HashMap::new()),
            conn: Mutex::new(None),
        }
    }

    fn get(&self, server: u32) -> Result<[u8; KEY_LEN], String> {
        if let Some(k) = lock(&self.cache).get(&server) {
            return Ok(*k);
        }
        let mut conn = lock(&self.conn);
        if conn.as_ref().is_none_or(|c| c.is_broken()) {
            let c = (self.dial)(&self.manager, &self.creds, &ClientOptions::default()).map_err(
                |e| format!("cannot ask the manager for the key of member {server}: {e}"),
            )?;
            *conn = Some(c);
        }
        let got = conn
            .as_ref()
            .expect("connected above")
            .call(&PeerKeyReq { server });
        let resp = got.map_err(|e| {
            *conn = None;
            format!("the manager gives no key for member {server}: {e}")
        })?;
        let key = Secret::from_hex(&resp.key)
            .map_err(|e| format!("the manager's key for member {server}: {e}"))?;
        let key = *key.as_bytes();
        lock(&self.cache).insert(server, key);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn a_server_asks_each_claim_for_the_key_its_identity_implies() {
        let s = Secret::generate().unwrap();
        let manager =
            Keyring::from(s.clone()).with_tokens(Arc::new(|t| (t == 4).then_some([4; 32])));
        let member = Keyring::new(Identity::Member {
            id: 7,
            key: s.member_key(7),
        });
        assert_eq!((manager.server_id(), member.server_id()), (0, 7));
        for claim in [Claim::Component, Claim::Vnode(3), Claim::Member(9)] {
            assert_eq!(manager.key_for(claim).unwrap(), s.key_for(claim).unwrap());
            // What a holder of the secret (or the manager, for a member)
            // derives for server 7 is what server 7 asks.
            assert_eq!(member.key_for(claim).unwrap(), s.key_at(7, claim).unwrap());
            let creds = match claim {
                Claim::Component => Credentials::component(&s),
                other => Credentials {
                    claim: other,
                    source: Source::Secret(s.clone()),
                    fetch: None,
                },
            };
            assert_eq!(
                creds.key_for_server(7).unwrap(),
                member.key_for(claim).unwrap()
            );
        }
        assert_eq!(manager.key_for(Claim::Join(4)).unwrap(), [4; 32]);
        assert!(manager
            .key_for(Claim::Join(5))
            .unwrap_err()
            .contains("unknown, used or expired"));
        assert!(member
            .key_for(Claim::Join(4))
            .unwrap_err()
            .contains("only the manager"));
        // A member's own key proves it to the manager only; for another
        // server it needs a manager to ask.
        let m = Credentials::member(9, s.member_key(9));
        assert_eq!(m.key_for_server(0).unwrap(), s.member_key(9));
        assert!(m.key_for_server(7).unwrap_err().contains("know no manager"));
    }

    #[test]
    fn a_revoked_member_is_refused_and_watchers_hear_of_it_once() {
        let s = Secret::generate().unwrap();
        let ring = Keyring::new(Identity::Member {
            id: 7,
            key: s.member_key(7),
        });
        let heard = Arc::new(AtomicUsize::new(0));
        let h = heard.clone();
        ring.revoked.watch(move |set| {
            assert!(set.contains(&9));
            h.fetch_add(1, Ordering::Relaxed);
        });
        assert!(ring.key_for(Claim::Member(9)).is_ok());
        assert!(ring.revoked.extend([9]));
        assert!(!ring.revoked.extend([9]), "nothing new");
        assert_eq!(heard.load(Ordering::Relaxed), 1);
        let why = ring.key_for(Claim::Member(9)).unwrap_err();
        assert!(why.contains("member 9 has been revoked"), "{why}");
        assert!(ring.key_for(Claim::Member(8)).is_ok(), "others untouched");
        assert!(
            ring.key_for(Claim::Vnode(9)).is_ok(),
            "vNode 9 is not member 9"
        );
    }
}
