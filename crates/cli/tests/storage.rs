//! vNode files on a storage monitor, through the FUSE mounts a processor
//! monitor gives each job: real programs (sqlite3, cp, tar, sha256sum,
//! python3) compared with the same work done directly; a storage monitor
//! killed after an fsync and restarted; deletion of a busy vNode; and the
//! memory quota of a vNode.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A manager, two memory monitors, a storage monitor and a processor monitor.
fn cluster() -> TestCluster {
    ensure_runtime();
    let mut c = TestCluster::start(2, "512MiB", 200);
    c.start_storage();
    c.start_processor("256MiB");
    c
}

fn run(c: &TestCluster, vnode: &str, cmd: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = c.run_command(&["--vnode", vnode], cmd);
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = s.write_all(&input);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !out.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not finish within 240 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    out.join().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn sqlite_tables_live_on_the_vnodes_own_storage() {
    let c = cluster();
    let script = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\n\
        WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < 100000)\n\
        INSERT INTO t SELECT x, printf('row-%d', x) FROM n;\n\
        SELECT count(*), sum(id), max(v) FROM t;\n\
        PRAGMA integrity_check;\n";
    let dir = tempfile::tempdir().unwrap();
    let local_db = dir.path().join("t.db");
    let direct = Command::new("sqlite3")
        .arg(&local_db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(script.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("sqlite3 is installed");
    let want = ok(&direct);
    assert!(want.ends_with("ok\n"), "{want}");

    let got = ok(&run(
        &c,
        "a",
        &["sqlite3", "/data/t.db"],
        Some(script.as_bytes()),
    ));
    assert_eq!(
        got, want,
        "byte for byte what sqlite3 prints on a local file"
    );
    // A later run of vnode a sees the table...
    let again = "SELECT count(*) FROM t; PRAGMA integrity_check;\n";
    assert_eq!(
        ok(&run(
            &c,
            "a",
            &["sqlite3", "/data/t.db"],
            Some(again.as_bytes())
        )),
        "100000\nok\n"
    );
    // ... and vnode b does not: its /data is its own.
    let other = run(
        &c,
        "b",
        &["sqlite3", "/data/t.db"],
        Some(b"SELECT count(*) FROM t;\n"),
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("no such table: t"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let ls = ok(&run(&c, "b", &["ls", "-A", "/data"], None));
    assert_eq!(
        ls, "t.db\n",
        "vnode b has only the empty file its own sqlite3 made"
    );
    // The storage monitor keeps them apart on its disk too.
    let sdir = c.path().join("storage/vnodes");
    let trees: Vec<_> = std::fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(trees.len(), 2, "{trees:?}");
    c.assert_no_pages("the sqlite runs");
}

/// A tree of about `mb` MiB: many small files in nested directories, a few
/// large ones, a symlink, and a directory with unusual permissions.
fn make_tree(root: &Path, mb: u64) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| next().to_le_bytes())
            .take(n)
            .collect()
    };
    let small_mb = (mb / 8).max(1);
    let mut small = 0u64;
    let mut i = 0;
    while small < small_mb << 20 {
        let d = root.join(format!("d{:02}/s{}", i % 40, i % 7));
        std::fs::create_dir_all(&d).unwrap();
        let n = 1 + (i * 7919 % 16384);
        std::fs::write(d.join(format!("f{i:05}.bin")), bytes(n)).unwrap();
        small += n as u64;
        i += 1;
    }
    let big = (mb - small_mb) / 3;
    for b in 0..3 {
        let mut f = std::fs::File::create(root.join(format!("big{b}.dat"))).unwrap();
        for _ in 0..big {
            f.write_all(&bytes(1 << 20)).unwrap();
        }
    }
    std::os::unix::fs::symlink("big0.dat", root.join("link")).unwrap();
    // Not the default mode, to see it carried along; readable by others (a
    // confined program reads the host tree as any other user would).
    std::fs::set_permissions(
        root.join("d00"),
        std::os::unix::fs::PermissionsExt::from_mode(0o705),
    )
    .unwrap();
}

/// `sha256sum` of every file under `dir`, as run by `sh` (here or in a job).
const SUMS: &str = "cd \"$1\" && find . -type f -print0 | sort -z | xargs -0 sha256sum";

#[test]
fn a_tree_copied_with_cp_and_tar_reads_back_identical() {
    let mb: u64 = std::env::var("LEGO_TEST_TREE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let c = cluster();
    // In lego run's working directory: the one host directory a confined
    // program is shown.
    let tree = c.work().join("src");
    make_tree(&tree, mb);
    let direct = Command::new("sh")
        .args(["-c", SUMS, "sh"])
        .arg(&tree)
        .output()
        .unwrap();
    let want = ok(&direct);
    assert!(want.lines().count() > 1000, "a tree of many files");

    let t0 = Instant::now();
    ok(&run(
        &c,
        "files",
        // Host files' owners cannot be carried into a vNode (its files all
        // belong to its identity): everything else of -a is.
        &[
            "cp",
            "-a",
            "--no-preserve=ownership",
            tree.to_str().unwrap(),
            "/data/cp",
        ],
        None,
    ));
    let cp_s = t0.elapsed().as_secs_f64();
    assert_eq!(
        ok(&run(
            &c,
            "files",
            &["sh", "-c", SUMS, "sh", "/data/cp"],
            None
        )),
        want
    );

    let tar = Command::new("tar")
        .arg("-C")
        .arg(c.work())
        .args(["-cf", "-", "src"])
        .output()
        .unwrap();
    let t0 = Instant::now();
    ok(&run(
        &c,
        "files",
        &["sh", "-c", "mkdir /data/tar && tar -C /data/tar -xf -"],
        Some(&tar.stdout),
    ));
    let tar_s = t0.elapsed().as_secs_f64();
    assert_eq!(
        ok(&run(
            &c,
            "files",
            &["sh", "-c", SUMS, "sh", "/data/tar/src"],
            None
        )),
        want
    );
    // Metadata came along: the symlink and the permissions.
    let meta = ok(&run(
        &c,
        "files",
        &[
            "sh",
            "-c",
            "readlink /data/cp/link /data/tar/src/link; stat -c %a /data/cp/d00 /data/tar/src/d00",
        ],
        None,
    ));
    assert_eq!(meta, "big0.dat\nbig0.dat\n705\n705\n");
    eprintln!("{mb} MiB tree: cp -a {cp_s:.1} s, tar -x {tar_s:.1} s through the vnode mount");
}

#[test]
fn a_storage_monitor_killed_after_fsync_keeps_what_was_synced() {
    let mut c = cluster();
    // Writes and fsyncs one file, says so, then keeps writing another until
    // a write fails, and reports that error.
    let prog = r#"
import os, sys, time
data = bytes(range(256)) * 4096
with open("/data/synced.bin", "wb") as f:
    f.write(data); f.flush(); os.fsync(f.fileno())
dfd = os.open("/data", os.O_RDONLY); os.fsync(dfd); os.close(dfd)
f = open("/data/after.bin", "wb", buffering=0)
print("synced", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    try:
        f.write(b"x" * 4096); os.fsync(f.fileno())
    except OSError as e:
        print("error", e.errno, e.strerror, flush=True); sys.exit(3)
    time.sleep(0.02)
print("no error", flush=True)
"#;
    let mut child = c
        .run_command(&["--vnode", "crash"], &["python3", "-c", prog])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "synced");
    c.storage.as_mut().unwrap().kill9();
    let t0 = Instant::now();
    let Some(Ok(line)) = lines.next() else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the program ended without reporting ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(
        line.starts_with("error 5 ") || line.starts_with("error 116 "),
        "the program got an error: {line}"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    eprintln!(
        "the program saw `{line}` {:.2} s after the kill",
        t0.elapsed().as_secs_f64()
    );

    // Restarted over the same directory (on another port): the synced file
    // is intact, the manager still knows it holds vnode crash.
    c.start_storage();
    let got = ok(&run(&c, "crash", &["sha256sum", "/data/synced.bin"], None));
    let want = {
        let data: Vec<u8> = (0..=255u8).collect::<Vec<_>>().repeat(4096);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &data).unwrap();
        let o = Command::new("sha256sum").arg(f.path()).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(got.split_whitespace().next(), Some(want.as_str()));
    c.assert_no_pages("the crash test");
}

#[test]
fn memory_is_leased_ahead_of_need() {
    let c = cluster();
    ok(&c.cli(&["vnode", "create", "lz", "--memory-quota", "1GiB"]));
    // 120 MiB taken a MiB at a time, with a little work between: the
    // leaser asks for the next chunk while the program runs on.
    let py = "import time\nchunks = []\nfor i in range(120):\n    chunks.append(bytearray(1 << 20))\n    time.sleep(0.003)\nprint(len(chunks))\n";
    let o = c
        .run_command(&["--vnode", "lz", "--stats"], &["python3", "-c", py])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok(&o), "120\n");
    let err = String::from_utf8_lossy(&o.stderr);
    let counter = |name: &str| -> u64 {
        err.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in {err}"))
    };
    let (ahead, waited) = (counter("leases_ahead"), counter("leases_waited"));
    eprintln!("leases ahead of need: {ahead}, waited for: {waited}");
    assert!(
        ahead >= 20,
        "{ahead} leases ahead for 120 MiB in 4 MiB chunks"
    );
    assert!(waited <= 3, "{waited} allocations waited for a lease");
    assert_eq!(counter("quota_refusals"), 0);
}

#[test]
fn a_busy_vnode_is_deleted_only_by_force_and_its_quota_holds() {
    let c = cluster();
    let o = c.cli(&[
        "vnode",
        "create",
        "q",
        "--memory-quota",
        "256MiB",
        "--mount",
        "/data",
        "--mount",
        "/srv/q",
    ]);
    let created = ok(&o);
    assert!(
        created.contains("vIP 10.77.0.") && created.contains("mounts /data,/srv/q"),
        "{created}"
    );
    let vid = created
        .split("vID ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    // Past the quota, allocation fails in the program as out of memory.
    let py = "a = []\ntry:\n    while True: a.append(bytearray(16 << 20))\nexcept MemoryError:\n    print('MemoryError after', len(a))\n\
              n = len(a)\ndel a\nb = bytearray(64 << 20)\nprint('after freeing, allocations work again')\n";
    let out = ok(&run(&c, "q", &["python3", "-c", py], None));
    let n: u64 = out.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        (4..16).contains(&n),
        "{n} x 16 MiB fit a 256 MiB quota (python itself takes some): {out}"
    );
    assert!(
        out.ends_with("after freeing, allocations work again\n"),
        "{out}"
    );
    let log = c.processor.as_ref().unwrap().log_text();
    assert!(log.contains("vnode q is out of its memory quota"), "{log}");
    // Both mount points are the vNode's, each its own subtree.
    ok(&run(
        &c,
        "q",
        &["sh", "-c", "echo one > /data/f && echo two > /srv/q/f"],
        None,
    ));
    assert_eq!(
        ok(&run(&c, "q", &["cat", "/data/f", "/srv/q/f"], None)),
        "one\ntwo\n"
    );

    // While a process of the vNode runs, deletion is refused...
    let mut sleeper = c
        .run_command(&["--vnode", "q"], &["sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the job reported running", || {
        let show = ok(&c.cli(&["vnode", "show", "q"]));
        (!show.contains("none running")).then_some(())
    });
    // Another vNode's process cannot reach q's files through q's processes
    // (/proc/PID/root): it does not see them (a PID namespace of its own),
    // and even a host process is refused by q's mount, which serves only
    // q's own processes.
    let jobs = c
        .processor_client()
        .call(&lego_wire::jobs::JobsReq)
        .unwrap();
    let helper = jobs
        .iter()
        .find(|j| j.vnode == "q" && j.running)
        .unwrap()
        .pid;
    let pid = leaf_process(helper);
    let peek = run(
        &c,
        "other",
        &["cat", &format!("/proc/{pid}/root/data/f")],
        None,
    );
    assert!(!peek.status.success());
    assert!(
        String::from_utf8_lossy(&peek.stderr).contains("No such file or directory"),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );
    let host_peek = std::fs::read(format!("/proc/{pid}/root/data/f"));
    assert_eq!(
        host_peek.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::PermissionDenied),
        "a host process outside the vnode"
    );
    assert!(c
        .processor
        .as_ref()
        .unwrap()
        .log_text()
        .contains("refused a file request from a process outside the vnode"));
    let refused = c.cli(&["vnode", "delete", "q"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("running job"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // ... unless forced, which stops it first.
    let forced = ok(&c.cli(&["vnode", "delete", "q", "--force"]));
    assert!(
        forced.contains("stopped 1 job(s) and deleted vnode q"),
        "{forced}"
    );
    let st = sleeper.wait().unwrap();
    assert!(!st.success(), "the job was killed: {st}");
    assert!(
        !c.path().join("storage/vnodes").join(&vid).exists(),
        "its files are gone too"
    );
    assert!(!ok(&c.cli(&["vnode", "list"])).contains(" q "));
    c.assert_no_pages("the quota test");
}

#[test]
fn a_vnode_has_a_network_of_its_own_holding_its_vip() {
    let c = cluster();
    let created = ok(&c.cli(&["vnode", "create", "net"]));
    let vip = created
        .split("vIP ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    // A server on the vIP, and a client of it, inside the vNode; the
    // program pages through the runtime, whose own connections are made
    // from the processor monitor's namespace.
    let py = format!(
        "import socket, hashlib\n\
         s = socket.socket(); s.bind(('{vip}', 7000)); s.listen()\n\
         c = socket.create_connection(('{vip}', 7000)); a, _ = s.accept()\n\
         c.sendall(b'ping'); print(a.recv(4).decode())\n\
         print(hashlib.sha256(bytes(96 << 20)).hexdigest())\n"
    );
    let out = ok(&run(&c, "net", &["python3", "-c", &py], None));
    let want = format!(
        "ping\n{}\n",
        ok(&Command::new("python3")
            .args([
                "-c",
                "import hashlib; print(hashlib.sha256(bytes(96 << 20)).hexdigest())"
            ])
            .output()
            .unwrap())
        .trim()
    );
    assert_eq!(out, want);
    let addrs = ok(&run(&c, "net", &["ip", "-brief", "addr"], None));
    assert!(
        addrs
            .lines()
            .any(|l| l.starts_with("eth0") && l.contains(&format!("{vip}/32"))),
        "{addrs}"
    );
    assert_eq!(
        addrs.lines().count(),
        2,
        "its loopback and its veth: {addrs}"
    );
    // Its routes lead to its gateway on the host and to the cluster's hosts only.
    let routes = ok(&run(&c, "net", &["ip", "route"], None));
    assert!(
        routes.lines().all(|l| l.contains("169.254.77.1")),
        "{routes}"
    );
    // With --host-network its processes see the host's interfaces instead.
    ok(&c.cli(&["vnode", "create", "hostnet", "--host-network"]));
    let host = ok(&run(&c, "hostnet", &["ip", "-brief", "addr"], None));
    assert!(!host.contains("10.77.0."), "{host}");
    c.assert_no_pages("the network test");
}
