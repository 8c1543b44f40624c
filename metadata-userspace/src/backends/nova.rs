//! The Nova backend: forwards each request to Nova's metadata API the way
//! neutron-metadata-agent does, so Nova cannot tell the difference.
//!
//! Nova trusts exactly four headers, so exactly those are sent: the guest's
//! real fixed address (never the slot address) in X-Forwarded-For, the
//! instance and project from the port record, and the HMAC-SHA256 of the
//! instance id under the shared secret. Nothing the guest sent in its own
//! headers is forwarded except the content type of a body, so a guest
//! cannot claim another identity.

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http::{HeaderValue, Method, Request, StatusCode, Uri, header, request::Parts};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use log::{error, warn};

use super::{
    Reply,
    cache::ResponseCache,
    metrics::{Upstream, UpstreamMetrics},
};
use crate::{
    config::NovaBackendConfig,
    inventory::Identity,
    tls_client::{self, TlsClientError, TlsClientFiles},
};

/// A Nova backend that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NovaError {
    #[error("reading {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsClientError),
    #[error("the shared secret is empty")]
    EmptySecret,
}

/// Statuses of Nova passed to the guest as they are (with their body);
/// any other becomes 500, as in neutron-metadata-agent.
const PASSED_THROUGH: [u16; 9] = [200, 400, 403, 404, 409, 500, 502, 503, 504];

/// The largest answer taken from Nova (user data is at most 64 KiB there).
const MAX_UPSTREAM_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct NovaBackend {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Uri,
    secret: Vec<u8>,
    timeout: Duration,
    /// Requests each instance may have at Nova at once: a guest flooding a
    /// slow Nova queues behind its own limit, not everyone's.
    upstream: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    cache: ResponseCache,
    metrics: UpstreamMetrics,
}

/// Requests one instance may have at Nova at once.
const MAX_UPSTREAM_PER_INSTANCE: usize = 8;

impl NovaBackend {
    pub fn new(config: &NovaBackendConfig, metrics: UpstreamMetrics) -> Result<Self, NovaError> {
        let secret = match (&config.shared_secret, &config.shared_secret_file) {
            (Some(secret), _) => secret.as_bytes().to_vec(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|source| NovaError::Read {
                    what: "the shared secret file",
                    path: path.clone(),
                    source,
                })?;
                text.trim_end_matches(['\r', '\n']).as_bytes().to_vec()
            }
            (None, None) => Vec::new(),
        };
        if secret.is_empty() {
            return Err(NovaError::EmptySecret);
        }
        let tls = tls_client::client_config(&TlsClientFiles {
            ca_file: config.ca_file.as_deref(),
            insecure: config.insecure,
            client_cert: config.client_cert.as_deref(),
            client_key: config.client_key.as_deref(),
        })?;
        let connector =
            tls_client::https_connector(tls, Duration::from_secs(config.connect_timeout_s));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self {
            client,
            base: config.url.0.clone(),
            secret,
            timeout: Duration::from_secs(config.timeout_s),
            upstream: std::sync::Mutex::default(),
            cache: ResponseCache::new(Duration::from_secs(config.cache_ttl_s)),
            metrics,
        })
    }

    /// This instance's share of Nova, waited for.
    async fn upstream_permit(&self, instance: &str) -> tokio::sync::OwnedSemaphorePermit {
        let semaphore = {
            let mut map = self
                .upstream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= 4096 {
                // Forget instances with nothing in flight.
                map.retain(|_, s| s.available_permits() < MAX_UPSTREAM_PER_INSTANCE);
            }
            let semaphore = map.entry(instance.to_owned()).or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(MAX_UPSTREAM_PER_INSTANCE))
            });
            Arc::clone(semaphore)
        };
        semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// lowercase hex HMAC-SHA256 of the instance id under the secret.
    pub fn sign(&self, instance_id: &str) -> String {
        sign(&self.secret, instance_id)
    }

    /// Answers one request: from the response cache, or from Nova.
    pub async fn handle(&self, who: &Identity, parts: &Parts, body: Bytes) -> Reply {
        let fetch = self.forward(who, parts, body);
        let (reply, lookup) = self.cache.get_or_fetch(who, parts, fetch).await;
        self.metrics.cache_lookup(lookup);
        reply
    }

    /// Forwards one request; Nova unreachable is a 503, too slow a 504, a
    /// broken or oversized answer a 502.
    async fn forward(&self, who: &Identity, parts: &Parts, body: Bytes) -> Reply {
        let request = match self.request(who, parts, body) {
            Ok(request) => request,
            Err(err) => {
                warn!("cannot forward {} {}: {err}", parts.method, parts.uri);
                return Reply::status(StatusCode::BAD_REQUEST);
            }
        };
        let exchange = async {
            let _permit = self.upstream_permit(&who.instance.id).await;
            let response = self.client.request(request).await?;
            let (head, body) = response.into_parts();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((head, bounded(body).await?))
        };
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.timeout, exchange).await;
        let took = started.elapsed();
        match outcome {
            Ok(Ok((head, body))) => {
                let kind = match body {
                    Some(_) => Upstream::Answered,
                    None => Upstream::Oversized,
                };
                self.metrics.upstream(kind, took);
                relay(&head, body, &parts.uri)
            }
            Ok(Err(err)) => {
                self.metrics.upstream(Upstream::Failed, took);
                let status = failure_status(&*err);
                let what = if status == StatusCode::SERVICE_UNAVAILABLE {
                    "unreachable"
                } else {
                    "broke off its answer"
                };
                error!("Nova at {} {what}: {}", self.base, chain(&*err));
                Reply::status(status)
            }
            Err(_) => {
                self.metrics.upstream(Upstream::Timeout, took);
                error!(
                    "Nova at {} did not answer within {:?}",
                    self.base, self.timeout
                );
                Reply::status(StatusCode::GATEWAY_TIMEOUT)
            }
        }
    }

    fn request(
        &self,
        who: &Identity,
        parts: &Parts,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri = Uri::builder()
            .scheme(self.base.scheme_str().unwrap_or("http"))
            .authority(self.base.authority().map_or("", |a| a.as_str()))
            .path_and_query(path_and_query)
            .build()?;
        let instance = &who.instance;
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .header("X-Forwarded-For", who.guest_addr.to_string())
            .header("X-Instance-ID", instance.id.as_str())
            .header("X-Tenant-ID", instance.project_id.as_str())
            .header("X-Instance-ID-Signature", self.sign(&instance.id));
        if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE)
            && parts.method != Method::GET
        {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Full::new(body))
    }
}

/// The guest's status for a failed exchange: Nova unreachable (refused,
/// no route, TLS refused) is 503, as neutron's agent answers; a Nova that
/// was reached and then reset, closed early or answered something that is
/// not HTTP is 502.
fn failure_status(err: &(dyn std::error::Error + 'static)) -> StatusCode {
    let unreachable = err
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect);
    if unreachable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// Nova's body, or `None` when it is over [`MAX_UPSTREAM_BODY`]: a broken
/// Nova's endless body must not fill our memory.
async fn bounded(
    body: hyper::body::Incoming,
) -> Result<Option<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    match http_body_util::Limited::new(body, MAX_UPSTREAM_BODY)
        .collect()
        .await
    {
        Ok(body) => Ok(Some(body.to_bytes())),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Nova's answer as the guest gets it: the statuses neutron passes
/// through, with their body and type; 500 for any other; 502 when too big.
fn relay(head: &http::response::Parts, body: Option<Bytes>, uri: &Uri) -> Reply {
    let Some(body) = body else {
        warn!(
            "Nova answered {} for {uri} with a body over {MAX_UPSTREAM_BODY} bytes",
            head.status
        );
        return Reply::status(StatusCode::BAD_GATEWAY);
    };
    if !PASSED_THROUGH.contains(&head.status.as_u16()) {
        warn!("Nova answered {} for {uri}: unexpected", head.status);
        return Reply::status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let content_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("text/plain; charset=UTF-8"));
    Reply {
        status: head.status,
        content_type,
        body,
        headers: http::HeaderMap::new(),
    }
}

/// lowercase hex HMAC-SHA256 of `message` under `key`.
pub fn sign(key: &[u8], message: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// An error and its causes on one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_neutron() {
        // hmac.new(b"secret", b"4f0c6f3e-8d1b-4a39-9a53-0c9f2d7e1b11", hashlib.sha256).hexdigest()
        assert_eq!(
            sign(b"secret", "4f0c6f3e-8d1b-4a39-9a53-0c9f2d7e1b11"),
            "37f2d58cbe77d77f6404042360c5477b4f0c31d8ed752d7bbe39eaf4d92c7c7a"
        );
    }
}
