//! Entering the jail: the helper (outside, the job's main process), the
//! job's init (PID 1 of its own namespaces) and the program.
//!
//! ```text
//! helper (host root)              init (pid 1)                   program
//!   unshare(PID|IPC|UTS), fork ->   wait for the helper
//!   open /proc/INIT, say go  ----->  mount /proc, pivot_root, detach host /
//!                                    unshare(USER) ----------> "user"
//!   write uid_map, gid_map
//!   say go  ---------------------->  uid 0 (= the vNode's identity), no_new_privs
//!                                    fork --------------------> default signals, chdir, exec
//!                                    reap; on the program's end:
//!   <---------------- its status --  say it, exit (the namespace's processes die)
//!   end the same way
//! ```

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, pipe2, Gid, Pid, Uid};

use crate::sys::{self, set_default, set_ignored};
use crate::{JailError, Root, IDS_PER_VNODE};
use lego_wire::error::chain;

/// How the program ended, as the init reports it to the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
}

impl Ended {
    fn encode(self) -> [u8; 5] {
        let (kind, v) = match self {
            Ended::Exited(c) => (b'x', c),
            Ended::Signalled(s) => (b's', s),
        };
        let mut b = [kind, 0, 0, 0, 0];
        b[1..].copy_from_slice(&v.to_le_bytes());
        b
    }

    fn decode(b: &[u8; 5]) -> Option<Ended> {
        let v = i32::from_le_bytes(b[1..].try_into().expect("4 bytes"));
        match b[0] {
            b'x' => Some(Ended::Exited(v)),
            b's' => Some(Ended::Signalled(v)),
            _ => None,
        }
    }
}

/// What runs as the program: called in the program's process, inside the
/// jail, after `chdir`; it execs, and returns only why it could not, with
/// the exit status to end with (126, 127).
pub type Program<'a> = Box<dyn FnOnce() -> (i32, String) + 'a>;

/// The signals a shell would pass on: the helper and the init ignore them
/// (the program gets them from its process group), the program gets them
/// back at their defaults.
const CATCHABLE: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGPIPE,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

fn say(fd: &OwnedFd, b: &[u8]) -> Result<(), JailError> {
    std::fs::File::from(fd.try_clone().map_err(JailError::sys("dup"))?)
        .write_all(b)
        .map_err(JailError::sys("cannot signal the other side of the jail"))
}

fn hear(fd: &OwnedFd, want: u8) -> Result<(), JailError> {
    let mut b = [0u8; 1];
    std::fs::File::from(fd.try_clone().map_err(JailError::sys("dup"))?)
        .read_exact(&mut b)
        .map_err(JailError::sys("the other side of the jail went away"))?;
    if b[0] != want {
        return Err(JailError::Sys {
            what: format!(
                "expected {:?} from the other side of the jail",
                want as char
            ),
            source: std::io::Error::other(format!("got {:?}", b[0] as char)),
        });
    }
    Ok(())
}

fn die(status: i32, msg: &str) -> ! {
    eprintln!("lego: {msg}");
    std::process::exit(status)
}

impl Root {
    /// Enters the jail and never returns: ends as the program ended. The
    /// program gets the descriptors of the helper that are not
    /// close-on-exec (its standard streams, and what the caller means it to
    /// have); every other one must be close-on-exec. Must be called with
    /// one thread.
    pub fn enter(self, program: Program<'_>) -> ! {
        match self.try_enter(program) {
            Ok(ended) => end_as(ended),
            Err(e) => die(125, &format!("cannot confine the job: {}", chain(&e))),
        }
    }

    fn try_enter(self, program: Program<'_>) -> Result<Ended, JailError> {
        for &s in CATCHABLE {
            set_ignored(s);
        }
        // The helper dies with the processor monitor, and takes the job with it.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(JailError::nix("pdeathsig"))?;
        unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(JailError::nix(
                "no PID, IPC and UTS namespaces of its own (needs CAP_SYS_ADMIN)",
            ))?;
        let (to_init_r, to_init_w) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(JailError::nix("pipe"))?;
        let (to_helper_r, to_helper_w) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(JailError::nix("pipe"))?;
        match sys::fork().map_err(JailError::sys("cannot start the job's init"))? {
            None => {
                drop((to_init_w, to_helper_r));
                let r = init(
                    &self.spec.root,
                    &self.start_dir,
                    &to_init_r,
                    &to_helper_w,
                    program,
                );
                let why = match r {
                    Err(e) => chain(&e),
                    Ok(never) => match never {},
                };
                die(125, &format!("cannot confine the job: {why}"))
            }
            Some(init_pid) => {
                drop((to_init_r, to_helper_w));
                self.helper(init_pid, &to_init_w, &to_helper_r)
            }
        }
    }

    /// The helper's side: gives the init its identity, then waits for the program's end.
    fn helper(self, init: Pid, to_init: &OwnedFd, from_init: &OwnedFd) -> Result<Ended, JailError> {
        let proc_dir = rustix::fs::open(
            format!("/proc/{init}"),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| JailError::Sys {
            what: "cannot find the job's init".into(),
            source: e.into(),
        })?;
        say(to_init, b"o")?;
        hear(from_init, b'u')?;
        let base = self.spec.uid_base;
        for (file, text) in [
            ("setgroups", "deny".to_string()),
            ("uid_map", format!("0 {base} {IDS_PER_VNODE}")),
            ("gid_map", format!("0 {base} {IDS_PER_VNODE}")),
        ] {
            let fd = rustix::fs::openat(
                &proc_dir,
                file,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| JailError::Sys {
                what: format!("cannot open the job's {file}"),
                source: e.into(),
            })?;
            std::fs::File::from(fd)
                .write_all(text.as_bytes())
                .map_err(JailError::sys(format!("cannot write the job's {file}")))?;
        }
        say(to_init, b"g")?;
        let mut status = [0u8; 5];
        let told = std::fs::File::from(from_init.try_clone().map_err(JailError::sys("dup"))?)
            .read_exact(&mut status)
            .ok()
            .and_then(|()| Ended::decode(&status));
        let init_status = waitpid(init, None);
        Ok(told.unwrap_or(match init_status {
            Ok(WaitStatus::Signaled(_, s, _)) => Ended::Signalled(s as i32),
            Ok(WaitStatus::Exited(_, c)) => Ended::Exited(c),
            _ => Ended::Exited(125),
        }))
    }
}

/// The init: PID 1 of the job's namespaces.
fn init(
    root: &Path,
    start_dir: &Path,
    from_helper: &OwnedFd,
    to_helper: &OwnedFd,
    program: Program<'_>,
) -> Result<std::convert::Infallible, JailError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(JailError::nix("pdeathsig"))?;
    hear(from_helper, b'o')?;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(JailError::nix("cannot mount the job's /proc"))?;
    nix::unistd::pivot_root(root, &root.join(".old"))
        .map_err(JailError::nix("cannot enter the job's root (pivot_root)"))?;
    chdir("/").map_err(JailError::nix("chdir /"))?;
    umount2("/.old", MntFlags::MNT_DETACH)
        .map_err(JailError::nix("cannot detach the host's root"))?;
    let _ = std::fs::remove_dir("/.old");
    unshare(CloneFlags::CLONE_NEWUSER).map_err(JailError::nix("no user namespace of its own"))?;
    say(to_helper, b"u")?;
    hear(from_helper, b'g')?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(JailError::nix("setresgid"))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(JailError::nix("setresuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(JailError::nix("no_new_privs"))?;
    let child = sys::fork().map_err(JailError::sys("cannot start the program"))?;
    let Some(program_pid) = child else {
        for &s in CATCHABLE {
            set_default(s);
        }
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        if chdir(start_dir).is_err() {
            let _ = chdir("/");
        }
        let (status, why) = program();
        die(status, &why)
    };
    let ended = loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, c)) if p == program_pid => break Ended::Exited(c),
            Ok(WaitStatus::Signaled(p, s, _)) if p == program_pid => {
                break Ended::Signalled(s as i32)
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break Ended::Exited(125),
        }
    };
    let _ = say(to_helper, &ended.encode());
    std::process::exit(0)
}

/// Ends this process as the program ended.
fn end_as(ended: Ended) -> ! {
    match ended {
        Ended::Exited(c) => std::process::exit(c),
        Ended::Signalled(s) => {
            let sig = Signal::try_from(s).ok();
            if let Some(sig) = sig {
                // No core of the helper for the program's crash.
                let _ =
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
                set_default(sig);
                let mut set = SigSet::empty();
                set.add(sig);
                let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
                let _ = kill(Pid::this(), sig);
            }
            std::process::exit(128 + s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ended;

    #[test]
    fn ends_round_trip() {
        for e in [Ended::Exited(0), Ended::Exited(127), Ended::Signalled(9)] {
            assert_eq!(Ended::decode(&e.encode()), Some(e));
        }
        assert_eq!(Ended::decode(&[b'?', 0, 0, 0, 0]), None);
    }
}
