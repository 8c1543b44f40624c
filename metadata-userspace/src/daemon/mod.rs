//! The daemon: `run` ties the port source, the datapath, the reconcile
//! loop and the servers together; `status` and `teardown` inspect and
//! remove what it left pinned.

mod inspect;
mod limits;
mod listeners;
mod reconcile_loop;

use std::{
    io::Write as _,
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use log::{error, info};
use tokio::sync::{Notify, watch};

pub use self::inspect::{status, teardown};
use crate::{
    backends::Backend,
    config::Config,
    datapath::{Datapath, netlink::LinkEvents},
    inventory::{PortSource as _, file::FileSource},
    serve::{Limits, proxy::SharedRegistry},
};

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    limits::raise_open_files_limit()?;
    let (source, snapshot) = FileSource::open(&config.ports.file)?;
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
    let backend = Backend::new(&config.backend, &config.daemon.state_dir)
        .context("setting up the backend")?;

    let (snapshots, inventory) = watch::channel(snapshot);
    let reload = Arc::new(Notify::new());
    let source_task = tokio::spawn(source.run(snapshots, Arc::clone(&reload)));
    let (stop, stopped) = watch::channel(false);
    let servers = listeners::Servers {
        registry: Arc::clone(&registry),
        inventory: inventory.clone(),
        backend: Arc::new(backend),
        limits: Arc::new(Limits::new(&config.proxy)),
        stop: stopped,
    };
    let servers = servers.start(&config).await?;
    info!(
        "serving metadata on {}:{} via {}",
        config.proxy.address, config.proxy.port, config.datapath.host_device
    );
    println!("ready");
    std::io::stdout().flush().context("writing to stdout")?;

    let mut resync = reconcile_loop::ReconcileLoop::new(datapath, inventory, registry, link_events);
    resync.run(&reload).await?;

    // Stop accepting, let requests in flight finish.
    stop.send_replace(true);
    for server in servers {
        if let Err(err) = server.await {
            error!("a server task ended abnormally: {err}");
        }
    }
    source_task.abort();
    // The links stay pinned: guests keep being steered to the host device,
    // where nothing listens until the next daemon starts (fail closed).
    info!("stopped; programs stay attached until `metadata-redirector teardown`");
    Ok(())
}
