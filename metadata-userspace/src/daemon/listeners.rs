//! The daemon's listening sockets and the servers on them.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use log::info;
use socket2::SockRef;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    backends::Backend,
    config::Config,
    inventory::Snapshot,
    metrics::{Listener, Metrics},
    serve::{
        self, ConnectionCounts, Limits, Server, activation,
        agent::{self, AgentPolicy},
        proxy::{ProxyPolicy, SharedRegistry},
        rate_limit::RateLimiter,
        tokens::Tokens,
    },
};

/// What every server shares.
#[derive(Debug)]
pub struct Servers {
    pub registry: SharedRegistry,
    pub inventory: watch::Receiver<Snapshot>,
    pub backend: Arc<Backend>,
    pub limits: Arc<Limits>,
    pub tokens: Arc<Tokens>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the servers are to drain and stop.
    pub stop: watch::Receiver<bool>,
}

impl Servers {
    /// Starts a proxy server on each listener (activated or bound here)
    /// and, in agent mode, the agent socket's server.
    pub async fn start(self, config: &Config) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut tasks = Vec::new();
        let proxy = Server {
            policy: Arc::new(ProxyPolicy::new(Arc::clone(&self.registry))),
            backend: Arc::clone(&self.backend),
            limits: Arc::clone(&self.limits),
            tokens: Some(Arc::clone(&self.tokens)),
            rate_limit: self.rate_limit.clone(),
            metrics: Arc::clone(&self.metrics),
            listener: Listener::Proxy,
            connections: ConnectionCounts::default(),
        };
        for listener in proxy_listeners(config).await? {
            tasks.push(tokio::spawn(serve::serve(
                listener,
                proxy.clone(),
                stopped(self.stop.clone()),
            )));
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
                metrics: Arc::clone(&self.metrics),
                listener: Listener::Agent,
                connections: ConnectionCounts::default(),
            };
            tasks.push(tokio::spawn(serve::serve(
                listener,
                agent,
                stopped(self.stop.clone()),
            )));
        }
        Ok(tasks)
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    if stop.wait_for(|stop| *stop).await.is_err() {
        info!("the daemon's stop signal is gone; stopping this server");
    }
}

/// The proxy's sockets: those passed by socket activation, plus a bound
/// socket for each wanted address (IPv4 and IPv6) they do not cover. Every
/// one has TCP_NODELAY, which accepted sockets inherit.
///
/// One socket per address, accepted from by one task of the work-stealing
/// runtime. A SO_REUSEPORT group with a single-threaded runtime per CPU
/// (nginx's model) was measured and dropped: at 50 VMs, requests/s with a
/// new connection per request fell from 0.93x to 0.81x of the limit path's
/// and the 64 KB keep-alive p99 doubled, as the kernel's hash left one
/// thread busy while the other idled (tests/bench/RESULTS.md).
async fn proxy_listeners(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for listener in activation::activated_listeners().context("taking the activated sockets")? {
        let addr = listener
            .local_addr()
            .context("reading an activated socket's address")?;
        info!("using the listening socket {addr} passed by socket activation");
        let listener =
            TcpListener::from_std(listener).context("registering an activated socket")?;
        listeners.push(with_nodelay(listener, addr)?);
    }
    let wanted = [
        SocketAddr::from((config.proxy.address, config.proxy.port)),
        SocketAddr::from((config.datapath.nat_v6.proxy(), config.proxy.port)),
    ];
    for addr in wanted {
        let covered = listeners
            .iter()
            .any(|l| l.local_addr().is_ok_and(|local| local == addr));
        if !covered {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (is another daemon using it?)"))?;
            listeners.push(with_nodelay(listener, addr)?);
        }
    }
    Ok(listeners)
}

/// TCP_NODELAY on a listening socket (small answers go out at once, not
/// after Nagle's wait): accepted sockets inherit it, which saves a
/// setsockopt per connection.
fn with_nodelay(listener: TcpListener, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .with_context(|| format!("TCP_NODELAY on {addr}"))?;
    Ok(listener)
}
