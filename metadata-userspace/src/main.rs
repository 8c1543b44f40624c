use clap::Parser as _;
use metadata_userspace::{
    cli::{Cli, Command},
    daemon,
};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(daemon::run(
            &args.config.config,
            args.neutron_config.as_deref(),
        )),
        Command::Status { config, json } => runtime.block_on(daemon::status(&config.config, json)),
        Command::Teardown(args) => runtime.block_on(daemon::teardown(&args.config)),
        Command::Doctor(args) => runtime.block_on(daemon::doctor(&args.config)),
        Command::Generate { dir } => Ok(metadata_userspace::cli::generate(&dir)?),
    }
}
