//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Serves instance metadata to VMs on this hypervisor through eBPF.
#[derive(Debug, Parser)]
#[command(name = "metadata-redirector", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground; prints `ready` once it serves.
    Run(RunArgs),
    /// Show attached taps, their slots and counters.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove programs, links, pinned maps and the host device.
    Teardown(ConfigArg),
    /// Check whether `run` would work on this host, and say what to fix.
    Doctor(ConfigArg),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// neutron's neutron_ovn_metadata_agent.ini: take the Southbound and
    /// OVS connections, Nova and the shared secret from it (port source
    /// "ovn", Nova backend), as a drop-in for neutron's OVN metadata agent.
    /// The --config file, if it exists, still gives everything else.
    #[arg(long, value_name = "INI")]
    pub neutron_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/metadata-redirector/metadata-redirector.toml"
    )]
    pub config: PathBuf,
}
