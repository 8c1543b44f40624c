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
    /// Signed instance identity: what to publish for verifiers.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print the public keys of `[identity]` (current, then next) as a
    /// JWKS, for the operator to publish at the issuer.
    Jwks(ConfigArg),
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
    /// nova.conf: learn this host's ports from the Neutron API with
    /// `[neutron]`'s credentials, for `[DEFAULT] host` (port source
    /// "neutron"), as on an ML2/OVS or linuxbridge compute node; with
    /// --neutron-config naming ML2/OVS's metadata_agent.ini for Nova.
    #[arg(long, value_name = "FILE")]
    pub nova_config: Option<PathBuf>,
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

/// Writes the man page (`metadata-redirector.8`) and the bash and zsh
/// completions into `dir`, from the definitions above.
pub fn generate(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    let command = Cli::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("8")
        .render(&mut man)?;
    std::fs::write(dir.join("metadata-redirector.8"), man)?;
    // One page per command, as the main page refers to them.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("metadata-redirector-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone()))
            .section("8")
            .render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.8")), page)?;
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "metadata-redirector.bash"),
        (clap_complete::Shell::Zsh, "_metadata-redirector"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "metadata-redirector", &mut out);
        std::fs::write(dir.join(file), out)?;
    }
    Ok(())
}
