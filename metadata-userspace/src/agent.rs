//! Agent mode: the daemon also answers Neutron's haproxies on a unix
//! socket, as neutron-metadata-agent does, identifying the VM by the
//! network (or router) haproxy names and the address it forwarded for.
//!
//! A site can point its existing haproxies here while it moves taps to
//! the eBPF path; the benchmark uses it as the Neutron baseline.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
};

use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use log::{debug, warn};
use tokio::net::UnixListener;

use crate::{
    backends::{Backend, Reply},
    datapath::Identity,
    ports::PortIndex,
};

/// The port records agent mode looks identities up in.
pub type SharedIndex = Arc<RwLock<Arc<PortIndex>>>;

/// Binds the socket (replacing a stale one) and serves it until dropped.
pub fn listen(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
}

pub async fn serve(listener: UnixListener, index: SharedIndex, backend: Arc<Backend>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("agent socket accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (index, backend) = (Arc::clone(&index), Arc::clone(&backend));
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<Incoming>| {
                let (index, backend) = (Arc::clone(&index), Arc::clone(&backend));
                async move {
                    let method = request.method().clone();
                    let reply = handle(request, &index, &backend).await;
                    Ok::<_, std::convert::Infallible>(reply.into_response(&method))
                }
            });
            if let Err(err) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("agent connection: {err}");
            }
        });
    }
}

async fn handle(request: http::Request<Incoming>, index: &SharedIndex, backend: &Backend) -> Reply {
    let identity = {
        let index = index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match identify(request.headers(), &index) {
            Ok(identity) => identity,
            Err(status) => return Reply::status(status),
        }
    };
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Reply::status(StatusCode::BAD_REQUEST),
    };
    backend.handle(&identity, &parts, body).await
}

/// The instance behind a haproxy request, as neutron-metadata-agent finds
/// it: 400 with both X-Neutron-Network-ID and X-Neutron-Router-ID, 404 when
/// no port matches.
pub fn identify(headers: &HeaderMap, index: &PortIndex) -> Result<Identity, StatusCode> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let network = header("X-Neutron-Network-ID");
    let router = header("X-Neutron-Router-ID");
    if network.is_some() && router.is_some() {
        return Err(StatusCode::BAD_REQUEST);
    }
    // haproxy appends the client to X-Forwarded-For: the last one is real.
    let forwarded: IpAddr = header("X-Forwarded-For")
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    let (instance, port) = index
        .by_network_address(network, router, forwarded)
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Identity {
        instance: Arc::clone(instance),
        port,
        device: instance.ports[port].device.0.clone(),
        guest_addr: forwarded,
    })
}
