//! `lego vnode create|list|delete`: the manager's vNode table.

use anyhow::Result;
use clap::{Args, Subcommand};
use lego_wire::control::{VnodeInfo, VnodeReq};
use lego_wire::Op;

use crate::cluster::ClusterArgs;

#[derive(Args, Debug)]
pub struct VnodeArgs {
    #[command(subcommand)]
    pub action: VnodeCmd,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand, Debug)]
pub enum VnodeCmd {
    /// Create a vNode (name: 1-64 of A-Z a-z 0-9 . _ -)
    Create { name: String },
    /// List vNodes
    List,
    /// Delete a vNode and free all of its memory
    Delete { name: String },
}

pub fn run(a: VnodeArgs) -> Result<()> {
    let client = a.cluster.resolve()?.connect()?;
    match a.action {
        VnodeCmd::Create { name } => {
            let v: VnodeInfo = client.call_json(Op::VnodeCreate, &VnodeReq { name })?;
            println!("created vnode {} (vID {})", v.name, v.id);
        }
        VnodeCmd::List => {
            let list: Vec<VnodeInfo> = client.call_json(Op::VnodeList, &())?;
            println!("{:>4}  NAME", "VID");
            for v in list {
                println!("{:>4}  {}", v.id, v.name);
            }
        }
        VnodeCmd::Delete { name } => {
            let v: VnodeInfo = client.call_json(Op::VnodeDelete, &VnodeReq { name })?;
            println!("deleted vnode {} (vID {})", v.name, v.id);
        }
    }
    Ok(())
}
