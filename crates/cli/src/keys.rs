//! `lego token create` and `lego component list|revoke`: per-component
//! identity, the operator's side. A token lets one daemon join and get a
//! key of its own; revoking ends that key's access at once (its connections
//! closed everywhere, its registrations refused, the component declared
//! dead so its vRegions are rebuilt elsewhere) and touches no other key.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use lego_cluster::ClusterArgs;
use lego_wire::identity::{MembersReq, RevokeReq, TokenCreateReq};
use lego_wire::Role;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenCmd,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a one-time join token: give it to one daemon with `--join-token
    /// TOKEN --key-file PATH`; it joins with a key of its own and never
    /// holds the cluster secret (needs the cluster secret)
    Create {
        /// The role of the daemon that may join with it
        #[arg(long, value_parser = parse_role, value_name = "memory|processor|storage")]
        role: Role,
        /// How long the token may be used (e.g. 30s, 10m, 1h, 7d)
        #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
        ttl: Duration,
    },
}

#[derive(Args, Debug)]
pub struct ComponentArgs {
    #[command(subcommand)]
    pub action: ComponentCmd,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand, Debug)]
pub enum ComponentCmd {
    /// List the members: the daemons that joined with a token and hold a key of their own
    List,
    /// End the access of component ID (as `lego status` shows it) at once:
    /// its connections are closed, its registrations refused, and it is
    /// declared dead (its vRegions are rebuilt elsewhere). Only a component
    /// that joined with a token can be revoked alone; no other key changes
    Revoke {
        /// The component's id
        #[arg(required_unless_present = "member")]
        id: Option<u64>,
        /// Revoke member M instead (`lego component list`), also one that
        /// never registered
        #[arg(long, value_name = "M", conflicts_with = "id")]
        member: Option<u32>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}': expected a number and s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("'{s}': the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

pub fn token(a: TokenArgs) -> Result<()> {
    let client = a.cluster.resolve()?.connect()?;
    match a.action {
        TokenCmd::Create { role, ttl } => {
            let t = client.call(&TokenCreateReq {
                role,
                ttl_s: ttl.as_secs(),
            })?;
            eprintln!(
                "join token {} for one {} monitor, valid {} s: lego {} --join-token TOKEN --key-file PATH ...",
                t.id, t.role, t.ttl_s, t.role
            );
            println!("{}", t.token);
        }
    }
    Ok(())
}

pub fn component(a: ComponentArgs) -> Result<()> {
    let client = a.cluster.resolve()?.connect()?;
    match a.action {
        ComponentCmd::List => {
            let list = client.call(&MembersReq)?;
            println!(
                "{:>10}  {:<9} {:>9}  {:>6}  {:<8}",
                "MEMBER", "ROLE", "COMPONENT", "TOKEN", "KEY"
            );
            for m in list {
                println!(
                    "{:>10}  {:<9} {:>9}  {:>6}  {:<8}",
                    m.id,
                    m.role,
                    m.component.map_or("-".into(), |c| c.to_string()),
                    m.token,
                    if m.revoked { "revoked" } else { "valid" }
                );
            }
        }
        ComponentCmd::Revoke { id, member } => {
            let r = client.call(&RevokeReq {
                component: id,
                member,
            })?;
            match r.component {
                Some(c) => println!(
                    "revoked component {c} (member {}): its connections are closed, it is refused from now on and declared dead",
                    r.member
                ),
                None => println!(
                    "revoked member {} (it never registered): it is refused from now on",
                    r.member
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("m").is_err());
    }
}
