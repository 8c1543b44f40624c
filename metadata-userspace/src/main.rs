use clap::Parser as _;
use metadata_userspace::{
    cli::{Cli, Command, IdentityCommand},
    daemon,
};

fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(daemon::run(
            &args.config.config,
            args.neutron_config.as_deref(),
            args.nova_config.as_deref(),
        )),
        Command::Status { config, json } => runtime.block_on(daemon::status(&config.config, json)),
        Command::Teardown(args) => runtime.block_on(daemon::teardown(&args.config)),
        Command::Doctor(args) => runtime.block_on(daemon::doctor(&args.config)),
        Command::Identity(IdentityCommand::Jwks(args)) => daemon::jwks(&args.config),
        Command::Generate { dir } => Ok(metadata_userspace::cli::generate(&dir)?),
    }
}

/// Logs through `tracing` (the `log` records of this crate and of aya-log
/// included), filtered by RUST_LOG (default `info`), to stderr. Under
/// systemd (JOURNAL_STREAM set) without timestamps or colours: journald
/// adds its own.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true);
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
