//! Where vNodes' vIPs are served: the vIPs each processor monitor reports
//! with its heartbeats (the vNode networks it holds), answered to every
//! host as [`VipRoutes`] so that each routes the vIPs to their processor
//! host ([`lego_agent::routes`]); the manager keeps its own host's routes
//! the same way.

use std::collections::HashMap;
use std::time::Duration;

use lego_placement::{Health, Role};
use lego_transport::lock;
use lego_wire::control::{VipRoute, VipRoutes};
use lego_wire::ComponentId;

use crate::service::ManagerService;

/// The host part of an address (`10.99.0.4:7000` -> `10.99.0.4`).
fn host_of(addr: &str) -> String {
    let a = addr.strip_prefix("tcp:").unwrap_or(addr);
    a.rsplit_once(':')
        .map_or(a, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

impl ManagerService {
    /// Records the vIPs a processor monitor serves now.
    pub(crate) fn set_served_vips(&self, id: ComponentId, vips: Vec<String>) {
        let mut served = lock(&self.served_vips);
        match vips.is_empty() {
            true => served.remove(&id),
            false => served.insert(id, vips),
        };
    }

    /// The vIPs a component serves, as last reported.
    pub(crate) fn served_vips(&self, id: ComponentId) -> Vec<String> {
        lock(&self.served_vips)
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every vNode's vIP, its network and the live processor hosts serving it.
    pub fn vip_routes(&self) -> VipRoutes {
        let served: HashMap<ComponentId, Vec<String>> = lock(&self.served_vips).clone();
        self.state.read(|st| {
            let live: Vec<(ComponentId, String)> = st
                .components()
                .filter(|c| c.health == Health::Alive)
                .map(|c| (c.id, host_of(&c.addr)))
                .collect();
            let mut hosts: Vec<String> = live.iter().map(|(_, h)| h.clone()).collect();
            if let Some((addr, _)) = self.addrs.get() {
                hosts.push(host_of(addr));
            }
            hosts.sort();
            hosts.dedup();
            let vnodes = st
                .vnodes()
                .filter(|v| !v.host_network)
                .filter_map(|v| {
                    let info = self.vnode_info(st, v);
                    if info.vip.is_empty() {
                        return None;
                    }
                    let mut served_by: Vec<String> = live
                        .iter()
                        .filter(|(id, _)| {
                            st.component(*id).is_some_and(|c| c.role == Role::Processor)
                                && served.get(id).is_some_and(|s| s.contains(&info.vip))
                        })
                        .map(|(_, h)| h.clone())
                        .collect();
                    served_by.dedup();
                    Some(VipRoute {
                        vnode: v.id,
                        network: info.network_name(),
                        vip: info.vip,
                        served_by,
                    })
                })
                .collect();
            VipRoutes { vnodes, hosts }
        })
    }
}

/// Keeps the manager's own host's vIP routes, every `period`.
pub(crate) fn keep_routes(svc: std::sync::Arc<ManagerService>, period: Duration) {
    let mut keeper = lego_agent::routes::Keeper::new(lego_agent::routes::as_root());
    while keeper.enabled() {
        keeper.apply(&svc.vip_routes());
        std::thread::sleep(period);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_of_addresses() {
        assert_eq!(super::host_of("10.99.0.4:7000"), "10.99.0.4");
        assert_eq!(super::host_of("tcp:node3:7000"), "node3");
        assert_eq!(super::host_of("[::1]:7000"), "::1");
    }
}
