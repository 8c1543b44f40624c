//! The instances file as a port source: read at start, then again on
//! SIGHUP and whenever it changes on disk.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use log::{error, info};
use tokio::sync::{Notify, watch};

use super::{PortIndex, PortSource, Snapshot};
use crate::config::ConfigError;

/// How often the file is checked for changes on disk.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The instances file at `path`.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    mtime: Option<SystemTime>,
}

impl FileSource {
    /// Reads the file for the first snapshot; a broken file is an error
    /// here, since there is no earlier snapshot to keep.
    pub fn open(path: &Path) -> Result<(Self, Snapshot), ConfigError> {
        let mtime = modified(path);
        let index = PortIndex::load(path)?;
        let source = Self {
            path: path.to_owned(),
            mtime,
        };
        Ok((source, Arc::new(index)))
    }

    /// Reads the file again; keeps the previous snapshot (and logs the
    /// file, line and key at fault) when it does not parse.
    fn reread(&mut self, snapshots: &watch::Sender<Snapshot>) {
        self.mtime = modified(&self.path);
        match PortIndex::load(&self.path) {
            Ok(index) => {
                info!("reloaded {}", self.path.display());
                snapshots.send_replace(Arc::new(index));
            }
            Err(err) => error!("keeping the previous port records: {err}"),
        }
    }
}

impl PortSource for FileSource {
    async fn run(mut self, snapshots: watch::Sender<Snapshot>, reload: Arc<Notify>) {
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        loop {
            tokio::select! {
                () = snapshots.closed() => return,
                () = reload.notified() => self.reread(&snapshots),
                _ = check.tick() => {
                    if modified(&self.path) != self.mtime {
                        self.reread(&snapshots);
                    }
                }
            }
        }
    }
}

/// The modification time of `path`, if it can be read.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
