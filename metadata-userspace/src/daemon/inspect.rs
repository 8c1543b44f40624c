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
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(())
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
