//! The daemon: `run` ties the port source, the datapath, the reconcile
//! loop and the servers together; `status` and `teardown` inspect and
//! remove what it left pinned.

mod admin;
mod backlog;
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
use log::{error, info, warn};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

pub use self::{
    doctor::doctor,
    inspect::{jwks, status, teardown},
};

use prometheus_client::registry::Registry;

use self::{admin::Readiness, reconcile_loop::ReconcileMetrics};
use crate::{
    backends::{Backend, metrics::UpstreamMetrics},
    config::Config,
    config::PortSourceKind,
    datapath::{Datapath, metrics::PacketCollector, netlink::LinkEvents},
    inventory::{
        PortSource, Snapshot,
        file::FileSource,
        metrics::SourceMetrics,
        neutron::{NeutronSettings, NeutronSource},
        ovn::{OvnSettings, OvnSource},
        ovsdb::remote::TlsFiles,
        state::PortsState,
    },
    neutron_ini::Agent,
    serve::{
        Limits, metrics::ServeMetrics, proxy::SharedSlotOwners, rate_limit::RateLimiter,
        tokens::Tokens,
    },
};

/// Every component's series, registered in one root registry that the
/// admin listener exposes.
struct Metrics {
    root: Registry,
    serve: ServeMetrics,
    upstream: UpstreamMetrics,
    reconcile: ReconcileMetrics,
    source: SourceMetrics,
}

impl Metrics {
    fn register(config: &Config) -> Self {
        let mut root = Registry::with_prefix("metadata");
        let serve = ServeMetrics::register(&mut root);
        let reconcile = ReconcileMetrics::register(&mut root);
        let upstream = UpstreamMetrics::register(&mut root);
        let source = SourceMetrics::register(&mut root);
        PacketCollector::register(
            &mut root,
            config.datapath.bpffs.clone(),
            config.datapath.host_device.0.clone(),
        );
        Self {
            root,
            serve,
            upstream,
            reconcile,
            source,
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(
    config_path: &Path,
    neutron_config: Option<&Path>,
    nova_config: Option<&Path>,
) -> anyhow::Result<()> {
    let config = Arc::new(load_config(config_path, neutron_config, nova_config)?);
    limits::raise_open_files_limit()?;
    let Metrics {
        root,
        serve,
        upstream,
        reconcile,
        source,
    } = Metrics::register(&config);
    let (stop, stopped) = watch::channel(false);
    let limits = Arc::new(Limits::new(&config.proxy));
    let readiness = Readiness::default();
    let admin = start_admin(&config, root, &readiness, &limits, &stopped).await?;
    let reload = Arc::new(Notify::new());
    let links_changed = Arc::new(Notify::new());
    let (source_task, inventory) =
        start_port_source(&config, Arc::clone(&reload), &links_changed, source).await?;
    let snapshot = Arc::clone(&inventory.borrow());
    // Subscribe before the first sync, so no tap appearing in between is missed.
    let link_events = LinkEvents::subscribe().context("subscribing to rtnetlink link events")?;
    let (datapath, slot_owners) = start_datapath(&config, &snapshot).await?;
    let servers = listeners::Servers {
        slot_owners: Arc::clone(&slot_owners),
        inventory: inventory.clone(),
        backend: backend(&config, upstream)?,
        limits,
        tokens: Arc::new(
            Tokens::load(&config.tokens, &config.daemon.state_dir)
                .context("the session token key")?,
        ),
        rate_limit: RateLimiter::new(&config.rate_limit).map(Arc::new),
        metrics: serve,
        stop: stopped,
    };
    let (mut servers, backlog) = servers.start(&config).await?;
    servers.extend(admin);
    let mut resync = reconcile_loop::ReconcileLoop::new(
        datapath,
        inventory,
        slot_owners,
        link_events,
        reconcile,
        backlog,
    );
    announce_ready(&config, resync.taps_attached())?;
    readiness.set_ready();
    resync.run(&reload, &links_changed).await?;
    shutdown(&stop, servers).await;
    source_task.abort();
    Ok(())
}

/// The backend, with the identity signer when `[identity]` has a key.
fn backend(config: &Config, upstream: UpstreamMetrics) -> anyhow::Result<Arc<Backend>> {
    let signer = crate::identity::Signer::load(&config.identity)
        .context("loading the [identity] keys")?
        .map(Arc::new);
    if signer.is_some() {
        info!("signing instance identity documents and tokens ([identity])");
    }
    let backend = Backend::new(&config.backend, &config.daemon.state_dir, upstream, signer)
        .context("setting up the backend")?;
    Ok(Arc::new(backend))
}

/// Loads (or adopts) the datapath and attaches it to the taps of
/// `snapshot`; returns it with the slot owners the proxy looks peers up in.
async fn start_datapath(
    config: &Config,
    snapshot: &Snapshot,
) -> anyhow::Result<(Datapath, SharedSlotOwners)> {
    let mut datapath = Datapath::start(config)
        .await
        .context("starting the datapath")?;
    let slot_owners = datapath.sync(snapshot).await.context("attaching to taps")?;
    reconcile_loop::log_attached(&datapath);
    Ok((datapath, Arc::new(RwLock::new(Arc::new(slot_owners)))))
}

/// Says that the datapath is attached and the proxy listens: the log,
/// "ready" on stdout, and systemd.
fn announce_ready(config: &Config, taps: usize) -> anyhow::Result<()> {
    info!(
        "serving metadata on {}:{} via {}",
        config.proxy.address, config.proxy.port, config.datapath.host_device
    );
    println!("ready");
    std::io::stdout().flush().context("writing to stdout")?;
    notify::ready(taps);
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

/// The admin listener, when configured; a taken address is an error.
async fn start_admin(
    config: &Config,
    registry: Registry,
    readiness: &Readiness,
    limits: &Arc<Limits>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr} ([metrics] listen)"))?;
    info!("metrics on http://{addr}/metrics (and /healthz, /readyz)");
    let mut stop = stop.clone();
    Ok(Some(tokio::spawn(admin::serve(
        listener,
        Arc::new(registry),
        readiness.clone(),
        Arc::clone(limits),
        async move {
            stop.wait_for(|stop| *stop).await.ok();
        },
    ))))
}

/// The daemon's configuration: its own file, with nova.conf and neutron's
/// agent file applied on top when given (then the own file may be absent).
fn load_config(
    path: &Path,
    neutron_config: Option<&Path>,
    nova_config: Option<&Path>,
) -> anyhow::Result<Config> {
    if neutron_config.is_none() && nova_config.is_none() {
        return Ok(Config::load(path)?);
    }
    let mut config = if path.exists() {
        Config::load(path)?
    } else {
        info!(
            "{} does not exist; defaults plus the drop-in files",
            path.display()
        );
        Config::parse(path, "")?
    };
    let mut nova_secret = None;
    if let Some(nova) = nova_config {
        let (unused, secret) = crate::nova_conf::apply(&mut config, nova)?;
        nova_secret = secret;
        if !unused.is_empty() {
            info!("not used from {}: {}", nova.display(), unused.join(", "));
        }
    }
    if let Some(ini) = neutron_config {
        let agent = if nova_config.is_some() {
            Agent::Ml2
        } else {
            Agent::Ovn
        };
        let unused = crate::neutron_ini::apply(&mut config, ini, agent)?;
        if !unused.is_empty() {
            info!("not used from {}: {}", ini.display(), unused.join(", "));
        }
    }
    if let (Some(nova), crate::config::BackendConfig::Nova(backend)) =
        (&nova_secret, &config.backend)
        && backend.shared_secret.as_ref().is_some_and(|s| s != nova)
    {
        warn!(
            "nova.conf's [neutron] metadata_proxy_shared_secret differs from the agent file's; Nova will refuse the signatures"
        );
    }
    Ok(config)
}

/// Starts the configured port source: its first snapshot must load, later
/// ones arrive through the returned receiver.
async fn start_port_source(
    config: &Config,
    reload: Arc<Notify>,
    links_changed: &Arc<Notify>,
    metrics: SourceMetrics,
) -> anyhow::Result<(JoinHandle<()>, watch::Receiver<Snapshot>)> {
    match config.ports.source {
        PortSourceKind::File => {
            let (source, first) = FileSource::open(&config.ports.file)?;
            Ok(spawn_source(source, first, reload))
        }
        PortSourceKind::Ovn => {
            let settings = ovn_settings(config, metrics)?;
            let (source, first) = OvnSource::open(settings).await;
            Ok(spawn_source(source, first, reload))
        }
        PortSourceKind::Neutron => {
            let settings = neutron_settings(config, metrics, Arc::clone(links_changed))?;
            let (source, first) = NeutronSource::open(settings)
                .await
                .context("the neutron port source")?;
            Ok(spawn_source(source, first, reload))
        }
    }
}

fn ovn_settings(config: &Config, metrics: SourceMetrics) -> anyhow::Result<OvnSettings> {
    let ports = &config.ports;
    std::fs::create_dir_all(&config.daemon.state_dir)
        .with_context(|| format!("creating {}", config.daemon.state_dir.display()))?;
    Ok(OvnSettings {
        ovs: ports.ovs_or_default(),
        sb: ports
            .ovn_sb
            .as_ref()
            .map(|sb| sb.0.clone())
            .unwrap_or_default(),
        sb_tls: TlsFiles {
            private_key: ports.ovn_sb_private_key.clone(),
            certificate: ports.ovn_sb_certificate.clone(),
            ca_cert: ports.ovn_sb_ca_cert.clone(),
        },
        state_file: PortsState::path(&config.daemon.state_dir),
        metrics,
    })
}

fn neutron_settings(
    config: &Config,
    metrics: SourceMetrics,
    links_changed: Arc<Notify>,
) -> anyhow::Result<NeutronSettings> {
    let ports = &config.ports;
    std::fs::create_dir_all(&config.daemon.state_dir)
        .with_context(|| format!("creating {}", config.daemon.state_dir.display()))?;
    Ok(NeutronSettings {
        keystone: ports
            .keystone
            .clone()
            .context("source = \"neutron\" needs [ports.keystone]")?,
        host: ports.host_or_hostname(),
        refresh: std::time::Duration::from_secs(ports.refresh_interval_s),
        ovs: ports.ovs.clone(),
        interfaces: config.datapath.interfaces.clone(),
        state_file: PortsState::path(&config.daemon.state_dir),
        metrics,
        links_changed,
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
