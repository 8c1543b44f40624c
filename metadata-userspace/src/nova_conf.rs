//! nova.conf as a drop-in for the "neutron" port source: every compute
//! node's nova-compute already holds credentials for the Neutron API in
//! `[neutron]` (keystoneauth's options) and its host name in
//! `[DEFAULT] host`, which is the binding:host_id of its ports. So an
//! ML2/OVS or linuxbridge node runs `metadata-redirector run --nova-config
//! /etc/nova/nova.conf --neutron-config /etc/neutron/metadata_agent.ini`.

use std::path::{Path, PathBuf};

use crate::config::{
    Config, ConfigError, HttpUrl, KeystoneConfig, PortSourceKind, Secret, defaults,
    ini::IniFile,
    keystone::{AuthType, Interface},
};

/// What the daemon takes from nova.conf.
const USED: [(&str, &str); 20] = [
    ("DEFAULT", "host"),
    ("neutron", "auth_type"),
    ("neutron", "auth_url"),
    ("neutron", "username"),
    ("neutron", "user_id"),
    ("neutron", "password"),
    ("neutron", "project_name"),
    ("neutron", "project_id"),
    ("neutron", "user_domain_name"),
    ("neutron", "user_domain_id"),
    ("neutron", "project_domain_name"),
    ("neutron", "project_domain_id"),
    ("neutron", "application_credential_id"),
    ("neutron", "application_credential_secret"),
    ("neutron", "region_name"),
    ("neutron", "valid_interfaces"),
    ("neutron", "cafile"),
    ("neutron", "insecure"),
    ("neutron", "endpoint_override"),
    ("neutron", "metadata_proxy_shared_secret"),
];

/// Applies nova.conf at `path`: the port source becomes "neutron" with
/// `[neutron]`'s credentials and `[DEFAULT] host`. Returns the keys of
/// `[DEFAULT]` and `[neutron]` it did not use (nova.conf has hundreds of
/// others, of no concern here) and the shared secret nova.conf holds.
pub fn apply(
    config: &mut Config,
    path: &Path,
) -> Result<(Vec<String>, Option<String>), ConfigError> {
    let file = IniFile::read(path)?;
    let keystone = keystone(&file)?;
    if let Err(message) = keystone.check() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            line: 0,
            key: "neutron".into(),
            message,
        });
    }
    config.ports.source = PortSourceKind::Neutron;
    config.ports.keystone = Some(keystone);
    if let Some(host) = file.value("DEFAULT", "host") {
        config.ports.host = Some(host);
    }
    let unused = file
        .unused(&USED)
        .into_iter()
        .filter(|key| key.starts_with("neutron."))
        .collect();
    Ok((
        unused,
        file.value("neutron", "metadata_proxy_shared_secret"),
    ))
}

/// `[neutron]` as keystoneauth reads it.
fn keystone(file: &IniFile) -> Result<KeystoneConfig, ConfigError> {
    let value = |key: &str| file.value("neutron", key);
    let auth_url = file
        .get("neutron", "auth_url")
        .ok_or_else(|| ConfigError::Invalid {
            path: file.path.clone(),
            line: 0,
            key: "neutron.auth_url".into(),
            message: "missing: Keystone, where the Neutron API's credentials are checked".into(),
        })?;
    let auth_url: HttpUrl = auth_url
        .value
        .parse()
        .map_err(|e: String| file.err(auth_url, e))?;
    let auth_type = match file.get("neutron", "auth_type") {
        None => AuthType::Password,
        Some(e) if e.value == "password" => AuthType::Password,
        Some(e) if e.value == "v3applicationcredential" => AuthType::ApplicationCredential,
        Some(e) => return Err(file.err(e, "must be password or v3applicationcredential")),
    };
    let insecure = match file.get("neutron", "insecure") {
        Some(e) => file.bool(e)?,
        None => false,
    };
    let endpoint_override = match file.get("neutron", "endpoint_override") {
        Some(e) => Some(e.value.parse::<HttpUrl>().map_err(|m| file.err(e, m))?),
        None => None,
    };
    Ok(KeystoneConfig {
        auth_url,
        auth_type,
        username: value("username"),
        user_id: value("user_id"),
        password: value("password").map(Secret::new),
        password_file: None,
        project_name: value("project_name"),
        project_id: value("project_id"),
        user_domain_name: value("user_domain_name")
            .unwrap_or_else(|| defaults::KEYSTONE_DOMAIN.to_owned()),
        user_domain_id: value("user_domain_id"),
        project_domain_name: value("project_domain_name")
            .unwrap_or_else(|| defaults::KEYSTONE_DOMAIN.to_owned()),
        project_domain_id: value("project_domain_id"),
        application_credential_id: value("application_credential_id"),
        application_credential_secret: value("application_credential_secret").map(Secret::new),
        application_credential_secret_file: None,
        region_name: value("region_name"),
        valid_interfaces: interfaces(file)?,
        cafile: value("cafile").map(PathBuf::from),
        insecure,
        endpoint_override,
    })
}

/// `valid_interfaces`, a comma-separated list (`internal,public`).
fn interfaces(file: &IniFile) -> Result<Vec<Interface>, ConfigError> {
    let Some(entry) = file.get("neutron", "valid_interfaces") else {
        return Ok(vec![Interface::Internal, Interface::Public]);
    };
    entry
        .value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| match name {
            "public" => Ok(Interface::Public),
            "internal" => Ok(Interface::Internal),
            "admin" => Ok(Interface::Admin),
            other => Err(file.err(entry, format!("`{other}` is not public, internal or admin"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA_CONF: &str = "\
[DEFAULT]
host = compute-7
my_ip = 192.0.2.7
transport_url = rabbit://nova:secret@controller:5672/

[api_database]
connection = mysql+pymysql://nova:secret@controller/nova_api

[neutron]
auth_type = password
auth_url = https://keystone.example:5000/v3
username = neutron
password = n3utron
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
valid_interfaces = internal, public
cafile = /etc/ssl/certs/ca-certificates.crt
service_metadata_proxy = true
metadata_proxy_shared_secret = s3cret
";

    fn apply_text(text: &str) -> Result<(Config, Vec<String>, Option<String>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.conf");
        std::fs::write(&path, text).unwrap();
        let mut config = Config::parse(Path::new("/etc/mdr.toml"), "").unwrap();
        apply(&mut config, &path).map(|(unused, secret)| (config, unused, secret))
    }

    #[test]
    fn nova_conf_configures_the_neutron_source() {
        let (config, unused, secret) = apply_text(NOVA_CONF).unwrap();
        assert_eq!(config.ports.source, PortSourceKind::Neutron);
        assert_eq!(config.ports.host.as_deref(), Some("compute-7"));
        let keystone = config.ports.keystone.unwrap();
        assert_eq!(
            keystone.auth_url.to_string(),
            "https://keystone.example:5000/v3"
        );
        assert_eq!(keystone.password.unwrap().expose(), "n3utron");
        assert_eq!(
            keystone.valid_interfaces,
            [Interface::Internal, Interface::Public]
        );
        assert_eq!(unused, ["neutron.service_metadata_proxy"]);
        assert_eq!(secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_broken_nova_conf_names_file_line_and_key() {
        let err = apply_text(&NOVA_CONF.replace("internal, public", "internal, private"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nova.conf:18: key `neutron.valid_interfaces`"),
            "{err}"
        );
        let err = apply_text(&NOVA_CONF.replace("auth_url = https", "auth_url = ftp"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nova.conf:11: key `neutron.auth_url`"),
            "{err}"
        );
        let err = apply_text(&NOVA_CONF.replace("password = n3utron\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`password` and `password_file`"), "{err}");
    }
}
