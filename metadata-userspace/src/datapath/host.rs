//! The host side of the datapath, set up through iproute2: the veth pair
//! the proxy listens on, and the list of devices to attach to.
//!
//! Every step is idempotent, so a restarted daemon converges on the same
//! state instead of failing on what its predecessor left.

use std::{net::Ipv4Addr, process::Command};

use metadata_common::Ifindex;
use serde::Deserialize;

use super::DatapathError;
use crate::{
    config::{Ipv4Net, Ipv6Net96},
    inventory::Mac,
};

/// A network device of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: Ifindex,
    pub mac: Mac,
    pub mtu: u32,
}

#[derive(Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

impl From<IpLink> for Link {
    fn from(link: IpLink) -> Self {
        Self {
            mac: link
                .address
                .and_then(|address| address.parse().ok())
                .unwrap_or_default(),
            name: link.ifname,
            ifindex: Ifindex(link.ifindex),
            mtu: link.mtu,
        }
    }
}

/// Runs `ip ARGS`, returning its standard output.
pub(crate) fn ip(args: &[&str]) -> Result<String, DatapathError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| DatapathError::Io {
            what: format!("running ip {}", args.join(" ")),
            source,
        })?;
    if !output.status.success() {
        return Err(DatapathError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn parse_links(json: &str) -> Result<Vec<IpLink>, DatapathError> {
    serde_json::from_str(json).map_err(|err| DatapathError::Command {
        command: "ip -json link show".into(),
        stderr: format!("unexpected output: {err}"),
    })
}

/// (ifindex, name) of every device of this network namespace, from
/// if_nameindex(3): one netlink dump, no process spawned, so a burst of
/// new taps is handled in microseconds per tap.
pub fn list_names() -> Result<Vec<(Ifindex, String)>, DatapathError> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed with if_freenameindex below; names are NUL-terminated.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(DatapathError::Io {
                what: "listing network devices (if_nameindex)".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut names = Vec::new();
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            names.push((Ifindex((*entry).if_index), name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
        Ok(names)
    }
}

/// All devices of this network namespace, with MAC and MTU.
pub fn list_links() -> Result<Vec<Link>, DatapathError> {
    let links = parse_links(&ip(&["-json", "link", "show"])?)?;
    Ok(links.into_iter().map(Link::from).collect())
}

/// The device called `name`, if it exists.
pub fn find_link(name: &str) -> Result<Option<Link>, DatapathError> {
    Ok(list_links()?.into_iter().find(|link| link.name == name))
}

/// The name of the veth peer of host device `name`.
pub fn peer_name(name: &str) -> String {
    // IFNAMSIZ leaves 15 bytes.
    let stem: String = name.chars().take(13).collect();
    format!("{stem}-p")
}

/// Creates (or checks) the host veth pair and gives it what the datapath
/// needs: up, ARP off (the programs address frames to it directly), the
/// proxy address, the MTU and the route for the NAT range.
pub fn ensure_host_device(
    name: &str,
    mtu: u32,
    proxy: Ipv4Addr,
    nat: Ipv4Net,
    nat_v6: Ipv6Net96,
) -> Result<Link, DatapathError> {
    let peer = peer_name(name);
    let details = parse_links(&ip(&["-json", "-details", "link", "show"])?)?;
    match details.iter().find(|link| link.ifname == name) {
        Some(link) => {
            let kind = link
                .linkinfo
                .as_ref()
                .and_then(|info| info.info_kind.as_deref());
            if kind != Some("veth") {
                return Err(DatapathError::HostDevice {
                    name: name.to_owned(),
                    reason: format!(
                        "exists but is a {} device, not a veth; choose another \
                         datapath.host_device or remove it",
                        kind.unwrap_or("physical")
                    ),
                });
            }
        }
        None => {
            ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
        }
    }
    let mtu = mtu.to_string();
    ip(&["link", "set", "dev", &peer, "mtu", &mtu, "arp", "off", "up"])?;
    ip(&["link", "set", "dev", name, "mtu", &mtu, "arp", "off", "up"])?;
    ip(&["addr", "replace", &format!("{proxy}/32"), "dev", name])?;
    ip(&["route", "replace", &nat.to_string(), "dev", name])?;
    // IPv6: the proxy's address (no DAD: nobody else is on this link) and
    // the slot /96.
    ip(&[
        "-6",
        "addr",
        "replace",
        &format!("{}/128", nat_v6.proxy()),
        "dev",
        name,
        "nodad",
    ])?;
    ip(&["-6", "route", "replace", &nat_v6.to_string(), "dev", name])?;
    find_link(name)?.ok_or_else(|| DatapathError::HostDevice {
        name: name.to_owned(),
        reason: "vanished right after it was configured".into(),
    })
}

/// Removes the host veth pair (its address and route go with it).
pub fn delete_host_device(name: &str) -> Result<bool, DatapathError> {
    if find_link(name)?.is_none() {
        return Ok(false);
    }
    ip(&["link", "del", "dev", name])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_fit_ifnamsiz() {
        assert_eq!(peer_name("mdr0"), "mdr0-p");
        assert_eq!(peer_name("a-fifteen-bytes"), "a-fifteen-byt-p");
        assert!(peer_name("a-fifteen-bytes").len() <= 15);
    }

    #[test]
    fn parses_ip_json() {
        let links = parse_links(
            r#"[{"ifindex":7,"ifname":"tap1","mtu":1500,"address":"fa:16:3e:00:00:01"},
                {"ifindex":1,"ifname":"lo","mtu":65536,"address":"00:00:00:00:00:00"}]"#,
        )
        .unwrap();
        let link = Link::from(links.into_iter().next().unwrap());
        assert_eq!(link.ifindex, Ifindex(7));
        assert_eq!(link.mac.to_string(), "fa:16:3e:00:00:01");
    }
}
