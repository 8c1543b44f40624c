//! The daemon's listening sockets and the servers on them.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use log::info;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    backends::Backend,
    config::Config,
    inventory::Snapshot,
    metrics::{Listener, Metrics},
    serve::{
        self, Limits, Server, activation,
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
        };
        for listener in proxy_listeners(config).await? {
            let server = proxy.clone();
            tasks.push(tokio::spawn(serve::serve(
                listener,
                server,
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
/// socket for each wanted address (IPv4 and IPv6) they do not cover.
async fn proxy_listeners(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for listener in activation::activated_listeners().context("taking the activated sockets")? {
        let addr = listener
            .local_addr()
            .context("reading an activated socket's address")?;
        info!("using the listening socket {addr} passed by socket activation");
        listeners.push(TcpListener::from_std(listener).context("registering an activated socket")?);
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
            listeners.push(listener);
        }
    }
    Ok(listeners)
}
