//! The identity token: a JWT (RFC 7519) signed RS256 (RFC 7518), with the
//! signing key's id in its header, and the JWKS that verifies it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::keys::{KeyError, SigningKey};

/// What the token says about the instance: from the port record and the
/// backend's answer, never from the guest's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub instance_id: String,
    pub project_id: String,
    pub availability_zone: String,
    pub instance_name: String,
}

/// What the guest asked for: checked already ([`Audience`]).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub audience: &'a Audience,
    pub nonce: Option<&'a Audience>,
}

/// A value of `audience=` or `nonce=`: 1 to 256 printable ASCII
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(String);

impl Audience {
    pub const MAX: usize = 256;

    pub fn new(text: &str) -> Option<Self> {
        let printable = text.bytes().all(|b| (0x20..0x7f).contains(&b));
        (!text.is_empty() && text.len() <= Self::MAX && printable).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A signed token for `subject`, valid from `now` for `lifetime`.
pub fn token(
    key: &SigningKey,
    issuer: &str,
    subject: &Subject,
    request: &Request<'_>,
    now: SystemTime,
    lifetime: Duration,
    jti: &str,
) -> Result<String, KeyError> {
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": key.id});
    let mut claims = json!({
        "iss": issuer,
        "sub": subject.instance_id,
        "aud": request.audience.as_str(),
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime.as_secs(),
        "jti": jti,
        "project_id": subject.project_id,
        "availability_zone": subject.availability_zone,
        "instance_name": subject.instance_name,
    });
    if let Some(nonce) = request.nonce {
        claims["nonce"] = Value::from(nonce.as_str());
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The JSON Web Key Set of `keys` (RFC 7517 section 5).
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    let keys: Vec<Value> = keys.into_iter().map(SigningKey::jwk).collect();
    json!({ "keys": keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audience_is_one_to_256_printable_characters() {
        assert!(Audience::new("https://vault.example").is_some());
        assert!(Audience::new("a b ~").is_some());
        assert!(Audience::new("").is_none());
        assert!(Audience::new(&"a".repeat(257)).is_none());
        assert!(Audience::new(&"a".repeat(256)).is_some());
        assert!(Audience::new("tab\there").is_none());
        assert!(Audience::new("caf\u{e9}").is_none());
    }
}
