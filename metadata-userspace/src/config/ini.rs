//! oslo.config's INI files (neutron's agent files, nova.conf): `[section]`
//! headers, `key = value` lines, `#` and `;` comments; the last of a
//! repeated key wins. Every error names the file, the line and the key.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// One `key = value` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Parses oslo.config INI text from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut section = "DEFAULT".to_owned();
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .strip_suffix(']')
                .map(str::trim)
                .filter(|n| !n.is_empty());
            let name = name
                .ok_or_else(|| invalid(path, i + 1, line, "a section header must be `[name]`"))?;
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| invalid(path, i + 1, line, "expected `key = value`"))?;
        entries.push(Entry {
            section: section.clone(),
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
            line: i + 1,
        });
    }
    Ok(entries)
}

pub fn invalid(path: &Path, line: usize, key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

pub fn entry_err(path: &Path, entry: &Entry, message: impl Into<String>) -> ConfigError {
    invalid(
        path,
        entry.line,
        &format!("{}.{}", entry.section, entry.key),
        &message.into(),
    )
}

/// A parsed file, with what its readers took from it.
#[derive(Debug)]
pub struct IniFile {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl IniFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            entries: parse(path, &text)?,
            path: path.to_owned(),
        })
    }

    /// The entry of `key` in `section` (the last one given).
    pub fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.section == section && e.key == key)
    }

    /// The value of `key` in `section`.
    pub fn value(&self, section: &str, key: &str) -> Option<String> {
        self.get(section, key).map(|e| e.value.clone())
    }

    /// An error about `entry`.
    pub fn err(&self, entry: &Entry, message: impl Into<String>) -> ConfigError {
        entry_err(&self.path, entry, message)
    }

    /// A boolean in oslo.config's spellings.
    pub fn bool(&self, entry: &Entry) -> Result<bool, ConfigError> {
        parse_bool(&self.path, entry)
    }

    /// The keys not among `used`, as `section.key`.
    pub fn unused(&self, used: &[(&str, &str)]) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| !used.contains(&(e.section.as_str(), e.key.as_str())))
            .map(|e| format!("{}.{}", e.section, e.key))
            .collect()
    }
}

pub fn parse_bool(path: &Path, entry: &Entry) -> Result<bool, ConfigError> {
    match entry.value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(entry_err(path, entry, "must be true or false")),
    }
}
