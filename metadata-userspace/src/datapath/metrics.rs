//! The datapath's per-CPU counters as a Prometheus collector: at each
//! scrape it reads the pinned counters map and the devices' own packet
//! counters (/proc/self/net/dev, for the passes the programs do not count),
//! and nothing else: no netlink dump, no walk of the port maps.

use std::{collections::HashMap, path::PathBuf};

use aya::maps::{MapData, PerCpuHashMap};
use log::debug;
use metadata_common::{DeviceCounters, Ifindex, map_names};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};

use super::status;
use crate::proc_net_dev;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    device: String,
    verdict: &'static str,
}

/// `datapath_packets{device, verdict}`, read at scrape time.
#[derive(Debug)]
pub struct PacketCollector {
    bpffs: PathBuf,
    host_device: String,
}

impl PacketCollector {
    /// Registers the collector for the datapath pinned under `bpffs`, in a
    /// `datapath` sub-registry of `registry`.
    pub fn register(registry: &mut Registry, bpffs: PathBuf, host_device: String) {
        registry
            .sub_registry_with_prefix("datapath")
            .register_collector(Box::new(Self { bpffs, host_device }));
    }

    /// Every counted device's counters, with `passed` filled in from the
    /// device's own packet counter; empty while nothing is pinned.
    fn read(&self) -> Vec<(String, DeviceCounters)> {
        let map: PerCpuHashMap<MapData, Ifindex, DeviceCounters> =
            match status::open(&self.bpffs, map_names::COUNTERS) {
                Ok(map) => map,
                Err(err) => {
                    debug!("datapath counters unavailable for the scrape: {err}");
                    return Vec::new();
                }
            };
        let packets: HashMap<String, (u64, u64)> = proc_net_dev::read()
            .unwrap_or_default()
            .into_iter()
            .map(|d| (d.name, (d.rx_packets, d.tx_packets)))
            .collect();
        let mut devices = Vec::new();
        for ifindex in map.keys().filter_map(Result::ok) {
            let (Some(mut counters), Some(name)) =
                (status::sum_counters(&map, ifindex), device_name(ifindex))
            else {
                continue;
            };
            let (rx, tx) = packets.get(&name).copied().unwrap_or_default();
            // Everything the host device sent was passed by host_egress:
            // replies are redirected to taps and drops never leave.
            counters.passed = if name == self.host_device {
                tx
            } else {
                counters.passed_on_tap(rx)
            };
            devices.push((name, counters));
        }
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        devices
    }
}

impl Collector for PacketCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "packets",
            "Packets seen by the programs, by device and verdict",
            None,
            MetricType::Counter,
        )?;
        for (device, counters) in self.read() {
            for (verdict, value) in counters.fields() {
                let labels = PacketLabels {
                    device: device.clone(),
                    verdict,
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The name of the device with `ifindex` in this network namespace; `None`
/// when it is gone.
fn device_name(ifindex: Ifindex) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex.0, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}
