//! `lego memory drain|undrain` and `lego rebalance`: elastic memory, the
//! operator's side. A drain moves every vRegion copy off a live memory
//! monitor (each vRegion keeps its copies throughout), after which it can
//! be stopped with nothing lost; rebalancing evens out the monitors' use.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use lego_cluster::size::{human, parse_rate};
use lego_cluster::ClusterArgs;
use lego_wire::elastic::{DrainReq, RebalanceReq};

#[derive(Subcommand, Debug)]
pub enum MemoryCmd {
    /// Empty memory monitor ID (as `lego status` shows it) while programs
    /// run: it gets no new copies, and each vRegion copy it holds moves to
    /// another monitor (copied from the other copy, writes forwarded
    /// meanwhile, so no vRegion ever has fewer copies). `lego status`
    /// shows the progress; once it holds nothing it can be stopped
    Drain {
        id: u64,
        /// Move at most this much a second (e.g. 200MiB/s) [default: as
        /// fast as copies go]
        #[arg(long, value_parser = parse_rate, value_name = "BYTES/s")]
        rate: Option<u64>,
        /// Wait until it is empty, printing the progress
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Take a drained memory monitor back: it gets new copies again
    Undrain {
        id: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Args, Debug)]
pub struct RebalanceArgs {
    /// Show the moves, run none
    #[arg(long)]
    pub dry_run: bool,
    /// Even out use to within this many percent of capacity
    #[arg(long, default_value_t = 10.0, value_name = "PERCENT")]
    pub threshold: f64,
    /// Most moves
    #[arg(long, default_value_t = 64)]
    pub max: u32,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn memory(cmd: MemoryCmd) -> Result<()> {
    match cmd {
        MemoryCmd::Drain {
            id,
            rate,
            wait,
            cluster,
        } => {
            let target = cluster.resolve()?;
            let r = target.connect()?.call(&DrainReq {
                id,
                drained: true,
                rate,
            })?;
            println!(
                "draining memory monitor {id}: {} copies to move{}",
                r.copies,
                rate.map_or(String::new(), |r| format!(", at most {}/s", human(r)))
            );
            if wait {
                wait_drained(&target, id)?;
            }
        }
        MemoryCmd::Undrain { id, cluster } => {
            let r = cluster.resolve()?.connect()?.call(&DrainReq {
                id,
                drained: false,
                rate: None,
            })?;
            println!(
                "memory monitor {id} takes new copies again (it holds {})",
                r.copies
            );
        }
    }
    Ok(())
}

/// Shows the drain's progress until the monitor is empty: a bar with the
/// copies moved, their rate and the time left on a terminal, else a line
/// a second.
fn wait_drained(target: &lego_cluster::dir::Target, id: u64) -> Result<()> {
    let started = Instant::now();
    let bar = lego_bench::progress::Progress::counted("drain", 0, "copies");
    loop {
        let st = target
            .connect()?
            .call(&lego_wire::control::ClusterStateReq)?;
        let Some(c) = st.components.iter().find(|c| c.id == id) else {
            anyhow::bail!("memory monitor {id} is gone from the cluster");
        };
        let Some(d) = c.drain else {
            anyhow::bail!("memory monitor {id} was undrained");
        };
        if d.copies == 0 {
            bar.finish();
            println!(
                "memory monitor {id} is empty after {:.1} s: {} copies, {} moved; it can be stopped",
                started.elapsed().as_secs_f64(),
                d.copies_moved,
                human(d.bytes_moved)
            );
            return Ok(());
        }
        match bar.on_terminal() {
            true => bar.count(
                d.copies_moved,
                d.copies_moved + d.copies,
                format!(
                    "{} moved at {}/s{}",
                    human(d.bytes_moved),
                    human(d.rate),
                    d.eta_s.map_or(String::new(), |s| format!(
                        ", the manager expects {s} s more"
                    ))
                ),
            ),
            false => println!(
                "  {} copies left, {} copies ({}) moved, {}/s{}",
                d.copies,
                d.copies_moved,
                human(d.bytes_moved),
                human(d.rate),
                d.eta_s
                    .map_or(String::new(), |s| format!(", about {s} s to go"))
            ),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn rebalance(a: RebalanceArgs) -> Result<()> {
    let plan = a.cluster.resolve()?.connect()?.call(&RebalanceReq {
        threshold: a.threshold / 100.0,
        dry_run: a.dry_run,
        max: a.max,
    })?;
    if plan.moves.is_empty() {
        println!(
            "the memory monitors' use is even within {}%: nothing to move",
            a.threshold
        );
        return Ok(());
    }
    println!(
        "{} moves{}:",
        plan.moves.len(),
        if plan.started {
            " started (lego status shows them as they finish)"
        } else {
            " (dry run: none started)"
        }
    );
    for m in &plan.moves {
        println!(
            "  vregion {} of space {}: memory monitor {} -> {}",
            m.index.0, m.asid, m.from, m.to
        );
    }
    Ok(())
}
