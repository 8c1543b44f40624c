//! `status` and `teardown`: what a running (or stopped) daemon left
//! pinned, read and removed without a daemon.

use std::path::Path;

use anyhow::Context as _;
use log::warn;

use crate::{
    config::Config,
    datapath::status::{self as pinned, Status},
    inventory::PortIndex,
};

/// Prints the state of the datapath.
pub async fn status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // Without the records, taps show no instance; say why instead of
    // failing the whole status.
    let index = PortIndex::load(&config.ports.file).unwrap_or_else(|err| {
        warn!("showing taps without instances: {err}");
        PortIndex::default()
    });
    let status = pinned::read_status(&config, &index)
        .await
        .with_context(|| {
            format!(
                "reading the datapath pinned under {} (is the daemon running?)",
                config.datapath.bpffs.display()
            )
        })?;
    let waiting = read_waiting(&config);
    if json {
        let mut value = serde_json::to_value(&status)?;
        value["waiting"] = serde_json::to_value(&waiting)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_table(&status);
        for tap in &waiting {
            println!("waiting for a binding on this chassis: {tap}");
        }
    }
    Ok(())
}

/// The taps the port source knows but cannot serve yet (written by the
/// ovn source; absent for the file source).
fn read_waiting(config: &Config) -> Vec<String> {
    let path = config.daemon.state_dir.join(super::WAITING_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    match serde_json::from_str::<Vec<serde_json::Value>>(&text) {
        Ok(list) => list
            .iter()
            .map(|w| {
                format!(
                    "{} (port {})",
                    w["device"].as_str().unwrap_or("?"),
                    w["iface_id"].as_str().unwrap_or("?")
                )
            })
            .collect(),
        Err(err) => {
            warn!("{}: {err}", path.display());
            Vec::new()
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
