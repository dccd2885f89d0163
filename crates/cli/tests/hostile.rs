//! A hostile tenant: a program in vNode a (`tests/programs/hostile.py`,
//! run under `lego run --vnode a`) tries every attack of issue 11 while a
//! program of vNode b holds memory and a file. Each attack must fail with
//! a clear error; b's program must finish with the right output, its file
//! and pages intact; the daemons must go on serving.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lego_wire::jobs::{JobInfo, JobsReq};

/// b's program: 48 MiB of memory in a 16 MiB ExCache (most of it on the
/// memory monitors) and a file; it checks both once told to go on.
const B_PROGRAM: &str = r#"
import hashlib, random, sys
data = [random.Random(5).randbytes(1 << 20) for _ in range(48)]
with open("/data/b.txt", "w") as f:
    f.write("b's own file\n")
print("ready", flush=True)
sys.stdin.readline()
print(hashlib.sha256(b"".join(data)).hexdigest(), open("/data/b.txt").read().strip(), flush=True)
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one attack in vNode a; returns its lines by attempt name.
fn attack(c: &TestCluster, args: &[&str]) -> BTreeMap<String, String> {
    let mut cmd = vec!["/usr/bin/python3", "hostile.py"];
    cmd.extend_from_slice(args);
    let out = c
        .run_command(&["--vnode", "a", "--excache", "64MiB"], &cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("== {args:?}\n{stdout}{stderr}");
    let mut lines = BTreeMap::new();
    for l in stdout.lines() {
        if let Some((name, rest)) = l.split_once(": ") {
            lines.insert(name.to_string(), rest.to_string());
        }
    }
    lines
}

fn expect(lines: &BTreeMap<String, String>, name: &str, starts: &str) {
    let got = lines
        .get(name)
        .unwrap_or_else(|| panic!("no line for {name:?} in {lines:#?}"));
    assert!(
        got.starts_with(starts),
        "{name}: {got:?}, expected {starts:?}"
    );
}

fn find<'a>(lines: &'a BTreeMap<String, String>, prefix: &str) -> (&'a String, &'a String) {
    lines
        .iter()
        .find(|(k, _)| k.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line for {prefix:?} in {lines:#?}"))
}

#[test]
fn a_hostile_program_reaches_nothing_of_another_vnode() {
    let mut c = TestCluster::start(2, "1GiB", 200);
    c.storage_flags = ["--vnode-disk-quota", "32MiB", "--vnode-open-files", "64"]
        .map(String::from)
        .to_vec();
    c.start_storage();
    c.start_processor("512MiB");
    for args in [
        &["vnode", "create", "a", "--memory-quota", "64MiB"][..],
        &["vnode", "create", "b"][..],
    ] {
        let o = c.cli(args);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/programs/hostile.py"),
        c.work().join("hostile.py"),
    )
    .unwrap();

    // b's program, left waiting with its memory and its file.
    let want = Command::new("/usr/bin/python3")
        .args([
            "-c",
            &B_PROGRAM
                .replace("/data/b.txt", "/dev/null")
                .replace("open(\"/dev/null\").read().strip()", "\"b's own file\""),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let want = text(&want.stdout).replace("ready\n", "");
    let mut b = c
        .run_command(
            &["--vnode", "b", "--excache", "16MiB"],
            &["/usr/bin/python3", "-c", B_PROGRAM],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b_out = BufReader::new(b.stdout.take().unwrap());
    let mut line = String::new();
    b_out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let b_job: JobInfo = wait_for(Duration::from_secs(10), "b's counters", || {
        let jobs: Vec<JobInfo> = c.processor_client().call(&JobsReq).unwrap();
        jobs.into_iter()
            .find(|j| j.vnode == "b" && j.running && j.counters.contains_key("asid"))
    });
    let b_asid = b_job.counters["asid"].to_string();
    let b_pid = leaf_process(b_job.pid).to_string();
    let b_vid = lego_wire::Asid(b_job.counters["asid"]).vnode().to_string();
    let held_before: u64 = c.pages_held().into_iter().map(|(_, n)| n.unwrap()).sum();
    assert!(held_before > 0, "b's memory is on the memory monitors");

    let dir = c.path().to_str().unwrap().to_string();
    let lines = attack(&c, &["files", &dir, &b_vid]);
    for name in [
        "read the secret",
        "list the cluster",
        "read b's files",
        "open a disk",
        "open /dev/mem",
        "open /dev/userfaultfd",
    ] {
        expect(&lines, name, "refused ENOENT");
    }

    let lines = attack(&c, &["procs", &b_pid]);
    let pids = &lines["pids"];
    assert!(
        pids.starts_with("2 ") || pids.starts_with("3 "),
        "its own PID namespace: {pids}"
    );
    expect(&lines, "read b's environment", "refused ENOENT");
    expect(&lines, "signal b", "refused ESRCH");
    expect(&lines, "enter init's network namespace", "refused");
    expect(&lines, "mount", "refused EPERM");
    expect(&lines, "read /etc/shadow", "refused EACCES");
    expect(&lines, "read /etc/shadow from it", "refused EACCES");

    let http = c.http.clone().expect("the manager serves http");
    let lines = attack(&c, &["network", &c.manager_addr, &http]);
    expect(&lines, "reach the manager", "refused ECONNREFUSED");
    expect(&lines, "reach the manager's http", "refused ECONNREFUSED");

    let monitors: Vec<String> = c.memories.iter().map(|m| m.addr.clone()).collect();
    let processor = c.processor.as_ref().unwrap().addr.clone();
    let storage = c.storage.as_ref().unwrap().addr.clone();
    let lines = attack(
        &c,
        &[
            "dial",
            &c.manager_addr,
            &monitors[0],
            &processor,
            &storage,
            &http,
            "127.0.0.1:22",
            "unix:/run/systemd/private",
        ],
    );
    expect(&lines, &format!("broker to {}", c.manager_addr), "ok");
    expect(&lines, &format!("broker to {}", monitors[0]), "ok");
    for addr in [
        &processor,
        &storage,
        &http,
        "127.0.0.1:22",
        "unix:/run/systemd/private",
    ] {
        expect(&lines, &format!("broker to {addr}"), "refused");
        assert!(lines[&format!("broker to {addr}")].contains("not a component of this cluster"));
    }

    let lines = attack(
        &c,
        &["memory", &c.manager_addr, &monitors.join(","), &b_asid],
    );
    for m in &monitors {
        expect(
            &lines,
            &format!("write a space never created on {m}"),
            "refused NotEntitled",
        );
        expect(
            &lines,
            &format!("write b's space on {m}"),
            "refused NotEntitled",
        );
        expect(
            &lines,
            &format!("read b's space on {m}"),
            "refused NotEntitled",
        );
    }
    expect(
        &lines,
        "write outside the vregion placed",
        "refused NotEntitled",
    );
    let (name, past) = find(&lines, "write past the quota");
    assert!(past.starts_with("refused OutOfMemory"), "{past}");
    let mib: u64 = name
        .trim_start_matches("write past the quota (")
        .trim_end_matches(" MiB written)")
        .parse()
        .unwrap();
    assert!(mib <= 64, "{mib} MiB past a 64 MiB quota");

    let lines = attack(&c, &["storage"]);
    expect(&lines, "chmod setuid", "refused EPERM");
    expect(&lines, "chmod setgid", "refused EPERM");
    expect(&lines, "mode of a file created setuid", "0o755");
    expect(&lines, "chown to another user", "refused EPERM");
    expect(&lines, "chown to itself", "ok");
    let (_, open) = find(&lines, "open files without end");
    assert!(open.starts_with("refused EMFILE"), "{open}");
    let (_, fill) = find(&lines, "fill the disk");
    assert!(fill.starts_with("refused EDQUOT"), "{fill}");
    expect(&lines, "write after freeing", "ok");
    // On the storage host: a's files belong to its identity, in 0700
    // trees, and none is setuid or setgid.
    let a_vid = c
        .mgr()
        .call(&lego_wire::control::VnodeShowReq { name: "a".into() })
        .unwrap()
        .id;
    let identity = lego_wire::types::identity(a_vid).unwrap();
    let vnodes = c.path().join("storage/vnodes");
    assert_eq!(std::fs::metadata(&vnodes).unwrap().mode() & 0o777, 0o700);
    let a_root = vnodes.join(a_vid.to_string());
    assert_eq!(std::fs::metadata(&a_root).unwrap().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(a_root.join("data")).unwrap() {
        let m = std::fs::symlink_metadata(e.unwrap().path()).unwrap();
        assert_eq!(m.mode() & 0o6000, 0, "no setuid or setgid file");
        assert_eq!((m.uid(), m.gid()), (identity, identity));
    }

    // The broker hears a's process claim b's space: the janitor frees it
    // only if the manager records it as a's job's, which it is not.
    attack(&c, &["space_claim", &b_asid]);
    std::thread::sleep(Duration::from_secs(1));

    // Last of a's attacks: after it, a has no room for another process's
    // address space.
    let lines = attack(
        &c,
        &[
            "manager_calls",
            &c.manager_addr,
            &b_job.job.to_string(),
            &b_vid,
            &b_asid,
        ],
    );
    expect(&lines, "own a space as b's job", "refused NotEntitled");
    expect(
        &lines,
        "own a space as b's job without proof",
        "refused NotEntitled",
    );
    expect(
        &lines,
        "place a vregion of a space never created",
        "refused NotFound",
    );
    expect(
        &lines,
        "place a vregion of b's space",
        "refused NotEntitled",
    );
    expect(&lines, "release b's space", "refused NotEntitled");
    expect(&lines, "release b's job", "refused NotEntitled");
    expect(&lines, "delete vnode b", "refused NotEntitled");
    expect(&lines, "read the cluster state", "refused NotEntitled");
    expect(&lines, "flood unreachable reports", "ok");
    let (_, spaces) = find(&lines, "create spaces without end");
    assert!(spaces.starts_with("refused Conflict"), "{spaces}");

    // Deleting a, forced, stops a's jobs and frees its memory and files:
    // none of b's.
    let o = c.cli(&["vnode", "delete", "a", "--force"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!a_root.exists());

    // b finishes right, its file intact.
    b.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut b_out, &mut rest).unwrap();
    let status = b.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut b.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "b: {status}: {err}");
    assert_eq!(rest, want, "b's memory and file");

    // The daemons went on: every one alive, b's memory freed.
    let st = c.cluster_state();
    assert!(
        st.components
            .iter()
            .all(|x| x.health == lego_wire::Health::Alive),
        "{st:?}"
    );
    c.assert_no_pages("b's job");
    let log = c.processor.as_ref().unwrap().log_text();
    assert!(
        log.contains("cannot free an address space of the job"),
        "the claim on b's space was refused"
    );
}
