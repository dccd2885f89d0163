//! `lego top`: the cluster live, refreshed every second: components with
//! health, use and bytes a second in and out; jobs with resident memory,
//! faults a second by kind, prefetch hits, evictions and MB/s fetched and
//! written back; vRegions that are not healthy or are moving; the last
//! journal lines. On a terminal it is a full-screen view ([`screen`]) with
//! keys to sort and to pick a job for its fault-latency histogram; with
//! `--once`, or when stdout is not a terminal, it prints the same tables as
//! plain text once ([`text`]). The rows come from [`model`].

pub mod model;
mod screen;
mod text;

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use lego_cluster::ClusterArgs;
use lego_wire::control::ClusterStateReq;

use model::Snapshot;

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the tables once as plain text and exit (the default when
    /// stdout is not a terminal); rates are taken over one interval
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes (and the interval rates are taken over)
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
}

/// Takes snapshots of a cluster.
struct Source {
    target: lego_cluster::Target,
}

impl Source {
    fn snapshot(&self) -> Result<Snapshot> {
        let state = self.target.manager().call(&ClusterStateReq).map_err(|e| {
            anyhow::anyhow!("the manager at {} cannot say: {e}", self.target.manager)
        })?;
        let jobs = crate::status::jobs(&state, &self.target.secret);
        Ok(Snapshot {
            at: Instant::now(),
            state,
            jobs,
        })
    }
}

pub fn run(a: TopArgs) -> Result<()> {
    if !(0.1..=3600.0).contains(&a.interval) {
        anyhow::bail!("--interval must be between 0.1 and 3600 seconds");
    }
    let interval = Duration::from_secs_f64(a.interval);
    let target = a.cluster.resolve()?;
    target.connect()?;
    let src = Source { target };
    if a.once || !std::io::stdout().is_terminal() {
        let first = src.snapshot()?;
        std::thread::sleep(interval);
        let second = src.snapshot()?;
        print!(
            "{}",
            text::render(&model::view(
                Some(&first),
                &second,
                model::SortBy::default()
            ))
        );
        return Ok(());
    }
    // Snapshots are taken in a thread of their own: a processor monitor
    // that does not answer delays the numbers, never the keys.
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("top-poll".into())
        .spawn(move || loop {
            let started = Instant::now();
            if tx
                .send(src.snapshot().map_err(|e| format!("{e:#}")))
                .is_err()
            {
                return;
            }
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        })?;
    screen::run(rx)
}
