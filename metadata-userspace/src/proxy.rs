//! The HTTP side: accepts the connections the datapath steers to the host
//! device, tells guests apart by their slot address, and hands each
//! request to the backend.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use tokio::net::TcpListener;

use crate::{
    backends::{Backend, Reply},
    datapath::Registry,
};

/// Largest request body accepted (the password POST needs about 1 KB).
const MAX_BODY: usize = 64 * 1024;
/// On shutdown, time a just-accepted connection gets to send its request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(200);
/// Time a client gets to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry shared between the datapath owner and the proxy.
pub type SharedRegistry = Arc<RwLock<Arc<Registry>>>;

/// Serves connections from `listener` until `stop` resolves, then lets
/// the requests in flight finish (up to `drain`) and returns.
///
/// The listener is dropped as soon as `stop` resolves. With socket
/// activation another holder (systemd) keeps the socket open, so new
/// connections wait in its backlog for the next daemon instead of failing.
pub async fn serve(
    listener: TcpListener,
    registry: SharedRegistry,
    backend: Arc<Backend>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let registry = Arc::clone(&registry);
        let backend = Arc::clone(&backend);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = Arc::clone(&registry);
                let backend = Arc::clone(&backend);
                async move { Ok::<_, Infallible>(handle(request, peer, &registry, &backend).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection).await {
                debug!("connection from {peer}: {err}");
            }
        });
    }
    drop(listener);
    // A connection accepted just before the stop may not have sent its
    // request yet, and a graceful shutdown closes connections that have no
    // request in progress: give such clients a moment first.
    tokio::time::sleep(FIRST_REQUEST_GRACE).await;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still in flight after {drain:?}; closing them");
    }
}

/// The listening sockets passed by systemd socket activation (LISTEN_FDS),
/// if this process was given any.
pub fn activated_listeners() -> std::io::Result<Vec<std::net::TcpListener>> {
    use std::os::fd::FromRawFd as _;
    const SD_LISTEN_FDS_START: i32 = 3;
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !for_us {
        return Ok(Vec::new());
    }
    let mut listeners = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count.clamp(0, 16) {
        // Not inherited by anything we start (ip, ...).
        // SAFETY: fcntl on a descriptor systemd's protocol hands to us.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: we take ownership of each passed descriptor exactly once.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    registry: &SharedRegistry,
    backend: &Backend,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let identity = {
        let registry = registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registry.get(&canonical(peer.ip())).cloned()
    };
    let Some(identity) = identity else {
        // Not a slot address: not a guest the datapath steered here.
        warn!(
            "refused {method} {} from {peer}: not a known guest",
            request.uri().path()
        );
        return Reply::status(StatusCode::FORBIDDEN).into_response(&method);
    };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            let status = if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return Reply::status(status).into_response(&method);
        }
    };
    let reply = backend.handle(&identity, &parts, body).await;
    debug!(
        "{} {method} {path} -> {} ({} {})",
        identity.guest_addr,
        reply.status.as_u16(),
        identity.instance.id,
        identity.device
    );
    reply.into_response(&method)
}

/// IPv4 peers of a dual-stack socket arrive as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}
