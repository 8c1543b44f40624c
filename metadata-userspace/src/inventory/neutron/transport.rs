//! HTTP(S) to Keystone and Neutron: one pooled client with the
//! `[ports.keystone]` TLS settings, a timeout per exchange and a bound on
//! what an answer may hold.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::NeutronError;
use crate::{
    config::KeystoneConfig,
    tls_client::{self, TlsClientFiles},
};

/// A whole exchange takes at most this long.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a listing of thousands of ports is a few MB).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Http {
    pub fn new(config: &KeystoneConfig) -> Result<Self, NeutronError> {
        let tls = tls_client::client_config(&TlsClientFiles {
            ca_file: config.cafile.as_deref(),
            insecure: config.insecure,
            client_cert: None,
            client_key: None,
        })?;
        let connector = tls_client::https_connector(tls, Duration::from_secs(5));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { client })
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, NeutronError> {
        let target = request.uri().to_string();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| NeutronError::Http(format!("{target}: {e}")))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| NeutronError::Http(format!("{target}: reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| NeutronError::Http(format!("{target}: no answer within {TIMEOUT:?}")))?
    }
}
