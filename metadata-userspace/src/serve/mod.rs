//! The serving core shared by the proxy (TCP, guests identified by their
//! slot address) and the agent socket (unix, guests identified by the
//! headers Neutron's haproxies add): the accept loop, the per-instance
//! connection cap, the HTTP limits, request bodies, the backend call and the
//! graceful drain on shutdown. The two differ only in their [`Policy`].

pub mod activation;
pub mod agent;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod request_rules;
pub mod tokens;

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt, io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::throttled_log::ThrottledLog;

use self::{
    metrics::{Listener, PathClass, Rejection, ServeMetrics},
    rate_limit::RateLimiter,
    tokens::{Decision, Tokens},
};
use crate::{
    backends::{Backend, Reply},
    config::ProxyConfig,
    inventory::Identity,
};

/// Every limit of the serving core, defined once for both listeners.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client gets to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request body (the password POST needs about 1 KB).
    pub max_body: usize,
    /// On shutdown, time a just-accepted connection gets to send its
    /// request before the drain closes idle connections.
    pub first_request_grace: Duration,
    /// On shutdown, time requests in flight get to finish.
    pub drain: Duration,
    /// Concurrent connections one instance may hold; the excess is closed
    /// at once, for that instance only.
    pub max_connections_per_instance: usize,
    /// Request headers at most (more: 431).
    pub max_headers: usize,
    /// Bytes of request line and headers at most (more: 431).
    pub max_header_bytes: usize,
}

impl Limits {
    pub fn new(proxy: &ProxyConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(proxy.header_read_timeout_s),
            max_body: 64 * 1024,
            first_request_grace: Duration::from_millis(200),
            drain: Duration::from_secs(10),
            max_connections_per_instance: proxy.max_connections_per_instance,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// How a listener tells guests apart.
pub trait Policy: Send + Sync + 'static {
    type Peer: fmt::Debug + Send + Sync + 'static;

    /// The instance all of a new connection's requests come from, when the
    /// connection alone says so (the proxy: the slot it came from); `None`
    /// when each request says for itself (the agent).
    fn connection_owner(&self, peer: &Self::Peer) -> Option<Arc<str>>;

    /// The identity behind one request, or the status to refuse it with.
    fn identify(&self, peer: &Self::Peer, headers: &HeaderMap) -> Result<Identity, StatusCode>;
}

/// A listening socket of either kind.
pub trait Acceptor: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Peer: fmt::Debug;

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;

    /// The socket under a stream, where an IP hop limit applies.
    fn ip_socket(_stream: &Self::Stream) -> Option<std::os::fd::RawFd> {
        None
    }
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;

    /// TCP_NODELAY comes from the listening socket: accepted sockets
    /// inherit it, which saves a syscall per connection.
    async fn accept(&self) -> io::Result<(Self::Stream, Self::Peer)> {
        tokio::net::TcpListener::accept(self).await
    }

    fn ip_socket(stream: &Self::Stream) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(stream))
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;

    async fn accept(&self) -> io::Result<(Self::Stream, Self::Peer)> {
        tokio::net::UnixListener::accept(self).await
    }
}

/// What every connection of one server shares.
#[derive(Debug)]
pub struct Server<P> {
    pub policy: Arc<P>,
    pub backend: Arc<Backend>,
    pub limits: Arc<Limits>,
    /// Session tokens, on the datapath's proxy (not on the agent socket,
    /// whose haproxy adds X-Forwarded-For to every request).
    pub tokens: Option<Arc<Tokens>>,
    /// Per-instance rate limits, shared by every listener.
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub metrics: ServeMetrics,
    /// This listener's label in the metrics.
    pub listener: Listener,
    /// Shared by its clones, so that the cap holds across all of them.
    pub connections: ConnectionCounts,
}

impl<P> Clone for Server<P> {
    fn clone(&self) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
            backend: Arc::clone(&self.backend),
            limits: Arc::clone(&self.limits),
            tokens: self.tokens.clone(),
            rate_limit: self.rate_limit.clone(),
            metrics: self.metrics.clone(),
            listener: self.listener,
            connections: self.connections.clone(),
        }
    }
}

/// Serves `acceptor` until `stop` resolves, then lets the requests in
/// flight finish (up to `limits.drain`) and returns.
///
/// The listener is dropped as soon as `stop` resolves. With socket
/// activation another holder (systemd) keeps the socket open, so new
/// connections wait in its backlog for the next daemon instead of failing.
pub async fn serve<A, P>(acceptor: A, server: Server<P>, stop: impl Future<Output = ()>)
where
    A: Acceptor,
    P: Policy<Peer = A::Peer>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut admission = Admission::new(&server);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = acceptor.accept() => accepted,
        };
        let Some((stream, peer)) = admission.accepted(accepted).await else {
            continue;
        };
        let Some(guard) = admission.admit(&*server.policy, &peer) else {
            continue;
        };
        let connection = Connection {
            server: server.clone(),
            ip_socket: A::ip_socket(&stream),
            peer: Arc::new(peer),
        };
        let watched = graceful.watch(connection.serve(stream));
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(err) = watched.await {
                debug!("connection: {err}");
            }
        });
    }
    drop(acceptor);
    drain(graceful, &server.limits).await;
}

/// HTTP/1.1 with the core's limits, for every listener of the daemon.
fn http1(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Also how long an idle keep-alive connection may wait for its
        // next request: the timer runs while a request head is awaited.
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
}

/// Serves `answer` on every connection `acceptor` accepts, with the core's
/// HTTP limits and drain, until `stop` resolves: for listeners without
/// guests (the admin endpoints), which need no policy, cap or backend.
pub async fn serve_plain<A, F, R>(
    acceptor: A,
    limits: Arc<Limits>,
    stop: impl Future<Output = ()>,
    answer: F,
) where
    A: Acceptor,
    F: Fn(Request<Incoming>) -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut accept_errors = ThrottledLog::new("accept failed");
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = acceptor.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                accept_errors.report(&err);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let answer = answer.clone();
        let service = service_fn(move |request| {
            let reply = answer(request);
            async move { Ok::<_, Infallible>(reply.await) }
        });
        let watched =
            graceful.watch(http1(&limits).serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = watched.await {
                debug!("connection: {err}");
            }
        });
    }
    drop(acceptor);
    drain(graceful, &limits).await;
}

/// A connection accepted just before the stop may not have sent its
/// request yet, and a graceful shutdown closes connections that have no
/// request in progress: give such clients a moment, then let the requests
/// in flight finish.
async fn drain(graceful: hyper_util::server::graceful::GracefulShutdown, limits: &Limits) {
    tokio::time::sleep(limits.first_request_grace).await;
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            "requests still in flight after {:?}; closing them",
            limits.drain
        );
    }
}

/// What the accept loop lets through: accept errors reported (throttled)
/// and the per-instance connection cap.
#[derive(Debug)]
struct Admission {
    limits: Arc<Limits>,
    metrics: ServeMetrics,
    connections: ConnectionCounts,
    accept_errors: ThrottledLog,
    over_cap: ThrottledLog,
}

impl Admission {
    fn new<P>(server: &Server<P>) -> Self {
        Self {
            limits: Arc::clone(&server.limits),
            metrics: server.metrics.clone(),
            connections: server.connections.clone(),
            accept_errors: ThrottledLog::new("accept failed"),
            over_cap: ThrottledLog::new("closed a connection over its instance's cap"),
        }
    }

    /// The accepted connection, or `None` after reporting an error.
    async fn accepted<S, P>(&mut self, accepted: io::Result<(S, P)>) -> Option<(S, P)> {
        match accepted {
            Ok(accepted) => Some(accepted),
            Err(err) => {
                self.accept_errors.report(&err);
                if is_resource_exhaustion(&err) {
                    // The pending connection stays queued; retrying at once
                    // would spin. A short pause, not a stall for others.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            }
        }
    }

    /// Counts the connection against its instance's cap: `Some` to serve
    /// it (with the guard that uncounts it), `None` to close it now.
    fn admit<P: Policy>(&mut self, policy: &P, peer: &P::Peer) -> Option<Option<ConnectionGuard>> {
        let Some(owner) = policy.connection_owner(peer) else {
            return Some(None);
        };
        let cap = self.limits.max_connections_per_instance;
        match self.connections.acquire(owner, cap) {
            Some(guard) => Some(Some(guard)),
            None => {
                self.metrics.rejected(Rejection::ConnectionCap);
                self.over_cap
                    .report(&format_args!("{peer:?} holds {cap} connections already"));
                None
            }
        }
    }
}

/// One accepted connection.
struct Connection<P: Policy> {
    server: Server<P>,
    /// For the hop limit of token responses.
    ip_socket: Option<std::os::fd::RawFd>,
    peer: Arc<P::Peer>,
}

impl<P: Policy> Clone for Connection<P> {
    fn clone(&self) -> Self {
        Self {
            server: self.server.clone(),
            ip_socket: self.ip_socket,
            peer: Arc::clone(&self.peer),
        }
    }
}

impl<P: Policy> Connection<P> {
    /// HTTP/1.1 with the core's limits.
    fn serve<S>(
        self,
        stream: S,
    ) -> impl hyper_util::server::graceful::GracefulConnection<Error = hyper::Error> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = Arc::clone(&self.server.limits);
        let service = service_fn(move |request| {
            let connection = self.clone();
            async move { Ok::<_, Infallible>(connection.handle(request).await) }
        });
        http1(&limits).serve_connection(TokioIo::new(stream), service)
    }

    /// One request, counted and timed.
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let path = PathClass::of(request.uri().path());
        let response = self.answer(request).await;
        let status = response.status();
        let metrics = &self.server.metrics;
        metrics.request(self.server.listener, status, path, started.elapsed());
        match status {
            StatusCode::TOO_MANY_REQUESTS => metrics.rejected(Rejection::RateLimit),
            StatusCode::UNAUTHORIZED => metrics.rejected(Rejection::Token),
            _ => {}
        }
        response
    }

    /// Identify, apply the request rules, rate limit and token rules, read
    /// the body within its limit, ask the backend.
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().clone();
        let (parts, body) = request.into_parts();
        if let Some(reply) = request_rules::refusal(&parts) {
            self.server.metrics.rejected(Rejection::BadRequest);
            return reply.into_response(&method);
        }
        let identity = match self.server.policy.identify(&self.peer, &parts.headers) {
            Ok(identity) => identity,
            Err(status) => return Reply::status(status).into_response(&method),
        };
        if let Some(limiter) = &self.server.rate_limit
            && let Err(retry_after) = limiter.check(&identity.instance.id, Instant::now())
        {
            return too_many(retry_after).into_response(&method);
        }
        if let Some(tokens) = &self.server.tokens {
            match tokens.decide(&identity, &parts) {
                Decision::Serve => {}
                Decision::Reply(reply) => return reply.into_response(&method),
                Decision::Token(reply, hops) => {
                    if let Some(fd) = self.ip_socket {
                        tokens::set_hop_limit(fd, hops);
                    }
                    return reply.into_response(&method);
                }
            }
        }
        let body = match Limited::new(body, self.server.limits.max_body)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(err) => return body_error(&*err).into_response(&method),
        };
        let reply = self.server.backend.handle(&identity, &parts, body).await;
        // One structured line per request at debug: who (instance, tap,
        // guest address) and what; never bodies, user data or secrets.
        tracing::debug!(
            instance = %identity.instance.id,
            tap = %identity.device,
            guest = %identity.guest_addr,
            method = %method,
            path = parts.uri.path(),
            status = reply.status.as_u16(),
            "request"
        );
        reply.into_response(&method)
    }
}

/// 429 with the seconds until the instance may ask again.
fn too_many(retry_after: Duration) -> Reply {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    Reply::status(StatusCode::TOO_MANY_REQUESTS).with_header(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(seconds.max(1)),
    )
}

/// 413 for a body over the limit, 400 for one that could not be read.
fn body_error(err: &(dyn std::error::Error + 'static)) -> Reply {
    if err
        .downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        Reply::status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        Reply::status(StatusCode::BAD_REQUEST)
    }
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Open connections per instance, for the per-instance cap: one count for
/// every listener and serving thread of a server.
#[derive(Debug, Default, Clone)]
pub struct ConnectionCounts(Arc<Mutex<HashMap<Arc<str>, usize>>>);

impl ConnectionCounts {
    /// Counts a new connection of `owner`, or `None` when it already holds
    /// `cap` connections.
    fn acquire(&self, owner: Arc<str>, cap: usize) -> Option<ConnectionGuard> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(Arc::clone(&owner)).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ConnectionGuard {
            counts: self.clone(),
            owner,
        })
    }
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
struct ConnectionGuard {
    counts: ConnectionCounts,
    owner: Arc<str>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_per_instance_and_released_on_drop() {
        let counts = ConnectionCounts::default();
        let a: Arc<str> = Arc::from("a");
        let held: Vec<_> = (0..3)
            .map(|_| counts.acquire(Arc::clone(&a), 3).expect("under the cap"))
            .collect();
        assert!(
            counts.acquire(Arc::clone(&a), 3).is_none(),
            "a is at its cap"
        );
        assert!(counts.acquire(Arc::from("b"), 3).is_some(), "b is not");
        drop(held);
        assert!(counts.acquire(a, 3).is_some(), "released");
        assert!(
            counts.0.lock().unwrap().len() <= 1,
            "no entries left behind"
        );
    }
}
