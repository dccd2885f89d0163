//! Starting the program of a job.
//!
//! The program gets exactly the environment `lego run` sent (minus the cluster
//! secret, should the user's shell hold it in `LEGO_SECRET`, and minus any
//! `LEGO_RT_*` variable of an enclosing job) plus what the
//! runtime needs: `LD_PRELOAD` (the runtime first, before any preload the
//! user had), and `LEGO_RT_MANAGER`, `LEGO_RT_VNODE`, `LEGO_RT_VNODE_ID`,
//! `LEGO_RT_KEY` (the vNode's key, never the cluster secret), `LEGO_RT_EXCACHE`
//! (the quota in bytes) and `LEGO_RT_JOB` (the owner tag of its address
//! spaces); the helper adds `LEGO_RT_BROKER` and `LEGO_RT_UFFD_DEV` (see
//! [`crate::enter`]).
//!
//! `argv[0]` is resolved the way a shell does: a name with a slash is a path
//! (relative to the job's working directory), anything else is looked up in
//! the `PATH` of the job's environment. The program runs in its own process
//! group, so that signals and the final SIGKILL reach everything it started,
//! with its three standard streams piped to the monitor.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ProcessorError;

/// `PATH` when the job's environment has none (what a shell would use).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Prefix of the runtime's variables. Every such variable of the given
/// environment is dropped (a `lego run` started inside a job must not hand
/// the outer job's runtime state to the inner one); the monitor sets its own.
pub const RUNTIME_PREFIX: &str = "LEGO_RT_";

/// What the runtime inside the program is told.
#[derive(Clone, Debug)]
pub struct RuntimeEnv {
    /// Absolute path of `liblego_rt.so`.
    pub runtime: PathBuf,
    pub manager: String,
    pub vnode: String,
    pub vnode_id: u32,
    /// The vNode's key, 64 hex digits.
    pub key_hex: String,
    pub excache: u64,
    pub job: u64,
    /// [`lego_wire::auth::Secret::job_proof`] of the job, in hex: lets its
    /// processes name the job as the owner of their address spaces.
    pub job_proof: String,
    /// The vNode's memory quota, when it has one.
    pub memory_quota: Option<u64>,
}

/// The program's environment: the given one with the runtime's added.
pub fn program_env(given: &[(String, String)], rt: &RuntimeEnv) -> Vec<(String, String)> {
    let runtime = rt.runtime.to_string_lossy().into_owned();
    let mut preload = runtime.clone();
    let mut env: Vec<(String, String)> = Vec::with_capacity(given.len() + 8);
    for (k, v) in given {
        if k == "LD_PRELOAD" {
            // Keep the user's preloads, after ours, without a second copy of ours.
            for p in v
                .split([':', ' '])
                .filter(|p| !p.is_empty() && *p != runtime)
            {
                preload.push(':');
                preload.push_str(p);
            }
        } else if k != "LEGO_SECRET" && !k.starts_with(RUNTIME_PREFIX) {
            env.push((k.clone(), v.clone()));
        }
    }
    env.push(("LD_PRELOAD".into(), preload));
    for (k, v) in [
        ("LEGO_RT_MANAGER", rt.manager.clone()),
        ("LEGO_RT_VNODE", rt.vnode.clone()),
        ("LEGO_RT_VNODE_ID", rt.vnode_id.to_string()),
        ("LEGO_RT_KEY", rt.key_hex.clone()),
        ("LEGO_RT_EXCACHE", rt.excache.to_string()),
        ("LEGO_RT_JOB", rt.job.to_string()),
        ("LEGO_RT_JOB_PROOF", rt.job_proof.clone()),
    ] {
        env.push((k.to_string(), v));
    }
    if let Some(q) = rt.memory_quota {
        env.push(("LEGO_RT_QUOTA".into(), q.to_string()));
    }
    env
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `argv0` is, as a shell would find it.
pub fn resolve(
    argv0: &str,
    env: &[(String, String)],
    cwd: &Path,
) -> Result<PathBuf, ProcessorError> {
    if argv0.is_empty() {
        return Err(ProcessorError::CommandNotFound(String::new()));
    }
    if argv0.contains('/') {
        return Ok(cwd.join(argv0));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let mut not_executable = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = cwd.join(dir).join(argv0);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        if not_executable.is_none() && candidate.is_file() {
            not_executable = Some(candidate);
        }
    }
    // Like a shell: a file that is there but not executable is "permission
    // denied" (the spawn says so), nothing at all is "command not found".
    not_executable.ok_or_else(|| ProcessorError::CommandNotFound(argv0.to_string()))
}

/// How a job enters its vNode (see [`crate::enter`]).
#[derive(Clone, Debug)]
pub struct EnterVia {
    /// The `lego` executable that has the helper subcommand.
    pub exe: PathBuf,
    pub socket: PathBuf,
    pub vnode: String,
    pub mounts: Vec<String>,
    /// The vNode's network namespace on this host ([`crate::vnet`]).
    pub netns: Option<PathBuf>,
    /// `None`: unconfined.
    pub confine: Option<crate::enter::Confine>,
}

/// Starts the job through the helper ([`crate::enter`]) in its own
/// process group with piped stdio. The program is looked up here too, so
/// that a missing one is reported at once; `confine` adds a program named
/// by path to the files the job sees.
pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
    via: &EnterVia,
) -> Result<Child, ProcessorError> {
    let argv0 = argv.first().ok_or(ProcessorError::NoCommand)?;
    let cwd_path = Path::new(cwd);
    match std::fs::metadata(cwd_path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ProcessorError::BadCwd {
                cwd: cwd.into(),
                source: std::io::Error::other("not a directory"),
            })
        }
        Err(source) => {
            return Err(ProcessorError::BadCwd {
                cwd: cwd.into(),
                source,
            })
        }
    }
    let program = resolve(argv0, env, cwd_path)?;
    let unrunnable = match std::fs::metadata(&program) {
        Err(source) => Some(source),
        Ok(_) if !is_executable(&program) => Some(std::io::Error::from(rustix::io::Errno::ACCESS)),
        Ok(_) => None,
    };
    if let Some(source) = unrunnable {
        return Err(ProcessorError::Spawn {
            program: argv0.clone(),
            source,
        });
    }
    let mut confine = via.confine.clone();
    if let Some(c) = confine.as_mut() {
        if argv0.contains('/') {
            c.files.push(program.clone());
        }
    }
    let e = crate::enter::Enter {
        socket: via.socket.clone(),
        vnode: via.vnode.clone(),
        mounts: via.mounts.clone(),
        netns: via.netns.clone(),
        cwd: cwd_path.to_path_buf(),
        confine,
        argv: argv.to_vec(),
    };
    let mut cmd = Command::new(&via.exe);
    cmd.arg(crate::enter::SUBCOMMAND)
        .args(e.to_args())
        .env_clear();
    // The helper runs without the runtime; it restores the preload just
    // before it becomes the program.
    for (k, v) in env {
        if k == "LD_PRELOAD" {
            cmd.env(crate::enter::PRELOAD_VAR, v);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(cwd_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessorError::Spawn {
            program: argv0.clone(),
            source,
        })
}

/// 64 hex digits of a key.
#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> RuntimeEnv {
        RuntimeEnv {
            runtime: "/opt/lego/liblego_rt.so".into(),
            manager: "127.0.0.1:7700".into(),
            vnode: "default".into(),
            vnode_id: 3,
            key_hex: "ab".repeat(32),
            excache: 1 << 20,
            job: 42,
            job_proof: "cd".repeat(32),
            memory_quota: None,
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn environment_adds_the_runtime_and_keeps_the_rest() {
        let given: Vec<(String, String)> = [
            ("HOME", "/home/u"),
            ("LD_PRELOAD", "/x/a.so /opt/lego/liblego_rt.so:/x/b.so"),
            ("LEGO_SECRET", "00"),
            ("LEGO_RT_JOB", "7"),
            ("LEGO_RT_BROKER", "9"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = program_env(&given, &rt());
        assert_eq!(get(&env, "HOME"), Some("/home/u"));
        assert_eq!(
            get(&env, "LD_PRELOAD"),
            Some("/opt/lego/liblego_rt.so:/x/a.so:/x/b.so")
        );
        assert_eq!(get(&env, "LEGO_SECRET"), None, "never the cluster secret");
        assert_eq!(get(&env, "LEGO_RT_JOB"), Some("42"));
        assert_eq!(env.iter().filter(|(k, _)| k == "LEGO_RT_JOB").count(), 1);
        assert_eq!(
            get(&env, "LEGO_RT_BROKER"),
            None,
            "not the outer job's (the helper gives its own)"
        );
        assert_eq!(get(&env, "LEGO_RT_VNODE_ID"), Some("3"));
        assert_eq!(get(&env, "LEGO_RT_EXCACHE"), Some("1048576"));
        let env = program_env(&[], &rt());
        assert_eq!(get(&env, "LD_PRELOAD"), Some("/opt/lego/liblego_rt.so"));
    }

    #[test]
    fn programs_are_found_like_a_shell_finds_them() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("plain"), "x").unwrap();
        let env = vec![(
            "PATH".to_string(),
            format!("/nonexistent:{}", bin.display()),
        )];
        assert_eq!(resolve("tool", &env, d.path()).unwrap(), exe);
        assert_eq!(
            resolve("plain", &env, d.path()).unwrap(),
            bin.join("plain"),
            "found but not executable: the spawn reports permission denied"
        );
        let e = resolve("nope", &env, d.path()).unwrap_err();
        assert_eq!(e.to_string(), "nope: command not found");
        assert_eq!(resolve("bin/tool", &env, d.path()).unwrap(), exe);
        // No PATH at all: a shell's default.
        let sh = resolve("sh", &[], d.path()).unwrap();
        assert!(sh.ends_with("sh") && is_executable(&sh), "{}", sh.display());
    }

    #[test]
    fn spawn_errors_say_what_a_shell_would() {
        let d = tempfile::tempdir().unwrap();
        let argv = |s: &str| vec![s.to_string()];
        let via = EnterVia {
            exe: "/nonexistent/lego".into(),
            socket: d.path().join("s"),
            vnode: "v".into(),
            mounts: Vec::new(),
            netns: None,
            confine: None,
        };
        let e = spawn(&argv("./missing"), &[], d.path().to_str().unwrap(), &via).unwrap_err();
        assert_eq!(e.code(), lego_wire::ErrorCode::NotFound);
        assert!(
            crate::chain(&e).contains("No such file or directory"),
            "{}",
            crate::chain(&e)
        );
        let e = spawn(&argv("true"), &[], "/nonexistent/dir", &via).unwrap_err();
        assert!(crate::chain(&e).contains("/nonexistent/dir"), "{e}");
        assert!(matches!(
            spawn(&[], &[], "/", &via).unwrap_err(),
            ProcessorError::NoCommand
        ));
    }
}
