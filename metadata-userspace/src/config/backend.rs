//! `[backend]` as written, and what it resolves to: one flat table whose
//! `type` says which keys apply, with every key's place kept for errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{BackendConfig, ConfigError, LocalBackendConfig, NovaBackendConfig, NovaUrl, defaults};

/// `[backend]` as written: one flat table whose `type` says which keys
/// apply. Parsed flat rather than as a tagged enum so that every error
/// keeps the line of the key it is about.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendSection {
    #[serde(rename = "type")]
    kind: Option<Spanned<BackendKind>>,
    // local
    vendor_data: Option<Spanned<toml::Table>>,
    vendor_data2: Option<Spanned<toml::Table>>,
    dns: Option<Spanned<Vec<std::net::IpAddr>>>,
    // nova
    url: Option<Spanned<NovaUrl>>,
    shared_secret: Option<Spanned<String>>,
    shared_secret_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    insecure: Option<Spanned<bool>>,
    connect_timeout_s: Option<Spanned<u64>>,
    timeout_s: Option<Spanned<u64>>,
    cache_ttl_s: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    Local,
    Nova,
}

/// A key of `[backend]` that was given, with where.
type GivenKey = (&'static str, Option<std::ops::Range<usize>>);

fn given<T>(key: &'static str, value: Option<&Spanned<T>>) -> GivenKey {
    (key, value.map(Spanned::span))
}

impl BackendSection {
    /// What the section means, or an error naming the offending key.
    pub(super) fn resolve(self, path: &Path, source: &str) -> Result<BackendConfig, ConfigError> {
        let kind = self
            .kind
            .as_ref()
            .map_or(BackendKind::Local, |k| *k.get_ref());
        let (wrong, other) = match kind {
            BackendKind::Local => (self.nova_keys().to_vec(), "nova"),
            BackendKind::Nova => (self.local_keys().to_vec(), "local"),
        };
        if let Some((key, Some(span))) = wrong.into_iter().find(|(_, s)| s.is_some()) {
            let message = format!("`{key}` applies to type = \"{other}\" only");
            return Err(ConfigError::at(path, source, span, message));
        }
        match kind {
            BackendKind::Local => Ok(BackendConfig::Local(self.local())),
            BackendKind::Nova => self.nova(path, source).map(BackendConfig::Nova),
        }
    }

    fn nova_keys(&self) -> [GivenKey; 10] {
        [
            given("url", self.url.as_ref()),
            given("shared_secret", self.shared_secret.as_ref()),
            given("shared_secret_file", self.shared_secret_file.as_ref()),
            given("ca_file", self.ca_file.as_ref()),
            given("client_cert", self.client_cert.as_ref()),
            given("client_key", self.client_key.as_ref()),
            given("insecure", self.insecure.as_ref()),
            given("connect_timeout_s", self.connect_timeout_s.as_ref()),
            given("timeout_s", self.timeout_s.as_ref()),
            given("cache_ttl_s", self.cache_ttl_s.as_ref()),
        ]
    }

    fn local_keys(&self) -> [GivenKey; 3] {
        [
            given("vendor_data", self.vendor_data.as_ref()),
            given("vendor_data2", self.vendor_data2.as_ref()),
            given("dns", self.dns.as_ref()),
        ]
    }

    fn local(self) -> LocalBackendConfig {
        LocalBackendConfig {
            vendor_data: self
                .vendor_data
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            vendor_data2: self
                .vendor_data2
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            dns: self.dns.map(Spanned::into_inner).unwrap_or_default(),
        }
    }

    fn nova(self, path: &Path, source: &str) -> Result<NovaBackendConfig, ConfigError> {
        let kind_span = self.kind.as_ref().map_or(0..0, Spanned::span);
        let err = |span, message: &str| Err(ConfigError::at(path, source, span, message.into()));
        let Some(url) = self.url else {
            return err(kind_span, "type = \"nova\" needs `url`");
        };
        if self.shared_secret.is_some() == self.shared_secret_file.is_some() {
            return err(
                kind_span,
                "give exactly one of `shared_secret` and `shared_secret_file`",
            );
        }
        if let (Some(cert), None) | (None, Some(cert)) = (&self.client_cert, &self.client_key) {
            return err(
                cert.span(),
                "give both `client_cert` and `client_key`, or neither",
            );
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let file = |p: Option<Spanned<PathBuf>>| p.map(|p| base.join(p.into_inner()));
        Ok(NovaBackendConfig {
            url: url.into_inner(),
            shared_secret: self.shared_secret.map(Spanned::into_inner),
            shared_secret_file: file(self.shared_secret_file),
            ca_file: file(self.ca_file),
            client_cert: file(self.client_cert),
            client_key: file(self.client_key),
            insecure: self.insecure.is_some_and(|i| *i.get_ref()),
            connect_timeout_s: self
                .connect_timeout_s
                .map_or(defaults::NOVA_CONNECT_TIMEOUT_S, Spanned::into_inner),
            timeout_s: self
                .timeout_s
                .map_or(defaults::NOVA_TIMEOUT_S, Spanned::into_inner),
            cache_ttl_s: self
                .cache_ttl_s
                .map_or(defaults::NOVA_CACHE_TTL_S, Spanned::into_inner),
        })
    }
}
