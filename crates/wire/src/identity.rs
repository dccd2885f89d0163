//! Per-component identity: joining with a one-time token, the keys a
//! member gets from the manager, and the operator's requests to make
//! tokens and revoke members (see [`crate::auth`] for the keys themselves).
//!
//! ```text
//! operator --TokenCreate{role, ttl}--> manager        -> lego-join-ID-KEY
//! daemon (claim Join ID) --Join{role}--> manager      -> member m, K_m wrapped
//! member m --PeerKey{server n}--> manager             -> HMAC(K_n, peer|Member m)
//! runtime (vnode v) --PeerKey{server n}--> manager    -> HMAC(K_n, peer|Vnode v)
//! processor member --JobKeys{job, vnode}--> manager   -> vnode key, job proof
//! operator --Revoke{component}--> manager             -> member m revoked
//! every heartbeat's answer                            -> the revoked members
//! ```

use serde::{Deserialize, Serialize};

use crate::{ComponentId, Op, Role};

/// `TokenCreate` (operator only): a one-time token for a daemon of `role`
/// to join with, valid `ttl_s` seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreateReq {
    pub role: Role,
    pub ttl_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// `lego-join-ID-KEY`: give it to the daemon (`--join-token`).
    pub token: String,
    pub id: u32,
    pub role: Role,
    pub ttl_s: u64,
}

/// `Join` (a connection claiming a join token): make me a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReq {
    /// The joining daemon's role: must be the token's.
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResp {
    pub member: u32,
    /// The member's key, XOR a pad from the token
    /// ([`crate::auth::JoinToken::wrap`]), in hex.
    pub wrapped_key: String,
}

/// `PeerKey` (a member or a vNode's process): the key that proves this
/// connection's claim to member `server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKeyReq {
    pub server: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKeyResp {
    /// 64 hex digits.
    pub key: String,
}

/// `JobKeys` (a processor monitor that joined): what a job of `vnode`
/// needs that only a holder of the cluster secret can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobKeysReq {
    pub job: u64,
    pub vnode: crate::VnodeId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobKeys {
    /// The vNode's key, 64 hex digits.
    pub vnode_key: String,
    /// [`crate::auth::Secret::job_proof_hex`] of the job.
    pub job_proof: String,
}

/// `Revoke` (operator only): end the access of member `member`, or of the
/// member that component `component` registered as (one of the two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeReq {
    #[serde(default)]
    pub component: Option<ComponentId>,
    #[serde(default)]
    pub member: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResp {
    pub member: u32,
    /// The component it had registered as, declared dead (None: it never
    /// registered).
    pub component: Option<ComponentId>,
}

/// `Members` (operator only): every member, revoked ones too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReq;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u32,
    pub role: Role,
    /// The join token it used.
    pub token: u32,
    /// The component it registered as last (None: not yet).
    pub component: Option<ComponentId>,
    /// Seconds since the epoch.
    pub joined_unix_s: u64,
    pub revoked: bool,
}

/// The answer to a heartbeat: the members revoked so far (servers refuse
/// them and close their connections).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResp {
    #[serde(default)]
    pub revoked: Vec<u32>,
    /// Where each revoked member served when it was revoked: connections
    /// to it are aborted ([`crate::auth`] cannot close what it serves).
    #[serde(default)]
    pub revoked_addrs: std::collections::BTreeMap<u32, String>,
    /// The cluster has members: every link must be sealed (a member, which
    /// holds no secret, relaying a plaintext handshake could otherwise
    /// speak on the relayed connection).
    #[serde(default)]
    pub seal: bool,
}

crate::json_request! {
    TokenCreateReq => TokenCreated, Op::TokenCreate;
    JoinReq => JoinResp, Op::Join;
    PeerKeyReq => PeerKeyResp, Op::PeerKey;
    JobKeysReq => JobKeys, Op::JobKeys;
    RevokeReq => RevokeResp, Op::Revoke;
    MembersReq => Vec<MemberInfo>, Op::Members;
}
