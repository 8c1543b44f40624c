//! The `run`, `status` and `teardown` commands.

use std::{
    io::Write as _,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use log::{error, info};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    backends::Backend,
    config::Config,
    datapath::{self, Datapath},
    ports::PortIndex,
    proxy,
};

/// How often the instances file is checked for changes on disk.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Quiet time after a link event before resyncing, to batch bursts.
const LINK_SETTLE: Duration = Duration::from_millis(2);
/// Delay before retrying a failed sync.
const SYNC_RETRY: Duration = Duration::from_millis(100);
/// How long requests in flight may take to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A full resync now and then, whatever the events said.
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let index = PortIndex::load(&config.ports.file)?;
    // Subscribe before the first sync, so no tap appearing in between is missed.
    let mut link_events = datapath::events::LinkEvents::subscribe()
        .context("subscribing to rtnetlink link events")?;
    let mut datapath = Datapath::start(&config).context("starting the datapath")?;
    let registry = datapath.sync(&index).context("attaching to taps")?;
    log_attached(&datapath);
    let registry: proxy::SharedRegistry = Arc::new(RwLock::new(Arc::new(registry)));

    let mut listeners = Vec::new();
    for listener in proxy::activated_listeners().context("taking the activated sockets")? {
        let addr = listener
            .local_addr()
            .context("reading an activated socket's address")?;
        info!("using the listening socket {addr} passed by socket activation");
        listeners.push(TcpListener::from_std(listener).context("registering an activated socket")?);
    }
    let wanted = [
        std::net::SocketAddr::from((config.proxy.address, config.proxy.port)),
        std::net::SocketAddr::from((config.datapath.nat_v6.proxy(), config.proxy.port)),
    ];
    for addr in wanted {
        let covered = listeners
            .iter()
            .any(|l| l.local_addr().is_ok_and(|local| local == addr));
        if !covered {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (is another daemon using it?)"))?;
            listeners.push(listener);
        }
    }
    let backend = Backend::new(&config.backend, &config.daemon.state_dir)
        .context("setting up the backend")?;
    let backend = Arc::new(backend);
    let shared_index: crate::agent::SharedIndex = Arc::new(RwLock::new(Arc::new(index)));
    let agent = match &config.agent.socket {
        Some(path) => {
            let listener = crate::agent::listen(path)
                .with_context(|| format!("listening on the agent socket {}", path.display()))?;
            info!(
                "agent mode: serving Neutron haproxies on {}",
                path.display()
            );
            Some(tokio::spawn(crate::agent::serve(
                listener,
                Arc::clone(&shared_index),
                Arc::clone(&backend),
            )))
        }
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for listener in listeners {
        let mut stop_rx = stop_rx.clone();
        servers.push(tokio::spawn(proxy::serve(
            listener,
            Arc::clone(&registry),
            Arc::clone(&backend),
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
            DRAIN_TIMEOUT,
        )));
    }
    info!(
        "serving metadata on {}:{} via {}",
        config.proxy.address, config.proxy.port, config.datapath.host_device
    );
    println!("ready");
    std::io::stdout().flush().context("writing to stdout")?;

    let mut index = Arc::clone(
        &shared_index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut file_check = tokio::time::interval(FILE_CHECK_INTERVAL);
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    let mut ports_mtime = modified(&config.ports.file);
    // After a failed sync (a device vanished mid-listing, say), try again
    // soon instead of waiting for the next event.
    let retry = tokio::time::sleep(Duration::MAX);
    tokio::pin!(retry);
    let mut retry_armed = false;
    loop {
        enum Wake {
            Reload,
            FileCheck,
            Links,
        }
        let wake = tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => Wake::Reload,
            _ = file_check.tick() => Wake::FileCheck,
            _ = resync.tick() => Wake::Links,
            () = &mut retry, if retry_armed => {
                retry_armed = false;
                Wake::Links
            }
            result = link_events.next(LINK_SETTLE) => {
                if let Err(err) = result {
                    error!("reading link events: {err}");
                }
                Wake::Links
            }
        };
        if matches!(wake, Wake::FileCheck) && modified(&config.ports.file) == ports_mtime {
            continue;
        }
        if matches!(wake, Wake::Reload | Wake::FileCheck) {
            ports_mtime = modified(&config.ports.file);
            match PortIndex::load(&config.ports.file) {
                Ok(new) => {
                    info!("reloaded {}", config.ports.file.display());
                    index = Arc::new(new);
                    *shared_index
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&index);
                }
                Err(err) => {
                    error!("keeping the previous port records: {err}");
                    continue;
                }
            }
        }
        let started = std::time::Instant::now();
        let synced = datapath.sync(&index);
        log::debug!(
            "synced {} taps in {:.2} ms",
            datapath.attached().len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        match synced {
            Ok(new) => {
                *registry
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
            }
            Err(err) => {
                error!("updating the datapath (retrying shortly): {err}");
                retry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + SYNC_RETRY);
                retry_armed = true;
            }
        }
    }
    // Stop accepting, let requests in flight finish.
    if let Some(agent) = agent {
        agent.abort();
    }
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    // The links stay pinned: guests keep being steered to the host device,
    // where nothing listens until the next daemon starts (fail closed).
    info!("stopped; programs stay attached until `metadata-redirector teardown`");
    Ok(())
}

/// The modification time of `path`, if it can be read.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn log_attached(datapath: &Datapath) {
    for tap in datapath.attached().values() {
        let slots: Vec<String> = tap
            .slots
            .iter()
            .map(|(guest, slot, nat)| format!("{guest}->{nat} (slot {})", slot.0))
            .collect();
        info!("tap {}: {}", tap.name, slots.join(", "));
    }
}

/// Prints the state of the datapath.
pub fn status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let index = PortIndex::load(&config.ports.file).unwrap_or_default();
    let status = datapath::read_status(&config, &index).with_context(|| {
        format!(
            "reading the datapath pinned under {} (is the daemon running?)",
            config.datapath.bpffs.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("host device {}", status.host_device);
    println!(
        "{:<16} {:>7} {:<38} {:>10} {:>10} {:>10} {:>6} {:>8}",
        "TAP", "IFINDEX", "INSTANCE", "PASSED", "STEERED", "REPLIED", "ARP/NDP", "DROPPED"
    );
    for tap in &status.taps {
        let c = &tap.counters;
        let dropped = c.dropped();
        println!(
            "{:<16} {:>7} {:<38} {:>10} {:>10} {:>10} {:>6} {:>8}",
            tap.device,
            tap.ifindex,
            tap.instance.as_deref().unwrap_or("-"),
            c.passed,
            c.steered,
            c.replied,
            c.arp_replied + c.ndp_replied,
            dropped
        );
        for slot in &tap.slots {
            println!("    {} -> {} (slot {})", slot.guest, slot.nat, slot.slot);
        }
        if dropped > 0 {
            println!(
                "    dropped: unregistered {} malformed {} fragment {} no-slot {} error {} reserved {} forged {}",
                c.drop_unregistered,
                c.drop_malformed,
                c.drop_fragment,
                c.drop_no_slot,
                c.drop_error,
                c.drop_reserved,
                c.drop_forged
            );
        }
    }
    Ok(())
}

/// Removes everything the daemon created.
pub fn teardown(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let removed = datapath::teardown(&config).context("tearing down the datapath")?;
    for item in removed {
        println!("removed {item}");
    }
    Ok(())
}
