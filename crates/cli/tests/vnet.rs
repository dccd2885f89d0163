//! vNode networks across hosts (issue 13, item 5), on a rack of network
//! namespaces: a real `python3 -m http.server` run under lego in a vNode is
//! reached at its vIP from its processor host and from another host, and
//! through `lego run --publish`; a vNode of another network cannot reach
//! it, one of the same network can; no vNode can open a connection to a
//! host; its network is gone with its job.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A python client that prints the body at URL (exit 0) or the error (exit 1).
const FETCH: &str = "import sys, urllib.request\n\
try:\n    sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=3).read())\n\
except Exception as e:\n    print(repr(e)); sys.exit(1)";

/// GETs `url` from the host whose namespace is `ns` (`None`: this thread's).
fn fetch(ns: Option<&str>, url: &str) -> std::process::Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, &python()]);
            c
        }
        None => Command::new(python()),
    };
    cmd.args(["-c", FETCH, url]).output().unwrap()
}

#[test]
fn a_server_in_a_vnode_is_reached_by_vip_from_hosts_and_by_publish_only() {
    let c = TestCluster::on_rack(5, Some("10gbit"), "256MiB", "256MiB");
    let rack = c.rack().expect("a rack");
    let processor_host = &rack.hosts[4];
    let processor_ns = processor_host.ns.clone();
    let processor_ip = processor_host.ip.to_string();
    let page: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    std::fs::write(c.work().join("page.txt"), &page).unwrap();

    let mut server = KillOnDrop(
        c.run_command(
            &[
                "--vnode",
                "web",
                "--network",
                "shop",
                "--publish",
                "18080:8000",
            ],
            &[&python(), "-m", "http.server", "8000", "--bind", "0.0.0.0"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let vip = wait_for(Duration::from_secs(20), "vnode web's vIP", || {
        c.cluster_state()
            .vnodes
            .iter()
            .find(|v| v.name == "web" && !v.jobs.is_empty())
            .map(|v| v.vip.clone())
    });
    assert_eq!(
        c.cluster_state()
            .vnodes
            .iter()
            .find(|v| v.name == "web")
            .unwrap()
            .network,
        "shop"
    );
    let url = format!("http://{vip}:8000/page.txt");
    // From another host (the manager's, where this test runs): the route to
    // the vIP comes from the manager's host routes.
    let got = wait_for(
        Duration::from_secs(20),
        "the server from another host",
        || {
            let o = fetch(None, &url);
            o.status.success().then_some(o.stdout)
        },
    );
    assert!(got == page, "the page from another host differs");
    // From its processor host.
    let o = fetch(Some(&processor_ns), &url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(o.stdout == page, "the page from the processor host differs");
    // Through the published port of the processor host.
    let o = fetch(None, &format!("http://{processor_ip}:18080/page.txt"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(o.stdout == page, "the page through --publish differs");
    let status = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains(&format!(
            "vIP {vip} (network shop) served on {processor_ip}"
        )),
        "{status}"
    );
    // Every host learned the route; the processor host routes it to the veth.
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "proto", "77"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains(&format!("{vip} via {processor_ip}")),
        "{routes}"
    );

    // A vNode of its network reaches it; one of another network cannot.
    let same = c
        .run_command(
            &["--vnode", "web2", "--network", "shop"],
            &[&python(), "-c", FETCH, &url],
        )
        .output()
        .unwrap();
    assert!(
        same.status.success(),
        "same network: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    assert!(same.stdout == page);
    let other = c
        .run_command(&["--vnode", "intruder"], &[&python(), "-c", FETCH, &url])
        .output()
        .unwrap();
    assert!(
        !other.status.success(),
        "another network reached the server"
    );
    let why = String::from_utf8_lossy(&other.stdout);
    assert!(
        why.contains("unreachable"),
        "refused for the right reason: {why}"
    );
    // Nor can it open connections to any host: not the published port, not
    // the manager (its filter lets it answer hosts, not call them).
    for url in [
        format!("http://{processor_ip}:18080/page.txt"),
        format!("http://{}/", c.manager_addr),
    ] {
        let o = c
            .run_command(&["--vnode", "intruder"], &[&python(), "-c", FETCH, &url])
            .output()
            .unwrap();
        let why = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "a vNode reached {url}");
        assert!(why.contains("No route to host"), "{url}: {why}");
    }

    // The server ends: its network, its host route and its port go with it.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status();
    let _ = server.0.wait();
    wait_for(Duration::from_secs(20), "the server's job to end", || {
        c.cluster_state()
            .vnodes
            .iter()
            .find(|v| v.name == "web")
            .is_some_and(|v| v.jobs.is_empty())
            .then_some(())
    });
    wait_for(Duration::from_secs(10), "the vIP's route to go", || {
        let o = Command::new("ip")
            .args(["-4", "route", "show", "proto", "77"])
            .output()
            .unwrap();
        (!String::from_utf8_lossy(&o.stdout).contains(&vip)).then_some(())
    });
    assert!(
        !fetch(None, &format!("http://{processor_ip}:18080/page.txt"))
            .status
            .success()
    );
}
