//! What answers a guest's request once the proxy knows who the guest is.

pub mod cache;
pub mod local;
pub mod metrics;
pub mod nova;
pub mod password;
mod signed;

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header, request::Parts};

use self::metrics::UpstreamMetrics;
use crate::{
    config::BackendConfig,
    identity::{Signer, SigningThread},
    inventory::Identity,
};

/// A complete answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
    /// Further response headers (Allow on a 405, a token's TTL).
    pub headers: http::HeaderMap,
}

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=UTF-8");

impl Reply {
    /// A bare status with its canonical reason as the body.
    pub fn status(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("error");
        Self {
            status,
            content_type: TEXT,
            body: Bytes::from(format!("{} {reason}\n", status.as_u16())),
            headers: http::HeaderMap::new(),
        }
    }

    pub fn text(text: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: TEXT,
            body: Bytes::from(text),
            headers: http::HeaderMap::new(),
        }
    }

    /// Text rendered already.
    pub fn text_bytes(text: Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: TEXT,
            body: text,
            headers: http::HeaderMap::new(),
        }
    }

    pub fn bytes(body: Vec<u8>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: HeaderValue::from_static("application/octet-stream"),
            body: Bytes::from(body),
            headers: http::HeaderMap::new(),
        }
    }

    pub fn json(value: &serde_json::Value) -> Self {
        Self::json_bytes(value.to_string())
    }

    /// A JSON document rendered already.
    pub fn json_bytes(body: impl Into<Bytes>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: HeaderValue::from_static("application/json"),
            body: body.into(),
            headers: http::HeaderMap::new(),
        }
    }

    /// 405, with the methods the resource allows (RFC 9110 requires the
    /// header).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut reply = Self::status(StatusCode::METHOD_NOT_ALLOWED);
        reply
            .headers
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        reply
    }

    /// Adds a header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The HTTP response; HEAD gets the headers of GET and no body.
    pub fn into_response(self, method: &Method) -> http::Response<http_body_util::Full<Bytes>> {
        let len = self.body.len();
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            self.body
        };
        let mut response = http::Response::new(http_body_util::Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.extend(self.headers);
        headers.insert(header::CONTENT_TYPE, self.content_type);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        response
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Nova(#[from] nova::NovaError),
    #[error("starting the identity signing thread: {0}")]
    Thread(std::io::Error),
}

/// The configured backend, with the identity signer on top when
/// `[identity]` has a key.
#[derive(Debug)]
pub struct Backend {
    source: Source,
    identity: Option<(Arc<Signer>, SigningThread)>,
}

/// Where answers come from.
#[derive(Debug)]
enum Source {
    Local(local::LocalBackend),
    // Boxed: the connection pool is large, and there is one backend.
    Nova(Box<nova::NovaBackend>),
}

impl Backend {
    pub fn new(
        config: &BackendConfig,
        state_dir: &Path,
        metrics: UpstreamMetrics,
        identity: Option<Arc<Signer>>,
    ) -> Result<Self, BackendError> {
        let source = match config {
            BackendConfig::Local(local) => {
                Source::Local(local::LocalBackend::new(local, state_dir))
            }
            BackendConfig::Nova(nova) => {
                Source::Nova(Box::new(nova::NovaBackend::new(nova, metrics)?))
            }
        };
        let identity = match identity {
            Some(signer) => Some((
                signer,
                SigningThread::start().map_err(BackendError::Thread)?,
            )),
            None => None,
        };
        Ok(Self { source, identity })
    }

    /// Answers one request from `who`: the identity paths here, the rest
    /// by the source.
    pub async fn handle(&self, who: &Identity, parts: &Parts, body: Bytes) -> Reply {
        if parts.method == Method::GET
            && let Some(route) = crate::identity::Route::of(parts.uri.path(), parts.uri.query())
            && let Some(reply) = self.signed(who, route).await
        {
            return reply;
        }
        self.source.handle(who, parts, body).await
    }
}

impl Source {
    async fn handle(&self, who: &Identity, parts: &Parts, body: Bytes) -> Reply {
        match self {
            Self::Local(local) => local.handle(who, &parts.method, parts.uri.path(), &body),
            Self::Nova(nova) => nova.handle(who, parts, body).await,
        }
    }
}
