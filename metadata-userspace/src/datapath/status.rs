//! What a running (or stopped) daemon left pinned: read for `status`,
//! removed by `teardown`. Neither needs the daemon.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::IpAddr,
    path::Path,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuHashMap};
use metadata_common::{
    DatapathConfig, DeviceCounters, Ifindex, PortKeyV4, PortKeyV6, PortV4, PortV6, Slot, map_names,
    pins,
};

use super::{
    DatapathError, bpffs, io_err, links, map_err,
    netlink::{Link, Netlink},
};
use crate::{config::Config, inventory::PortIndex};

/// What `status` shows for one tap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TapStatus {
    pub device: String,
    pub ifindex: u32,
    pub instance: Option<String>,
    pub instance_name: Option<String>,
    pub slots: Vec<SlotStatus>,
    pub counters: DeviceCounters,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub slot: u32,
    pub guest: IpAddr,
    pub nat: IpAddr,
}

/// The whole datapath as read from the pins, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub host_device: String,
    pub host_counters: Option<DeviceCounters>,
    pub taps: Vec<TapStatus>,
}

/// The pinned maps `status` reads.
struct Pinned {
    entry: DatapathConfig,
    ports_v4: BpfHashMap<MapData, PortKeyV4, PortV4>,
    ports_v6: BpfHashMap<MapData, PortKeyV6, PortV6>,
    counters: PerCpuHashMap<MapData, Ifindex, DeviceCounters>,
}

impl Pinned {
    fn open(bpffs: &Path) -> Result<Self, DatapathError> {
        if !bpffs.join(map_names::CONFIG).exists()
            && let Some(why) = bpffs::explain_missing(bpffs)
        {
            return Err(why.into());
        }
        let layout = super::layout::Layout::read(bpffs)?;
        if !layout.is_current() {
            return Err(DatapathError::OlderLayout {
                changes: layout.changes().join("; "),
            });
        }
        let config: Array<MapData, DatapathConfig> = open(bpffs, map_names::CONFIG)?;
        Ok(Self {
            entry: config.get(&0, 0).map_err(map_err(map_names::CONFIG))?,
            ports_v4: open(bpffs, map_names::PORTS_V4)?,
            ports_v6: open(bpffs, map_names::PORTS_V6)?,
            counters: open(bpffs, map_names::COUNTERS)?,
        })
    }

    /// Every tap's slots, from one walk of each port map: one walk per
    /// tap made `status` quadratic in bpf syscalls (minutes at 5,000 taps).
    fn slots_by_tap(&self) -> HashMap<Ifindex, Vec<SlotStatus>> {
        let status = |slot: Slot, guest: IpAddr, nat: IpAddr| SlotStatus {
            slot: slot.0,
            guest,
            nat,
        };
        let v4 = self.ports_v4.iter().filter_map(Result::ok).map(|(k, v)| {
            let nat = IpAddr::from(self.entry.slot_addr_v4(v.slot).0);
            (k.ifindex, status(v.slot, IpAddr::from(k.addr.0), nat))
        });
        let v6 = self.ports_v6.iter().filter_map(Result::ok).map(|(k, v)| {
            let nat = IpAddr::from(self.entry.slot_addr_v6(v.slot).0);
            (k.ifindex, status(v.slot, IpAddr::from(k.addr.0), nat))
        });
        let mut by_tap: HashMap<Ifindex, Vec<SlotStatus>> = HashMap::new();
        for (tap, slot) in v4.chain(v6) {
            by_tap.entry(tap).or_default().push(slot);
        }
        for slots in by_tap.values_mut() {
            slots.sort_by_key(|slot| (slot.guest.is_ipv6(), slot.slot));
        }
        by_tap
    }
}

pub(super) fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(
    bpffs: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    let data = MapData::from_pin(bpffs.join(name)).map_err(map_err(name))?;
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// A device's counters summed over CPUs.
pub fn sum_counters(
    map: &PerCpuHashMap<MapData, Ifindex, DeviceCounters>,
    ifindex: Ifindex,
) -> Option<DeviceCounters> {
    let values = map.get(&ifindex, 0).ok()?;
    let mut total = DeviceCounters::default();
    for value in values.iter() {
        total.accumulate(value);
    }
    Some(total)
}

/// Reads the pinned maps and links of a (possibly running) daemon.
pub async fn read_status(config: &Config, index: &PortIndex) -> Result<Status, DatapathError> {
    let bpffs = &config.datapath.bpffs;
    let pinned = Pinned::open(bpffs)?;
    let links: HashMap<Ifindex, Link> = Netlink::connect()?
        .links()
        .await?
        .into_iter()
        .map(|link| (link.ifindex, link))
        .collect();
    let links_dir = bpffs.join(pins::LINKS_DIR);
    let taps = links::pinned_taps(&links_dir).unwrap_or_default();
    let mut slots = pinned.slots_by_tap();
    let taps: BTreeMap<Ifindex, TapStatus> = taps
        .into_iter()
        .map(|ifindex| {
            let link = links.get(&ifindex);
            let device = link.map_or_else(|| "(gone)".into(), |l| l.name.clone());
            let mut counters = sum_counters(&pinned.counters, ifindex).unwrap_or_default();
            counters.passed = link.map_or(0, |l| counters.passed_on_tap(l.packets.0));
            let instance = index.by_device(&device).map(|(instance, _)| instance);
            let status = TapStatus {
                ifindex: ifindex.0,
                instance: instance.map(|i| i.id.clone()),
                instance_name: instance.map(|i| i.name.clone()),
                device,
                slots: slots.remove(&ifindex).unwrap_or_default(),
                counters,
            };
            (ifindex, status)
        })
        .collect();
    let host = links.get(&pinned.entry.host_ifindex);
    let host_counters = sum_counters(&pinned.counters, pinned.entry.host_ifindex).map(|mut c| {
        // Everything the host device sent was passed by host_egress:
        // replies are redirected to taps and drops never leave.
        c.passed = host.map_or(0, |l| l.packets.1);
        c
    });
    Ok(Status {
        host_device: host.map_or_else(|| config.datapath.host_device.0.clone(), |l| l.name.clone()),
        host_counters,
        taps: taps.into_values().collect(),
    })
}

/// Removes everything the daemon created: links (which detaches the
/// programs), pinned maps, the pin folder and the host device.
pub async fn teardown(config: &Config) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    let bpffs = &config.datapath.bpffs;
    if !bpffs.exists()
        && let Some(why) = bpffs::explain_missing(bpffs)
    {
        return Err(why.into());
    }
    let links_dir = bpffs.join(pins::LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&links_dir) {
        for entry in entries {
            let path = entry
                .map_err(io_err(format!("listing {}", links_dir.display())))?
                .path();
            links::detach(&path)?;
            removed.push(path.display().to_string());
        }
        fs::remove_dir(&links_dir).map_err(io_err(format!("removing {}", links_dir.display())))?;
    }
    for name in pins::MAPS {
        let path = bpffs.join(name);
        if path.exists() {
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
            removed.push(path.display().to_string());
        }
    }
    // An older build's maps an interrupted upgrade left aside.
    let previous = bpffs.join(pins::PREVIOUS_DIR);
    if let Ok(entries) = fs::read_dir(&previous) {
        for entry in entries {
            let path = entry
                .map_err(io_err(format!("listing {}", previous.display())))?
                .path();
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
            removed.push(path.display().to_string());
        }
        fs::remove_dir(&previous).map_err(io_err(format!("removing {}", previous.display())))?;
    }
    if bpffs.exists() {
        fs::remove_dir(bpffs).map_err(io_err(format!("removing {}", bpffs.display())))?;
        removed.push(bpffs.display().to_string());
    }
    if Netlink::connect()?
        .delete_link(&config.datapath.host_device.0)
        .await?
    {
        removed.push(format!("device {}", config.datapath.host_device));
    }
    Ok(removed)
}
