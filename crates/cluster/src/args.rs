//! The flags by which a command finds its cluster (`--dir`, `--manager`,
//! `--secret-file`) and a daemon gets the secret, shared by every
//! subcommand of `lego` that talks to a cluster.

use std::path::PathBuf;

use clap::Args;
use lego_wire::auth::Secret;

use crate::dir::{default_dir, read_secret, ClusterFile, Target};
use crate::ClusterError;

/// How a daemon gets the cluster secret.
#[derive(Args, Clone, Debug)]
pub struct SecretArgs {
    /// File holding the cluster secret (64 hex digits); `lego up` writes DIR/secret.
    /// Without it, the secret is taken from $LEGO_SECRET (hex).
    #[arg(long, env = "LEGO_SECRET_FILE", value_name = "PATH", global = true)]
    pub secret_file: Option<PathBuf>,
}

impl SecretArgs {
    pub fn secret(&self) -> Result<Secret, ClusterError> {
        if let Some(p) = &self.secret_file {
            return read_secret(p);
        }
        match std::env::var("LEGO_SECRET") {
            Ok(hex) => Secret::from_hex(&hex).map_err(|e| ClusterError::BadSecret {
                path: "$LEGO_SECRET".into(),
                why: e.to_string(),
            }),
            Err(_) => Err(ClusterError::NoSecret),
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

impl ClusterArgs {
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }

    /// Where the manager is and the secret to talk to it: `--manager`
    /// with the secret from `--secret-file`, `$LEGO_SECRET` or `--dir`;
    /// else the cluster recorded in the directory.
    pub fn resolve(&self) -> Result<Target, ClusterError> {
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
        let file = ClusterFile::read(&dir)?;
        if let Some(ns) = &file.netns {
            // A cluster on a rack: its addresses are reachable from its hosts only.
            crate::rack::enter(ns)?;
        }
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

/// `--encrypt`: whether a daemon seals its links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Encrypt {
    /// Sealed unless the daemon is reachable only on this host (its
    /// address is loopback or a Unix socket)
    #[default]
    Auto,
    On,
    Off,
}

impl Encrypt {
    /// The flag's value, as written on a command line.
    pub fn as_flag(self) -> &'static str {
        match self {
            Encrypt::Auto => "auto",
            Encrypt::On => "on",
            Encrypt::Off => "off",
        }
    }

    /// Whether a daemon others dial at `addr` (its advertised address, or
    /// the one it listens on) seals its links.
    pub fn seals(self, addr: &str) -> bool {
        match self {
            Encrypt::On => true,
            Encrypt::Off => false,
            Encrypt::Auto => !only_this_host(addr),
        }
    }
}

/// Whether `addr` can be reached only from this host.
fn only_this_host(addr: &str) -> bool {
    if addr.starts_with("unix:") {
        return true;
    }
    let host = addr.strip_prefix("tcp:").unwrap_or(addr);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

#[cfg(test)]
mod tests {
    use super::Encrypt;

    #[test]
    fn auto_seals_what_other_hosts_can_reach() {
        for (addr, sealed) in [
            ("127.0.0.1:7700", false),
            ("localhost:7700", false),
            ("[::1]:7700", false),
            ("unix:/run/lego.sock", false),
            ("10.99.0.2:7000", true),
            ("0.0.0.0:7000", true),
            ("tcp:node3.example:7000", true),
        ] {
            assert_eq!(Encrypt::Auto.seals(addr), sealed, "{addr}");
        }
        assert!(Encrypt::On.seals("127.0.0.1:1"));
        assert!(!Encrypt::Off.seals("10.0.0.1:1"));
    }
}
