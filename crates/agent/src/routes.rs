//! Host routes to vNodes' vIPs: every host of a cluster routes each vIP to
//! the processor host that serves it, so a server in a vNode is reachable
//! from every host.
//!
//! ```text
//! host A (any daemon)            host P (processor monitor)
//!   10.77.0.5/32 via P  ------->   10.77.0.5/32 dev lgNvM  --> vNode netns (eth0: 10.77.0.5)
//! ```
//!
//! Routes are set with iproute2's `ip`, tagged with protocol number
//! [`PROTO`], so that lego only ever changes or removes routes it made: a
//! reconcile lists the routes of that protocol, adds what is missing and
//! removes what is no longer wanted. A vIP served on this host itself is
//! routed by its processor monitor (to its vNode's veth), not here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use lego_wire::control::VipRoutes;
use tracing::{info, warn};

/// The routing protocol number that marks lego's routes (`ip route ... proto 77`).
pub const PROTO: &str = "77";

/// Whether this process runs as root (its effective user id is 0): only
/// then can it change routes.
pub fn as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Runs `ip ARGS`; its stderr on failure.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The IPv4 addresses of this host (its network namespace).
pub fn local_ips() -> Result<BTreeSet<Ipv4Addr>, String> {
    let out = ip(&["-4", "-o", "addr", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|&t| t == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// The routes this host should have: each vIP served on another host, to
/// the first host serving it.
pub fn wanted(routes: &VipRoutes, local: &BTreeSet<Ipv4Addr>) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
    routes
        .vnodes
        .iter()
        .filter_map(|r| {
            let vip: Ipv4Addr = r.vip.parse().ok()?;
            let via: Ipv4Addr = r.served_by.first()?.parse().ok()?;
            let served_here = r
                .served_by
                .iter()
                .any(|h| h.parse().is_ok_and(|h| local.contains(&h)));
            (!served_here && !local.contains(&via)).then_some((vip, via))
        })
        .collect()
}

/// This host's routes to single addresses now: lego's (vIP -> the host it
/// goes via), and the others' destinations (a processor monitor's route to
/// a vNode's veth is one: never replaced).
type Current = (BTreeMap<Ipv4Addr, Option<Ipv4Addr>>, BTreeSet<Ipv4Addr>);

fn current() -> Result<Current, String> {
    let out = ip(&["-4", "route", "show"])?;
    let (mut ours, mut others) = (BTreeMap::new(), BTreeSet::new());
    for l in out.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        let Some(dst) = words
            .first()
            .and_then(|d| d.strip_suffix("/32").or(Some(d)))
        else {
            continue;
        };
        let Ok(dst) = dst.parse::<Ipv4Addr>() else {
            continue;
        };
        let after = |key: &str| words.iter().skip_while(|&&t| t != key).nth(1).copied();
        if after("proto") == Some(PROTO) {
            ours.insert(dst, after("via").and_then(|v| v.parse().ok()));
        } else {
            others.insert(dst);
        }
    }
    Ok((ours, others))
}

/// What a reconcile changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub added: usize,
    pub removed: usize,
}

/// Makes this host's lego routes the `want`ed ones: routes of other
/// protocols are never touched.
pub fn reconcile(want: &BTreeMap<Ipv4Addr, Ipv4Addr>) -> Result<Changed, String> {
    let (have, others) = current()?;
    let mut changed = Changed::default();
    for (vip, via) in want {
        // A route someone else made (a vNode's veth on this very host,
        // before the manager lists it as served here) is left alone.
        if others.contains(vip) {
            continue;
        }
        if have.get(vip) != Some(&Some(*via)) {
            ip(&[
                "route",
                "replace",
                &format!("{vip}/32"),
                "via",
                &via.to_string(),
                "proto",
                PROTO,
            ])?;
            changed.added += 1;
        }
    }
    for vip in have.keys().filter(|v| !want.contains_key(v)) {
        // Gone already (another daemon of this host removed it): fine.
        if ip(&["route", "del", &format!("{vip}/32"), "proto", PROTO]).is_ok() {
            changed.removed += 1;
        }
    }
    Ok(changed)
}

/// Removes every lego route of this host (a daemon that stops).
pub fn clear() -> Result<Changed, String> {
    reconcile(&BTreeMap::new())
}

/// Keeps this host's vIP routes in step with the manager's answers.
pub struct Keeper {
    enabled: bool,
    /// After a failure: not before then.
    retry_at: Option<Instant>,
    /// The manager's answer last applied, and when.
    applied: Option<(VipRoutes, Instant)>,
}

impl Keeper {
    /// How often routes are checked even when the answer did not change
    /// (someone may have removed one).
    const RECHECK: Duration = Duration::from_secs(30);
    /// How long after a failure it tries again.
    const RETRY: Duration = Duration::from_secs(10);

    /// `enabled`: root and iproute2 are there (see [`as_root`]).
    pub fn new(enabled: bool) -> Self {
        Keeper {
            enabled,
            retry_at: None,
            applied: None,
        }
    }

    /// Whether it keeps routes at all (root and iproute2).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Makes this host's routes what `routes` asks for. Runs `ip` only when
    /// the answer changed, or every [`Self::RECHECK`].
    pub fn apply(&mut self, routes: &VipRoutes) {
        if !self.enabled || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let fresh = self
            .applied
            .as_ref()
            .is_some_and(|(r, at)| r == routes && at.elapsed() < Self::RECHECK);
        if fresh {
            return;
        }
        let result = local_ips().and_then(|local| reconcile(&wanted(routes, &local)));
        match result {
            Ok(changed) => {
                if changed != Changed::default() {
                    info!(
                        added = changed.added,
                        removed = changed.removed,
                        "vIP routes of this host updated"
                    );
                }
                self.applied = Some((routes.clone(), Instant::now()));
            }
            Err(e) => {
                warn!(
                    "cannot keep this host's routes to vNodes' vIPs (trying again in {} s): {e}",
                    Self::RETRY.as_secs()
                );
                self.retry_at = Some(Instant::now() + Self::RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lego_wire::control::VipRoute;

    fn route(vip: &str, by: &[&str]) -> VipRoute {
        VipRoute {
            vnode: 1,
            vip: vip.into(),
            network: "n".into(),
            served_by: by.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_go_to_the_first_serving_host_unless_served_here() {
        let r = VipRoutes {
            vnodes: vec![
                route("10.77.0.1", &["10.99.0.4"]),
                route("10.77.0.2", &["10.99.0.5", "10.99.0.4"]),
                route("10.77.0.3", &["10.99.0.2"]),
                route("10.77.0.4", &[]),
                route("not an ip", &["10.99.0.4"]),
            ],
            hosts: vec![],
        };
        let here: BTreeSet<Ipv4Addr> = ["10.99.0.2".parse().unwrap()].into();
        let w = wanted(&r, &here);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            w,
            [
                (ip("10.77.0.1"), ip("10.99.0.4")),
                (ip("10.77.0.2"), ip("10.99.0.5"))
            ]
            .into()
        );
        // On a host serving it too, no route: its processor monitor routes it.
        let there: BTreeSet<Ipv4Addr> = ["10.99.0.4".parse().unwrap()].into();
        assert!(!wanted(&r, &there).contains_key(&ip("10.77.0.2")));
    }
}
