//! Entering a vNode: the first moments of each of its processes.
//!
//! The processor monitor starts a job of a vNode that has files through a
//! small helper, `lego __vnode-enter` (this module's [`main`]), which runs
//! in the new process before the program does:
//!
//! 1. `unshare(CLONE_NEWNS)` and make every mount private: from here on the
//!    process has a mount namespace of its own, which only it and its
//!    descendants see;
//! 2. for each mount point of the vNode, open `/dev/fuse`, mount a FUSE file
//!    system there (creating the directory if the host lacks it), and pass
//!    the `/dev/fuse` descriptor to the processor monitor over a Unix socket
//!    (SCM_RIGHTS), which serves it ([`crate::vfs`]);
//! 3. for a vNode with a network of its own, `unshare(CLONE_NEWNET)`: the
//!    process's network is its loopback, up, holding the vNode's vIP (the
//!    runtime makes its own connections from the monitor's namespace, see
//!    `lego-rt`'s `netns`);
//! 4. wait for the monitor's word that every mount is served, go to the
//!    job's working directory, and `exec` the program with its environment
//!    (the runtime's `LD_PRELOAD` restored: the helper itself runs without).
//!
//! Another vNode's mounts live in other namespaces, so no path of this
//! one's processes leads to them. A failure says what could not be mounted
//! and exits 125; an unrunnable program exits 126 or 127, as a shell does.

use std::ffi::OsString;
use std::io::{IoSlice, Read};
use std::os::fd::AsFd;
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
/// How long the helper waits for the monitor to serve its mounts.
const ACK_WAIT: Duration = Duration::from_secs(20);

/// What the helper is told, as command-line arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enter {
    pub socket: PathBuf,
    pub vnode: String,
    pub mounts: Vec<String>,
    /// Run in a network namespace of its own holding this address.
    pub vip: Option<String>,
    pub cwd: PathBuf,
    /// The resolved program, then its argv (argv[0] as given).
    pub program: PathBuf,
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
        if let Some(v) = &self.vip {
            a.extend(["--vip".into(), v.into()]);
        }
        a.extend([
            "--cwd".into(),
            self.cwd.clone().into(),
            "--".into(),
            self.program.clone().into(),
        ]);
        a.extend(self.argv.iter().map(OsString::from));
        a
    }

    /// Parses what [`Enter::to_args`] wrote.
    pub fn from_args(args: &[OsString]) -> Result<Enter, String> {
        let mut it = args.iter();
        let (mut socket, mut vnode, mut mounts, mut cwd) = (None, None, Vec::new(), None);
        let mut vip = None;
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
                Some("--vip") => vip = Some(value()?.to_string_lossy().into_owned()),
                Some("--cwd") => cwd = Some(PathBuf::from(value()?)),
                Some("--") => break,
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        let program = PathBuf::from(it.next().ok_or("no program")?);
        let argv: Vec<String> = it.map(|a| a.to_string_lossy().into_owned()).collect();
        if argv.is_empty() {
            return Err("no argv[0]".into());
        }
        Ok(Enter {
            socket: socket.ok_or("no --socket")?,
            vnode: vnode.ok_or("no --vnode")?,
            mounts,
            vip,
            cwd: cwd.ok_or("no --cwd")?,
            program,
            argv,
        })
    }
}

fn die(status: i32, msg: &str) -> ! {
    eprintln!("lego: {msg}");
    std::process::exit(status)
}

/// The helper: sets up the namespace and mounts, then becomes the program.
pub fn main(args: &[OsString]) -> ! {
    let e = Enter::from_args(args).unwrap_or_else(|why| die(125, &format!("{SUBCOMMAND}: {why}")));
    if let Err(why) = set_up(&e) {
        die(
            125,
            &format!(
                "cannot give the process the files of vnode {}: {why}",
                e.vnode
            ),
        );
    }
    if let Err(err) = std::env::set_current_dir(&e.cwd) {
        die(125, &format!("cannot enter {}: {err}", e.cwd.display()));
    }
    let mut cmd = std::process::Command::new(&e.program);
    cmd.arg0(&e.argv[0])
        .args(&e.argv[1..])
        .env_remove(PRELOAD_VAR);
    if let Some(p) = std::env::var_os(PRELOAD_VAR) {
        cmd.env("LD_PRELOAD", p);
    }
    let err = cmd.exec();
    let status = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    die(status, &format!("{}: {err}", e.argv[0]))
}

fn set_up(e: &Enter) -> Result<(), String> {
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
    let mut sock = UnixStream::connect(&e.socket).map_err(|err| {
        format!(
            "cannot reach the processor monitor at {}: {err}",
            e.socket.display()
        )
    })?;
    for (i, m) in e.mounts.iter().enumerate() {
        std::fs::create_dir_all(m)
            .map_err(|err| format!("cannot create the mount point {m}: {err}"))?;
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|err| format!("cannot open /dev/fuse (is FUSE available?): {err}"))?;
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            std::os::fd::AsRawFd::as_raw_fd(&fuse)
        );
        let source = format!("lego:{}", e.vnode);
        mount(
            Some(source.as_str()),
            m.as_str(),
            Some("fuse.lego"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|err| format!("cannot mount FUSE at {m}: {err}"))?;
        send_fd(&sock, i as u8, &fuse)
            .map_err(|err| format!("cannot hand {m} to the processor monitor: {err}"))?;
    }
    if let Some(vip) = &e.vip {
        own_network(vip)?;
    }
    sock.set_read_timeout(Some(ACK_WAIT))
        .map_err(|err| err.to_string())?;
    let mut ack = [0u8; 1];
    match sock.read_exact(&mut ack) {
        Ok(()) if ack[0] == b'+' => Ok(()),
        Ok(()) => Err("the processor monitor could not serve the mounts".into()),
        Err(err) => Err(format!("no word from the processor monitor: {err}")),
    }
}

/// A network namespace of the process's own: only its loopback, up, with
/// the vIP on it.
fn own_network(vip: &str) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|err| format!("no network namespace of its own: {err}"))?;
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{vip}/32"), "dev", "lo"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .map_err(|err| format!("cannot run ip (iproute2): {err}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Sends one byte (the mount's index) and a descriptor.
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
    use super::Enter;

    #[test]
    fn arguments_round_trip() {
        let e = Enter {
            socket: "/run/x.sock".into(),
            vnode: "a".into(),
            mounts: vec!["/data".into(), "/srv/x".into()],
            vip: Some("10.77.0.3".into()),
            cwd: "/tmp".into(),
            program: "/usr/bin/sqlite3".into(),
            argv: vec!["sqlite3".into(), "--".into(), "/data/t.db".into()],
        };
        assert_eq!(Enter::from_args(&e.to_args()).unwrap(), e);
        assert!(Enter::from_args(&["--socket".into()]).is_err());
    }
}
