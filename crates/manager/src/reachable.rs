//! Whether a component's advertised address is one the cluster can dial:
//! checked at registration, so that a monitor that registers an address no
//! one can reach is told at once, not found out by the first program.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long the manager tries to dial a registering component back.
pub const DIAL_BACK: Duration = Duration::from_secs(2);

/// Why `advertised` cannot be what other hosts dial, given that the
/// component connects from `peer` (the manager's view of its address).
pub fn check_form(advertised: &str, peer: &str) -> Result<(), String> {
    if advertised.starts_with("unix:") {
        return Ok(()); // only on this host, as the peer is
    }
    let Some(ip) = ip_of(advertised) else {
        return Ok(()); // a host name: the dial back decides
    };
    let fix = "start it with --advertise HOST:PORT, the address other hosts reach it at";
    if ip.is_unspecified() {
        return Err(format!(
            "it advertises {advertised}, an unspecified address no host can dial; {fix}"
        ));
    }
    let peer_ip = ip_of(peer);
    if ip.is_loopback() && peer_ip.is_some_and(|p| !p.is_loopback()) {
        return Err(format!(
            "it advertises {advertised}, a loopback address, but connects from {peer}, \
             another host: no other host can dial it there; {fix}"
        ));
    }
    Ok(())
}

/// Dials `advertised` back (a TCP connection, closed at once); an error
/// says why the manager cannot reach it.
pub fn dial_back(advertised: &str) -> Result<(), String> {
    if let Some(path) = advertised.strip_prefix("unix:") {
        return std::os::unix::net::UnixStream::connect(path)
            .map(drop)
            .map_err(|e| format!("the manager cannot reach it at {advertised}: {e}"));
    }
    let addrs: Vec<SocketAddr> = advertised
        .to_socket_addrs()
        .map_err(|e| format!("the manager cannot resolve its address {advertised}: {e}"))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, DIAL_BACK) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "the manager cannot dial it back at {advertised}: {}; start it with --advertise HOST:PORT, \
         an address the manager's host can reach",
        last.map_or("no address".into(), |e| e.to_string())
    ))
}

fn ip_of(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_addresses_no_other_host_can_dial() {
        let table: &[(&str, &str, bool)] = &[
            ("10.0.0.5:7000", "10.0.0.5:51000", true),
            ("127.0.0.1:7000", "127.0.0.1:51000", true),
            ("127.0.0.1:7000", "10.0.0.5:51000", false),
            ("0.0.0.0:7000", "127.0.0.1:51000", false),
            ("[::]:7000", "[::1]:51000", false),
            ("memhost:7000", "10.0.0.5:51000", true),
            ("unix:/run/lego/m.sock", "unix peer", true),
        ];
        for &(adv, peer, ok) in table {
            assert_eq!(check_form(adv, peer).is_ok(), ok, "{adv} from {peer}");
        }
        assert!(check_form("0.0.0.0:1", "127.0.0.1:2")
            .unwrap_err()
            .contains("--advertise"));
    }

    #[test]
    fn dials_back_what_listens_and_says_why_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        assert!(dial_back(&a).is_ok());
        drop(l);
        let e = dial_back(&a).unwrap_err();
        assert!(e.contains("cannot dial it back") && e.contains(&a), "{e}");
    }
}
