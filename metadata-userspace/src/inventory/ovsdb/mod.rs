//! A small OVSDB client (RFC 7047 and ovsdb-server(7)'s extensions): just
//! what a port source needs. No maintained Rust crate implements
//! `monitor_cond`/`monitor_cond_since`, so this is written here, in four
//! parts: [`framing`] (a stream of concatenated JSON values), [`remote`]
//! (unix, tcp and ssl remotes), [`client`] (JSON-RPC: calls, echo replies,
//! update notifications) and [`replica`] (tables kept up to date from
//! `update2`/`update3` diffs, typed by the server's schema).

pub mod client;
pub mod framing;
pub mod remote;
pub mod replica;

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("connecting to {remote}: {source}")]
    Connect {
        remote: String,
        source: std::io::Error,
    },
    #[error("TLS setup for {remote}: {reason}")]
    Tls { remote: String, reason: String },
    #[error("the connection is closed")]
    Closed,
    #[error("reading from the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed JSON from the server: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{method} failed: {error}")]
    Rpc {
        method: String,
        error: serde_json::Value,
    },
    #[error("unexpected {what} from the server: {value}")]
    Unexpected {
        what: &'static str,
        value: serde_json::Value,
    },
    #[error("no answer to {0} in time")]
    Timeout(String),
}
