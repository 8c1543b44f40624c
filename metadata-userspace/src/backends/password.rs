//! Instance passwords (the OpenStack `password` endpoint): set once by the
//! guest, read back by it and by the operator, kept across restarts.
//!
//! One file per instance under `<state_dir>/passwords/`, written to a
//! temporary file, synced and renamed over the old one, so a crash leaves
//! either the old or the new password, never a torn one.

use std::{
    fs,
    io::{self, Write as _},
    path::PathBuf,
    sync::Mutex,
};

/// Longest password Nova accepts (4 chunks of 255 bytes).
pub const MAX_PASSWORD: usize = 1020;

#[derive(Debug)]
pub struct PasswordStore {
    dir: PathBuf,
    /// Serializes check-then-set, so two racing POSTs cannot both win.
    lock: Mutex<()>,
}

/// Why a password could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password is already set")]
    AlreadySet,
    #[error("the password is longer than {MAX_PASSWORD} bytes")]
    TooLong,
    #[error("storing the password in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl PasswordStore {
    pub fn new(state_dir: &std::path::Path) -> Self {
        Self {
            dir: state_dir.join("passwords"),
            lock: Mutex::new(()),
        }
    }

    fn path(&self, instance: &str) -> PathBuf {
        // Instance ids are uuids; anything else is reduced to safe bytes.
        let name: String = instance
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(name)
    }

    /// The stored password, or "" when none is set.
    pub fn get(&self, instance: &str) -> io::Result<Vec<u8>> {
        match fs::read(self.path(instance)) {
            Ok(data) => Ok(data),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }

    /// Stores `password` unless one is set already.
    pub fn set_once(&self, instance: &str, password: &[u8]) -> Result<(), PasswordError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = self.path(instance);
        let io_err = |source| PasswordError::Io {
            path: path.clone(),
            source,
        };
        // Nova checks for a conflict before the size.
        if !self.get(instance).map_err(io_err)?.is_empty() {
            return Err(PasswordError::AlreadySet);
        }
        if password.len() > MAX_PASSWORD {
            return Err(PasswordError::TooLong);
        }
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(password).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)?;
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_once_then_conflict_and_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = PasswordStore::new(dir.path());
        assert_eq!(store.get("i-1").unwrap(), b"");
        assert!(matches!(
            store.set_once("i-1", &[b'x'; MAX_PASSWORD + 1]),
            Err(PasswordError::TooLong)
        ));
        store.set_once("i-1", b"secret").unwrap();
        assert!(matches!(
            store.set_once("i-1", b"other"),
            Err(PasswordError::AlreadySet)
        ));
        // A new store (a restarted daemon) sees it.
        assert_eq!(
            PasswordStore::new(dir.path()).get("i-1").unwrap(),
            b"secret"
        );
    }
}
