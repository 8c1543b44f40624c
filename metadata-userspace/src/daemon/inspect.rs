//! `status` and `teardown`: what a running (or stopped) daemon left
//! pinned, read and removed without a daemon.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use log::warn;

use crate::{
    config::{Config, PortSourceKind},
    datapath::status::{self as pinned, Status},
    inventory::PortIndex,
};

/// Prints the state of the datapath.
pub async fn status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let ports = PortsState::read(&config);
    let mut status = pinned::read_status(&config, &ports.index)
        .await
        .with_context(|| {
            format!(
                "reading the datapath pinned under {} (is the daemon running?)",
                config.datapath.bpffs.display()
            )
        })?;
    for tap in &mut status.taps {
        if let Some(id) = ports.served.get(&tap.device) {
            tap.instance = Some(id.clone());
        }
    }
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["waiting"] = serde_json::to_value(&ports.waiting)?;
        value["port_source_connected"] = serde_json::to_value(&ports.connected)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(&status);
        for tap in &ports.waiting {
            println!("waiting for a binding on this chassis: {tap}");
        }
        for (db, up) in &ports.connected {
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
struct PortsState {
    /// The instances file's records (the file source).
    index: PortIndex,
    /// Tap -> instance, from a live source's state file.
    served: BTreeMap<String, String>,
    waiting: Vec<String>,
    /// Database -> whether the live source is connected to it.
    connected: BTreeMap<String, bool>,
}

impl PortsState {
    fn read(config: &Config) -> Self {
        let mut state = Self {
            index: PortIndex::default(),
            served: BTreeMap::new(),
            waiting: Vec::new(),
            connected: BTreeMap::new(),
        };
        if config.ports.source == PortSourceKind::File {
            // Without the records, taps show no instance; say why instead
            // of failing the whole status.
            state.index = PortIndex::load(&config.ports.file).unwrap_or_else(|err| {
                warn!("showing taps without instances: {err}");
                PortIndex::default()
            });
            return state;
        }
        let path = config.daemon.state_dir.join(super::PORTS_STATE_FILE);
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(value) => state.fill(&value),
            Err(err) => warn!("{}: {err}", path.display()),
        }
        state
    }

    fn fill(&mut self, value: &serde_json::Value) {
        for (device, id) in value["served"].as_object().into_iter().flatten() {
            let id = id.as_str().unwrap_or_default().to_owned();
            self.served.insert(device.clone(), id);
        }
        for (db, up) in value["connected"].as_object().into_iter().flatten() {
            self.connected
                .insert(db.clone(), up.as_bool().unwrap_or(false));
        }
        for waiting in value["waiting"].as_array().into_iter().flatten() {
            let device = waiting["device"].as_str().unwrap_or("?");
            let port = waiting["iface_id"].as_str().unwrap_or("?");
            self.waiting.push(format!("{device} (port {port})"));
        }
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
