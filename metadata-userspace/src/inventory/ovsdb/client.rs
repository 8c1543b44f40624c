//! JSON-RPC over one OVSDB connection: calls matched to their replies by
//! id, the server's `echo` probes answered, and `update`/`update2`/
//! `update3` notifications handed to the caller in order.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use log::debug;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, WriteHalf},
    sync::{mpsc, oneshot},
};

use super::{
    OvsdbError,
    framing::Framer,
    remote::{Remote, Stream, TlsFiles},
};

/// How long a call may wait for its reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A notification from the server: its method and params.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

/// Calls waiting for their reply; `closed` once the connection is gone, so
/// that a call made after that fails at once instead of timing out.
#[derive(Debug, Default)]
struct Waiters {
    closed: bool,
    by_id: HashMap<u64, oneshot::Sender<Result<Value, Value>>>,
}

type Pending = Arc<Mutex<Waiters>>;
type Writer = Arc<tokio::sync::Mutex<WriteHalf<Box<dyn Stream>>>>;

/// One connection. Dropping it closes the connection.
pub struct Client {
    writer: Writer,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `remote`; notifications arrive on the returned channel,
    /// which closes when the connection does.
    pub async fn connect(
        remote: &Remote,
        tls: &TlsFiles,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Notification>), OvsdbError> {
        let stream = remote.connect(tls).await?;
        Ok(Self::over(stream))
    }

    /// A client over an already connected stream.
    pub fn over(stream: Box<dyn Stream>) -> (Self, mpsc::UnboundedReceiver<Notification>) {
        let (read, write) = tokio::io::split(stream);
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(write));
        let pending: Pending = Arc::default();
        let (notify, notifications) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            read,
            Arc::clone(&writer),
            Arc::clone(&pending),
            notify,
        ));
        let client = Self {
            writer,
            pending,
            next_id: AtomicU64::new(1),
            reader,
        };
        (client, notifications)
    }

    /// Calls `method` and waits for its result; an `error` reply is an
    /// [`OvsdbError::Rpc`].
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if waiters.closed {
                return Err(OvsdbError::Closed);
            }
            waiters.by_id.insert(id, tx);
        }
        let request = json!({"method": method, "params": params, "id": id});
        send(&self.writer, &request).await?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Err(_) => Err(OvsdbError::Timeout(method.to_owned())),
            Ok(Err(_)) => Err(OvsdbError::Closed),
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(OvsdbError::Rpc {
                method: method.to_owned(),
                error,
            }),
        }
    }
}

async fn send(writer: &Writer, message: &Value) -> Result<(), OvsdbError> {
    let bytes = serde_json::to_vec(message)?;
    let mut writer = writer.lock().await;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads until the connection ends, dispatching each message.
async fn read_loop(
    mut read: tokio::io::ReadHalf<Box<dyn Stream>>,
    writer: Writer,
    pending: Pending,
    notify: mpsc::UnboundedSender<Notification>,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) => {
                debug!("OVSDB connection: {err}");
                break;
            }
        };
        framer.push(&buf[..n]);
        let messages = match framer.drain() {
            Ok(messages) => messages,
            Err(err) => {
                log::warn!("OVSDB server sent malformed JSON ({err}); dropping the connection");
                break;
            }
        };
        for message in messages {
            if dispatch(message, &writer, &pending, &notify).await.is_err() {
                return;
            }
        }
    }
    // Every caller still waiting learns that the connection is gone.
    let mut waiters = pending.lock().unwrap_or_else(PoisonError::into_inner);
    waiters.closed = true;
    waiters.by_id.clear();
}

/// One message: a reply, an echo request, or a notification.
async fn dispatch(
    message: Value,
    writer: &Writer,
    pending: &Pending,
    notify: &mpsc::UnboundedSender<Notification>,
) -> Result<(), OvsdbError> {
    match message.get("method").and_then(Value::as_str) {
        Some("echo") => {
            let reply = json!({"result": message["params"], "error": null, "id": message["id"]});
            send(writer, &reply).await
        }
        Some(method) => {
            let notification = Notification {
                method: method.to_owned(),
                params: message["params"].clone(),
            };
            notify.send(notification).map_err(|_| OvsdbError::Closed)
        }
        None => {
            let Some(id) = message["id"].as_u64() else {
                return Err(OvsdbError::Unexpected {
                    what: "message",
                    value: message,
                });
            };
            let waiter = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_id
                .remove(&id);
            if let Some(waiter) = waiter {
                let outcome = match &message["error"] {
                    Value::Null => Ok(message["result"].clone()),
                    error => Err(error.clone()),
                };
                // The caller may have timed out and gone: nothing to tell.
                waiter.send(outcome).ok();
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn calls_get_their_replies_echoes_are_answered_and_updates_forwarded() {
        let (ours, mut server) = tokio::io::duplex(4096);
        let (client, mut notifications) = Client::over(Box::new(ours));
        let call = tokio::spawn(async move {
            let result = client.call("list_dbs", json!([])).await;
            (client, result)
        });
        let mut buf = vec![0u8; 4096];
        let n = server.read(&mut buf).await.unwrap();
        let request: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(request["method"], "list_dbs");
        let id = request["id"].clone();
        // An echo, an update split in two writes, then the reply.
        let echo = br#"{"method":"echo","params":[],"id":"echo"}"#;
        server.write_all(echo).await.unwrap();
        let update = br#"{"method":"update3","params":["m","t",{"T":{}}],"id":null}"#;
        server.write_all(&update[..10]).await.unwrap();
        server.write_all(&update[10..]).await.unwrap();
        let reply = json!({"result": ["OVN_Southbound"], "error": null, "id": id});
        server
            .write_all(reply.to_string().as_bytes())
            .await
            .unwrap();
        let n = server.read(&mut buf).await.unwrap();
        let echo_reply: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(
            echo_reply,
            json!({"result": [], "error": null, "id": "echo"})
        );
        let (_client, result) = call.await.unwrap();
        assert_eq!(result.unwrap(), json!(["OVN_Southbound"]));
        let update = notifications.recv().await.unwrap();
        assert_eq!(update.method, "update3");
        assert_eq!(update.params[1], "t");
    }

    #[tokio::test]
    async fn an_error_reply_and_a_closed_connection_are_errors() {
        let (ours, mut server) = tokio::io::duplex(4096);
        let (client, _notifications) = Client::over(Box::new(ours));
        let call = tokio::spawn(async move { client.call("get_schema", json!(["nope"])).await });
        let mut buf = vec![0u8; 4096];
        let n = server.read(&mut buf).await.unwrap();
        let request: Value = serde_json::from_slice(&buf[..n]).unwrap();
        let reply = json!({"result": null, "error": "unknown database", "id": request["id"]});
        server
            .write_all(reply.to_string().as_bytes())
            .await
            .unwrap();
        assert!(matches!(call.await.unwrap(), Err(OvsdbError::Rpc { .. })));

        let (ours, server) = tokio::io::duplex(4096);
        let (client, _notifications) = Client::over(Box::new(ours));
        drop(server);
        assert!(client.call("list_dbs", json!([])).await.is_err());
    }
}
