//! VMs: namespaces whose eth0 is wired to a tap, with the requests a
//! guest makes (HTTP, cloud-init's own reader).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::Context as _;

use crate::{METADATA, Netns, http_get, parse_response};

/// A VM: a namespace with eth0 wired to a tap in the hypervisor.
#[derive(Debug)]
pub struct Vm {
    pub ns: Netns,
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// What cloud-init's OpenStack reader returned, reduced to what tests check.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CloudInitView {
    pub uuid: String,
    pub name: String,
    pub hostname: String,
    pub public_keys: serde_json::Value,
    pub userdata: Option<String>,
}

const READ_OPENSTACK: &str = r#"
import json, sys
from cloudinit.sources.DataSourceOpenStack import read_metadata_service
r = read_metadata_service(sys.argv[1], timeout=10, retries=2)
md = r["metadata"]
ud = r.get("userdata")
if isinstance(ud, bytes):
    ud = ud.decode()
print(json.dumps({"uuid": md["uuid"], "name": md.get("name"), "hostname": md.get("hostname"),
                  "public_keys": md.get("public_keys"), "userdata": ud or None}))
"#;

impl Vm {
    /// Reads the metadata service with cloud-init's own OpenStack reader
    /// (Debian's cloud-init under /usr/bin/python3).
    pub fn cloud_init_openstack(&self, base_url: &str) -> anyhow::Result<CloudInitView> {
        let out = self
            .ns
            .exec("/usr/bin/python3", &["-c", READ_OPENSTACK, base_url])
            .context("cloud-init's read_metadata_service")?;
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("cloud-init reader printed {out:?}"))
    }

    /// Routes everything, 169.254.169.254 included, via 10.0.0.1 instead of
    /// resolving the metadata address on-link.
    pub fn route_via_gateway(&self) -> anyhow::Result<()> {
        self.ns.ip(&["route", "del", "169.254.169.254/32"])?;
        self.ns
            .ip(&["route", "add", "default", "via", "10.0.0.1"])?;
        Ok(())
    }

    /// The EUI-64 link-local address of eth0.
    pub fn link_local(&self) -> std::net::Ipv6Addr {
        let b: Vec<u8> = self
            .mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
            .collect();
        std::net::Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            b[0] ^ 2,
            b[1],
            b[2],
            0xff,
            0xfe,
            b[3],
            b[4],
            b[5],
        ])
    }

    /// An HTTP/1.1 GET from inside the VM, with a deadline.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.http_get_from(None, addr, path)
    }

    /// Any request from inside the VM: method, path, extra header lines
    /// ("Name: value") and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let (method, path) = (method.to_owned(), path.to_owned());
        let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        let body = body.to_vec();
        self.ns.run(move || {
            let timeout = Duration::from_secs(10);
            let mut stream = TcpStream::connect_timeout(&METADATA, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            for header in &headers {
                request.push_str(header);
                request.push_str("\r\n");
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes())?;
            stream.write_all(&body)?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response)?;
            parse_response(&response)
        })?
    }

    /// The instance uuid meta_data.json names for this VM, if it is served
    /// within `timeout` (keep it short where a change is awaited: a SYN
    /// dropped before the change must not hide it behind TCP's one-second
    /// retransmission).
    pub fn served_uuid(&self, timeout: Duration) -> Option<String> {
        let path = "/openstack/latest/meta_data.json";
        let (status, body) = self
            .ns
            .run(|| http_get(None, METADATA, path, timeout))
            .ok()?
            .ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        json["uuid"].as_str().map(str::to_owned)
    }

    /// Like [`Self::http_get`], from a given local address.
    pub fn http_get_from(
        &self,
        from: Option<Ipv4Addr>,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.ns
            .run(|| http_get(from, addr, path, Duration::from_secs(5)))?
    }
}

/// A locally administered unicast MAC.
pub fn random_mac() -> String {
    let mut bytes = [0u8; 5];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        bytes[0], bytes[1], bytes[2]
    )
}
