//! `status` and `teardown`: what a running (or stopped) daemon left
//! pinned, read and removed without a daemon.

use std::path::Path;

use anyhow::Context as _;
use log::warn;

use crate::{
    config::{Config, PortSourceKind},
    datapath::status::{self as pinned, Status},
    inventory::{PortIndex, state::PortsState},
};

/// Prints the state of the datapath.
pub async fn status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let ports = PortsView::read(&config);
    let mut status = pinned::read_status(&config, &ports.index)
        .await
        .with_context(|| {
            format!(
                "reading the datapath pinned under {} (is the daemon running?)",
                config.datapath.bpffs.display()
            )
        })?;
    for tap in &mut status.taps {
        if let Some(id) = ports.state.served.get(&tap.device) {
            tap.instance = Some(id.clone());
        }
    }
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["waiting"] = serde_json::to_value(ports.waiting())?;
        value["port_source_connected"] = serde_json::to_value(&ports.state.connected)?;
        value["ambiguous"] = serde_json::to_value(&ports.state.ambiguous)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(&status);
        for tap in ports.waiting() {
            println!("waiting for a binding on this chassis: {tap}");
        }
        for tap in &ports.state.ambiguous {
            println!(
                "not served, ambiguous: {} would be the tap of ports {}",
                tap.device,
                tap.ports.join(", ")
            );
        }
        for (db, up) in &ports.state.connected {
            let state = if *up {
                "connected"
            } else {
                "DISCONNECTED: serving the last known ports"
            };
            println!("port source {db}: {state}");
        }
    }
    Ok(())
}

/// What the port source says about the taps, read without it.
struct PortsView {
    /// The instances file's records (the file source).
    index: PortIndex,
    /// A live source's state file.
    state: PortsState,
}

impl PortsView {
    fn read(config: &Config) -> Self {
        let mut view = Self {
            index: PortIndex::default(),
            state: PortsState::default(),
        };
        if config.ports.source == PortSourceKind::File {
            // Without the records, taps show no instance; say why instead
            // of failing the whole status.
            view.index = PortIndex::load(&config.ports.file).unwrap_or_else(|err| {
                warn!("showing taps without instances: {err}");
                PortIndex::default()
            });
            return view;
        }
        match PortsState::read(&PortsState::path(&config.daemon.state_dir)) {
            Ok(state) => view.state = state,
            Err(err) => warn!("{err}"),
        }
        view
    }

    /// The taps waiting for a binding, as `status` shows them.
    fn waiting(&self) -> Vec<String> {
        self.state
            .waiting
            .iter()
            .map(|w| format!("{} (port {})", w.device, w.iface_id))
            .collect()
    }
}

fn print_table(status: &Status) {
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
            let reasons: Vec<String> = c
                .fields()
                .iter()
                .filter_map(|(name, n)| Some(format!("{} {n}", name.strip_prefix("drop_")?)))
                .collect();
            println!("    dropped: {}", reasons.join(" "));
        }
    }
}

/// Removes everything the daemon created.
pub async fn teardown(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let removed = pinned::teardown(&config)
        .await
        .context("tearing down the datapath")?;
    for item in removed {
        println!("removed {item}");
    }
    Ok(())
}

/// `identity jwks`: the configured keys' public halves as a JWKS.
pub fn jwks(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let signer = crate::identity::Signer::load(&config.identity)
        .context("loading the [identity] keys")?
        .with_context(|| format!("{}: [identity] has no key", config_path.display()))?;
    println!("{}", serde_json::to_string_pretty(&signer.jwks())?);
    Ok(())
}
