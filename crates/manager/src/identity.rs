//! Per-component identity at the manager: one-time join tokens, the
//! members who joined with them (each with a key of its own, derived from
//! the cluster secret and the member id, so only the manager can make it),
//! and revocation. Kept in redb beside the placement records and in memory,
//! where the handshake of every connection looks tokens and revocations up.
//!
//! ```text
//! tokens   u32 id -> JSON Token  (role, key, expiry, who used it)
//! members  u32 id -> JSON Member (role, token, component, joined, revoked)
//! meta     "next_token_id" -> u64 (member ids are random, never reused)
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lego_transport::keys::TokenKeys;
use lego_transport::{lock, Reject, Revoked};
use lego_wire::auth::{hex, random_bytes, JoinToken, Secret, KEY_LEN};
use lego_wire::identity::MemberInfo;
use lego_wire::{ComponentId, ErrorCode, Role};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::{parse, Db};
use crate::ManagerError;

const TOKENS: TableDefinition<u32, &str> = TableDefinition::new("tokens");
const MEMBERS: TableDefinition<u32, &str> = TableDefinition::new("members");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The longest a join token may live: a week.
pub const MAX_TOKEN_TTL_S: u64 = 7 * 24 * 3600;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Token {
    role: Role,
    key: String,
    expires_unix_ms: u64,
    used_by: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    role: Role,
    token: u32,
    component: Option<ComponentId>,
    joined_unix_s: u64,
    revoked: bool,
    /// Where its component served when it was revoked.
    #[serde(default)]
    revoked_addr: Option<String>,
}

#[derive(Default)]
struct Tables {
    tokens: BTreeMap<u32, Token>,
    members: BTreeMap<u32, Member>,
    next_token: u32,
}

/// Tokens, members and revocations.
pub struct Identities {
    tables: Mutex<Tables>,
    /// Shared with the manager's server: a revoked member is refused at its
    /// handshake and its connections are closed.
    pub revoked: Arc<Revoked>,
    /// Set once the cluster has a member: from then on every link must be
    /// sealed, since a member (which holds no secret) relaying a plaintext
    /// handshake could speak on the relayed connection.
    pub seal: Arc<AtomicBool>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rejected(e: ManagerError) -> Reject {
    Reject::new(
        ErrorCode::Internal,
        format!("the manager cannot store the change: {e}"),
    )
}

impl Identities {
    /// Loads tokens and members (creating the tables if needed).
    pub fn load(db: &Db) -> Result<Self, ManagerError> {
        let t = match db.backend() {
            Ok(d) => load_redb(d)?,
            Err(e) => load_etcd(e)?,
        };
        let revoked = Arc::new(Revoked::default());
        revoked.extend(
            t.members
                .iter()
                .filter(|(_, m)| m.revoked)
                .map(|(id, _)| *id),
        );
        let seal = Arc::new(AtomicBool::new(!t.members.is_empty()));
        Ok(Identities {
            tables: Mutex::new(t),
            revoked,
            seal,
        })
    }

    /// What the handshake asks: the key of a token still usable.
    pub fn token_keys(self: &Arc<Self>) -> TokenKeys {
        let me = self.clone();
        Arc::new(move |id| {
            let t = lock(&me.tables);
            let tok = t.tokens.get(&id)?;
            if tok.used_by.is_some() || tok.expires_unix_ms <= now_ms() {
                return None;
            }
            Secret::from_hex(&tok.key).ok().map(|s| *s.as_bytes())
        })
    }

    /// A new one-time token for a daemon of `role`, valid `ttl_s` seconds.
    pub fn create_token(&self, db: &Db, role: Role, ttl_s: u64) -> Result<JoinToken, Reject> {
        if ttl_s == 0 || ttl_s > MAX_TOKEN_TTL_S {
            return Err(Reject::new(
                ErrorCode::BadRequest,
                format!("a token lives 1 s to {MAX_TOKEN_TTL_S} s, not {ttl_s} s"),
            ));
        }
        let key = random_bytes().map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?;
        let mut t = lock(&self.tables);
        let id = t.next_token;
        let tok = Token {
            role,
            key: hex(&key),
            expires_unix_ms: now_ms() + ttl_s * 1000,
            used_by: None,
        };
        write(
            db,
            &[
                Row::Token(id, &tok),
                Row::Meta("next_token_id", id as u64 + 1),
            ],
        )
        .map_err(rejected)?;
        t.tokens.insert(id, tok);
        t.next_token = id + 1;
        Ok(JoinToken { id, key })
    }

    /// Token `token` (proven by the handshake) makes a member of `role`;
    /// returns its id and its key wrapped with the token
    /// ([`JoinToken::wrap`]). The token is spent even if the answer is lost.
    pub fn join(
        &self,
        db: &Db,
        secret: &Secret,
        token: u32,
        role: Role,
    ) -> Result<(u32, [u8; KEY_LEN]), Reject> {
        let mut t = lock(&self.tables);
        let refuse = |why: String| Reject::new(ErrorCode::NotEntitled, why);
        let internal = |e: lego_wire::WireError| Reject::new(ErrorCode::Internal, e.to_string());
        let Some(tok) = t.tokens.get(&token).cloned() else {
            return Err(refuse(format!("join token {token} is unknown")));
        };
        if let Some(m) = tok.used_by {
            return Err(refuse(format!(
                "join token {token} was used already (by member {m})"
            )));
        }
        if tok.expires_unix_ms <= now_ms() {
            return Err(refuse(format!("join token {token} has expired")));
        }
        if tok.role != role {
            return Err(refuse(format!(
                "join token {token} is for a {} monitor, not a {role} monitor",
                tok.role
            )));
        }
        // Random, never reused: a member key derives from the secret and the
        // id, so an id given again (a database restored from an old copy)
        // would give an old, maybe revoked, key.
        let id = loop {
            let r = random_bytes().map_err(internal)?;
            let id = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            if id != 0 && !t.members.contains_key(&id) {
                break id;
            }
        };
        let token_key = Secret::from_hex(&tok.key).map_err(internal)?;
        let member = Member {
            role,
            token,
            component: None,
            joined_unix_s: now_ms() / 1000,
            revoked: false,
            revoked_addr: None,
        };
        // Spent: its key is kept no longer (what it wrapped stays hidden).
        let spent = Token {
            used_by: Some(id),
            key: String::new(),
            ..tok
        };
        write(db, &[Row::Token(token, &spent), Row::Member(id, &member)]).map_err(rejected)?;
        t.tokens.insert(token, spent);
        t.members.insert(id, member);
        self.seal.store(true, Ordering::Relaxed);
        let wrap = JoinToken {
            id: token,
            key: *token_key.as_bytes(),
        };
        Ok((id, wrap.wrap(id, &secret.member_key(id))))
    }

    /// Member `id`'s role, if it exists and is not revoked.
    pub fn active_role(&self, id: u32) -> Option<Role> {
        let t = lock(&self.tables);
        t.members.get(&id).filter(|m| !m.revoked).map(|m| m.role)
    }

    /// The component member `id` registered as last.
    pub fn component_of(&self, id: u32) -> Option<ComponentId> {
        lock(&self.tables)
            .members
            .get(&id)
            .and_then(|m| m.component)
    }

    /// Member `id` registered as `component`.
    pub fn registered(&self, db: &Db, id: u32, component: ComponentId) -> Result<(), Reject> {
        let mut t = lock(&self.tables);
        let Some(m) = t.members.get(&id) else {
            return Ok(());
        };
        if m.component == Some(component) {
            return Ok(());
        }
        let m = Member {
            component: Some(component),
            ..m.clone()
        };
        write(db, &[Row::Member(id, &m)]).map_err(rejected)?;
        t.members.insert(id, m);
        Ok(())
    }

    /// The member that registered as `component`.
    pub fn member_of(&self, component: ComponentId) -> Option<u32> {
        let t = lock(&self.tables);
        t.members
            .iter()
            .find(|(_, m)| m.component == Some(component))
            .map(|(&id, _)| id)
    }

    /// Revokes member `id`, whose component served at `addr`.
    pub fn revoke(&self, db: &Db, id: u32, addr: Option<String>) -> Result<(), Reject> {
        {
            let mut t = lock(&self.tables);
            let Some(m) = t.members.get(&id) else {
                return Err(Reject::new(
                    ErrorCode::NotFound,
                    format!("member {id} is unknown"),
                ));
            };
            if m.revoked {
                return Err(Reject::new(
                    ErrorCode::Conflict,
                    format!("member {id} is revoked already"),
                ));
            }
            let m = Member {
                revoked: true,
                revoked_addr: addr,
                ..m.clone()
            };
            write(db, &[Row::Member(id, &m)]).map_err(rejected)?;
            t.members.insert(id, m);
        }
        // Refused from now on, and its open connections closed.
        self.revoked.extend([id]);
        Ok(())
    }

    /// Where each revoked member served when it was revoked.
    pub fn revoked_addrs(&self) -> Vec<(u32, String)> {
        let t = lock(&self.tables);
        t.members
            .iter()
            .filter_map(|(&id, m)| Some((id, m.revoked_addr.clone()?)))
            .collect()
    }

    pub fn list(&self) -> Vec<MemberInfo> {
        let t = lock(&self.tables);
        t.members
            .iter()
            .map(|(&id, m)| MemberInfo {
                id,
                role: m.role,
                token: m.token,
                component: m.component,
                joined_unix_s: m.joined_unix_s,
                revoked: m.revoked,
            })
            .collect()
    }
}

/// Tokens and members from redb (creating the tables if needed).
fn load_redb(d: &redb::Database) -> Result<Tables, ManagerError> {
    let tx = d.begin_write().map_err(ManagerError::db)?;
    tx.open_table(TOKENS).map_err(ManagerError::db)?;
    tx.open_table(MEMBERS).map_err(ManagerError::db)?;
    tx.commit().map_err(ManagerError::db)?;
    let tx = d.begin_read().map_err(ManagerError::db)?;
    let mut t = Tables::default();
    let tokens = tx.open_table(TOKENS).map_err(ManagerError::db)?;
    for row in tokens.iter().map_err(ManagerError::db)? {
        let (k, v) = row.map_err(ManagerError::db)?;
        t.tokens.insert(
            k.value(),
            parse(&format!("token {}", k.value()), v.value())?,
        );
    }
    let members = tx.open_table(MEMBERS).map_err(ManagerError::db)?;
    for row in members.iter().map_err(ManagerError::db)? {
        let (k, v) = row.map_err(ManagerError::db)?;
        t.members.insert(
            k.value(),
            parse(&format!("member {}", k.value()), v.value())?,
        );
    }
    let meta = tx.open_table(META).map_err(ManagerError::db)?;
    let get = |k: &str| -> Result<u32, ManagerError> {
        let v = meta
            .get(k)
            .map_err(ManagerError::db)?
            .map_or(1, |v| v.value());
        Ok(v.clamp(1, u32::MAX as u64) as u32)
    };
    t.next_token = get("next_token_id")?;
    Ok(t)
}

/// Tokens and members from etcd.
fn load_etcd(e: &crate::etcd::Etcd) -> Result<Tables, ManagerError> {
    let mut t = Tables::default();
    let text = |what: &str, v: Vec<u8>| {
        String::from_utf8(v).map_err(|_| ManagerError::Etcd(format!("{what} is not UTF-8")))
    };
    let id = |what: &str, k: &str| {
        k.parse::<u32>()
            .map_err(|_| ManagerError::Etcd(format!("{what}: the key {k:?} is not a number")))
    };
    for (k, v) in e.scan("tokens")? {
        let what = format!("token {k}");
        t.tokens
            .insert(id(&what, &k)?, parse(&what, &text(&what, v)?)?);
    }
    for (k, v) in e.scan("members")? {
        let what = format!("member {k}");
        t.members
            .insert(id(&what, &k)?, parse(&what, &text(&what, v)?)?);
    }
    t.next_token = 1;
    for (k, v) in e.scan("meta")? {
        if k == "next_token_id" {
            let v = text("next token id", v)?;
            t.next_token = v
                .parse::<u64>()
                .map_err(|_| ManagerError::Etcd(format!("next token id is not a number: {v:?}")))?
                .clamp(1, u32::MAX as u64) as u32;
        }
    }
    Ok(t)
}

enum Row<'a> {
    Token(u32, &'a Token),
    Member(u32, &'a Member),
    Meta(&'static str, u64),
}

/// Writes rows in one durable transaction.
fn write(db: &Db, rows: &[Row<'_>]) -> Result<(), ManagerError> {
    let d = match db.backend() {
        Ok(d) => d,
        Err(e) => {
            let json = |v: String| v.into_bytes();
            let changes: Vec<crate::etcd::Change> = rows
                .iter()
                .map(|r| match r {
                    Row::Token(id, t) => crate::etcd::Change {
                        table: "tokens",
                        key: id.to_string(),
                        value: Some(json(crate::store::json(t))),
                    },
                    Row::Member(id, m) => crate::etcd::Change {
                        table: "members",
                        key: id.to_string(),
                        value: Some(json(crate::store::json(m))),
                    },
                    Row::Meta(k, v) => crate::etcd::Change {
                        table: "meta",
                        key: k.to_string(),
                        value: Some(v.to_string().into_bytes()),
                    },
                })
                .collect();
            return e.commit(&changes);
        }
    };
    let tx = d.begin_write().map_err(ManagerError::db)?;
    {
        let mut tokens = tx.open_table(TOKENS).map_err(ManagerError::db)?;
        let mut members = tx.open_table(MEMBERS).map_err(ManagerError::db)?;
        let mut meta = tx.open_table(META).map_err(ManagerError::db)?;
        for r in rows {
            let done = match r {
                Row::Token(id, t) => {
                    let json = serde_json::to_string(t).expect("serializable");
                    tokens.insert(*id, json.as_str()).map(drop)
                }
                Row::Member(id, m) => {
                    let json = serde_json::to_string(m).expect("serializable");
                    members.insert(*id, json.as_str()).map(drop)
                }
                Row::Meta(k, v) => meta.insert(*k, *v).map(drop),
            };
            done.map_err(ManagerError::db)?;
        }
    }
    tx.commit().map_err(ManagerError::db)
}
