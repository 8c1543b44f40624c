//! `[identity]`: the key that signs instance identity documents and
//! tokens. Absent (no `key`): the signed paths answer 404, nothing else
//! changes.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de};

use super::values::HttpUrl;

/// `[identity]` as written; [`IdentityConfig::check`] says which
/// combinations are complete.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// PEM private key (RSA, 2048 bits or more), readable by the daemon only.
    pub key: Option<PathBuf>,
    /// Its PEM certificate, for the PKCS#7 form (`pkcs7`, `rsa2048`).
    pub certificate: Option<PathBuf>,
    /// The key's id: the JWT header's `kid` and the JWKS entry's.
    pub key_id: Option<String>,
    /// The key to switch to next, announced in the JWKS before it signs.
    pub next_key: Option<PathBuf>,
    pub next_key_id: Option<String>,
    /// The tokens' `iss`, where the operator publishes the JWKS.
    pub issuer: Option<HttpUrl>,
    pub token_lifetime_s: TokenLifetime,
}

impl IdentityConfig {
    /// Whether signing is configured at all.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Which keys a configured section lacks, as `[identity]`'s error.
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled() {
            let set = self.certificate.is_some()
                || self.key_id.is_some()
                || self.next_key.is_some()
                || self.issuer.is_some();
            return if set {
                Err("`key` is missing: the other keys of [identity] mean nothing without it".into())
            } else {
                Ok(())
            };
        }
        if self.key_id.as_deref().is_none_or(str::is_empty) {
            return Err("`key_id` is required with `key` (the tokens' `kid`)".into());
        }
        if self.issuer.is_none() {
            return Err("`issuer` is required with `key` (the tokens' `iss`)".into());
        }
        if self.next_key.is_some() != self.next_key_id.is_some() {
            return Err("`next_key` and `next_key_id` go together".into());
        }
        if self.next_key_id.is_some() && self.next_key_id == self.key_id {
            return Err("`next_key_id` must differ from `key_id`".into());
        }
        Ok(())
    }

    /// Relative paths are relative to the config file's folder.
    pub fn rebase(&mut self, base: &std::path::Path) {
        for path in [&mut self.key, &mut self.certificate, &mut self.next_key]
            .into_iter()
            .flatten()
        {
            *path = base.join(&*path);
        }
    }
}

/// How long an identity token is valid: 1 s to 1 hour, 10 minutes unless
/// configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLifetime(Duration);

impl TokenLifetime {
    pub const MAX_S: u64 = 3600;

    pub const fn new(seconds: u64) -> Option<Self> {
        if seconds >= 1 && seconds <= Self::MAX_S {
            Some(Self(Duration::from_secs(seconds)))
        } else {
            None
        }
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl Default for TokenLifetime {
    fn default() -> Self {
        super::defaults::IDENTITY_TOKEN_LIFETIME
    }
}

impl<'de> Deserialize<'de> for TokenLifetime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = u64::deserialize(deserializer)?;
        Self::new(seconds).ok_or_else(|| {
            de::Error::custom(format!(
                "{seconds} is not a token lifetime between 1 and {} seconds",
                Self::MAX_S
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IdentityConfig, String> {
        let config: IdentityConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check().map(|()| config)
    }

    #[test]
    fn nothing_configured_is_off_and_a_key_needs_an_id_and_an_issuer() {
        assert!(!parse("").unwrap().enabled());
        let full = "key = \"k.pem\"\nkey_id = \"2026-12\"\nissuer = \"https://md.example/r1\"\n";
        assert!(parse(full).unwrap().enabled());
        assert!(
            parse("key = \"k.pem\"\nissuer = \"https://x\"\n")
                .unwrap_err()
                .contains("key_id")
        );
        assert!(
            parse("key = \"k.pem\"\nkey_id = \"a\"\n")
                .unwrap_err()
                .contains("issuer")
        );
        assert!(
            parse("key_id = \"a\"\n")
                .unwrap_err()
                .contains("`key` is missing")
        );
        let half_next = format!("{full}next_key = \"n.pem\"\n");
        assert!(parse(&half_next).unwrap_err().contains("go together"));
    }

    #[test]
    fn the_lifetime_is_ten_minutes_unless_set_and_at_most_an_hour() {
        assert_eq!(TokenLifetime::default().get(), Duration::from_secs(600));
        assert!(
            parse("token_lifetime_s = 3601\n")
                .unwrap_err()
                .contains("3601")
        );
        assert!(parse("token_lifetime_s = 0\n").is_err());
    }
}
