//! The manager's requests about identity ([`lego_wire::identity`]): tokens
//! made and spent, the keys members and vNodes' processes need for member
//! servers, job keys for processor members, and revocation, which also
//! declares the revoked component dead so its vRegions are rebuilt elsewhere.

use std::sync::atomic::Ordering;

use lego_transport::{PeerInfo, Reject};
use lego_wire::auth::{hex, peer_key, Claim};
use lego_wire::identity::*;
use lego_wire::types::EventKind;
use lego_wire::{ComponentId, ErrorCode, Role};
use tracing::{info, warn};

use crate::service::ManagerService;

fn not_entitled(why: String) -> Reject {
    Reject::new(ErrorCode::NotEntitled, why)
}

impl ManagerService {
    pub(crate) fn token_create(&self, req: TokenCreateReq) -> Result<TokenCreated, Reject> {
        let t = self
            .identities
            .create_token(self.state.db(), req.role, req.ttl_s)?;
        info!(token = t.id, role = %req.role, ttl_s = req.ttl_s, "join token made");
        Ok(TokenCreated {
            token: t.to_string(),
            id: t.id,
            role: req.role,
            ttl_s: req.ttl_s,
        })
    }

    pub(crate) fn join(&self, peer: &PeerInfo, req: JoinReq) -> Result<JoinResp, Reject> {
        let Claim::Join(token) = peer.claim else {
            return Err(not_entitled(format!(
                "join is for a daemon holding a join token; this connection speaks for {}",
                peer.claim
            )));
        };
        let (member, wrapped) =
            self.identities
                .join(self.state.db(), &self.secret, token, req.role)?;
        info!(member, token, role = %req.role, peer = %peer.addr, "a daemon joined with a token");
        self.journal.record(
            EventKind::Joined,
            format!(
                "member {member} ({}, token {token}) from {}",
                req.role, peer.addr
            ),
            None,
        );
        Ok(JoinResp {
            member,
            wrapped_key: hex(&wrapped),
        })
    }

    pub(crate) fn peer_key(&self, peer: &PeerInfo, req: PeerKeyReq) -> Result<PeerKeyResp, Reject> {
        if matches!(peer.claim, Claim::Join(_)) {
            return Err(not_entitled("a joining daemon gets no keys".into()));
        }
        if self.identities.active_role(req.server).is_none() {
            return Err(Reject::new(
                ErrorCode::NotFound,
                format!("member {} is unknown or revoked", req.server),
            ));
        }
        let key = peer_key(&self.secret.member_key(req.server), peer.claim);
        Ok(PeerKeyResp { key: hex(&key) })
    }

    pub(crate) fn job_keys(&self, peer: &PeerInfo, req: JobKeysReq) -> Result<JobKeys, Reject> {
        match peer.claim {
            Claim::Component => {}
            Claim::Member(m) if self.identities.active_role(m) == Some(Role::Processor) => {}
            other => {
                return Err(not_entitled(format!(
                    "job keys are for processor monitors; this connection speaks for {other}"
                )))
            }
        }
        if self.state.read(|st| st.vnode(req.vnode).is_none()) {
            return Err(Reject::new(
                ErrorCode::NotFound,
                format!("vnode {} is unknown", req.vnode),
            ));
        }
        Ok(JobKeys {
            vnode_key: hex(&self.secret.vnode_key(req.vnode)),
            job_proof: self.secret.job_proof_hex(req.job, req.vnode),
        })
    }

    pub(crate) fn revoke(&self, req: RevokeReq) -> Result<RevokeResp, Reject> {
        let member = match (req.member, req.component) {
            (Some(m), None) => m,
            (None, Some(c)) => self.identities.member_of(c).ok_or_else(|| {
                Reject::new(
                    ErrorCode::NotFound,
                    format!("component {c} holds no key of its own (it was started with the cluster secret, or is unknown): only a component that joined with a token can be revoked alone"),
                )
            })?,
            _ => {
                return Err(Reject::new(
                    ErrorCode::BadRequest,
                    "name a component or a member, one of the two",
                ))
            }
        };
        let component = self.identities.component_of(member);
        let addr = component.and_then(|c| {
            self.state
                .read(|st| st.component(c).map(|x| x.addr.clone()))
        });
        self.identities
            .revoke(self.state.db(), member, addr.clone())?;
        warn!(
            member,
            ?component,
            "key revoked: the member's connections are closed and its component is declared dead"
        );
        self.journal.record(
            EventKind::Revoked,
            match component {
                Some(c) => format!("member {member} (component {c})"),
                None => format!("member {member} (never registered)"),
            },
            None,
        );
        self.counters.revocations.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = component {
            let _ = self.change(|st, now| {
                st.declare_dead(now, c);
                Ok(())
            });
        }
        // The manager's own connections to it (the other daemons abort
        // theirs when their heartbeat tells them).
        if let Some(a) = addr.filter(|a| !self.served_by_live(a)) {
            match lego_transport::link::sever(&a) {
                Ok(n) => {
                    info!(addr = %a, connections = n, "aborted the connections to the revoked component")
                }
                Err(e) => {
                    warn!(addr = %a, "cannot abort the connections to the revoked component: {e}")
                }
            }
        }
        Ok(RevokeResp { member, component })
    }

    /// Whether a live component serves at `addr` (then it is not the
    /// revoked one's any more: its connections are left alone).
    pub(crate) fn served_by_live(&self, addr: &str) -> bool {
        self.state.read(|st| {
            st.components()
                .any(|c| c.addr == addr && c.health != lego_wire::Health::Dead)
        })
    }

    /// Where the members revoked served, unless a live component serves
    /// there now: each daemon aborts its connections there.
    pub(crate) fn revoked_addrs(&self) -> std::collections::BTreeMap<u32, String> {
        self.identities
            .revoked_addrs()
            .into_iter()
            .filter(|(_, a)| !self.served_by_live(a))
            .collect()
    }

    /// A member's connection may register only in its role (under no
    /// earlier id but its own), and heartbeat only for the component it
    /// registered as.
    pub(crate) fn check_member(
        &self,
        peer: &PeerInfo,
        role: Option<Role>,
        component: Option<ComponentId>,
    ) -> Result<(), Reject> {
        let Claim::Member(m) = peer.claim else {
            return Ok(());
        };
        let Some(mine) = self.identities.active_role(m) else {
            return Err(not_entitled(format!("member {m} is unknown or revoked")));
        };
        if let Some(r) = role.filter(|r| *r != mine) {
            return Err(not_entitled(format!(
                "member {m} joined as a {mine} monitor and cannot register as a {r} monitor"
            )));
        }
        if let Some(c) = component {
            if self.identities.component_of(m) != Some(c) {
                return Err(not_entitled(format!(
                    "member {m} did not register as component {c}"
                )));
            }
        }
        Ok(())
    }
}
