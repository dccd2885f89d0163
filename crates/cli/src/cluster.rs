//! Finding a cluster: its directory, its secret, its manager's address.
//!
//! `lego up --dir DIR` writes `DIR/secret` (mode 0600) and, once everything
//! runs, `DIR/cluster.json` with the manager's addresses. Client commands find
//! the cluster through `--manager ADDR` with `--secret-file`, else through
//! `--dir DIR`, else `$LEGO_DIR`, else the default directory `~/.lego`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use lego_transport::{Client, ClientOptions, Credentials};
use lego_wire::auth::Secret;
use serde::{Deserialize, Serialize};

/// What `lego up` leaves in its directory for clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub manager: String,
    pub http: Option<String>,
    /// Pid of the `lego up` that runs the cluster.
    pub pid: u32,
    pub memory_monitors: Vec<String>,
}

/// The default cluster directory: `~/.lego`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".lego")
}

/// Reads a secret file (64 hex digits).
pub fn read_secret(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the cluster secret from {}", path.display()))?;
    Secret::from_hex(&text).with_context(|| format!("bad cluster secret in {}", path.display()))
}

/// Reads `DIR/secret`, creating it with a fresh random secret if missing.
pub fn load_or_create_secret(dir: &Path) -> Result<Secret> {
    let path = dir.join("secret");
    if path.exists() {
        return read_secret(&path);
    }
    let secret = Secret::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{}", secret.to_hex())?;
    Ok(secret)
}

/// Writes a file atomically (write to a temporary name, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// How a daemon gets the cluster secret.
#[derive(Args, Clone, Debug)]
pub struct SecretArgs {
    /// File holding the cluster secret (64 hex digits); `lego up` writes DIR/secret.
    /// Without it, the secret is taken from $LEGO_SECRET (hex).
    #[arg(long, env = "LEGO_SECRET_FILE", value_name = "PATH", global = true)]
    pub secret_file: Option<PathBuf>,
}

impl SecretArgs {
    pub fn secret(&self) -> Result<Secret> {
        if let Some(p) = &self.secret_file {
            return read_secret(p);
        }
        match std::env::var("LEGO_SECRET") {
            Ok(hex) => Secret::from_hex(&hex).context("bad cluster secret in $LEGO_SECRET"),
            Err(_) => bail!(
                "no cluster secret: pass --secret-file PATH or set LEGO_SECRET \
                 (`lego up` writes one to DIR/secret)"
            ),
        }
    }
}

/// How a client command finds the cluster.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Directory of a cluster started with `lego up --dir DIR` [default: ~/.lego]
    #[arg(long, env = "LEGO_DIR", value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// Talk to this manager instead of the one recorded in the directory
    /// (needs --secret-file or $LEGO_SECRET).
    #[arg(long, value_name = "ADDR", global = true)]
    pub manager: Option<String>,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// A resolved cluster: where its manager is and the secret to talk to it.
pub struct Target {
    pub manager: String,
    pub secret: Secret,
}

impl ClusterArgs {
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }

    pub fn resolve(&self) -> Result<Target> {
        if let Some(m) = &self.manager {
            let secret = match (&self.secret.secret_file, &self.dir) {
                (None, Some(d)) if std::env::var("LEGO_SECRET").is_err() => {
                    read_secret(&d.join("secret"))?
                }
                _ => self.secret.secret()?,
            };
            return Ok(Target {
                manager: m.clone(),
                secret,
            });
        }
        let dir = self.dir();
        let path = dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow::anyhow!(
                "no running lego cluster in {} (no cluster.json): start one with `lego up --dir {}`, \
                 or point at one with --dir, $LEGO_DIR or --manager",
                dir.display(),
                dir.display()
            )
        })?;
        let file: ClusterFile =
            serde_json::from_str(&text).with_context(|| format!("corrupt {}", path.display()))?;
        let secret = match &self.secret.secret_file {
            Some(p) => read_secret(p)?,
            None => read_secret(&dir.join("secret"))?,
        };
        Ok(Target {
            manager: file.manager,
            secret,
        })
    }
}

impl Target {
    /// An authenticated connection to the manager.
    pub fn connect(&self) -> Result<Client> {
        Client::connect(
            &self.manager,
            &Credentials::component(&self.secret),
            &ClientOptions::default(),
        )
        .with_context(|| format!("cannot reach the lego manager at {}", self.manager))
    }

    /// Like [`Target::connect`], giving up within a few seconds (for
    /// polling a manager that may be down).
    pub fn connect_quick(&self) -> Result<Client> {
        let opts = ClientOptions {
            connect_timeout: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(3),
            ..ClientOptions::default()
        };
        Client::connect(&self.manager, &Credentials::component(&self.secret), &opts)
            .with_context(|| format!("cannot reach the lego manager at {}", self.manager))
    }
}
