//! Per-component identity (issue 13, item 7): monitors that join with a
//! one-time token hold a key of their own and never the cluster secret; on
//! a rack where every monitor joined so, real programs page and keep files
//! as anywhere else; a revoked monitor is refused by the manager and by
//! the other monitors, its connections are closed, it is declared dead and
//! its vRegions are rebuilt while the program runs on, and no other key
//! changes. Tokens work once, expire, and bind a role; a member gets no
//! more than a component of its role may ask for.

mod common;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lego_transport::{Client, ClientOptions, Credentials, TransportError};
use lego_wire::auth::{challenge_server, decode_challenge, Claim, Hello};
use lego_wire::control::{HeartbeatReq, RegisterReq};
use lego_wire::frame::{read_frame, write_frame};
use lego_wire::identity::{JobKeysReq, JoinReq, RevokeReq, TokenCreateReq};
use lego_wire::{ErrorCode, Health, Op, Role};

/// The member id and key a daemon keeps in its key file.
fn key_file(path: &Path) -> (u32, [u8; 32]) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let key = lego_wire::auth::Secret::from_hex(v["key"].as_str().unwrap()).unwrap();
    (v["member"].as_u64().unwrap() as u32, *key.as_bytes())
}

/// Offers a plaintext hello claiming `claim` with the key a holder of the
/// secret derives for the server at `addr` (whose member id its challenge
/// gives); returns the server's refusal.
fn refusal(c: &TestCluster, addr: &str, claim: Claim) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let challenge = read_frame(&mut s, 4096).unwrap();
    let nonce = decode_challenge(&challenge.body).unwrap();
    let server = challenge_server(&challenge.body);
    assert_ne!(
        server, 0,
        "{addr} is a member: it says which in its challenge"
    );
    let key = c.secret.key_at(server, claim).unwrap();
    let hello = Hello::new(&key, claim, &nonce).unwrap();
    write_frame(&mut s, Op::Hello, 0, 0, &[&hello.encode()]).unwrap();
    let e = read_frame(&mut s, 4096).unwrap().error().expect("refused");
    assert_eq!(e.code, ErrorCode::AuthFailed);
    e.message
}

/// A registration as `role` (at an address nobody serves: refused before
/// the manager would dial it), naming `previous`.
fn registration(role: Role, previous: Option<u64>) -> RegisterReq {
    RegisterReq {
        role,
        addr: "127.0.0.1:1".into(),
        capacity: 1,
        instance: 1,
        previous,
    }
}

/// A connection to the manager proving member `member`'s `key`.
fn as_member(c: &TestCluster, member: u32, key: [u8; 32]) -> Result<Client, TransportError> {
    Client::connect(
        &c.manager_addr,
        &Credentials::member(member, key),
        &ClientOptions::default(),
    )
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn monitors_that_joined_hold_their_own_keys_and_a_revoked_one_is_refused_everywhere() {
    ensure_runtime();
    let mut c = TestCluster::rack_with(
        6,
        Some("10gbit"),
        3,
        "2GiB",
        &["--vregion-size", "16MiB"],
        true,
        true,
    );
    c.start_processor("1GiB");

    // Every monitor joined: a key file of its own (0600), no secret given.
    let keys = c.path().join("keys");
    let mut files: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "3 memory, storage, processor: {files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    for d in c.daemons().filter(|d| d.name != "manager") {
        let line = cmdline(d.pid());
        assert!(
            line.contains("--key-file") && !line.contains("secret"),
            "the {} is not given the cluster secret: {line}",
            d.name
        );
    }
    let list = c.cli(&["component", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{text}");
    assert_eq!(text.matches("valid").count(), 5, "{text}");

    // Files on the storage member and pages on the memory members: every
    // key a job needs comes from the manager.
    let out = c
        .run_command(
            &["--excache", "64MiB"],
            &["sh", "-c", "echo joined > /data/f && cat /data/f"],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"joined\n");

    let script = script(6);
    let local = local_output(&script);
    let running = start(&c, &script);
    let st = c.wait_until("the program's vRegions placed", |s| s.vregions.len() >= 10);
    let (victim, id) = busiest_primary(&c, &st);
    let victim_file = keys.join(format!("memory-{}.json", victim + 1));
    let (member, _) = key_file(&victim_file);
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    let revoked = c.cli(&["component", "revoke", &id.to_string()]);
    let said = String::from_utf8_lossy(&revoked.stdout);
    assert!(
        revoked.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(said.contains(&format!("member {member}")), "{said}");

    // Its vRegions are rebuilt elsewhere while the program goes on on the
    // other copies, with the right output.
    let st = c.wait_until("every vRegion rebuilt without the revoked monitor", |s| {
        all_healthy_without(s, &[id])
    });
    let gone = st.components.iter().find(|x| x.id == id).unwrap();
    assert_eq!(
        gone.health,
        Health::Dead,
        "the revoked monitor is declared dead"
    );
    let (status, out, err) = finish(running, Duration::from_secs(120));
    assert!(status.success(), "the program under lego: {err}");
    assert_eq!(out, local, "the same output as without lego");

    // Refused everywhere: by the manager (its key is revoked there) ...
    let (_, vkey) = key_file(&victim_file);
    let err = as_member(&c, member, vkey)
        .err()
        .expect("the manager refuses a revoked key");
    assert!(
        matches!(&err, TransportError::AuthRefused { message, .. } if message.contains("revoked")),
        "{err}"
    );
    // ... and by another memory monitor, which learnt it from its heartbeat,
    // while a member not revoked is let past the key check there.
    let other = c
        .memories
        .iter()
        .enumerate()
        .find(|(i, _)| *i != victim)
        .map(|(_, d)| d.addr.clone())
        .unwrap();
    let message = wait_for(Duration::from_secs(5), "the monitor to learn", || {
        let m = refusal(&c, &other, Claim::Member(member));
        m.contains("revoked").then_some(m)
    });
    assert!(message.contains(&format!("member {member}")), "{message}");
    let (fine, _) = key_file(&files[0]);
    let fine = if fine == member {
        key_file(&files[1]).0
    } else {
        fine
    };
    let m = refusal(&c, &other, Claim::Member(fine));
    assert!(
        m.contains("plaintext"),
        "a valid member's key passes (then plaintext is refused on a sealed link): {m}"
    );
    // Whoever was connected to it was cut off: the program's runtime, the
    // manager, the other monitors. Only this question is open there now.
    let victim_addr = c.memories[victim].addr.clone();
    wait_for(
        Duration::from_secs(5),
        "the revoked monitor's connections aborted",
        || {
            let mine =
                Client::connect(&victim_addr, &c.creds(), &ClientOptions::default()).unwrap();
            let open = mem_stats(&mine).counters["connections_open"];
            (open == 1).then_some(())
        },
    );
    // It stays out: still running, it cannot register again.
    std::thread::sleep(Duration::from_secs(2));
    let st = c.cluster_state();
    assert_eq!(alive_memory(&st).len(), 2, "{:?}", st.components);
    assert!(
        c.memories[victim].log_text().contains("revoked"),
        "the revoked monitor's log says why it is refused"
    );

    // No other key changed, and the cluster goes on with them.
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(before, after);
    let out = c
        .run_command(&["--excache", "64MiB"], &["cat", "/data/f"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"joined\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = c.cli(&["component", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert_eq!(text.matches("revoked").count(), 1, "{text}");
    assert_eq!(text.matches("valid").count(), 4, "{text}");
}

/// `lego ROLE` joining the loopback test cluster with `token`, its key
/// kept in `key_file`.
fn joining(c: &TestCluster, role: &str, token: &str, key_file: &Path) -> KillOnDrop {
    let mut cmd = Command::new(LEGO);
    cmd.args([role, "--manager", &c.manager_addr, "--join-token", token])
        .arg("--key-file")
        .arg(key_file)
        .env("LEGO_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match role {
        "memory" => cmd.args(["--capacity", "64MiB"]),
        _ => cmd.arg("--dir").arg(key_file.with_extension("files")),
    };
    KillOnDrop(cmd.spawn().unwrap())
}

/// What a daemon that could not start said.
fn failed(mut d: KillOnDrop) -> String {
    let status = wait_for(Duration::from_secs(10), "the daemon to give up", || {
        d.try_wait().unwrap()
    });
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut d.0.stderr.take().unwrap(), &mut err).unwrap();
    err
}

fn token(c: &TestCluster, role: &str, ttl: &str) -> String {
    let out = c.cli(&["token", "create", "--role", role, "--ttl", ttl]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn join_tokens_work_once_for_their_role_and_a_member_gets_no_more_than_its_role() {
    let c = TestCluster::start(0, "64MiB", 100);
    let dir = tempfile::tempdir().unwrap();
    let t = token(&c, "memory", "60s");
    assert!(t.starts_with("lego-join-"), "{t}");

    // Malformed, or the right id with a wrong key: refused, saying why.
    let err = failed(joining(&c, "memory", "lego-join-x", &dir.path().join("a")));
    assert!(err.contains("malformed"), "{err}");
    let (id_part, _) = t.rsplit_once('-').unwrap();
    let forged = format!("{id_part}-{}", "0".repeat(64));
    let err = failed(joining(&c, "memory", &forged, &dir.path().join("a")));
    assert!(err.contains("wrong key"), "{err}");
    // A memory token does not make a storage monitor (and is not spent).
    let err = failed(joining(&c, "storage", &t, &dir.path().join("s")));
    assert!(err.contains("not a storage monitor"), "{err}");

    let file = dir.path().join("m.json");
    let _m = joining(&c, "memory", &t, &file);
    let st = c.wait_until("the member registered", |s| !alive_memory(s).is_empty());
    let component = alive_memory(&st)[0].id;
    let (member, key) = key_file(&file);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Once only; and not after it expired.
    let err = failed(joining(&c, "memory", &t, &dir.path().join("b")));
    assert!(err.contains("unknown, used or expired"), "{err}");
    let short = token(&c, "memory", "1s");
    std::thread::sleep(Duration::from_millis(1200));
    let err = failed(joining(&c, "memory", &short, &dir.path().join("c")));
    assert!(err.contains("unknown, used or expired"), "{err}");

    // The member's own key: a component's rights, not the operator's, and
    // only for itself.
    let me = as_member(&c, member, key).unwrap();
    let refused = |e: TransportError, says: &str| {
        assert_eq!(e.remote_code(), Some(ErrorCode::NotEntitled), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    };
    let tok = TokenCreateReq {
        role: Role::Memory,
        ttl_s: 60,
    };
    refused(me.call(&tok).unwrap_err(), "needs the cluster secret");
    refused(
        me.call(&RevokeReq {
            component: Some(1),
            member: None,
        })
        .unwrap_err(),
        "needs the cluster secret",
    );
    refused(
        me.call(&lego_wire::control::VnodeCreateReq {
            name: "mine".into(),
            ..Default::default()
        })
        .unwrap_err(),
        "needs the cluster secret",
    );
    refused(
        me.call(&HeartbeatReq {
            id: component + 100,
            ..HeartbeatReq::default()
        })
        .unwrap_err(),
        "did not register as component",
    );
    refused(
        me.call(&registration(Role::Storage, None)).unwrap_err(),
        "cannot register as a storage monitor",
    );
    refused(
        me.call(&registration(Role::Memory, Some(component + 100)))
            .unwrap_err(),
        "may not take its id",
    );
    // A vNode's process gets no job keys; a joining daemon may only join.
    let (vnode, _) = c.vnode_space("v");
    let proc = Client::connect(
        &c.manager_addr,
        &Credentials::vnode(vnode, c.secret.vnode_key(vnode)),
        &ClientOptions::default(),
    )
    .unwrap();
    refused(
        proc.call(&JobKeysReq { job: 1, vnode }).unwrap_err(),
        "for processor monitors",
    );
    let fresh: lego_wire::auth::JoinToken = token(&c, "memory", "60s").parse().unwrap();
    let joiner = Client::connect(
        &c.manager_addr,
        &Credentials::join(&fresh),
        &ClientOptions::default(),
    )
    .unwrap();
    assert!(
        joiner.sealed(),
        "a cluster with members seals every link: a member relaying a plaintext handshake could speak on it"
    );
    refused(
        joiner.call(&registration(Role::Memory, None)).unwrap_err(),
        "join token",
    );
    refused(
        proc.call(&JoinReq { role: Role::Memory }).unwrap_err(),
        "join is not for a connection speaking for vnode",
    );

    // Members and spent tokens outlive a manager restart.
    let mut c = c;
    c.kill_manager();
    c.restart_manager();
    c.wait_until("the member registered again", |s| {
        alive_memory(s).iter().any(|m| m.id == component)
    });
    let err = failed(joining(&c, "memory", &t, &dir.path().join("d")));
    assert!(err.contains("unknown, used or expired"), "{err}");
    let me = as_member(&c, member, key).unwrap();

    // A member that never registered can be revoked by its member id.
    let fresh: lego_wire::auth::JoinToken = token(&c, "memory", "60s").parse().unwrap();
    let never = Client::connect(
        &c.manager_addr,
        &Credentials::join(&fresh),
        &ClientOptions::default(),
    )
    .unwrap()
    .call(&JoinReq { role: Role::Memory })
    .unwrap()
    .member;
    let out = c.cli(&["component", "revoke", "--member", &never.to_string()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("never registered"), "{said}");

    // Only a component with a key of its own can be revoked alone.
    let out = c.cli(&["component", "revoke", "999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no key of its own"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoked: its open connection to the manager is closed at once.
    me.call(&lego_wire::Ping).unwrap();
    let out = c.cli(&["component", "revoke", &component.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = me.call(&lego_wire::Ping).unwrap_err();
    assert!(e.is_unreachable(), "the connection is closed: {e}");
    c.wait_until("the revoked member declared dead", |s| {
        s.components
            .iter()
            .any(|x| x.id == component && x.health == Health::Dead)
    });
    // And it stays revoked across a restart.
    c.kill_manager();
    c.restart_manager();
    let err = as_member(&c, member, key).err().expect("still refused");
    assert!(err.to_string().contains("revoked"), "{err}");
}
