//! The daemon's listening sockets and the servers on them.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    sync::Arc,
};

use anyhow::Context as _;
use log::{error, info};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::backlog::ListenBacklog;
use crate::{
    backends::Backend,
    config::Config,
    inventory::Snapshot,
    serve::{
        self, ConnectionCounts, Limits, Server, activation,
        agent::{self, AgentPolicy},
        metrics::{Listener, ServeMetrics},
        proxy::{ProxyPolicy, SharedSlotOwners},
        rate_limit::RateLimiter,
        tokens::Tokens,
    },
};

/// What every server shares.
#[derive(Debug)]
pub struct Servers {
    pub slot_owners: SharedSlotOwners,
    pub inventory: watch::Receiver<Snapshot>,
    pub backend: Arc<Backend>,
    pub limits: Arc<Limits>,
    pub tokens: Arc<Tokens>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub metrics: ServeMetrics,
    /// Turns true when the servers are to drain and stop.
    pub stop: watch::Receiver<bool>,
}

impl Servers {
    /// Starts a proxy server on each listener (activated or bound here)
    /// and, in agent mode, the agent socket's server. Returns their tasks
    /// and the proxy listeners' backlog, for the reconcile loop to size.
    pub async fn start(
        self,
        config: &Config,
    ) -> anyhow::Result<(Vec<JoinHandle<()>>, ListenBacklog)> {
        let mut tasks = Vec::new();
        let proxy = Server {
            policy: Arc::new(ProxyPolicy::new(Arc::clone(&self.slot_owners))),
            backend: Arc::clone(&self.backend),
            limits: Arc::clone(&self.limits),
            tokens: Some(Arc::clone(&self.tokens)),
            rate_limit: self.rate_limit.clone(),
            metrics: self.metrics.clone(),
            listener: Listener::Proxy,
            connections: ConnectionCounts::default(),
        };
        let threads = serving_threads();
        let per_thread = proxy_sockets(config, threads)?;
        let backlog = ListenBacklog::new(
            listening_fds(&per_thread)?,
            config.datapath.connection_burst.get(),
        );
        for (index, sockets) in per_thread.into_iter().enumerate() {
            tasks.push(spawn_serving_thread(
                index,
                sockets,
                proxy.clone(),
                self.stop.clone(),
            )?);
        }
        if let Some(path) = &config.agent.socket {
            let listener = agent::listen(path)
                .with_context(|| format!("listening on the agent socket {}", path.display()))?;
            info!(
                "agent mode: serving Neutron haproxies on {}",
                path.display()
            );
            let agent = Server {
                policy: Arc::new(AgentPolicy::new(self.inventory.clone())),
                backend: Arc::clone(&self.backend),
                limits: Arc::clone(&self.limits),
                tokens: None,
                rate_limit: self.rate_limit.clone(),
                metrics: self.metrics.clone(),
                listener: Listener::Agent,
                connections: ConnectionCounts::default(),
            };
            tasks.push(tokio::spawn(serve::serve(
                listener,
                agent,
                stopped(self.stop.clone()),
            )));
        }
        Ok((tasks, backlog))
    }
}

/// A descriptor of each distinct listening socket (an activated socket is
/// shared by every thread: once).
fn listening_fds(per_thread: &[Vec<std::net::TcpListener>]) -> anyhow::Result<Vec<OwnedFd>> {
    let mut seen = Vec::new();
    let mut fds = Vec::new();
    for listener in per_thread.iter().flatten() {
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .context("reading a listening socket's inode")?;
        if seen.contains(&meta.ino()) {
            continue;
        }
        seen.push(meta.ino());
        fds.push(OwnedFd::from(
            listener
                .try_clone()
                .context("duplicating a listening socket")?,
        ));
    }
    Ok(fds)
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    if stop.wait_for(|stop| *stop).await.is_err() {
        info!("the daemon's stop signal is gone; stopping this server");
    }
}

/// How many threads serve the proxy: one per CPU this process may run on.
fn serving_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Runs the proxy's accept loops for `sockets` on a thread of its own,
/// with a single-threaded runtime: a connection is accepted, served and
/// closed on one thread. With the work-stealing runtime, each spawned
/// connection woke an idle worker (a futex or eventfd write and a
/// cross-CPU wake-up, which is dear in a VM), and new-connection requests
/// cost the daemon more CPU (the figures: tests/bench/RESULTS.md, "Notes
/// kept from earlier runs"). The returned task ends with the thread.
fn spawn_serving_thread(
    index: usize,
    sockets: Vec<std::net::TcpListener>,
    server: Server<ProxyPolicy>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a serving thread's runtime")?;
    let listeners = {
        let _registering = runtime.enter();
        sockets
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<Result<Vec<_>, _>>()
            .context("registering the proxy's sockets")?
    };
    let thread = std::thread::Builder::new()
        .name(format!("mdr-serve-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                let mut loops = tokio::task::JoinSet::new();
                for listener in listeners {
                    loops.spawn(serve::serve(
                        listener,
                        server.clone(),
                        stopped(stop.clone()),
                    ));
                }
                loops.join_all().await;
            });
        })
        .context("starting a serving thread")?;
    Ok(tokio::task::spawn_blocking(move || {
        if thread.join().is_err() {
            error!("serving thread {index} panicked");
        }
    }))
}

/// The proxy's sockets for each of `threads` serving threads. A socket
/// passed by socket activation is shared: every thread accepts from it
/// (it must stay one socket, so that connections queue in it while the
/// daemon restarts). For each wanted address (IPv4 and IPv6) that no
/// activated socket covers, a SO_REUSEPORT group with a socket per thread:
/// the kernel spreads connections over them, and each thread accepts its
/// own. Every socket has TCP_NODELAY, which accepted sockets inherit.
fn proxy_sockets(
    config: &Config,
    threads: usize,
) -> anyhow::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_thread: Vec<Vec<std::net::TcpListener>> =
        std::iter::repeat_with(Vec::new).take(threads).collect();
    let mut covered = Vec::new();
    for listener in activation::activated_listeners().context("taking the activated sockets")? {
        let addr = listener
            .local_addr()
            .context("reading an activated socket's address")?;
        info!("using the listening socket {addr} passed by socket activation");
        with_nodelay(&listener, addr)?;
        for sockets in &mut per_thread {
            sockets.push(
                listener
                    .try_clone()
                    .context("sharing an activated socket")?,
            );
        }
        covered.push(addr);
    }
    let wanted = [
        SocketAddr::from((config.proxy.address, config.proxy.port)),
        SocketAddr::from((config.datapath.nat_v6.proxy(), config.proxy.port)),
    ];
    for addr in wanted.into_iter().filter(|addr| !covered.contains(addr)) {
        ensure_unused(addr)?;
        for sockets in &mut per_thread {
            sockets.push(reuse_port_listener(addr)?);
        }
    }
    Ok(per_thread)
}

/// Fails when another process listens on `addr`. A plain bind (no
/// SO_REUSEPORT, never listening, so no guest connection can land in it)
/// is refused by any listener there, where a SO_REUSEPORT group would
/// silently take another daemon in.
fn ensure_unused(addr: SocketAddr) -> anyhow::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("creating a socket for {addr}"))?;
    probe
        .set_reuse_address(true)
        .with_context(|| format!("SO_REUSEADDR for {addr}"))?;
    probe
        .bind(&addr.into())
        .with_context(|| format!("listening on {addr} (is another daemon using it?)"))
}

/// One listening member of `addr`'s SO_REUSEPORT group.
fn reuse_port_listener(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("creating a socket for {addr}"))?;
    socket
        .set_reuse_address(true)
        .and_then(|()| socket.set_reuse_port(true))
        .with_context(|| format!("SO_REUSEADDR and SO_REUSEPORT for {addr}"))?;
    socket
        .bind(&addr.into())
        .and_then(|()| socket.listen(super::backlog::BASE as i32))
        .with_context(|| format!("listening on {addr}"))?;
    socket
        .set_nonblocking(true)
        .with_context(|| format!("making {addr} non-blocking"))?;
    let listener = std::net::TcpListener::from(socket);
    with_nodelay(&listener, addr)?;
    Ok(listener)
}

/// TCP_NODELAY on a listening socket (small answers go out at once, not
/// after Nagle's wait); accepted sockets inherit it. Activated sockets
/// arrive non-blocking already (`activation`).
fn with_nodelay(listener: &std::net::TcpListener, addr: SocketAddr) -> anyhow::Result<()> {
    SockRef::from(listener)
        .set_tcp_nodelay(true)
        .with_context(|| format!("TCP_NODELAY on {addr}"))
}
