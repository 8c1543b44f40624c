//! The host-only admin listener (`[metrics] listen`, never the metadata
//! address): `/metrics` (the root registry, which every component
//! registered its own families and collectors in), `/healthz` and
//! `/readyz`, served with the serving core's HTTP limits and drain.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::{encoding::text::encode, registry::Registry};

use crate::serve::{self, Limits};

/// Turns true once the datapath is attached and the listeners accept.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves the admin endpoints on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    limits: Arc<Limits>,
    stop: impl Future<Output = ()>,
) {
    let answer = move |request: Request<Incoming>| {
        let reply = answer(&request, &registry, &readiness);
        async move { reply }
    };
    serve::serve_plain(listener, limits, stop, answer).await;
}

fn answer(
    request: &Request<Incoming>,
    registry: &Registry,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, body) = match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            // Writing into a String cannot fail.
            encode(&mut text, registry).ok();
            (StatusCode::OK, text)
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn the_endpoints_answer_and_the_exposition_is_one_document() {
        let mut registry = Registry::with_prefix("metadata");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things", counter.clone());
        counter.inc();
        let registry = Arc::new(registry);
        let readiness = Readiness::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Arc::new(Limits::new(&crate::config::ProxyConfig::default()));
        let server = tokio::spawn(serve(
            listener,
            registry,
            readiness.clone(),
            limits,
            async move {
                stopped.await.ok();
            },
        ));
        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply)
                .await
                .unwrap();
            reply
        };
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        readiness.set_ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/nothing").await.starts_with("HTTP/1.1 404"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("metadata_things_total 1"), "{metrics}");
        assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
