//! A cluster's directory: its secret, its `cluster.json`, and how clients
//! find its manager.
//!
//! `lego up --dir DIR` writes `DIR/secret` (mode 0600) and, once everything
//! runs, `DIR/cluster.json` with the manager's addresses. Client commands
//! find the cluster through `--manager ADDR` with `--secret-file`, else
//! through `--dir DIR`, else `$LEGO_DIR`, else the default directory
//! `~/.lego`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lego_transport::{Client, ClientOptions, Credentials, Redial};
use lego_wire::auth::Secret;
use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// What `lego up` leaves in its directory for clients.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterFile {
    pub manager: String,
    pub http: Option<String>,
    /// Pid of the `lego up` that runs the cluster.
    pub pid: u32,
    pub memory_monitors: Vec<String>,
    /// The network namespace of the rack's first host, when the cluster
    /// runs on a rack (`lego up --hosts N`): clients enter it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl ClusterFile {
    /// Reads `DIR/cluster.json`.
    pub fn read(dir: &Path) -> Result<ClusterFile, ClusterError> {
        let path = dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).map_err(|_| ClusterError::NotRunning {
            dir: dir.to_path_buf(),
        })?;
        serde_json::from_str(&text).map_err(|source| ClusterError::Corrupt { path, source })
    }
}

/// The default cluster directory: `~/.lego`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".lego")
}

/// Reads a secret file (64 hex digits).
pub fn read_secret(path: &Path) -> Result<Secret, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
        what: format!("cannot read the cluster secret from {}", path.display()),
        source,
    })?;
    Secret::from_hex(&text).map_err(|e| ClusterError::BadSecret {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Reads `DIR/secret`, creating it with a fresh random secret if missing.
pub fn load_or_create_secret(dir: &Path) -> Result<Secret, ClusterError> {
    let path = dir.join("secret");
    if path.exists() {
        return read_secret(&path);
    }
    let secret = Secret::generate().map_err(|e| ClusterError::BadSecret {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let io = |source| ClusterError::Io {
        what: format!("cannot create {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    writeln!(f, "{}", secret.to_hex()).map_err(io)?;
    Ok(secret)
}

/// Writes a file atomically (write to a temporary name, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    let io = |source| ClusterError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    };
    std::fs::write(&tmp, contents).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Where a cluster's manager is and the secret to talk to it.
#[derive(Clone)]
pub struct Target {
    pub manager: String,
    pub secret: Secret,
}

impl Target {
    /// How a client of this cluster proves itself (the operator's secret).
    pub fn credentials(&self) -> Credentials {
        Credentials::component(&self.secret)
    }

    fn creds(&self) -> Credentials {
        self.credentials()
    }

    /// An authenticated connection to the manager, made now.
    pub fn connect(&self) -> Result<Client, ClusterError> {
        Client::connect(&self.manager, &self.creds(), &ClientOptions::default())
            .map_err(|source| self.unreachable(source))
    }

    /// The manager, connected on first use and again whenever the
    /// connection broke; quick to give up (for polling a manager that may
    /// be down).
    pub fn manager(&self) -> Redial {
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            ..ClientOptions::default()
        };
        Redial::new(self.manager.clone(), self.creds(), opts)
    }

    /// A component connection to another daemon of the cluster.
    pub fn connect_to(&self, addr: &str) -> Result<Client, ClusterError> {
        Client::connect(addr, &self.creds(), &ClientOptions::default()).map_err(|source| {
            ClusterError::Unreachable {
                what: format!("the daemon at {addr}"),
                source,
            }
        })
    }

    fn unreachable(&self, source: lego_transport::TransportError) -> ClusterError {
        ClusterError::Unreachable {
            what: format!("the lego manager at {}", self.manager),
            source,
        }
    }
}
