//! The layout of the pinned maps, and upgrades across a change of it.
//!
//! A starting daemon adopts the maps pinned under `datapath.bpffs`, which
//! only works when each has the shape this build's programs expect. When a
//! release adds a counter, a field or a map, the pinned maps are an older
//! layout. [`Upgrade`] then moves each map whose shape changed aside (into
//! [`pins::PREVIOUS_DIR`]), lets the loader create and pin this build's
//! map, and copies every entry across: keys as they are, values as the
//! prefix of the longer new value (the common crate's types only ever
//! grow by appended fields). The old programs keep running on the old maps
//! until the first sync gives each pinned link the new program (an atomic
//! link update); then [`Upgrade::finish`] removes the old pins, and the
//! old maps go with the old programs. What the old programs write in
//! between (counters, a learned MAC) is not carried: counters restart from
//! the copied values less those few packets.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{MapData, MapError},
};
use log::{info, warn};
use metadata_common::pins;

use super::raw_map::{self, Sizes};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading the eBPF object's map definitions: {0}")]
    Object(#[from] aya_obj::ParseError),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("pinned map {}: {source}", path.display())]
    Pinned { path: PathBuf, source: MapError },
    #[error(
        "the maps pinned under {} cannot be adopted by this build: {why}. \
         `metadata-redirector teardown` removes them (and the programs from every tap) first",
        bpffs.display()
    )]
    Incompatible { bpffs: PathBuf, why: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> LayoutError {
    move |source| LayoutError::Io { what, source }
}

/// A map's shape: what must agree for a program to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl Shape {
    fn of_pin(path: &Path) -> Result<Self, LayoutError> {
        let pinned = |source| LayoutError::Pinned {
            path: path.into(),
            source,
        };
        let info = MapData::from_pin(path)
            .and_then(|map| map.info())
            .map_err(pinned)?;
        Ok(Self {
            map_type: info.map_type().map_err(pinned)? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }

    /// Why a map of this shape cannot be carried over into `to`, if it
    /// cannot.
    fn carry_refused(&self, to: &Self) -> Option<String> {
        if self.map_type != to.map_type {
            Some(format!("map type {} -> {}", self.map_type, to.map_type))
        } else if self.key_size != to.key_size {
            Some(format!("{}-byte keys -> {}", self.key_size, to.key_size))
        } else if self.value_size > to.value_size {
            Some(format!(
                "{}-byte values -> {}",
                self.value_size, to.value_size
            ))
        } else if self.max_entries > to.max_entries {
            Some(format!(
                "{} entries -> {}",
                self.max_entries, to.max_entries
            ))
        } else {
            None
        }
    }

    /// Whether the kernel keeps one value per CPU.
    fn per_cpu(&self) -> bool {
        use aya::maps::MapType;
        [
            MapType::PerCpuHash,
            MapType::PerCpuArray,
            MapType::LruPerCpuHash,
        ]
        .iter()
        .any(|t| *t as u32 == self.map_type)
    }

    fn sizes(&self, cpus: usize) -> Sizes {
        Sizes {
            key: self.key_size as usize,
            value: self.value_size as usize,
            cpus: self.per_cpu().then_some(cpus),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// This build's map shapes, from the eBPF object it carries.
pub fn expected() -> Result<BTreeMap<&'static str, Shape>, LayoutError> {
    let object = aya_obj::Object::parse(super::EBPF_OBJECT)?;
    pins::MAPS
        .iter()
        .map(|&name| {
            let map = object.maps.get(name).ok_or(LayoutError::MissingMap(name))?;
            let shape = Shape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
            };
            Ok((name, shape))
        })
        .collect()
}

/// How one pinned map stands against this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// Not pinned: created at start.
    Absent,
    /// This build's shape: adopted as it is.
    Same,
    /// An older shape whose entries can be carried over.
    Carried { from: Shape, to: Shape },
    /// A shape this build cannot take over.
    Incompatible { from: Shape, to: Shape, why: String },
}

/// The pinned maps against this build's, map by map.
#[derive(Debug)]
pub struct Layout {
    pub bpffs: PathBuf,
    pub maps: Vec<(&'static str, Pinned)>,
}

impl Layout {
    /// Reads the shapes pinned under `bpffs`.
    pub fn read(bpffs: &Path) -> Result<Self, LayoutError> {
        let expected = expected()?;
        let mut maps = Vec::new();
        for (name, to) in expected {
            let path = bpffs.join(name);
            let state = if !path.exists() {
                Pinned::Absent
            } else {
                let from = Shape::of_pin(&path)?;
                match from.carry_refused(&to) {
                    _ if from == to => Pinned::Same,
                    None => Pinned::Carried { from, to },
                    Some(why) => Pinned::Incompatible { from, to, why },
                }
            };
            maps.push((name, state));
        }
        Ok(Self {
            bpffs: bpffs.into(),
            maps,
        })
    }

    /// Whether nothing is pinned at all (a first start).
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(|(_, p)| *p == Pinned::Absent)
    }

    /// Whether every pinned map has this build's shape.
    pub fn is_current(&self) -> bool {
        self.maps
            .iter()
            .all(|(_, p)| matches!(p, Pinned::Same | Pinned::Absent))
    }

    /// Fails, naming each map, when this build cannot adopt the layout.
    pub fn ensure_adoptable(&self) -> Result<(), LayoutError> {
        let refused: Vec<String> = self
            .maps
            .iter()
            .filter_map(|(name, p)| match p {
                Pinned::Incompatible { why, .. } => Some(format!("{name}: {why}")),
                _ => None,
            })
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(LayoutError::Incompatible {
            bpffs: self.bpffs.clone(),
            why: refused.join("; "),
        })
    }

    /// What changes between the pinned layout and this build's, one item
    /// per map that differs.
    pub fn changes(&self) -> Vec<String> {
        self.maps
            .iter()
            .filter_map(|(name, p)| match p {
                Pinned::Absent if !self.is_empty() => Some(format!("{name} new")),
                Pinned::Carried { from, to } => Some(format!(
                    "{name} {}-byte values x {} -> {} x {} (entries carried over)",
                    from.value_size, from.max_entries, to.value_size, to.max_entries
                )),
                Pinned::Incompatible { why, .. } => Some(format!("{name} {why} (cannot carry)")),
                _ => None,
            })
            .collect()
    }
}

/// A map moved aside for this build's: its old pin, and its shape.
#[derive(Debug)]
struct Replaced {
    name: &'static str,
    old_pin: PathBuf,
    /// The old and new shapes, when the entries are to be carried over;
    /// `None` for a leftover whose successor holds newer entries already.
    carry: Option<(Shape, Shape)>,
}

/// An upgrade across a layout change, from moving the old maps aside to
/// removing their pins.
#[derive(Debug)]
pub struct Upgrade {
    previous_dir: PathBuf,
    replaced: Vec<Replaced>,
}

impl Upgrade {
    /// Checks the pinned layout under `bpffs` and moves every map of an
    /// older shape into the previous-layout folder, so that the loader
    /// creates this build's in its place. Also picks up maps an
    /// interrupted upgrade left there. `None` when nothing differs.
    pub fn begin(bpffs: &Path) -> Result<Option<Self>, LayoutError> {
        let layout = Layout::read(bpffs)?;
        layout.ensure_adoptable()?;
        let previous_dir = bpffs.join(pins::PREVIOUS_DIR);
        let expected = expected()?;
        let mut replaced = Vec::new();
        for (name, state) in &layout.maps {
            let old_pin = previous_dir.join(name);
            if let Pinned::Carried { from, to } = state {
                fs::create_dir_all(&previous_dir)
                    .map_err(io_err(format!("creating {}", previous_dir.display())))?;
                let pin = bpffs.join(name);
                fs::rename(&pin, &old_pin).map_err(io_err(format!(
                    "moving {} to {}",
                    pin.display(),
                    old_pin.display()
                )))?;
                replaced.push(Replaced {
                    name,
                    old_pin,
                    carry: Some((*from, *to)),
                });
            } else if old_pin.exists() {
                // Moved aside by an upgrade that stopped before removing
                // it. Carried only when its successor was never created;
                // otherwise the successor holds newer entries, and the
                // leftover only goes once the links run this build.
                let carry = match state {
                    Pinned::Absent => leftover_carry(&old_pin, expected[name])?,
                    _ => None,
                };
                replaced.push(Replaced {
                    name,
                    old_pin,
                    carry,
                });
            }
        }
        if replaced.is_empty() {
            return Ok(None);
        }
        let changes = layout.changes();
        if changes.is_empty() {
            info!(
                "{} holds an interrupted upgrade's old maps; removed once every link runs this build",
                previous_dir.display()
            );
        } else {
            info!(
                "the pinned maps are an older layout: {}",
                changes.join("; ")
            );
        }
        Ok(Some(Self {
            previous_dir,
            replaced,
        }))
    }

    /// Copies every entry of each old map into the map of the same name
    /// the loader created (and pinned) in `ebpf`.
    pub fn carry(&self, ebpf: &Ebpf) -> Result<(), LayoutError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| LayoutError::Io {
            what: what.to_owned(),
            source,
        })?;
        for r in &self.replaced {
            let Some((from, to)) = r.carry else {
                continue;
            };
            let old = MapData::from_pin(&r.old_pin).map_err(|source| LayoutError::Pinned {
                path: r.old_pin.clone(),
                source,
            })?;
            let new = ebpf.map(r.name).ok_or(LayoutError::MissingMap(r.name))?;
            let new_fd = aya_map_fd(new);
            let copied = raw_map::carry(old.fd().as_fd(), from.sizes(cpus), new_fd, to.sizes(cpus))
                .map_err(io_err(format!("carrying {} over", r.name)))?;
            info!(
                "carried {copied} entries of {} over ({}-byte values -> {})",
                r.name, from.value_size, to.value_size
            );
        }
        Ok(())
    }

    /// Removes the old pins once every link runs this build's programs:
    /// the old maps then go with the last program using them.
    pub fn finish(self) -> Result<(), LayoutError> {
        for r in &self.replaced {
            fs::remove_file(&r.old_pin)
                .map_err(io_err(format!("removing {}", r.old_pin.display())))?;
        }
        match fs::remove_dir(&self.previous_dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => warn!("removing {}: {err}", self.previous_dir.display()),
        }
        info!(
            "upgrade finished: every link runs this build's programs; the old maps' pins are removed"
        );
        Ok(())
    }
}

/// The shapes to carry a leftover old map's entries with, if it can be.
fn leftover_carry(old_pin: &Path, to: Shape) -> Result<Option<(Shape, Shape)>, LayoutError> {
    let from = Shape::of_pin(old_pin)?;
    match from.carry_refused(&to) {
        None => Ok(Some((from, to))),
        Some(why) => {
            warn!("{}: {why}; not carried over", old_pin.display());
            Ok(None)
        }
    }
}

/// The file descriptor of a map the loader holds.
fn aya_map_fd(map: &aya::maps::Map) -> std::os::fd::BorrowedFd<'_> {
    use aya::maps::Map;
    let data: &MapData = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::RingBuf(m) => m,
        other => unreachable!("the datapath pins no map of type {other:?}"),
    };
    data.fd().as_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTERS: Shape = Shape {
        map_type: 5,
        key_size: 4,
        value_size: 96,
        max_entries: 8192,
    };

    #[test]
    fn values_that_grew_are_carried_and_anything_else_is_refused() {
        let grown = Shape {
            value_size: 104,
            ..COUNTERS
        };
        assert_eq!(COUNTERS.carry_refused(&grown), None);
        let shrunk = Shape {
            value_size: 88,
            ..COUNTERS
        };
        assert_eq!(
            COUNTERS.carry_refused(&shrunk).as_deref(),
            Some("96-byte values -> 88")
        );
        let rekeyed = Shape {
            key_size: 8,
            ..COUNTERS
        };
        assert!(COUNTERS.carry_refused(&rekeyed).is_some());
        let smaller = Shape {
            max_entries: 16,
            ..COUNTERS
        };
        assert!(COUNTERS.carry_refused(&smaller).is_some());
        let retyped = Shape {
            map_type: 1,
            ..COUNTERS
        };
        assert!(COUNTERS.carry_refused(&retyped).is_some());
    }

    #[test]
    fn per_cpu_maps_are_known_by_type() {
        assert!(COUNTERS.per_cpu());
        assert!(
            !Shape {
                map_type: 1,
                ..COUNTERS
            }
            .per_cpu()
        );
    }

    #[test]
    fn this_builds_object_defines_every_pinned_map() {
        let shapes = expected().unwrap();
        assert_eq!(shapes.len(), pins::MAPS.len());
        assert_eq!(
            shapes["MDR_COUNTERS"].value_size as usize,
            size_of::<metadata_common::DeviceCounters>()
        );
    }
}
