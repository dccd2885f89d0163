//! What only several hosts have: the address a monitor advertises to the
//! cluster is one others can dial, and a monitor whose address no one can
//! dial is refused at registration with the reason.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `lego memory` with `flags`, against the test cluster's manager.
fn memory(c: &TestCluster, flags: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(LEGO)
            .args([
                "memory",
                "--capacity",
                "64MiB",
                "--manager",
                &c.manager_addr,
            ])
            .arg("--secret-file")
            .arg(c.path().join("secret"))
            .args(flags)
            .env("LEGO_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_unspecified_listen_address_is_advertised_as_the_route_to_the_manager() {
    let c = TestCluster::start(0, "64MiB", 100);
    let _m = memory(&c, &["--listen", "0.0.0.0:0"]);
    let st = c.wait_until("the memory monitor registered", |s| {
        !alive_memory(s).is_empty()
    });
    let addr = &alive_memory(&st)[0].addr;
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "a monitor bound to 0.0.0.0 advertises the address the manager reaches it at, got {addr}"
    );
    let status = c.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(addr.as_str()), "{text}");
    assert!(!text.contains("0.0.0.0"), "{text}");
}

#[test]
fn an_address_the_manager_cannot_dial_back_is_refused_with_the_reason() {
    let c = TestCluster::start(0, "64MiB", 100);
    // Nothing listens on port 1: the manager's dial back fails.
    let mut m = memory(&c, &["--advertise", "127.0.0.1:1"]);
    let mut err = m.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while !text.contains("refuses to register") {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    wait_for(Duration::from_secs(20), "the refusal in the log", || {
        reader.is_finished().then_some(())
    });
    let log = reader.join().unwrap();
    assert!(
        log.contains("cannot dial it back at 127.0.0.1:1") && log.contains("--advertise"),
        "{log}"
    );
    assert!(
        alive_memory(&c.cluster_state()).is_empty(),
        "a refused monitor is not a member"
    );
    assert!(
        m.try_wait().unwrap().is_none(),
        "it keeps retrying, as a monitor waiting for a fix"
    );
}
