//! Removing what killed test, demo or bench runs left behind.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{daemon_binary, ip};

/// Removes what test or demo processes that no longer run left behind
/// (killed with SIGKILL, say): namespaces, pins and temporary folders
/// whose names carry a dead process id. Returns what was removed.
pub fn sweep_stale() -> Vec<String> {
    let alive = |suffix: &str| {
        let pid = suffix
            .split('_')
            .next()
            .and_then(|p| u32::from_str_radix(p, 36).ok());
        pid.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut removed = Vec::new();
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    for line in namespaces.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(suffix) = [
            "mdr-hv-",
            "mdr-vm-",
            "mdr-gw-",
            "mdr-qd-",
            "mdr-dhcp-",
            "mdr-lim-",
        ]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix)) else {
            continue;
        };
        if alive(suffix) {
            continue;
        }
        // What still runs in it (a haproxy, an nginx, a daemon) would keep
        // the namespace alive after `netns del`.
        for pid in ip(&["netns", "pids", name])
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: signalling a process by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                removed.push(format!("process {pid} in netns {name}"));
            }
        }
        if name.starts_with("mdr-hv-") {
            let config =
                std::env::temp_dir().join(format!("mdr-test-{suffix}/metadata-redirector.toml"));
            if let (true, Ok(binary)) = (config.exists(), daemon_binary()) {
                let _ = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{name}"))
                    .arg(binary)
                    .args(["teardown", "--config"])
                    .arg(&config)
                    .output();
            }
        }
        if ip(&["netns", "del", name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    for folder in [
        PathBuf::from("/sys/fs/bpf"),
        std::env::temp_dir(),
        PathBuf::from(crate::openstack::CACHE),
    ] {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Test, neutron-network and nginx folders carry a test suffix;
            // the fuzz body's state folder its (decimal) process id.
            let stale = [
                "mdr-test-",
                "mdr-qd-mdr-qd-",
                "mdr-www-mdr-lim-",
                "partial-",
            ]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .map(|suffix| !alive(suffix))
            .or_else(|| {
                let pid = name.strip_prefix("mdr-fuzz-")?;
                Some(!Path::new(&format!("/proc/{pid}")).exists())
            })
            .unwrap_or(false);
            if stale && fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path().display().to_string());
            }
        }
    }
    removed
}
