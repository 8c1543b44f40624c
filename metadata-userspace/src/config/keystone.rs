//! `[ports.keystone]`: how the "neutron" port source authenticates to the
//! Neutron API, in keystoneauth's option names and meanings (the same
//! options nova.conf's `[neutron]` section holds).

use std::path::PathBuf;

use serde::Deserialize;

use super::values::{HttpUrl, Secret};

/// How to authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    /// A user's password, scoped to a project.
    #[default]
    #[serde(rename = "password")]
    Password,
    /// An application credential (scoped by itself).
    #[serde(rename = "v3applicationcredential")]
    ApplicationCredential,
}

/// Which endpoint of the catalog to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Admin => "admin",
        }
    }
}

/// `[ports.keystone]` as written; [`KeystoneConfig::check`] says which
/// combinations are complete.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoneConfig {
    /// Keystone's v3 URL, e.g. "https://keystone.example:5000/v3".
    pub auth_url: HttpUrl,
    #[serde(default)]
    pub auth_type: AuthType,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    #[serde(default = "default_domain")]
    pub user_domain_name: String,
    pub user_domain_id: Option<String>,
    #[serde(default = "default_domain")]
    pub project_domain_name: String,
    pub project_domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub application_credential_secret_file: Option<PathBuf>,
    /// The catalog region of the network endpoint; any when absent.
    pub region_name: Option<String>,
    /// The catalog interfaces to try, in order.
    #[serde(default = "default_interfaces")]
    pub valid_interfaces: Vec<Interface>,
    /// CA bundle (PEM) for Keystone's and Neutron's certificates.
    pub cafile: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    /// Neutron's URL, instead of the catalog's.
    pub endpoint_override: Option<HttpUrl>,
}

fn default_domain() -> String {
    super::defaults::KEYSTONE_DOMAIN.to_owned()
}

fn default_interfaces() -> Vec<Interface> {
    vec![Interface::Internal, Interface::Public]
}

impl KeystoneConfig {
    /// What is missing or contradictory for `auth_type`, if anything.
    pub fn check(&self) -> Result<(), String> {
        let one = |a: bool, b: bool, what: &str| {
            if a == b {
                Err(format!("give exactly one of {what}"))
            } else {
                Ok(())
            }
        };
        match self.auth_type {
            AuthType::Password => {
                one(
                    self.username.is_some(),
                    self.user_id.is_some(),
                    "`username` and `user_id`",
                )?;
                one(
                    self.password.is_some(),
                    self.password_file.is_some(),
                    "`password` and `password_file`",
                )?;
                one(
                    self.project_name.is_some(),
                    self.project_id.is_some(),
                    "`project_name` and `project_id`",
                )
            }
            AuthType::ApplicationCredential => {
                if self.application_credential_id.is_none() {
                    return Err(
                        "auth_type = \"v3applicationcredential\" needs `application_credential_id`"
                            .into(),
                    );
                }
                one(
                    self.application_credential_secret.is_some(),
                    self.application_credential_secret_file.is_some(),
                    "`application_credential_secret` and `application_credential_secret_file`",
                )
            }
        }
    }

    /// Relative files made relative to `base` (the config file's folder).
    pub fn rebase(&mut self, base: &std::path::Path) {
        for file in [
            &mut self.password_file,
            &mut self.application_credential_secret_file,
            &mut self.cafile,
        ]
        .into_iter()
        .flatten()
        {
            *file = base.join(&*file);
        }
    }
}
