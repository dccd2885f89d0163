//! `lego`: one binary for every role and every user action.
//!
//! Roles (daemons): `manager`, `memory`, `processor`, `storage`. User actions: `run` (a
//! program on the cluster, or on an embedded one), `up` (a local cluster on
//! loopback), `status`, `top`, `dashboard`, `vnode`, `token`, `component`, `bench`, `sim`. Logs go to stderr; set
//! `LEGO_LOG` (e.g. `debug`, `lego_transport=debug`) to change what is shown.
#![forbid(unsafe_code)]

mod config;
mod daemons;
mod elastic;
mod keys;
mod run;
mod status;
mod top;
mod up;
mod vnode;

use lego_bench::{chaos, BenchCmd};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lego",
    version,
    about = "lego: a split kernel for hardware resource disaggregation (LegoOS in Linux user space)",
    long_about = "lego: a split kernel for hardware resource disaggregation, after LegoOS (OSDI 2018).\n\n\
        Processor, memory and storage monitors are daemons that share nothing and talk by messages; \
        a global manager places 1 GiB vRegions of address spaces on memory monitors by load and keeps \
        vNodes, the virtual nodes users see.\n\n\
        Quick start:  lego run -- CMD  (CMD on the cluster; with none running, on an embedded one)\n              \
        lego up          (a local cluster on loopback; Ctrl-C stops it)\n              \
        lego status      (in another shell)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the global manager: membership, failure detection, vRegion and vNode placement
    Manager(daemons::ManagerArgs),
    /// Run a memory monitor: a capacity-bounded page store for vRegions
    /// (or, with `drain`/`undrain`, empty one while programs run)
    Memory(daemons::MemoryArgs),
    /// Even out the memory monitors' use: moves vRegion copies from the
    /// fullest to the emptiest, live
    Rebalance(elastic::RebalanceArgs),
    /// Run a processor monitor: starts programs under the ExCache runtime, each with a quota of its ExCache
    Processor(daemons::ProcessorArgs),
    /// Run a storage monitor: the files of vNodes on local disk, served by message
    Storage(daemons::StorageArgs),
    /// Run a program with its memory disaggregated: placed on a processor monitor, pages on memory monitors
    Run(run::RunArgs),
    /// Create, list and delete vNodes (named virtual nodes)
    Vnode(vnode::VnodeArgs),
    /// Start a local cluster on loopback (a manager, memory monitors, a processor monitor) until Ctrl-C
    Up(up::UpArgs),
    /// Show the cluster: components, health, capacity and use, vNodes, vRegions
    Status(status::StatusArgs),
    /// Watch the cluster live: components' use and bytes/s, jobs' faults/s,
    /// evictions and MB/s, vRegions not healthy, the journal (keys: s sort,
    /// up/down pick, enter histogram, q quit; --once: plain text)
    Top(top::TopArgs),
    /// Print the address of the manager's web dashboard, with the token
    /// that opens it (open it in a browser that can reach the manager)
    Dashboard(HttpTokenArgs),
    /// Make one-time join tokens: a daemon joins with one and gets a key of its own
    Token(keys::TokenArgs),
    /// List the daemons that hold keys of their own, and revoke one
    Component(keys::ComponentArgs),
    /// Print the token the manager's HTTP /state asks for (curl -H "Authorization: Bearer $(lego http-token)" http://ADDR/state)
    HttpToken(HttpTokenArgs),
    /// Run checksum-verified programs on a local cluster while killing and restarting its daemons at random
    Chaos(chaos::ChaosArgs),
    /// Measure lego against the machine's own floors, side by side
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Simulate a datacenter of thousands of components through lego's own
    /// placement code, beside monolithic servers of the same CPU and memory
    Sim(lego_sim::SimArgs),
}

#[derive(clap::Args, Debug)]
struct HttpTokenArgs {
    #[command(flatten)]
    cluster: lego_cluster::ClusterArgs,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEGO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() {
    // The first moments of a process of a vNode (see lego_processor::enter):
    // not a user command, and no logging of its own.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == lego_processor::enter::SUBCOMMAND)
    {
        lego_processor::enter::main(&args[2..]);
    }
    // A daemon's --config FILE becomes flags before parsing.
    let args = match config::expand(&<Cli as clap::CommandFactory>::command(), args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lego: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    // `lego run` stands in for the program: it says nothing of its own
    // unless asked (LEGO_LOG=info) or something goes wrong.
    init_logging(if matches!(cli.cmd, Cmd::Run(_)) {
        "warn"
    } else {
        "info"
    });
    let result = match cli.cmd {
        Cmd::Run(a) => std::process::exit(run::main(a)),
        Cmd::Manager(a) => daemons::manager(a),
        Cmd::Memory(a) => daemons::memory(a),
        Cmd::Processor(a) => daemons::processor(a),
        Cmd::Storage(a) => daemons::storage(a),
        Cmd::Vnode(a) => vnode::run(a),
        Cmd::Up(a) => up::run(a),
        Cmd::Status(a) => status::run(a),
        Cmd::Top(a) => top::run(a),
        Cmd::Dashboard(a) => status::dashboard(&a.cluster),
        Cmd::Token(a) => keys::token(a),
        Cmd::Rebalance(a) => elastic::rebalance(a),
        Cmd::Component(a) => keys::component(a),
        Cmd::HttpToken(a) => a.cluster.resolve().map_err(anyhow::Error::from).map(|t| {
            println!("{}", t.secret.http_token_hex());
        }),
        Cmd::Bench(b) => lego_bench::run(b).map_err(anyhow::Error::from),
        Cmd::Sim(a) => lego_sim::run(a).map_err(anyhow::Error::from),
        Cmd::Chaos(a) => match chaos::run(a) {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        eprintln!("lego: error: {e:#}");
        std::process::exit(1);
    }
}
