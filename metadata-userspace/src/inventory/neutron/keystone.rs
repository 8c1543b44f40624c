//! Keystone v3: a token for the Neutron API, by password or application
//! credential, reused until shortly before it expires; and the network
//! endpoint from the token's catalog (by region and interface) or the
//! configured override.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde_json::{Value, json};

use super::{NeutronError, transport::Http};
use crate::config::{
    KeystoneConfig, Secret,
    keystone::{AuthType, Interface},
};

/// A token is replaced this long before it expires, so that no request
/// goes out with one that runs out on the way.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// A scoped token and where Neutron is.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    pub expires_at: SystemTime,
    /// The network endpoint, without a trailing '/'.
    pub network: String,
}

#[derive(Debug)]
pub struct Keystone {
    config: KeystoneConfig,
    /// The password or application credential secret.
    secret: Secret,
    http: Http,
    token: Option<Token>,
}

/// Reads a secret from `file` (one line; a trailing newline ignored).
fn read_secret(key: &str, file: &std::path::Path) -> Result<Secret, NeutronError> {
    let text = std::fs::read_to_string(file).map_err(|source| NeutronError::Secret {
        key: key.to_owned(),
        path: file.to_owned(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned()))
}

impl Keystone {
    pub fn new(config: KeystoneConfig, http: Http) -> Result<Self, NeutronError> {
        let secret = match config.auth_type {
            AuthType::Password => match (&config.password, &config.password_file) {
                (Some(secret), _) => secret.clone(),
                (None, Some(file)) => read_secret("ports.keystone.password_file", file)?,
                (None, None) => Secret::new(String::new()),
            },
            AuthType::ApplicationCredential => match (
                &config.application_credential_secret,
                &config.application_credential_secret_file,
            ) {
                (Some(secret), _) => secret.clone(),
                (None, Some(file)) => {
                    read_secret("ports.keystone.application_credential_secret_file", file)?
                }
                (None, None) => Secret::new(String::new()),
            },
        };
        Ok(Self {
            config,
            secret,
            http,
            token: None,
        })
    }

    /// A token valid for a while yet: the one held, or a new one.
    pub async fn token(&mut self) -> Result<Token, NeutronError> {
        let fresh = |t: &Token| {
            t.expires_at
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > RENEW_BEFORE)
        };
        if let Some(token) = self.token.as_ref().filter(|t| fresh(t)) {
            return Ok(token.clone());
        }
        let token = self.authenticate().await?;
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Drops the token held (Neutron refused it: revoked, say).
    pub fn forget(&mut self) {
        self.token = None;
    }

    async fn authenticate(&self) -> Result<Token, NeutronError> {
        let url = format!(
            "{}/auth/tokens",
            self.config.auth_url.to_string().trim_end_matches('/')
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(self.auth_body().to_string())))
            .map_err(|e| NeutronError::Http(format!("{url}: {e}")))?;
        let answer = self.http.send(request).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(NeutronError::Credentials {
                answer: brief(&answer.body),
            });
        }
        if answer.status != StatusCode::CREATED {
            return Err(NeutronError::Keystone {
                status: answer.status,
                answer: brief(&answer.body),
            });
        }
        let value = answer
            .headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| NeutronError::Unexpected("Keystone sent no X-Subject-Token".into()))?;
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| NeutronError::Unexpected(format!("Keystone's token: {e}")))?;
        let expires_at = body["token"]["expires_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
            .ok_or_else(|| NeutronError::Unexpected("a token without expires_at".into()))?;
        let network = match &self.config.endpoint_override {
            Some(url) => url.to_string(),
            None => network_endpoint(
                &body["token"]["catalog"],
                self.config.region_name.as_deref(),
                &self.config.valid_interfaces,
            )
            .ok_or_else(|| NeutronError::NoEndpoint {
                region: self.config.region_name.clone(),
                interfaces: self
                    .config
                    .valid_interfaces
                    .iter()
                    .map(|i| i.as_str())
                    .collect(),
            })?,
        };
        Ok(Token {
            value: Secret::new(value.to_owned()),
            expires_at,
            network: network.trim_end_matches('/').to_owned(),
        })
    }

    /// The `POST /v3/auth/tokens` body for the configured method.
    fn auth_body(&self) -> Value {
        let c = &self.config;
        let secret = self.secret.expose();
        if c.auth_type == AuthType::ApplicationCredential {
            return json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": c.application_credential_id, "secret": secret},
            }}});
        }
        let user_domain = match &c.user_domain_id {
            Some(id) => json!({"id": id}),
            None => json!({"name": c.user_domain_name}),
        };
        let user = match (&c.user_id, &c.username) {
            (Some(id), _) => json!({"id": id, "password": secret}),
            (None, name) => json!({"name": name, "domain": user_domain, "password": secret}),
        };
        let project_domain = match &c.project_domain_id {
            Some(id) => json!({"id": id}),
            None => json!({"name": c.project_domain_name}),
        };
        let project = match (&c.project_id, &c.project_name) {
            (Some(id), _) => json!({"id": id}),
            (None, name) => json!({"name": name, "domain": project_domain}),
        };
        json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"project": project},
        }})
    }
}

/// The first URL of a `network` service endpoint in `catalog` whose
/// region matches (any, without one) and whose interface is the first of
/// `interfaces` that has one.
pub fn network_endpoint(
    catalog: &Value,
    region: Option<&str>,
    interfaces: &[Interface],
) -> Option<String> {
    let endpoints: Vec<&Value> = catalog
        .as_array()?
        .iter()
        .filter(|service| service["type"] == "network")
        .flat_map(|service| service["endpoints"].as_array().into_iter().flatten())
        .filter(|e| region.is_none_or(|r| e["region_id"] == r || e["region"] == r))
        .collect();
    interfaces.iter().find_map(|interface| {
        endpoints
            .iter()
            .find(|e| e["interface"] == interface.as_str())
            .and_then(|e| e["url"].as_str())
            .map(str::to_owned)
    })
}

/// The start of an answer's body, for an error message.
pub fn brief(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() > 300 {
        format!("{}...", &text[..text.floor_char_boundary(300)])
    } else {
        text.to_owned()
    }
}

/// Makes `path` (with query) relative to the endpoint `base`.
pub fn join(base: &str, path_and_query: &str) -> Result<Uri, NeutronError> {
    let url = format!("{base}{path_and_query}");
    url.parse()
        .map_err(|e| NeutronError::Unexpected(format!("`{url}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Value {
        json!([
            {"type": "identity", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://k:5000/v3"}]},
            {"type": "network", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "https://n.example:9696/"},
                {"interface": "internal", "region_id": "RegionOne", "url": "http://10.0.0.9:9696"},
                {"interface": "internal", "region_id": "RegionTwo", "url": "http://10.2.0.9:9696"}]}
        ])
    }

    #[test]
    fn the_network_endpoint_follows_region_and_interface_order() {
        let internal_first = [Interface::Internal, Interface::Public];
        assert_eq!(
            network_endpoint(&catalog(), Some("RegionOne"), &internal_first).as_deref(),
            Some("http://10.0.0.9:9696")
        );
        assert_eq!(
            network_endpoint(
                &catalog(),
                Some("RegionTwo"),
                &[Interface::Public, Interface::Internal]
            )
            .as_deref(),
            Some("http://10.2.0.9:9696")
        );
        assert_eq!(
            network_endpoint(&catalog(), Some("RegionOne"), &[Interface::Public]).as_deref(),
            Some("https://n.example:9696/")
        );
        assert_eq!(
            network_endpoint(&catalog(), Some("Elsewhere"), &internal_first),
            None
        );
        assert_eq!(
            network_endpoint(&catalog(), None, &[Interface::Admin]),
            None
        );
    }

    #[test]
    fn expiry_times_read_as_keystone_writes_them() {
        let at = humantime::parse_rfc3339_weak("2026-12-06T05:32:10.000000").unwrap();
        let epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(epoch, 1_796_535_130);
    }
}
