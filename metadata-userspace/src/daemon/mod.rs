//! The daemon: `run` ties the port source, the datapath, the reconcile
//! loop and the servers together; `status` and `teardown` inspect and
//! remove what it left pinned.

mod doctor;
mod inspect;
mod limits;
mod listeners;
mod notify;
mod reconcile_loop;

use std::{
    io::Write as _,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use log::{error, info};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

pub use self::{
    doctor::doctor,
    inspect::{status, teardown},
};

/// The file under the state folder where a live port source (ovn) lists
/// the taps it serves, with their instance, and those it knows but cannot
/// serve yet, for `status`.
pub const PORTS_STATE_FILE: &str = "ports-state.json";
use crate::{
    backends::Backend,
    config::Config,
    config::PortSourceKind,
    datapath::{Datapath, netlink::LinkEvents},
    inventory::{
        PortSource, Snapshot,
        file::FileSource,
        ovn::{OvnSettings, OvnSource},
        ovsdb::remote::{self, TlsFiles},
    },
    metrics::Metrics,
    serve::{Limits, proxy::SharedRegistry, rate_limit::RateLimiter, tokens::Tokens},
};

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config_path: &Path, neutron_config: Option<&Path>) -> anyhow::Result<()> {
    let config = Arc::new(load_config(config_path, neutron_config)?);
    limits::raise_open_files_limit()?;
    let metrics = Arc::new(Metrics::default());
    start_metrics(&config, &metrics).await?;
    let reload = Arc::new(Notify::new());
    let (source_task, inventory) = start_port_source(&config, Arc::clone(&reload)).await?;
    let snapshot = Arc::clone(&inventory.borrow());
    // Subscribe before the first sync, so no tap appearing in between is missed.
    let link_events = LinkEvents::subscribe().context("subscribing to rtnetlink link events")?;
    let mut datapath = Datapath::start(&config)
        .await
        .context("starting the datapath")?;
    let registry = datapath
        .sync(&snapshot)
        .await
        .context("attaching to taps")?;
    reconcile_loop::log_attached(&datapath);
    let registry: SharedRegistry = Arc::new(RwLock::new(Arc::new(registry)));
    let (stop, stopped) = watch::channel(false);
    let servers = listeners::Servers {
        registry: Arc::clone(&registry),
        inventory: inventory.clone(),
        backend: Arc::new(
            Backend::new(
                &config.backend,
                &config.daemon.state_dir,
                Arc::clone(&metrics),
            )
            .context("setting up the backend")?,
        ),
        limits: Arc::new(Limits::new(&config.proxy)),
        tokens: Arc::new(
            Tokens::load(&config.tokens, &config.daemon.state_dir)
                .context("the session token key")?,
        ),
        rate_limit: RateLimiter::new(&config.rate_limit).map(Arc::new),
        metrics: Arc::clone(&metrics),
        stop: stopped,
    };
    let servers = servers.start(&config).await?;
    info!(
        "serving metadata on {}:{} via {}",
        config.proxy.address, config.proxy.port, config.datapath.host_device
    );
    println!("ready");
    std::io::stdout().flush().context("writing to stdout")?;
    notify::ready(datapath.attached().len());
    metrics.set_taps(datapath.attached().len());
    metrics.set_ready();

    let mut resync =
        reconcile_loop::ReconcileLoop::new(datapath, inventory, registry, link_events, metrics);
    resync.run(&reload).await?;
    shutdown(&stop, servers).await;
    source_task.abort();
    Ok(())
}

/// Stops accepting, lets requests in flight finish. The links stay pinned:
/// guests keep being steered to the host device, where nothing listens
/// until the next daemon starts (fail closed).
async fn shutdown(stop: &watch::Sender<bool>, servers: Vec<JoinHandle<()>>) {
    notify::stopping();
    stop.send_replace(true);
    for server in servers {
        if let Err(err) = server.await {
            error!("a server task ended abnormally: {err}");
        }
    }
    info!("stopped; programs stay attached until `metadata-redirector teardown`");
}

/// The metrics listener, when configured; a taken address is an error.
async fn start_metrics(config: &Arc<Config>, metrics: &Arc<Metrics>) -> anyhow::Result<()> {
    let Some(addr) = config.metrics.listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr} ([metrics] listen)"))?;
    info!("metrics on http://{addr}/metrics (and /healthz, /readyz)");
    tokio::spawn(crate::metrics::serve(
        listener,
        Arc::clone(metrics),
        Arc::clone(config),
    ));
    Ok(())
}

/// The daemon's configuration: its own file, with neutron's agent file
/// applied on top when given (then the own file may be absent).
fn load_config(path: &Path, neutron_config: Option<&Path>) -> anyhow::Result<Config> {
    let Some(ini) = neutron_config else {
        return Ok(Config::load(path)?);
    };
    let mut config = if path.exists() {
        Config::load(path)?
    } else {
        info!(
            "{} does not exist; defaults plus {}",
            path.display(),
            ini.display()
        );
        Config::parse(path, "")?
    };
    let unused = crate::neutron_ini::apply(&mut config, ini)?;
    if !unused.is_empty() {
        info!("not used from {}: {}", ini.display(), unused.join(", "));
    }
    Ok(config)
}

/// Starts the configured port source: its first snapshot must load, later
/// ones arrive through the returned receiver.
async fn start_port_source(
    config: &Config,
    reload: Arc<Notify>,
) -> anyhow::Result<(JoinHandle<()>, watch::Receiver<Snapshot>)> {
    match config.ports.source {
        PortSourceKind::File => {
            let (source, first) = FileSource::open(&config.ports.file)?;
            Ok(spawn_source(source, first, reload))
        }
        PortSourceKind::Ovn => {
            let settings = ovn_settings(config)?;
            let (source, first) = OvnSource::open(settings).await;
            Ok(spawn_source(source, first, reload))
        }
    }
}

fn ovn_settings(config: &Config) -> anyhow::Result<OvnSettings> {
    let ports = &config.ports;
    let sb = ports.ovn_sb.as_deref().unwrap_or_default();
    std::fs::create_dir_all(&config.daemon.state_dir)
        .with_context(|| format!("creating {}", config.daemon.state_dir.display()))?;
    Ok(OvnSettings {
        ovs: ports.ovs.parse().context("[ports] ovs")?,
        sb: remote::parse_list(sb).context("[ports] ovn_sb")?,
        sb_tls: TlsFiles {
            private_key: ports.ovn_sb_private_key.clone(),
            certificate: ports.ovn_sb_certificate.clone(),
            ca_cert: ports.ovn_sb_ca_cert.clone(),
        },
        state_file: config.daemon.state_dir.join(PORTS_STATE_FILE),
    })
}

fn spawn_source(
    source: impl PortSource,
    first: Snapshot,
    reload: Arc<Notify>,
) -> (JoinHandle<()>, watch::Receiver<Snapshot>) {
    let (snapshots, inventory) = watch::channel(first);
    (tokio::spawn(source.run(snapshots, reload)), inventory)
}
