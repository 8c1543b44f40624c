//! Loading, attaching and feeding the eBPF programs.
//!
//! Maps and TCX links are pinned under `datapath.bpffs`. A starting daemon
//! adopts what is pinned there: maps keep their entries (so slots, and the
//! connections using them, survive a restart) and existing links get the
//! new program through an atomic link update, so there is no moment where a
//! tap runs without a program. While no daemon runs, the pinned programs
//! keep steering metadata traffic to the host device, where nothing
//! listens: the guest sees a refused connection, and nothing leaks onto the
//! tenant network.

pub mod bpffs;
pub mod events;
pub mod family;
pub mod host;
pub mod slots;

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use log::{info, warn};
use metadata_common::{
    DatapathConfig as DatapathConfigEntry, DeviceCounters, Ifindex, Ipv4Be, Ipv6Be, MAX_SLOTS_V4,
    MAX_SLOTS_V6, MacAddr, PortBe, PortKeyV4, PortKeyV6, PortV4, PortV6, Slot, map_names,
};

use self::{
    family::{Family, SlotMaps, V4, V6},
    host::Link,
};
use crate::{
    config::Config,
    inventory::{Identity, PortIndex, Registry},
};

/// The eBPF object built by build.rs from the metadata-ebpf crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/metadata-ebpf"));

const TAP_PROGRAM: &str = "tap_ingress";
const HOST_PROGRAM: &str = "host_egress";
/// Maps pinned by name under the bpffs folder. The log ring buffer is not:
/// it belongs to the daemon that reads it.
const PINNED_MAPS: [&str; 7] = [
    map_names::CONFIG,
    map_names::PORTS_V4,
    map_names::SLOTS_V4,
    map_names::PORTS_V6,
    map_names::SLOTS_V6,
    map_names::COUNTERS,
    map_names::LOG_RATELIMIT,
];
/// Folder under the bpffs folder holding the pinned TCX links.
const LINKS_DIR: &str = "links";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("host device {name}: {reason}")]
    HostDevice { name: String, reason: String },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching {program} to {device}: {source}")]
    Attach {
        program: &'static str,
        device: String,
        source: ProgramError,
    },
    #[error("pinned link {}: {source}", path.display())]
    Link { path: PathBuf, source: LinkError },
    #[error("pinning link at {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error(transparent)]
    Slots(#[from] slots::SlotsExhausted),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// A tap the datapath is attached to.
#[derive(Debug)]
pub struct AttachedTap {
    pub name: String,
    /// (guest address, slot, slot address), IPv4 then IPv6.
    pub slots: Vec<(IpAddr, Slot, IpAddr)>,
}

/// The loaded programs, their maps and links.
pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    host: Link,
    entry: DatapathConfigEntry,
    config: Config,
    v4: SlotMaps<V4>,
    v6: SlotMaps<V6>,
    nat_v6: crate::config::Ipv6Net96,
    counters: PerCpuHashMap<MapData, Ifindex, DeviceCounters>,
    /// Links this daemon holds, by device; pinned, so dropping one does
    /// not detach it.
    tap_links: BTreeMap<Ifindex, PinnedLink>,
    attached: BTreeMap<Ifindex, AttachedTap>,
    _host_link: PinnedLink,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("bpffs", &self.bpffs)
            .field("host", &self.host)
            .field("entry", &self.entry)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Sets up the host device, loads the programs (adopting pinned maps),
    /// writes the datapath configuration and attaches the host program.
    pub fn start(config: &Config) -> Result<Self, DatapathError> {
        let dp = &config.datapath;
        let host = host::ensure_host_device(
            &dp.host_device.0,
            dp.host_mtu,
            config.proxy.address,
            dp.nat_v4,
            dp.nat_v6,
        )?;
        let bpffs = dp.bpffs.clone();
        bpffs::ensure_shared(&bpffs)?;
        fs::create_dir_all(bpffs.join(LINKS_DIR)).map_err(io_err(format!(
            "creating {}",
            bpffs.join(LINKS_DIR).display()
        )))?;

        let pins: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|&name| (name, bpffs.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        start_logger(&mut ebpf);

        let mut config_map: Array<MapData, DatapathConfigEntry> =
            take_map(&mut ebpf, map_names::CONFIG)?;
        let capacity = u32::try_from(dp.nat_v4.size())
            .unwrap_or(u32::MAX)
            .min(MAX_SLOTS_V4);
        let v4 = SlotMaps::<V4> {
            ports: take_map(&mut ebpf, map_names::PORTS_V4)?,
            slots: take_map(&mut ebpf, map_names::SLOTS_V4)?,
            capacity,
        };
        let v6 = SlotMaps::<V6> {
            ports: take_map(&mut ebpf, map_names::PORTS_V6)?,
            slots: take_map(&mut ebpf, map_names::SLOTS_V6)?,
            capacity: MAX_SLOTS_V6,
        };
        let counters = take_map(&mut ebpf, map_names::COUNTERS)?;

        let entry = DatapathConfigEntry {
            host_ifindex: host.ifindex,
            proxy_v4: Ipv4Be(config.proxy.address.octets()),
            nat_v4_base: Ipv4Be(dp.nat_v4.addr.octets()),
            nat_v4_size: capacity,
            host_mac: MacAddr(host.mac.0),
            proxy_port: PortBe::new(config.proxy.port),
            proxy_v6: Ipv6Be(dp.nat_v6.proxy().octets()),
            nat_v6_base: Ipv6Be(dp.nat_v6.prefix.octets()),
            nat_v6_size: MAX_SLOTS_V6,
        };
        config_map
            .set(0, entry, 0)
            .map_err(map_err(map_names::CONFIG))?;

        for name in [TAP_PROGRAM, HOST_PROGRAM] {
            let program = classifier(&mut ebpf, name)?;
            program.load().map_err(|source| DatapathError::Program {
                program: name,
                source,
            })?;
        }
        let host_link = attach_pinned(
            classifier(&mut ebpf, HOST_PROGRAM)?,
            HOST_PROGRAM,
            &host,
            TcAttachType::Egress,
            &bpffs.join(LINKS_DIR).join(HOST_PROGRAM),
        )?;
        let mut datapath = Self {
            ebpf,
            bpffs,
            host,
            entry,
            config: config.clone(),
            v4,
            v6,
            nat_v6: dp.nat_v6,
            counters,
            tap_links: BTreeMap::new(),
            attached: BTreeMap::new(),
            _host_link: host_link,
        };
        let host_ifindex = datapath.host.ifindex;
        datapath.ensure_counters(host_ifindex)?;
        Ok(datapath)
    }

    /// The taps currently attached.
    pub fn attached(&self) -> &BTreeMap<Ifindex, AttachedTap> {
        &self.attached
    }

    /// Makes the datapath match the port records and the devices present:
    /// every device that matches `datapath.interfaces` and has a port record
    /// gets the tap program and its (tap, address) entries; everything else
    /// loses them. Returns the registry the proxy identifies peers with.
    pub fn sync(&mut self, index: &PortIndex) -> Result<Registry, DatapathError> {
        let links: Vec<Link> = host::list_names()?
            .into_iter()
            .map(|(ifindex, name)| Link {
                name,
                ifindex,
                mac: crate::inventory::Mac::default(),
                mtu: 0,
            })
            .collect();
        let mut taps = Vec::new();
        for link in &links {
            if link.ifindex == self.host.ifindex
                || !self
                    .config
                    .datapath
                    .interfaces
                    .iter()
                    .any(|p| p.matches(&link.name))
            {
                continue;
            }
            if let Some((instance, port)) = index.by_device(&link.name) {
                taps.push((link, instance, port));
            }
        }

        // Slots first, so the reverse path exists before a request can use it.
        let desired_v4: Vec<PortKeyV4> = taps
            .iter()
            .flat_map(|(link, _, port)| {
                port.ipv4()
                    .filter_map(|addr| V4::key(link.ifindex, IpAddr::V4(addr)))
            })
            .collect();
        let desired_v6: Vec<PortKeyV6> = taps
            .iter()
            .flat_map(|(link, _, port)| {
                port.ipv6()
                    .into_iter()
                    .filter_map(|addr| V6::key(link.ifindex, IpAddr::V6(addr)))
            })
            .collect();
        let plan_v4 = slots::plan(&self.v4.current(), &desired_v4, self.v4.capacity)?;
        let plan_v6 = slots::plan(&self.v6.current(), &desired_v6, self.v6.capacity)?;
        let mac_of = |ifindex: Ifindex| {
            taps.iter()
                .find(|(link, _, _)| link.ifindex == ifindex)
                .map(|(_, _, port)| MacAddr(port.mac.0))
        };
        self.v4.apply(&plan_v4, mac_of)?;
        self.v6.apply(&plan_v6, mac_of)?;
        let assigned: Vec<(Ifindex, IpAddr, Slot, IpAddr)> = plan_v4
            .assigned
            .iter()
            .map(|(key, slot)| {
                let (ifindex, guest) = V4::key_parts(key);
                (ifindex, guest, *slot, IpAddr::V4(self.slot_addr(*slot)))
            })
            .chain(plan_v6.assigned.iter().map(|(key, slot)| {
                let (ifindex, guest) = V6::key_parts(key);
                (ifindex, guest, *slot, IpAddr::V6(self.nat_v6.slot(slot.0)))
            }))
            .collect();

        let mut registry = Registry::new();
        let mut attached = BTreeMap::new();
        for (link, instance, port) in &taps {
            self.ensure_counters(link.ifindex)?;
            if !self.tap_links.contains_key(&link.ifindex) {
                let pin = self.link_pin(link.ifindex);
                let program = classifier(&mut self.ebpf, TAP_PROGRAM)?;
                let attach_started = std::time::Instant::now();
                let attached =
                    attach_pinned(program, TAP_PROGRAM, link, TcAttachType::Ingress, &pin);
                log::debug!(
                    "attach to {} took {:?}",
                    link.name,
                    attach_started.elapsed()
                );
                match attached {
                    Ok(pinned) => {
                        info!(
                            "attached {TAP_PROGRAM} to {} (ifindex {})",
                            link.name, link.ifindex.0
                        );
                        self.tap_links.insert(link.ifindex, pinned);
                    }
                    Err(err) => {
                        // Typically the device vanished since it was listed;
                        // its entries go at the next sync.
                        warn!("{err}");
                        continue;
                    }
                }
            }
            let port_index = instance
                .ports
                .iter()
                .position(|p| p.device == port.device)
                .unwrap_or_default();
            let mut tap = AttachedTap {
                name: link.name.clone(),
                slots: Vec::new(),
            };
            for &(_, guest, slot, slot_addr) in assigned.iter().filter(|a| a.0 == link.ifindex) {
                registry.insert(
                    slot_addr,
                    Identity {
                        instance: Arc::clone(instance),
                        port: port_index,
                        device: link.name.clone(),
                        guest_addr: guest,
                    },
                );
                tap.slots.push((guest, slot, slot_addr));
            }
            attached.insert(link.ifindex, tap);
        }

        // Detach from devices that are gone or no longer have a port record.
        let stale: Vec<Ifindex> = self
            .tap_links
            .keys()
            .filter(|ifindex| !attached.contains_key(ifindex))
            .copied()
            .collect();
        for ifindex in stale {
            if let Some(link) = self.tap_links.remove(&ifindex) {
                detach_pinned(link, &self.link_pin(ifindex));
                let name = self
                    .attached
                    .get(&ifindex)
                    .map_or("(gone)", |t| t.name.as_str());
                info!("detached {TAP_PROGRAM} from {name} (ifindex {})", ifindex.0);
            }
            self.remove_counters(ifindex);
        }
        self.remove_stale_link_pins(&attached)?;
        self.remove_stale_counters(&attached);
        self.attached = attached;
        Ok(registry)
    }

    fn slot_addr(&self, slot: Slot) -> Ipv4Addr {
        Ipv4Addr::from(self.entry.nat_v4_base.to_bits() + slot.0)
    }

    fn link_pin(&self, ifindex: Ifindex) -> PathBuf {
        self.bpffs
            .join(LINKS_DIR)
            .join(format!("{TAP_PROGRAM}-{}", ifindex.0))
    }

    fn ensure_counters(&mut self, ifindex: Ifindex) -> Result<(), DatapathError> {
        if self.counters.get(&ifindex, 0).is_ok() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DatapathError::Io {
            what: what.to_owned(),
            source,
        })?;
        let zeros = PerCpuValues::try_from(vec![DeviceCounters::default(); cpus])
            .map_err(io_err("building per-CPU counters"))?;
        self.counters
            .insert(ifindex, zeros, 0)
            .map_err(map_err(map_names::COUNTERS))
    }

    fn remove_counters(&mut self, ifindex: Ifindex) {
        if let Err(err) = self.counters.remove(&ifindex)
            && !matches!(err, MapError::KeyNotFound)
        {
            warn!("removing counters of ifindex {}: {err}", ifindex.0);
        }
    }

    /// Removes counters of devices that are neither attached taps nor the
    /// host device (a tap that vanished between listing and attaching).
    fn remove_stale_counters(&mut self, attached: &BTreeMap<Ifindex, AttachedTap>) {
        let host = self.host.ifindex;
        let stale: Vec<Ifindex> = self
            .counters
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| *ifindex != host && !attached.contains_key(ifindex))
            .collect();
        for ifindex in stale {
            self.remove_counters(ifindex);
        }
    }

    /// Removes link pins left by a previous daemon for devices that are
    /// not attached now (deleted while no daemon ran).
    fn remove_stale_link_pins(
        &self,
        attached: &BTreeMap<Ifindex, AttachedTap>,
    ) -> Result<(), DatapathError> {
        let dir = self.bpffs.join(LINKS_DIR);
        let entries = fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ifindex) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&format!("{TAP_PROGRAM}-")))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            if !attached.contains_key(&Ifindex(ifindex)) {
                if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                    detach_pinned(link, &entry.path());
                } else {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }
}

fn sum_counters(
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

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        program: name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(|source| DatapathError::Program {
        program: name,
        source,
    })
}

/// Attaches `program` to `link` through a TCX link pinned at `pin`. If a
/// previous daemon left a link there, the program in it is replaced
/// atomically instead.
fn attach_pinned(
    program: &mut SchedClassifier,
    name: &'static str,
    link: &Link,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<PinnedLink, DatapathError> {
    let attach_err = |source| DatapathError::Attach {
        program: name,
        device: link.name.clone(),
        source,
    };
    let mut link_id = None;
    if pin.exists() {
        let old = PinnedLink::from_pin(pin).map_err(|source| DatapathError::Link {
            path: pin.to_owned(),
            source,
        })?;
        let old = old
            .unpin()
            .map_err(io_err(format!("unpinning {}", pin.display())))?;
        match SchedClassifierLink::try_from(old) {
            Ok(old) => match program.attach_to_link(old) {
                Ok(id) => link_id = Some(id),
                // A link whose device is gone cannot be updated; attach anew.
                Err(err) => warn!(
                    "replacing the program in {}: {err}; attaching anew",
                    pin.display()
                ),
            },
            Err(err) => warn!(
                "{} is not a TCX link ({err}); attaching anew",
                pin.display()
            ),
        }
    }
    let link_id = match link_id {
        Some(id) => id,
        None => program
            .attach_with_options(
                &link.name,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?,
    };
    let owned = program.take_link(link_id).map_err(attach_err)?;
    let fd_link: FdLink = owned.try_into().map_err(|source| DatapathError::Link {
        path: pin.to_owned(),
        source,
    })?;
    fd_link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_owned(),
        source,
    })
}

/// Unpins a link and drops it, which detaches the program.
fn detach_pinned(link: PinnedLink, pin: &Path) {
    match link.unpin() {
        Ok(fd_link) => drop(fd_link),
        Err(err) => warn!("unpinning {}: {err}", pin.display()),
    }
}

/// Forwards the programs' aya-log events to the daemon's log.
fn start_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring buffer's fd, which stays open
            // and unchanged for as long as the logger (moved into AsyncFd).
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    logger,
                    tokio::io::Interest::READABLE,
                )
            };
            let fd = match registered {
                Ok(fd) => fd,
                Err(err) => {
                    warn!("eBPF log events unavailable: {err}");
                    return;
                }
            };
            tokio::spawn(async move {
                let mut fd = fd;
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(err) => warn!("eBPF log events unavailable: {err}"),
    }
}

/// What `status` shows for one tap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TapStatus {
    pub device: String,
    pub ifindex: u32,
    pub instance: Option<String>,
    pub instance_name: Option<String>,
    pub slots: Vec<SlotStatus>,
    pub counters: CountersStatus,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub slot: u32,
    pub guest: IpAddr,
    pub nat: IpAddr,
}

/// A device's counters summed over CPUs.
pub type CountersStatus = DeviceCounters;

/// The whole datapath as read from the pins, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub host_device: String,
    pub host_counters: Option<CountersStatus>,
    pub taps: Vec<TapStatus>,
}

/// Reads the pinned maps and links of a (possibly running) daemon.
pub fn read_status(config: &Config, index: &PortIndex) -> Result<Status, DatapathError> {
    let bpffs = &config.datapath.bpffs;
    if !bpffs.join(map_names::CONFIG).exists()
        && let Some(why) = bpffs::explain_missing(bpffs)
    {
        return Err(why.into());
    }
    let open = |name: &'static str| -> Result<Map, DatapathError> {
        let data = MapData::from_pin(bpffs.join(name)).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    };
    let config_map: Array<MapData, DatapathConfigEntry> =
        Array::try_from(open(map_names::CONFIG)?).map_err(map_err(map_names::CONFIG))?;
    let entry = config_map.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
    let ports: BpfHashMap<MapData, PortKeyV4, PortV4> =
        BpfHashMap::try_from(open(map_names::PORTS_V4)?).map_err(map_err(map_names::PORTS_V4))?;
    let ports_v6: BpfHashMap<MapData, PortKeyV6, PortV6> =
        BpfHashMap::try_from(open(map_names::PORTS_V6)?).map_err(map_err(map_names::PORTS_V6))?;
    let counters: PerCpuHashMap<MapData, Ifindex, DeviceCounters> =
        PerCpuHashMap::try_from(open(map_names::COUNTERS)?)
            .map_err(map_err(map_names::COUNTERS))?;

    let names: HashMap<Ifindex, String> = host::list_links()?
        .into_iter()
        .map(|link| (link.ifindex, link.name))
        .collect();
    let mut taps: BTreeMap<Ifindex, TapStatus> = BTreeMap::new();
    let dir = bpffs.join(LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let Some(ifindex) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&format!("{TAP_PROGRAM}-")))
                .and_then(|n| n.parse().ok())
                .map(Ifindex)
            else {
                continue;
            };
            let device = names
                .get(&ifindex)
                .cloned()
                .unwrap_or_else(|| "(gone)".into());
            let instance = index.by_device(&device).map(|(instance, _)| instance);
            taps.insert(
                ifindex,
                TapStatus {
                    ifindex: ifindex.0,
                    instance: instance.map(|i| i.id.clone()),
                    instance_name: instance.map(|i| i.name.clone()),
                    device,
                    slots: Vec::new(),
                    counters: sum_counters(&counters, ifindex).unwrap_or_default(),
                },
            );
        }
    }
    for (key, value) in ports.iter().filter_map(Result::ok) {
        if let Some(tap) = taps.get_mut(&key.ifindex) {
            tap.slots.push(SlotStatus {
                slot: value.slot.0,
                guest: IpAddr::from(key.addr.0),
                nat: IpAddr::from(Ipv4Addr::from(entry.nat_v4_base.to_bits() + value.slot.0)),
            });
        }
    }
    for (key, value) in ports_v6.iter().filter_map(Result::ok) {
        if let Some(tap) = taps.get_mut(&key.ifindex) {
            let mut nat = entry.nat_v6_base.0;
            nat[12..].copy_from_slice(&value.slot.0.to_be_bytes());
            tap.slots.push(SlotStatus {
                slot: value.slot.0,
                guest: IpAddr::from(key.addr.0),
                nat: IpAddr::from(nat),
            });
        }
    }
    for tap in taps.values_mut() {
        tap.slots
            .sort_by_key(|slot| (slot.guest.is_ipv6(), slot.slot));
    }
    Ok(Status {
        host_device: names
            .get(&entry.host_ifindex)
            .cloned()
            .unwrap_or_else(|| config.datapath.host_device.0.clone()),
        host_counters: sum_counters(&counters, entry.host_ifindex),
        taps: taps.into_values().collect(),
    })
}

/// Removes everything `start` and `sync` created: links (which detaches
/// the programs), pinned maps, the pin folder and the host device.
pub fn teardown(config: &Config) -> Result<Vec<String>, DatapathError> {
    let mut removed = Vec::new();
    let bpffs = &config.datapath.bpffs;
    if !bpffs.exists()
        && let Some(why) = bpffs::explain_missing(bpffs)
    {
        return Err(why.into());
    }
    let links = bpffs.join(LINKS_DIR);
    if let Ok(entries) = fs::read_dir(&links) {
        for entry in entries.flatten() {
            let path = entry.path();
            match PinnedLink::from_pin(&path) {
                Ok(link) => detach_pinned(link, &path),
                Err(_) => fs::remove_file(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?,
            }
            removed.push(path.display().to_string());
        }
        fs::remove_dir(&links).map_err(io_err(format!("removing {}", links.display())))?;
    }
    for name in PINNED_MAPS {
        let path = bpffs.join(name);
        if path.exists() {
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
            removed.push(path.display().to_string());
        }
    }
    if bpffs.exists() {
        fs::remove_dir(bpffs).map_err(io_err(format!("removing {}", bpffs.display())))?;
        removed.push(bpffs.display().to_string());
    }
    if host::delete_host_device(&config.datapath.host_device.0)? {
        removed.push(format!("device {}", config.datapath.host_device));
    }
    Ok(removed)
}
