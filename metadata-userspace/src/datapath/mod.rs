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
//!
//! The module's parts: [`bpffs`] (where pins may live), [`netlink`] (the
//! host device, device list, link events), [`object`] (the values written
//! into the programs at load time), [`links`] (TCX links), [`family`]
//! (the slot maps), [`logger`], [`status`] (reading and removing the pins
//! without a daemon). What to change, slots included, is decided by
//! `crate::reconcile`; [`Datapath::apply`] carries it out.

pub mod bpffs;
pub mod family;
pub mod layout;
pub mod links;
mod logger;
pub mod metrics;
pub mod netlink;
pub mod object;
mod raw_map;

pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::IpAddr,
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TcAttachType, links::LinkError},
};
use log::{info, warn};
use metadata_common::{
    DatapathConfig, DeviceCounters, Ifindex, Ipv4Be, Ipv6Be, MAX_SLOTS_V4, MAX_SLOTS_V6, MacAddr,
    PortBe, PortKeyV4, Slot, TapState, map_names, pins, program_names,
};

use self::{
    family::{SlotMaps, V4, V6},
    netlink::{HostDeviceSpec, Link, Netlink, NetlinkError},
};
use crate::{
    config::{Config, GlobPattern},
    inventory::{PortIndex, SlotOwners},
    reconcile::{self, Current, Device, Plan, Scope},
};

/// The eBPF object built by build.rs from the metadata-ebpf crate.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/metadata-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Object(#[from] object::ObjectError),
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
    Slots(#[from] reconcile::slots::SlotsExhausted),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(
        "the pinned maps are another build's layout ({changes}); this build reads its own. \
         Use that build's `status`, or start this build's daemon, which carries them over"
    )]
    OlderLayout { changes: String },
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
    netlink: Netlink,
    links_dir: PathBuf,
    host: Link,
    entry: DatapathConfig,
    interfaces: Vec<GlobPattern>,
    v4: SlotMaps<V4>,
    v6: SlotMaps<V6>,
    counters: PerCpuHashMap<MapData, Ifindex, DeviceCounters>,
    taps: BpfHashMap<MapData, Ifindex, TapState>,
    nexthops_v4: BpfHashMap<MapData, PortKeyV4, u32>,
    /// Pinned taps whose link runs this daemon's program.
    adopted: BTreeSet<Ifindex>,
    attached: BTreeMap<Ifindex, AttachedTap>,
    /// An upgrade across a map-layout change, until every pinned link
    /// runs this daemon's program.
    upgrade: Option<layout::Upgrade>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("links_dir", &self.links_dir)
            .field("host", &self.host)
            .field("entry", &self.entry)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Sets up the host device, loads the programs (adopting pinned maps),
    /// writes the datapath configuration and attaches the host program.
    pub async fn start(config: &Config) -> Result<Self, DatapathError> {
        let dp = &config.datapath;
        let netlink = Netlink::connect()?;
        let host = netlink
            .ensure_host_device(HostDeviceSpec {
                name: &dp.host_device.0,
                mtu: dp.host_mtu.get(),
                proxy: config.proxy.address,
                nat_v4: dp.nat_v4,
                nat_v6: dp.nat_v6,
            })
            .await?;
        bpffs::ensure_shared(&dp.bpffs)?;
        let links_dir = dp.bpffs.join(pins::LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .map_err(io_err(format!("creating {}", links_dir.display())))?;
        let entry = entry(config, &host);
        let (mut ebpf, upgrade) = load(&dp.bpffs, &entry)?;
        let mut config_map: Array<MapData, DatapathConfig> =
            take_map(&mut ebpf, map_names::CONFIG)?;
        config_map
            .set(0, entry, 0)
            .map_err(map_err(map_names::CONFIG))?;
        let v4 = SlotMaps::<V4>::take(&mut ebpf, entry.nat_v4_size)?;
        let v6 = SlotMaps::<V6>::take(&mut ebpf, entry.nat_v6_size)?;
        let counters = take_map(&mut ebpf, map_names::COUNTERS)?;
        let taps = take_map(&mut ebpf, map_names::TAPS)?;
        let nexthops_v4 = take_map(&mut ebpf, map_names::NEXTHOPS_V4)?;
        links::attach_or_adopt(
            classifier(&mut ebpf, program_names::HOST)?,
            program_names::HOST,
            &host.name,
            TcAttachType::Egress,
            &links_dir.join(pins::HOST_LINK),
        )?;
        Ok(Self {
            ebpf,
            netlink,
            links_dir,
            host,
            entry,
            interfaces: dp.interfaces.clone(),
            v4,
            v6,
            counters,
            taps,
            nexthops_v4,
            adopted: BTreeSet::new(),
            attached: BTreeMap::new(),
            upgrade,
        })
    }

    /// The taps currently attached.
    pub fn attached(&self) -> &BTreeMap<Ifindex, AttachedTap> {
        &self.attached
    }

    /// Makes the datapath match `inventory` and the devices present: plans
    /// with `reconcile::plan`, applies, and returns the slot owners the proxy
    /// identifies peers with. Failures of single items are logged and
    /// retried at the next sync; the error is for what stops the plan.
    pub async fn sync(&mut self, inventory: &PortIndex) -> Result<SlotOwners, DatapathError> {
        let devices: Vec<Device> = self
            .netlink
            .links()
            .await?
            .into_iter()
            .map(|link| Device {
                ifindex: link.ifindex,
                name: link.name,
            })
            .collect();
        let current = self.current()?;
        let scope = Scope {
            interfaces: &self.interfaces,
            host: self.host.ifindex,
            capacity_v4: self.v4.capacity,
            capacity_v6: self.v6.capacity,
        };
        let plan = reconcile::plan(inventory, &devices, &current, &scope)?;
        let failures = tokio::task::block_in_place(|| self.apply(&plan));
        for failure in &failures {
            warn!("{failure} (retried at the next sync)");
        }
        if failures.is_empty()
            && let Some(upgrade) = self.upgrade.take()
            && let Err(err) = upgrade.finish()
        {
            // Left for the next start, which removes leftovers whose
            // successors exist without carrying them again.
            warn!("{err}");
        }
        let owners = reconcile::slot_owners(&plan, &self.adopted, &self.entry);
        self.attached = attached_taps(&plan, &self.adopted, &self.entry);
        Ok(owners)
    }

    /// What the maps and pins hold now.
    fn current(&self) -> Result<Current, DatapathError> {
        Ok(Current {
            ports_v4: self.v4.current(),
            ports_v6: self.v6.current(),
            pinned: links::pinned_taps(&self.links_dir)?,
            adopted: self.adopted.clone(),
            // A device counts as set up when it has both entries.
            counters: self
                .counters
                .keys()
                .filter_map(Result::ok)
                .filter(|ifindex| self.taps.get(ifindex, 0).is_ok())
                .collect(),
            nexthops_v4: self.nexthops_v4.keys().filter_map(Result::ok).collect(),
        })
    }

    /// Carries `plan` out: slots first (so the reverse path exists before a
    /// request can take the forward one), counters, new and adopted links,
    /// then what goes. Returns what failed; nothing stops the rest.
    pub fn apply(&mut self, plan: &Plan) -> Vec<DatapathError> {
        let mut failures = Vec::new();
        let macs: BTreeMap<Ifindex, MacAddr> =
            plan.taps.iter().map(|t| (t.ifindex, t.mac())).collect();
        let mac_of = |ifindex: Ifindex| macs.get(&ifindex).copied();
        failures.extend(self.v4.apply(&plan.slots_v4, mac_of).err());
        failures.extend(self.v6.apply(&plan.slots_v6, mac_of).err());
        for &ifindex in &plan.add_counters {
            failures.extend(self.add_counters(ifindex).err());
        }
        for &ifindex in plan.attach.iter().chain(&plan.adopt) {
            failures.extend(self.attach(plan, ifindex).err());
        }
        for &ifindex in &plan.detach {
            let pin = links::tap_pin(&self.links_dir, ifindex);
            match links::detach(&pin) {
                Ok(()) => info!("detached {} from ifindex {ifindex}", program_names::TAP),
                Err(err) => failures.push(err),
            }
            self.adopted.remove(&ifindex);
        }
        failures.extend(self.apply_nexthops(plan));
        for &ifindex in &plan.remove_counters {
            match self.counters.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => failures.push(map_err(map_names::COUNTERS)(err)),
            }
            match self.taps.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => failures.push(map_err(map_names::TAPS)(err)),
            }
        }
        failures
    }

    /// Attaches the program to `tap`: a new link, or a predecessor's link
    /// given this daemon's program.
    fn attach(&mut self, plan: &Plan, tap: Ifindex) -> Result<(), DatapathError> {
        let name = plan
            .taps
            .iter()
            .find(|t| t.ifindex == tap)
            .map_or_else(String::new, |t| t.name.clone());
        let pin = links::tap_pin(&self.links_dir, tap);
        let program = classifier(&mut self.ebpf, program_names::TAP)?;
        let started = std::time::Instant::now();
        links::attach_or_adopt(
            program,
            program_names::TAP,
            &name,
            TcAttachType::Ingress,
            &pin,
        )?;
        info!(
            "attached {} to {name} (ifindex {tap}) in {:?}",
            program_names::TAP,
            started.elapsed()
        );
        self.adopted.insert(tap);
        Ok(())
    }

    fn apply_nexthops(&mut self, plan: &Plan) -> Vec<DatapathError> {
        let mut failures = Vec::new();
        for key in &plan.add_nexthops_v4 {
            if let Err(err) = self.nexthops_v4.insert(key, 1, 0) {
                failures.push(map_err(map_names::NEXTHOPS_V4)(err));
            }
        }
        for key in &plan.remove_nexthops_v4 {
            match self.nexthops_v4.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => failures.push(map_err(map_names::NEXTHOPS_V4)(err)),
            }
        }
        failures
    }

    /// Creates `ifindex`'s counters and state. Entries a predecessor left
    /// are kept as they are (an upgrade that carried the counters over
    /// but had no state for the tap gets the state only).
    fn add_counters(&mut self, ifindex: Ifindex) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DatapathError::Io {
            what: what.to_owned(),
            source,
        })?;
        let zeros = PerCpuValues::try_from(vec![DeviceCounters::default(); cpus])
            .map_err(io_err("building per-CPU counters"))?;
        keep_existing(self.counters.insert(ifindex, zeros, BPF_NOEXIST))
            .map_err(map_err(map_names::COUNTERS))?;
        keep_existing(self.taps.insert(ifindex, TapState::default(), BPF_NOEXIST))
            .map_err(map_err(map_names::TAPS))
    }
}

/// `bpf_map_update_elem`'s flag for "only if the key is absent".
const BPF_NOEXIST: u64 = 1;

/// An insert with [`BPF_NOEXIST`] that found the key present: nothing to do.
fn keep_existing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        other => other,
    }
}

/// The configuration entry the programs read.
fn entry(config: &Config, host: &Link) -> DatapathConfig {
    let dp = &config.datapath;
    DatapathConfig {
        host_ifindex: host.ifindex,
        proxy_v4: Ipv4Be(config.proxy.address.octets()),
        nat_v4_base: Ipv4Be(dp.nat_v4.addr.octets()),
        nat_v4_size: u32::try_from(dp.nat_v4.size())
            .unwrap_or(u32::MAX)
            .min(MAX_SLOTS_V4),
        host_mac: host.mac,
        proxy_port: PortBe::new(config.proxy.port),
        proxy_v6: Ipv6Be(dp.nat_v6.proxy().octets()),
        nat_v6_base: Ipv6Be(dp.nat_v6.prefix.octets()),
        nat_v6_size: MAX_SLOTS_V6,
        conn_interval_ns: dp.connection_rate.interval_ns(),
        conn_burst: dp.connection_burst.get(),
    }
}

/// Loads the object over the maps pinned under `bpffs` (carrying the maps
/// of an older layout over to this build's first) and its programs into
/// the kernel; starts forwarding the programs' log.
fn load(
    bpffs: &std::path::Path,
    entry: &DatapathConfig,
) -> Result<(Ebpf, Option<layout::Upgrade>), DatapathError> {
    let upgrade = layout::Upgrade::begin(bpffs)?;
    let mut ebpf = load_pinned(bpffs, entry)?;
    if let Some(upgrade) = &upgrade {
        upgrade.carry(&ebpf)?;
    }
    logger::start(&mut ebpf);
    for name in [program_names::TAP, program_names::HOST] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: name,
                source,
            })?;
    }
    Ok((ebpf, upgrade))
}

/// Loads the object with `entry`'s load-time values, reusing the maps
/// pinned under `bpffs`.
fn load_pinned(bpffs: &std::path::Path, entry: &DatapathConfig) -> Result<Ebpf, DatapathError> {
    let object = object::with_load_time_values(EBPF_OBJECT, Some(entry))?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = pins::MAPS
        .iter()
        .map(|&name| (name, bpffs.join(name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(object.bytes())?)
}

/// The attached taps with their slots, for logs and `attached()`.
fn attached_taps(
    plan: &Plan,
    adopted: &BTreeSet<Ifindex>,
    cfg: &DatapathConfig,
) -> BTreeMap<Ifindex, AttachedTap> {
    let mut taps: BTreeMap<Ifindex, AttachedTap> = plan
        .taps
        .iter()
        .filter(|tap| adopted.contains(&tap.ifindex))
        .map(|tap| {
            let attached = AttachedTap {
                name: tap.name.clone(),
                slots: Vec::new(),
            };
            (tap.ifindex, attached)
        })
        .collect();
    let v4 = plan.slots_v4.assigned.iter().map(|(key, slot)| {
        (
            key.ifindex,
            IpAddr::from(key.addr.0),
            *slot,
            IpAddr::from(cfg.slot_addr_v4(*slot).0),
        )
    });
    let v6 = plan.slots_v6.assigned.iter().map(|(key, slot)| {
        (
            key.ifindex,
            IpAddr::from(key.addr.0),
            *slot,
            IpAddr::from(cfg.slot_addr_v6(*slot).0),
        )
    });
    for (ifindex, guest, slot, nat) in v4.chain(v6) {
        if let Some(tap) = taps.get_mut(&ifindex) {
            tap.slots.push((guest, slot, nat));
        }
    }
    taps
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
