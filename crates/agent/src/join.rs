//! Joining a cluster with a one-time token, and the key file that keeps
//! the member key it gives: a daemon started with `--join-token` and
//! `--key-file` asks the manager once, writes the key (mode 0600), and
//! proves itself with it from then on; it never holds the cluster secret.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lego_transport::{Client, ClientOptions, Credentials, Identity, TransportError};
use lego_wire::auth::{JoinToken, Secret};
use lego_wire::identity::JoinReq;
use lego_wire::Role;
use serde::{Deserialize, Serialize};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot read the key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} is not a lego key file: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("the key file {path} is for a {found} monitor, not a {role} monitor")]
    WrongRole {
        path: PathBuf,
        found: Role,
        role: Role,
    },
    #[error("cannot write the key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the join token is malformed: {0}")]
    BadToken(String),
    #[error("the manager refused to let this daemon join")]
    Refused(#[source] TransportError),
    #[error("the manager's answer does not unwrap with this token")]
    BadAnswer,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    member: u32,
    role: Role,
    key: String,
}

/// The identity kept in `key_file`; if there is none yet, joins the
/// cluster at `manager` with `token` and keeps the key it gets there.
pub fn identity(
    key_file: &Path,
    token: Option<&str>,
    manager: &str,
    role: Role,
) -> Result<Identity, JoinError> {
    match std::fs::read_to_string(key_file) {
        Ok(text) => return read(key_file, &text, role),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && token.is_some() => {}
        Err(source) => {
            return Err(JoinError::Read {
                path: key_file.into(),
                source,
            })
        }
    }
    let token: JoinToken = token
        .expect("checked above")
        .parse()
        .map_err(|e: lego_wire::WireError| JoinError::BadToken(e.to_string()))?;
    let (member, key) = join(manager, &token, role)?;
    let doc = KeyFile {
        member,
        role,
        key: lego_wire::auth::hex(&key),
    };
    let write = |path: &Path| -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(
            serde_json::to_string(&doc)
                .expect("serializable")
                .as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write(key_file).map_err(|source| JoinError::Write {
        path: key_file.into(),
        source,
    })?;
    info!(member, %role, key_file = %key_file.display(), "joined the cluster: this daemon's own key is kept in the key file");
    Ok(Identity::Member { id: member, key })
}

fn read(path: &Path, text: &str, role: Role) -> Result<Identity, JoinError> {
    let corrupt = |why: String| JoinError::Corrupt {
        path: path.into(),
        why,
    };
    let doc: KeyFile = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    if doc.role != role {
        return Err(JoinError::WrongRole {
            path: path.into(),
            found: doc.role,
            role,
        });
    }
    let key = Secret::from_hex(&doc.key).map_err(|e| corrupt(e.to_string()))?;
    if doc.member == 0 {
        return Err(corrupt("member 0 is no member".into()));
    }
    Ok(Identity::Member {
        id: doc.member,
        key: *key.as_bytes(),
    })
}

/// Spends `token` at the manager: returns the member id and its key.
pub fn join(manager: &str, token: &JoinToken, role: Role) -> Result<(u32, [u8; 32]), JoinError> {
    // Sealed whatever the daemon's --encrypt: the answer carries its key.
    let opts = ClientOptions {
        seal: true,
        ..ClientOptions::default()
    };
    let c =
        Client::connect(manager, &Credentials::join(token), &opts).map_err(JoinError::Refused)?;
    let resp = c.call(&JoinReq { role }).map_err(JoinError::Refused)?;
    let wrapped = Secret::from_hex(&resp.wrapped_key).map_err(|_| JoinError::BadAnswer)?;
    let key = token.wrap(resp.member, wrapped.as_bytes());
    // The key must open a connection as the member, or the answer was forged.
    Client::connect(manager, &Credentials::member(resp.member, key), &opts)
        .map_err(|_| JoinError::BadAnswer)?;
    Ok((resp.member, key))
}
