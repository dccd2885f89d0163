//! The store never leaves a vNode's tree, whatever the path or the links in
//! it, and keeps what it was given.

use lego_storage::FileStore;
use rustix::io::Errno;

fn store() -> (tempfile::TempDir, FileStore) {
    let d = tempfile::tempdir().unwrap();
    let s = FileStore::open(d.path().join("store"), Default::default()).unwrap();
    (d, s)
}

#[test]
fn files_round_trip_and_survive_reopening_the_store() {
    let (d, s) = store();
    s.mkdir(1, b"dir", 0o755).unwrap();
    let (h, _) = s.create(1, 0, b"dir/f", 0o644, libc_rdwr()).unwrap();
    assert_eq!(s.write(1, h, 0, b"hello world").unwrap(), 11);
    s.fsync(1, h, false).unwrap();
    let mut out = Vec::new();
    s.read(1, h, 6, 100, &mut out).unwrap();
    assert_eq!(out, b"world");
    s.release(1, h).unwrap();
    // A new store over the same directory (a restarted monitor): same data,
    // and the old handle is stale, not someone else's file.
    let s2 = FileStore::open(d.path().join("store"), Default::default()).unwrap();
    let (h2, attr) = s2.open_file(1, 0, b"dir/f", 0).unwrap();
    assert_eq!(attr.size, 11);
    s2.read(1, h2, 0, 100, &mut out).unwrap();
    assert_eq!(out, b"hello world");
    assert_eq!(
        s2.read(1, h, 0, 1, &mut out).unwrap_err().errno,
        Errno::STALE
    );
}

fn libc_rdwr() -> i32 {
    2 // O_RDWR
}

#[test]
fn paths_and_links_cannot_leave_the_vnode() {
    let (d, s) = store();
    std::fs::write(d.path().join("secret"), b"host file").unwrap();
    s.mkdir(1, b"a", 0o755).unwrap();
    // Dots, absolute paths, NUL and overlong names are refused before any lookup.
    for bad in [
        &b"../secret"[..],
        b"a/../../secret",
        b"/etc/passwd",
        b"a\0b",
        b"./a",
    ] {
        let e = s.stat(1, bad).unwrap_err();
        assert_eq!(e.errno, Errno::INVAL, "{bad:?}: {e}");
    }
    assert_eq!(s.stat(1, &[b'x'; 300]).unwrap_err().errno, Errno::INVAL);
    // Symlinks are stored as data, never followed by the store.
    for target in [&b"/etc/passwd"[..], b"../../secret", b"../../../.."] {
        s.symlink(1, b"a/link", target).unwrap();
        assert_eq!(s.readlink(1, b"a/link").unwrap(), target);
        assert_eq!(
            s.open_file(1, 0, b"a/link", 0).unwrap_err().errno,
            Errno::LOOP
        );
        assert!(s.stat(1, b"a/link/x").is_err());
        assert!(s.create(1, 0, b"a/link/x", 0o644, 2).is_err());
        s.unlink(1, b"a/link", false).unwrap();
    }
    // A directory symlink is not a way in either.
    s.symlink(1, b"up", b"..").unwrap();
    assert_eq!(s.readdir(1, b"up", 0).unwrap_err().errno, Errno::LOOP);
    // chmod through the link changes nothing outside (a symlink has no mode).
    let mode_of = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
    let before = mode_of(&d.path().join("store/vnodes"));
    s.setattr(1, b"up", Some(0o777), None, None, None, None, None)
        .unwrap();
    assert_eq!(mode_of(&d.path().join("store/vnodes")), before);
    // Another vNode's tree is another root.
    let (h, _) = s.create(2, 0, b"mine", 0o600, 2).unwrap();
    s.write(2, h, 0, b"vnode 2").unwrap();
    assert_eq!(s.stat(1, b"mine").unwrap_err().errno, Errno::NOENT);
    let mut out = Vec::new();
    assert_eq!(
        s.read(1, h, 0, 10, &mut out).unwrap_err().errno,
        Errno::BADF
    );
    assert_eq!(
        std::fs::read(d.path().join("secret")).unwrap(),
        b"host file"
    );
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn listings_continue_past_their_size_limit() {
    let (_d, s) = store();
    s.mkdir(1, b"many", 0o755).unwrap();
    let n = 5000;
    for i in 0..n {
        let name = format!("many/{i:0>200}");
        let (h, _) = s.create(1, 0, name.as_bytes(), 0o644, 2).unwrap();
        s.release(1, h).unwrap();
    }
    let (mut seen, mut cookie) = (std::collections::BTreeSet::new(), 0);
    loop {
        let (entries, next) = s.readdir(1, b"many", cookie).unwrap();
        seen.extend(entries.into_iter().map(|e| e.name));
        match next {
            Some(c) => cookie = c,
            None => break,
        }
    }
    assert_eq!(seen.len(), n);
}
