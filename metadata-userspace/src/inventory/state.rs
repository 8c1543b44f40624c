//! The ports-state file: what a live port source knows about this host's
//! taps, written for `status`, which runs without the source. One type,
//! written atomically by the source and read back by `status`.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file's name under `[daemon] state_dir`.
pub const FILE_NAME: &str = "ports-state.json";

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsState {
    /// Tap -> the instance served on it.
    pub served: BTreeMap<String, String>,
    /// Local taps the source knows that it cannot serve (yet).
    pub waiting: Vec<WaitingTap>,
    /// Database -> whether the source is connected to it (or serving the
    /// last known ports).
    pub connected: BTreeMap<String, bool>,
    /// Taps whose name fits two or more ports of this host (the "neutron"
    /// source without OVS): none of them is served.
    #[serde(default)]
    pub ambiguous: Vec<AmbiguousTap>,
}

/// A tap name that two or more ports would have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmbiguousTap {
    pub device: String,
    pub ports: Vec<String>,
}

/// A local tap that names a port with no binding served here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingTap {
    pub device: String,
    /// The port the tap names (OVS external_ids:iface-id).
    pub iface_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl PortsState {
    /// Where the file lives under `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// Writes the file whole or not at all: a reader never sees half of it.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_vec(self).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn read(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_as_written_in_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = PortsState::path(dir.path());
        let state = PortsState {
            served: [("tap1".into(), "vm-1".into())].into(),
            waiting: vec![WaitingTap {
                device: "tap2".into(),
                iface_id: "p2".into(),
            }],
            connected: [("ovs".into(), true), ("southbound".into(), false)].into(),
            ambiguous: Vec::new(),
        };
        state.write(&path).unwrap();
        assert_eq!(PortsState::read(&path).unwrap(), state);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["served"]["tap1"], "vm-1");
        assert_eq!(json["waiting"][0]["iface_id"], "p2");
        assert_eq!(json["connected"]["southbound"], false);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_broken_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = PortsState::path(dir.path());
        std::fs::write(&path, "{").unwrap();
        let err = PortsState::read(&path).unwrap_err().to_string();
        assert!(err.contains(FILE_NAME), "{err}");
    }
}
