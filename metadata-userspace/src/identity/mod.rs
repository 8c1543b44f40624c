//! Signed instance identity: what a workload shows a third party to prove
//! which instance it runs on.
//!
//! The daemon knows the instance from the tap, which the guest cannot
//! forge, so it can sign what it knows: the EC2-style identity document
//! with its `signature` (RSA-SHA256) and PKCS#7 forms (`pkcs7`, `rsa2048`),
//! and a JWT for an audience the guest names. This module holds the keys
//! ([`keys`]), the two encodings ([`jwt`], [`cms`]) and which request asks
//! for what ([`Route`]); `backends::signed` fetches the facts from the
//! backend and answers.

pub mod cms;
pub mod jwt;
pub mod keys;
mod thread;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use serde_json::json;

pub use self::thread::SigningThread;
use self::{cms::SignerCertificate, keys::SigningKey};
pub use self::{
    jwt::{Audience, Subject},
    keys::KeyError,
};
use crate::config::IdentityConfig;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Cms(#[from] cms::CmsError),
}

/// What a request to the identity paths asks for, from its path and query
/// alone. `None` from [`Route::of`]: not an identity path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/<version>/dynamic/instance-identity/`: the listing.
    Listing,
    /// `.../instance-identity/document`.
    Document,
    /// `.../instance-identity/signature`.
    Signature,
    /// `.../instance-identity/pkcs7` and `.../rsa2048`.
    Pkcs7,
    /// `/openstack/latest/identity?audience=...[&nonce=...]`; `Err` holds
    /// what is wrong with the query (a 400).
    Token(Result<(Audience, Option<Audience>), String>),
}

impl Route {
    pub fn of(path: &str, query: Option<&str>) -> Option<Self> {
        if path == "/openstack/latest/identity" {
            return Some(Self::Token(token_query(query.unwrap_or_default())));
        }
        let mut segments = path.trim_start_matches('/').splitn(3, '/');
        let version = segments.next()?;
        let is_version = version == "latest" || version.starts_with(|c: char| c.is_ascii_digit());
        if !is_version {
            return None;
        }
        let rest = segments.next().zip(segments.next())?;
        match rest {
            ("dynamic", "instance-identity" | "instance-identity/") => Some(Self::Listing),
            ("dynamic", "instance-identity/document") => Some(Self::Document),
            ("dynamic", "instance-identity/signature") => Some(Self::Signature),
            ("dynamic", "instance-identity/pkcs7" | "instance-identity/rsa2048") => {
                Some(Self::Pkcs7)
            }
            _ => None,
        }
    }
}

/// `audience` (required) and `nonce` (optional) from a query string.
fn token_query(query: &str) -> Result<(Audience, Option<Audience>), String> {
    let mut audience = None;
    let mut nonce = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let checked = || {
            Audience::new(&value).ok_or_else(|| {
                format!(
                    "`{name}` must be 1 to {} printable ASCII characters",
                    Audience::MAX
                )
            })
        };
        match &*name {
            "audience" => audience = Some(checked()?),
            "nonce" => nonce = Some(checked()?),
            _ => return Err(format!("unknown parameter `{name}`")),
        }
    }
    let audience = audience.ok_or("`audience` is required: who the token is for")?;
    Ok((audience, nonce))
}

/// The facts a document states, from the backend's answers for the
/// instance on the tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub subject: Subject,
    pub ec2_instance_id: String,
    pub image_id: String,
}

/// A document with its signed forms, made once per instance (and again
/// when its facts change): `document` and `signature` are fetched by
/// separate requests and must match.
#[derive(Debug)]
pub struct SignedDocument {
    facts: Facts,
    pub document: Bytes,
    pub signature: Bytes,
    /// `None` without a certificate.
    pub pkcs7: Option<Bytes>,
}

/// Instances whose signed documents are kept; past this the map starts
/// over (a hypervisor hosts far fewer).
const MAX_DOCUMENTS: usize = 16_384;

/// The configured keys, and the documents signed so far.
#[derive(Debug)]
pub struct Signer {
    current: SigningKey,
    next: Option<SigningKey>,
    certificate: Option<SignerCertificate>,
    issuer: String,
    lifetime: Duration,
    documents: Mutex<HashMap<String, Arc<SignedDocument>>>,
}

impl Signer {
    /// The signer `config` describes; `None` when `[identity]` has no key.
    pub fn load(config: &IdentityConfig) -> Result<Option<Self>, IdentityError> {
        let (Some(key_path), Some(key_id), Some(issuer)) =
            (&config.key, &config.key_id, &config.issuer)
        else {
            return Ok(None);
        };
        let current = SigningKey::load(key_path, key_id)?;
        let next = match (&config.next_key, &config.next_key_id) {
            (Some(path), Some(id)) => Some(SigningKey::load(path, id)?),
            _ => None,
        };
        let certificate = config
            .certificate
            .as_deref()
            .map(|path| keys::load_certificate(path, &current, key_path))
            .transpose()?;
        Ok(Some(Self {
            current,
            next,
            certificate,
            issuer: issuer.to_string().trim_end_matches('/').to_owned(),
            lifetime: config.token_lifetime_s.get(),
            documents: Mutex::default(),
        }))
    }

    /// One line on what signs: key ids, certificate, issuer.
    pub fn describe(&self) -> String {
        let next = self
            .next
            .as_ref()
            .map(|next| format!(", next key `{}` announced", next.id))
            .unwrap_or_default();
        let pkcs7 = if self.certificate.is_some() {
            "a certificate that matches it (pkcs7, rsa2048)"
        } else {
            "no certificate (no pkcs7, rsa2048)"
        };
        format!(
            "key `{}` ({} bits) with {pkcs7}{next}; tokens for {} valid {} s",
            self.current.id,
            self.current.bits(),
            self.issuer,
            self.lifetime.as_secs()
        )
    }

    /// The public keys, current then next, as a JWKS.
    pub fn jwks(&self) -> serde_json::Value {
        jwt::jwks(std::iter::once(&self.current).chain(&self.next))
    }

    /// A token for `subject`, valid from now for the configured lifetime.
    /// RSA signing costs about 0.6 ms: call on the [`SigningThread`].
    pub fn token(
        &self,
        subject: &Subject,
        audience: &Audience,
        nonce: Option<&Audience>,
    ) -> Result<String, KeyError> {
        let jti = random_id();
        let request = jwt::Request { audience, nonce };
        jwt::token(
            &self.current,
            &self.issuer,
            subject,
            &request,
            SystemTime::now(),
            self.lifetime,
            &jti,
        )
    }

    /// The signed document for `facts`, if one was made for the same facts.
    pub fn cached(&self, facts: &Facts) -> Option<Arc<SignedDocument>> {
        let documents = self
            .documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        documents
            .get(&facts.subject.instance_id)
            .filter(|signed| signed.facts == *facts)
            .cloned()
    }

    /// Makes (and keeps) the signed document for `facts`. Costs an RSA
    /// signature or two: call on the [`SigningThread`].
    pub fn sign(&self, facts: Facts) -> Result<Arc<SignedDocument>, IdentityError> {
        let document = Bytes::from(document(&facts, SystemTime::now()));
        let signature = STANDARD.encode(self.current.sign(&document)?);
        let pkcs7 = self
            .certificate
            .as_ref()
            .map(|cert| cms::signed_data(&self.current, cert, &document))
            .transpose()?
            .map(|der| Bytes::from(wrap_64(&STANDARD.encode(der))));
        let signed = Arc::new(SignedDocument {
            facts,
            document,
            signature: Bytes::from(signature),
            pkcs7,
        });
        let mut documents = self
            .documents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if documents.len() >= MAX_DOCUMENTS {
            documents.clear();
        }
        documents.insert(
            signed.facts.subject.instance_id.clone(),
            Arc::clone(&signed),
        );
        Ok(signed)
    }
}

/// The identity document: what EC2's has, named as EC2 names it, plus the
/// OpenStack uuid and project, and when it was signed.
fn document(facts: &Facts, signed_at: SystemTime) -> String {
    let Facts {
        subject,
        ec2_instance_id,
        image_id,
    } = facts;
    let zone = &subject.availability_zone;
    // EC2 regions are their zones without the trailing letter.
    let region = zone
        .strip_suffix(|c: char| c.is_ascii_lowercase())
        .filter(|r| !r.is_empty())
        .unwrap_or(zone);
    let document = json!({
        "instanceId": ec2_instance_id,
        "instanceUuid": subject.instance_id,
        "instanceName": subject.instance_name,
        "accountId": subject.project_id,
        "projectId": subject.project_id,
        "availabilityZone": zone,
        "region": region,
        "imageId": image_id,
        "architecture": std::env::consts::ARCH,
        "signedAt": humantime::format_rfc3339_seconds(signed_at).to_string(),
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&document).expect("a JSON value renders")
}

/// Base64 in lines of 64 characters, as EC2 serves `pkcs7`.
fn wrap_64(text: &str) -> String {
    let mut wrapped = String::with_capacity(text.len() + text.len() / 64 + 1);
    for line in text.as_bytes().chunks(64) {
        wrapped.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        wrapped.push('\n');
    }
    wrapped
}

/// 128 random bits in hex: a token's `jti`.
fn random_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    // The kernel's getrandom does not fail once the pool is ready, which
    // it is long before a guest can ask.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        log::error!("the system's random source failed; this token's jti is not random");
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_paths_are_known_by_path_and_the_rest_is_not() {
        let route = |path| Route::of(path, None);
        assert_eq!(
            route("/latest/dynamic/instance-identity/"),
            Some(Route::Listing)
        );
        assert_eq!(
            route("/2016-09-02/dynamic/instance-identity/document"),
            Some(Route::Document)
        );
        assert_eq!(
            route("/latest/dynamic/instance-identity/signature"),
            Some(Route::Signature)
        );
        assert_eq!(
            route("/latest/dynamic/instance-identity/rsa2048"),
            Some(Route::Pkcs7)
        );
        assert_eq!(
            route("/latest/dynamic/instance-identity/pkcs7"),
            Some(Route::Pkcs7)
        );
        assert_eq!(route("/latest/meta-data/instance-id"), None);
        assert_eq!(route("/openstack/latest/meta_data.json"), None);
        assert_eq!(route("/dynamic/instance-identity/document"), None);
    }

    #[test]
    fn a_token_needs_a_valid_audience_and_takes_an_optional_nonce() {
        let token = |query| match Route::of("/openstack/latest/identity", query) {
            Some(Route::Token(result)) => result,
            other => panic!("{other:?}"),
        };
        let (aud, nonce) = token(Some("audience=https%3A%2F%2Fvault.example&nonce=n1")).unwrap();
        assert_eq!(aud.as_str(), "https://vault.example");
        assert_eq!(nonce.unwrap().as_str(), "n1");
        assert!(token(None).unwrap_err().contains("required"));
        assert!(token(Some("audience=")).unwrap_err().contains("printable"));
        assert!(token(Some("audience=%07")).is_err());
        assert!(
            token(Some("audience=a&scope=x"))
                .unwrap_err()
                .contains("scope")
        );
    }

    #[test]
    fn pkcs7_lines_are_64_characters() {
        let wrapped = wrap_64(&"A".repeat(130));
        let lines: Vec<&str> = wrapped.lines().collect();
        assert_eq!(
            lines.iter().map(|l| l.len()).collect::<Vec<_>>(),
            [64, 64, 2]
        );
    }
}
