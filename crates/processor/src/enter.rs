//! Entering a vNode: the first moments of each job, in the helper `lego
//! __vnode-enter` (this module's [`main`]), which the processor monitor
//! starts in place of the program:
//!
//! 1. Connect back to the monitor over the job's Unix socket.
//! 2. Confined (the monitor runs as root, the default): a mount namespace
//!    of the job's own and its root ([`lego_jail::Root`]); for each mount
//!    point of the vNode, open `/dev/fuse`, mount a FUSE file system there
//!    and pass the descriptor to the monitor (SCM_RIGHTS), which serves it
//!    ([`crate::vfs`]); the vNode's network namespace on this host, made by
//!    the monitor ([`crate::vnet`]; unless the vNode shares the host's
//!    network); and
//!    `/dev/userfaultfd`, opened now and left open for the runtime, which
//!    cannot open it as the vNode's unprivileged identity.
//! 3. The broker channel: a socket pair, one end to the monitor, the other
//!    left open for the runtime. Everything the runtime needs from outside
//!    goes through it ([`crate::broker`]): connections to the manager and
//!    memory monitors, which the monitor makes from the host's network and
//!    passes in, its address space, its counters. The job has no way into
//!    the host's network namespace.
//! 4. Wait for the monitor's word that every mount is served.
//! 5. Confined: enter the jail (PID, IPC, UTS and user namespaces, the
//!    vNode's unprivileged identity, `no_new_privs`, its root) and exec the
//!    program there, found through the `PATH` of its environment inside the
//!    jail. Unconfined: exec it here.
//!
//! A failure says what could not be done and exits 125; an unrunnable
//! program exits 126 or 127, as a shell does.

use std::ffi::OsString;
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// The helper's subcommand of the `lego` binary.
pub const SUBCOMMAND: &str = "__vnode-enter";
/// Where the helper keeps the runtime's preload until it execs the program.
pub const PRELOAD_VAR: &str = "LEGO_ENTER_LD_PRELOAD";
/// The index byte that marks the broker's end among the descriptors the
/// helper sends (mount points are 0..).
pub const BROKER_INDEX: u8 = 0xfe;
/// How long the helper waits for the monitor to serve its mounts.
const ACK_WAIT: Duration = Duration::from_secs(20);

/// How a confined job's root is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confine {
    /// An empty directory for the job's root.
    pub root: PathBuf,
    /// The vNode's host identity.
    pub uid: u32,
    /// Show the working directory to the job.
    pub share_cwd: bool,
    /// Host files the job sees read-only (the runtime, the program).
    pub files: Vec<PathBuf>,
    /// Host paths the job never sees (the cluster's directories).
    pub hide: Vec<PathBuf>,
}

/// What the helper is told, as command-line arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enter {
    pub socket: PathBuf,
    pub vnode: String,
    pub mounts: Vec<String>,
    /// Run in this network namespace (the vNode's on this host, holding its vIP).
    pub netns: Option<PathBuf>,
    pub cwd: PathBuf,
    /// `None`: run the program unconfined (the monitor is not root).
    pub confine: Option<Confine>,
    /// The program's argv (argv[0] as given).
    pub argv: Vec<String>,
}

impl Enter {
    /// The helper's arguments after the subcommand.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--socket".into(), self.socket.clone().into()];
        a.extend(["--vnode".into(), self.vnode.clone().into()]);
        for m in &self.mounts {
            a.extend(["--mount".into(), m.into()]);
        }
        if let Some(n) = &self.netns {
            a.extend(["--netns".into(), n.clone().into()]);
        }
        if let Some(c) = &self.confine {
            a.extend([
                "--root".into(),
                c.root.clone().into(),
                "--uid".into(),
                c.uid.to_string().into(),
            ]);
            if c.share_cwd {
                a.push("--share-cwd".into());
            }
            for f in &c.files {
                a.extend(["--file".into(), f.clone().into()]);
            }
            for h in &c.hide {
                a.extend(["--hide".into(), h.clone().into()]);
            }
        }
        a.extend(["--cwd".into(), self.cwd.clone().into(), "--".into()]);
        a.extend(self.argv.iter().map(OsString::from));
        a
    }

    /// Parses what [`Enter::to_args`] wrote.
    pub fn from_args(args: &[OsString]) -> Result<Enter, String> {
        let mut it = args.iter();
        let (mut socket, mut vnode, mut mounts, mut cwd) = (None, None, Vec::new(), None);
        let (mut netns, mut root, mut uid, mut share_cwd) = (None, None, None, false);
        let (mut files, mut hide) = (Vec::new(), Vec::new());
        loop {
            let flag = it.next().ok_or("missing -- before the program")?;
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag:?} needs a value"))
            };
            match flag.to_str() {
                Some("--socket") => socket = Some(PathBuf::from(value()?)),
                Some("--vnode") => vnode = Some(value()?.to_string_lossy().into_owned()),
                Some("--mount") => mounts.push(value()?.to_string_lossy().into_owned()),
                Some("--netns") => netns = Some(PathBuf::from(value()?)),
                Some("--cwd") => cwd = Some(PathBuf::from(value()?)),
                Some("--root") => root = Some(PathBuf::from(value()?)),
                Some("--uid") => {
                    let v = value()?;
                    uid = Some(
                        v.to_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| format!("bad --uid {v:?}"))?,
                    )
                }
                Some("--share-cwd") => share_cwd = true,
                Some("--file") => files.push(PathBuf::from(value()?)),
                Some("--hide") => hide.push(PathBuf::from(value()?)),
                Some("--") => break,
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        let argv: Vec<String> = it.map(|a| a.to_string_lossy().into_owned()).collect();
        if argv.is_empty() {
            return Err("no program".into());
        }
        let confine = match (root, uid) {
            (Some(root), Some(uid)) => Some(Confine {
                root,
                uid,
                share_cwd,
                files,
                hide,
            }),
            (None, None) => None,
            _ => return Err("--root and --uid go together".into()),
        };
        Ok(Enter {
            socket: socket.ok_or("no --socket")?,
            vnode: vnode.ok_or("no --vnode")?,
            mounts,
            netns,
            cwd: cwd.ok_or("no --cwd")?,
            confine,
            argv,
        })
    }
}

fn die(status: i32, msg: &str) -> ! {
    eprintln!("lego: {msg}");
    std::process::exit(status)
}

/// The helper: sets up the job, then becomes (or starts) the program.
pub fn main(args: &[OsString]) -> ! {
    let e = Enter::from_args(args).unwrap_or_else(|why| die(125, &format!("{SUBCOMMAND}: {why}")));
    let what = format!("cannot start a job of vnode {}", e.vnode);
    let (root, kept) = set_up(&e).unwrap_or_else(|why| die(125, &format!("{what}: {why}")));
    let program = move || -> (i32, String) {
        let mut cmd = std::process::Command::new(&e.argv[0]);
        cmd.args(&e.argv[1..]).env_remove(PRELOAD_VAR);
        if let Some(p) = std::env::var_os(PRELOAD_VAR) {
            cmd.env("LD_PRELOAD", p);
        }
        for (k, v) in &kept.env {
            cmd.env(k, v);
        }
        let err = cmd.exec();
        let status = if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        (status, format!("{}: {err}", e.argv[0]))
    };
    match root {
        Some(root) => root.enter(Box::new(program)),
        None => {
            // Unconfined: the program dies with the processor monitor, as
            // it would with its CPU.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if let Err(err) = std::env::set_current_dir(&e.cwd) {
                die(125, &format!("cannot enter {}: {err}", e.cwd.display()));
            }
            let (status, why) = program();
            die(status, &why)
        }
    }
}

/// What the program keeps from the helper: descriptors (not close-on-exec)
/// and the variables naming them.
struct Kept {
    _fds: Vec<OwnedFd>,
    env: Vec<(String, String)>,
}

fn set_up(e: &Enter) -> Result<(Option<lego_jail::Root>, Kept), String> {
    lego_jail::cloexec_from_3()
        .map_err(|err| format!("cannot keep inherited descriptors from the program: {err}"))?;
    let mut sock = UnixStream::connect(&e.socket).map_err(|err| {
        format!(
            "cannot reach the processor monitor at {}: {err}",
            e.socket.display()
        )
    })?;
    let root = match &e.confine {
        Some(c) => Some(confine(e, c, &sock)?),
        None => None,
    };
    let mut kept = Kept {
        _fds: Vec::new(),
        env: Vec::new(),
    };
    // The broker: one end to the monitor, the other to the runtime.
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|err| format!("cannot make the broker's socket pair: {err}"))?;
    send_fd(&sock, BROKER_INDEX, &ours)
        .map_err(|err| format!("cannot hand the broker to the processor monitor: {err}"))?;
    drop(ours);
    kept.env
        .push(("LEGO_RT_BROKER".into(), inherit(&theirs)?.to_string()));
    kept._fds.push(theirs);
    if root.is_some() {
        // The runtime cannot open it as the vNode's identity: open it now.
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
            .map_err(|err| format!("cannot open /dev/userfaultfd for the runtime: {err}"))?;
        let dev = OwnedFd::from(dev);
        kept.env
            .push(("LEGO_RT_UFFD_DEV".into(), inherit(&dev)?.to_string()));
        kept._fds.push(dev);
    }
    sock.set_read_timeout(Some(ACK_WAIT))
        .map_err(|err| err.to_string())?;
    let mut ack = [0u8; 1];
    match sock.read_exact(&mut ack) {
        Ok(()) if ack[0] == b'+' => Ok((root, kept)),
        Ok(()) => Err("the processor monitor could not serve the mounts".into()),
        Err(err) => Err(format!("no word from the processor monitor: {err}")),
    }
}

/// Clears close-on-exec: the program keeps the descriptor; returns its number.
fn inherit(fd: &OwnedFd) -> Result<i32, String> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
        .map_err(|err| format!("cannot pass a descriptor to the program: {err}"))?;
    Ok(fd.as_raw_fd())
}

/// The job's mount namespace and root, its vNode's mounts, its network.
fn confine(e: &Enter, c: &Confine, sock: &UnixStream) -> Result<lego_jail::Root, String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|err| {
        format!("no mount namespace of its own (unshare needs CAP_SYS_ADMIN): {err}")
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|err| format!("cannot make the mounts private: {err}"))?;
    let root = lego_jail::Root::build(lego_jail::Spec {
        root: c.root.clone(),
        uid_base: c.uid,
        cwd: e.cwd.clone(),
        share_cwd: c.share_cwd,
        files: c.files.clone(),
        mounts: e.mounts.clone(),
        hide: c.hide.clone(),
    })
    .map_err(|err| lego_wire::error::chain(&err))?;
    for (i, m) in e.mounts.iter().enumerate() {
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|err| format!("cannot open /dev/fuse (is FUSE available?): {err}"))?;
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            fuse.as_raw_fd()
        );
        let source = format!("lego:{}", e.vnode);
        mount(
            Some(source.as_str()),
            &root.path(m),
            Some("fuse.lego"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|err| format!("cannot mount FUSE at {m}: {err}"))?;
        send_fd(sock, i as u8, &fuse)
            .map_err(|err| format!("cannot hand {m} to the processor monitor: {err}"))?;
    }
    if let Some(ns) = &e.netns {
        vnode_network(ns)?;
    }
    Ok(root)
}

/// Joins the vNode's network namespace on this host ([`crate::vnet`]):
/// its vIP, and routes only to the cluster's hosts and its network's vNodes.
fn vnode_network(ns: &std::path::Path) -> Result<(), String> {
    let f = std::fs::File::open(ns)
        .map_err(|err| format!("cannot open the vnode's network {}: {err}", ns.display()))?;
    nix::sched::setns(f, CloneFlags::CLONE_NEWNET)
        .map_err(|err| format!("cannot join the vnode's network {}: {err}", ns.display()))
}

/// Sends one byte (the mount's index, or [`BROKER_INDEX`]) and a descriptor.
fn send_fd(sock: &UnixStream, index: u8, fd: &impl AsFd) -> std::io::Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let byte = [index];
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&byte)],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Confine, Enter};

    #[test]
    fn arguments_round_trip() {
        let mut e = Enter {
            socket: "/run/x.sock".into(),
            vnode: "a".into(),
            mounts: vec!["/data".into(), "/srv/x".into()],
            netns: Some("/run/netns/lego-p1-v3".into()),
            cwd: "/tmp".into(),
            confine: Some(Confine {
                root: "/run/lego/job.root".into(),
                uid: 1 << 30,
                share_cwd: true,
                files: vec!["/opt/liblego_rt.so".into()],
                hide: vec!["/var/lib/lego".into()],
            }),
            argv: vec!["sqlite3".into(), "--".into(), "/data/t.db".into()],
        };
        assert_eq!(Enter::from_args(&e.to_args()).unwrap(), e);
        e.confine = None;
        e.netns = None;
        assert_eq!(Enter::from_args(&e.to_args()).unwrap(), e);
        assert!(Enter::from_args(&["--socket".into()]).is_err());
        let half = [
            "--socket", "s", "--vnode", "a", "--cwd", "/", "--root", "/r", "--", "x",
        ];
        let half: Vec<std::ffi::OsString> = half.iter().map(|s| s.into()).collect();
        assert!(Enter::from_args(&half).is_err());
    }
}
