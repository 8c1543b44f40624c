//! The instances file as tests write it: instance and port records.

use std::{fmt::Write as _, fs, io::Read as _};

use crate::Vm;

/// A port record of the instances file.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub device: String,
    pub mac: String,
    pub network_id: String,
    pub ips: Vec<String>,
}

/// An instance record of the instances file.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub user_data: Option<String>,
    pub public_key: Option<String>,
    pub ports: Vec<PortSpec>,
    /// `metadata_tokens` ("optional", "required", "disabled").
    pub tokens: Option<String>,
}

impl InstanceSpec {
    /// An instance with one port on `vm`'s tap.
    pub fn for_vm(vm: &Vm, name: &str) -> Self {
        Self {
            id: uuid_like(),
            project_id: "demo-project".into(),
            name: name.into(),
            user_data: None,
            public_key: Some(format!(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} {name}@demo"
            )),
            ports: vec![PortSpec {
                device: vm.tap.clone(),
                mac: vm.mac.clone(),
                network_id: format!("net-{}", vm.tap),
                ips: vec![vm.ip.to_string()],
            }],
            tokens: None,
        }
    }

    pub(crate) fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "[[instance]]");
        let _ = writeln!(out, "id = {}", quote(&self.id));
        let _ = writeln!(out, "project_id = {}", quote(&self.project_id));
        let _ = writeln!(out, "name = {}", quote(&self.name));
        if let Some(data) = &self.user_data {
            let _ = writeln!(out, "user_data = {}", quote(data));
        }
        if let Some(key) = &self.public_key {
            let _ = writeln!(out, "public_keys = {{ default = {} }}", quote(key));
        }
        if let Some(mode) = &self.tokens {
            let _ = writeln!(out, "metadata_tokens = {}", quote(mode));
        }
        for port in &self.ports {
            let _ = writeln!(out, "\n[[instance.port]]");
            let _ = writeln!(out, "device = {}", quote(&port.device));
            let _ = writeln!(out, "mac = {}", quote(&port.mac));
            let _ = writeln!(out, "network_id = {}", quote(&port.network_id));
            let ips: Vec<String> = port.ips.iter().map(|ip| quote(ip)).collect();
            let _ = writeln!(out, "ips = [{}]", ips.join(", "));
        }
        out.push('\n');
        out
    }
}

/// A TOML basic string.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A random version-4 UUID string.
pub fn uuid_like() -> String {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
