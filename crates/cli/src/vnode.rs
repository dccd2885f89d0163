//! `lego vnode create|list|show|delete`: the manager's vNode table.

use anyhow::Result;
use clap::{Args, Subcommand};
use lego_cluster::size::{human, parse_size};
use lego_cluster::ClusterArgs;
use lego_wire::control::{VnodeCreateReq, VnodeDeleteReq, VnodeInfo, VnodeListReq, VnodeShowReq};

#[derive(Args, Debug)]
pub struct VnodeArgs {
    #[command(subcommand)]
    pub action: VnodeCmd,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand, Debug)]
pub enum VnodeCmd {
    /// Create a vNode (name: 1-64 of A-Z a-z 0-9 . _ -), with its own vID, vIP, mount points and memory quota
    Create {
        name: String,
        /// Where its processes see its files (repeat for more; default /data)
        #[arg(long = "mount", value_name = "PATH")]
        mounts: Vec<String>,
        /// Most anonymous memory its processes may hold together (e.g. 4GiB);
        /// past it, allocation fails in the program as out of memory [default: no limit]
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        memory_quota: Option<u64>,
        /// Its processes share the processor host's network; by default each
        /// runs in a network namespace of the vNode's own holding the vIP
        #[arg(long)]
        host_network: bool,
        /// Copies of each piece of its memory on memory monitors: 2 (a
        /// primary and a backup, so it survives the loss of one) or 1
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        replicas: u8,
        /// Join this network: vNodes of one network reach each other's vIPs;
        /// others cannot [default: a network of its own]
        #[arg(long, value_name = "NAME")]
        network: Option<String>,
    },
    /// List vNodes
    List,
    /// Show a vNode: vID, vIP, mounts, quota, storage monitor, running jobs
    Show { name: String },
    /// Delete a vNode with all of its memory and files (refused while its processes run)
    Delete {
        name: String,
        /// Stop its running processes first
        #[arg(long)]
        force: bool,
    },
}

fn quota(v: &VnodeInfo) -> String {
    match v.memory_quota {
        Some(q) => format!("{} of {}", human(v.memory_leased), human(q)),
        None => format!("{} (no quota)", human(v.memory_leased)),
    }
}

fn storage(v: &VnodeInfo) -> String {
    v.storage.as_ref().map_or("not placed yet".into(), |s| {
        format!("{} ({})", s.id, s.addr)
    })
}

pub fn run(a: VnodeArgs) -> Result<()> {
    let client = a.cluster.resolve()?.connect()?;
    match a.action {
        VnodeCmd::Create {
            name,
            mounts,
            memory_quota,
            host_network,
            replicas,
            network,
        } => {
            let v = client.call(&VnodeCreateReq {
                name,
                mounts,
                memory_quota,
                host_network,
                replicas: Some(replicas),
                network,
            })?;
            println!(
                "created vnode {} (vID {}, vIP {}, network {}, mounts {}, memory {}, {} copies of its memory, storage {})",
                v.name,
                v.id,
                if v.vip.is_empty() { "none" } else { &v.vip },
                if v.network.is_empty() { "its own" } else { &v.network },
                v.mounts.join(","),
                quota(&v),
                v.replicas,
                storage(&v)
            );
        }
        VnodeCmd::List => {
            let list = client.call(&VnodeListReq)?;
            println!(
                "{:>4}  {:<16} {:<15} {:<20} {:>5}  MEMORY",
                "VID", "NAME", "VIP", "MOUNTS", "JOBS"
            );
            for v in list {
                println!(
                    "{:>4}  {:<16} {:<15} {:<20} {:>5}  {}",
                    v.id,
                    v.name,
                    v.vip,
                    v.mounts.join(","),
                    v.jobs.len(),
                    quota(&v)
                );
            }
        }
        VnodeCmd::Show { name } => {
            let v = client.call(&VnodeShowReq { name })?;
            println!("vnode      {}", v.name);
            println!("vID        {}", v.id);
            println!(
                "vIP        {}",
                if v.vip.is_empty() { "none" } else { &v.vip }
            );
            println!("mounts     {}", v.mounts.join(", "));
            println!(
                "network    {}",
                if v.host_network {
                    "the processor host's"
                } else {
                    "its own namespace, the vIP on its loopback"
                }
            );
            println!("memory     {}", quota(&v));
            println!(
                "copies     {} of each vRegion{}",
                v.replicas,
                if v.replicas < 2 {
                    " (no replication: a memory monitor's death loses it)"
                } else {
                    ""
                }
            );
            println!("storage    {}", storage(&v));
            println!("spaces     {}", v.spaces);
            println!(
                "jobs       {}",
                if v.jobs.is_empty() {
                    "none running".to_string()
                } else {
                    v.jobs
                        .iter()
                        .map(|j| format!("{j:x}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        VnodeCmd::Delete { name, force } => {
            let v = client.call(&VnodeDeleteReq { name, force })?;
            if v.jobs.is_empty() {
                println!("deleted vnode {} (vID {})", v.name, v.id);
            } else {
                println!(
                    "stopped {} job(s) and deleted vnode {} (vID {})",
                    v.jobs.len(),
                    v.name,
                    v.id
                );
            }
        }
    }
    Ok(())
}
