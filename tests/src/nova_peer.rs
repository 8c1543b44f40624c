//! A test peer for Nova's metadata API that enforces Nova's rules on the
//! headers neutron-metadata-agent sends (nova/api/metadata/handler.py,
//! `_handle_instance_id_request`):
//!
//! - X-Instance-ID, X-Tenant-ID, X-Forwarded-For, X-Instance-ID-Signature
//!   each exactly once, else 400;
//! - the signature is the lowercase hex HMAC-SHA256 of the instance id
//!   under the shared secret, else 403;
//! - the tenant owns the instance, else 404.
//!
//! It serves `/openstack`, `meta_data.json` and `user_data` for the
//! instances it knows, over HTTP or HTTPS (rustls), keeps connections
//! alive like Nova, and records the X-Forwarded-For it saw per instance.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use hmac::{Hmac, Mac as _};

/// An instance as Nova knows it.
#[derive(Debug, Clone)]
pub struct NovaInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// How long Nova takes to answer for this instance (a slow Nova).
    pub delay: std::time::Duration,
}

/// What the peer saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Instance id -> last X-Forwarded-For.
    pub forwarded_for: HashMap<String, String>,
    /// Statuses answered, in order.
    pub statuses: Vec<u16>,
    /// Instance id -> requests being answered now, and the most at once.
    pub in_flight: HashMap<String, (usize, usize)>,
}

/// A running peer; stops (and closes every connection) on drop.
#[derive(Debug)]
pub struct NovaPeer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl NovaPeer {
    /// Serves on `listener` (bound by the caller in the right namespace).
    pub fn start(
        listener: TcpListener,
        secret: &str,
        instances: Vec<NovaInstance>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let rules = Arc::new(Rules {
            secret: secret.as_bytes().to_vec(),
            instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
        });
        {
            let (seen, stop, connections) = (
                Arc::clone(&seen),
                Arc::clone(&stop),
                Arc::clone(&connections),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(clone) = stream.try_clone() {
                        connections.lock().unwrap().push(clone);
                    }
                    let (rules, seen, tls) = (Arc::clone(&rules), Arc::clone(&seen), tls.clone());
                    std::thread::spawn(move || {
                        let _ = match tls {
                            None => serve(stream, &rules, &seen),
                            Some(config) => rustls::ServerConnection::new(config)
                                .map_err(std::io::Error::other)
                                .and_then(|conn| {
                                    serve(rustls::StreamOwned::new(conn, stream), &rules, &seen)
                                }),
                        };
                    });
                }
            });
        }
        Ok(Self {
            addr,
            seen,
            stop,
            connections,
        })
    }
}

impl Drop for NovaPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept(), then close every connection (pooled ones too).
        let _ = TcpStream::connect(self.addr);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

struct Rules {
    secret: Vec<u8>,
    instances: HashMap<String, NovaInstance>,
}

impl Rules {
    fn answer(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        seen: &Mutex<Seen>,
    ) -> (u16, String) {
        let one = |name: &str| {
            let values: Vec<&str> = headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            match values.as_slice() {
                [value] => Some(*value),
                _ => None,
            }
        };
        let (Some(id), Some(tenant), Some(forwarded), Some(signature)) = (
            one("X-Instance-ID"),
            one("X-Tenant-ID"),
            one("X-Forwarded-For"),
            one("X-Instance-ID-Signature"),
        ) else {
            return (400, "missing or repeated identity header".into());
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("any key");
        mac.update(id.as_bytes());
        if hex::encode(mac.finalize().into_bytes()) != signature {
            return (403, "bad signature".into());
        }
        let Some(instance) = self.instances.get(id).filter(|i| i.project_id == tenant) else {
            return (404, "instance not found for this tenant".into());
        };
        seen.lock()
            .unwrap()
            .forwarded_for
            .insert(id.to_owned(), forwarded.to_owned());
        if !instance.delay.is_zero() {
            let enter = |seen: &mut Seen, by: isize| {
                let entry = seen.in_flight.entry(id.to_owned()).or_default();
                entry.0 = entry.0.saturating_add_signed(by);
                entry.1 = entry.1.max(entry.0);
            };
            enter(&mut seen.lock().unwrap(), 1);
            std::thread::sleep(instance.delay);
            enter(&mut seen.lock().unwrap(), -1);
        }
        match (method, path) {
            ("GET", "/openstack" | "/openstack/") => (200, "2012-08-10\n2018-08-27\nlatest".into()),
            (
                "GET",
                "/openstack/latest/meta_data.json" | "/openstack/2018-08-27/meta_data.json",
            ) => (
                200,
                format!(
                    r#"{{"uuid": "{}", "name": "{}", "hostname": "{}", "project_id": "{}", "served_by": "nova-peer"}}"#,
                    instance.id, instance.name, instance.name, instance.project_id
                ),
            ),
            ("GET", "/latest/meta-data/instance-id") => (200, instance.id.clone()),
            ("GET", _) => (404, "Not Found".into()),
            _ => (405, "Method Not Allowed".into()),
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
fn serve<S: Read + Write>(stream: S, rules: &Rules, seen: &Mutex<Seen>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("/").to_owned(),
        );
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let path = target.split('?').next().unwrap_or("/");
        let (status, body) = rules.answer(&method, path, &headers, seen);
        seen.lock().unwrap().statuses.push(status);
        let stream = reader.get_mut();
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        stream.flush()?;
    }
}

/// A throwaway CA and a server certificate for `ip` signed by it, made
/// with the openssl command line: (ca.pem, cert.pem, key.pem) in `dir`.
pub fn make_test_pki(
    dir: &std::path::Path,
    ip: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("ext.cnf");
    std::fs::write(&ext, format!("subjectAltName=IP:{ip}\n"))?;
    let p = |p: &std::path::PathBuf| p.display().to_string();
    crate::run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
            "-days",
            "1",
            "-subj",
            &format!("/CN=mdr test CA {}", crate::unique_suffix()),
        ],
    )?;
    crate::run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=nova",
        ],
    )?;
    crate::run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&cert),
            "-days",
            "1",
            "-extfile",
            &p(&ext),
        ],
    )?;
    Ok((ca, cert, key))
}

/// A rustls server config from PEM files.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
