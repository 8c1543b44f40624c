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
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use std::os::fd::{AsRawFd as _, RawFd};

use hmac::{Hmac, Mac as _};

/// An instance as Nova knows it.
#[derive(Debug, Clone, Default)]
pub struct NovaInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// How long Nova takes to answer for this instance (a slow Nova).
    pub delay: std::time::Duration,
    /// How a broken Nova answers for this instance.
    pub fault: Fault,
}

impl From<&crate::InstanceSpec> for NovaInstance {
    /// The instance Nova knows for a port record, answering at once.
    fn from(spec: &crate::InstanceSpec) -> Self {
        Self {
            id: spec.id.clone(),
            project_id: spec.project_id.clone(),
            name: spec.name.clone(),
            ..Self::default()
        }
    }
}

/// A broken Nova's answer to a signed, valid request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// Answers as Nova does.
    #[default]
    None,
    /// Closes the connection with a TCP reset instead of answering.
    Reset,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Announces a body and sends half of it, then closes.
    HalfBody,
    /// A well-formed 200 whose body is `OVERSIZED_BODY` bytes.
    Oversized,
}

/// Bytes of a [`Fault::Oversized`] answer: over the daemon's 8 MiB cap.
pub const OVERSIZED_BODY: usize = 9 * 1024 * 1024;

/// What the peer saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Instance id -> last X-Forwarded-For.
    pub forwarded_for: HashMap<String, String>,
    /// Statuses answered, in order.
    pub statuses: Vec<u16>,
    /// Instance id -> requests being answered now, and the most at once.
    pub in_flight: HashMap<String, (usize, usize)>,
    /// Every signed request that reached the rules: (instance id, method,
    /// path).
    pub requests: Vec<(String, String, String)>,
}

impl Seen {
    /// How many signed requests for `path` Nova answered for `instance`.
    pub fn count(&self, instance: &str, method: &str, path: &str) -> usize {
        self.requests
            .iter()
            .filter(|(i, m, p)| i == instance && m == method && p == path)
            .count()
    }
}

/// A running peer; stops (and closes every connection) on drop.
#[derive(Debug)]
pub struct NovaPeer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    /// A clone of each open connection, to close them all on drop.
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
}

/// How the peer serves every request: like nova-api-metadata with a fixed
/// pool of `workers`, each taking `time` per request (a realistic Nova is
/// about 20 ms with 8 workers); the default answers at once, unbounded.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub time: std::time::Duration,
    pub workers: usize,
    /// Keep [`Seen::requests`] and statuses (off for benchmarks: they grow
    /// with every request).
    pub record: bool,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            time: std::time::Duration::ZERO,
            workers: usize::MAX,
            record: true,
        }
    }
}

/// A counting semaphore for [`Service::workers`].
struct Workers {
    busy: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl NovaPeer {
    /// Serves on `listener` (bound by the caller in the right namespace).
    pub fn start(
        listener: TcpListener,
        secret: &str,
        instances: Vec<NovaInstance>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        Self::start_with(listener, secret, instances, tls, Service::default())
    }

    /// A plain-http peer on a free loopback port of `hv`'s network
    /// namespace (where the daemon runs), knowing `instances` as (instance
    /// id, project id) pairs.
    pub fn start_for(
        hv: &crate::Hypervisor,
        secret: &str,
        instances: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let listener = hv.ns().run(|| TcpListener::bind("127.0.0.1:0"))??;
        let instances = instances
            .iter()
            .map(|(id, project)| NovaInstance {
                id: (*id).to_owned(),
                project_id: (*project).to_owned(),
                name: format!("vm-{}", &id[..8.min(id.len())]),
                ..NovaInstance::default()
            })
            .collect();
        Self::start(listener, secret, instances, None)
    }

    /// The daemon's `[backend]` section for this peer.
    pub fn backend_config(&self, secret: &str) -> String {
        format!(
            "\n[backend]\ntype = \"nova\"\nurl = \"http://{}\"\nshared_secret = \"{secret}\"\nconnect_timeout_s = 2\ntimeout_s = 5\n",
            self.addr
        )
    }

    /// [`NovaPeer::start`] with a service time and worker pool.
    pub fn start_with(
        listener: TcpListener,
        secret: &str,
        instances: Vec<NovaInstance>,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: Service,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let rules = Arc::new(Rules {
            secret: secret.as_bytes().to_vec(),
            instances: instances.into_iter().map(|i| (i.id.clone(), i)).collect(),
            passwords: Mutex::default(),
            service,
            workers: Workers {
                busy: Mutex::new(0),
                freed: std::sync::Condvar::new(),
            },
        });
        {
            let (seen, stop, connections) = (
                Arc::clone(&seen),
                Arc::clone(&stop),
                Arc::clone(&connections),
            );
            std::thread::spawn(move || {
                for (id, stream) in (0u64..).zip(listener.incoming()) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // Answers go out in one write; no Nagle wait for an ACK.
                    let _ = stream.set_nodelay(true);
                    if let Ok(clone) = stream.try_clone() {
                        connections.lock().unwrap().insert(id, clone);
                    }
                    let (rules, seen, tls) = (Arc::clone(&rules), Arc::clone(&seen), tls.clone());
                    let connections = Arc::clone(&connections);
                    std::thread::spawn(move || {
                        let fd = stream.as_raw_fd();
                        let _ = match tls {
                            None => serve(stream, fd, &rules, &seen),
                            Some(config) => rustls::ServerConnection::new(config)
                                .map_err(std::io::Error::other)
                                .and_then(|conn| {
                                    serve(rustls::StreamOwned::new(conn, stream), fd, &rules, &seen)
                                }),
                        };
                        // The last handle: closing it ends the connection
                        // (with a reset where a fault set SO_LINGER 0).
                        connections.lock().unwrap().remove(&id);
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
        for (_, stream) in self.connections.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

struct Rules {
    secret: Vec<u8>,
    instances: HashMap<String, NovaInstance>,
    /// Instance id -> the password its guest posted (Nova keeps it).
    passwords: Mutex<HashMap<String, String>>,
    service: Service,
    workers: Workers,
}

impl Rules {
    fn answer(&self, request: &PeerRequest, seen: &Mutex<Seen>) -> Answer {
        let (method, path, headers) = (
            request.method.as_str(),
            request.path(),
            request.headers.as_slice(),
        );
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
            return Answer::plain(400, "missing or repeated identity header");
        };
        if instance_signature(&self.secret, id) != signature {
            return Answer::plain(403, "bad signature");
        }
        let Some(instance) = self.instances.get(id).filter(|i| i.project_id == tenant) else {
            return Answer::plain(404, "instance not found for this tenant");
        };
        if self.service.record {
            let mut seen = seen.lock().unwrap();
            seen.forwarded_for
                .insert(id.to_owned(), forwarded.to_owned());
            seen.requests
                .push((id.to_owned(), method.to_owned(), path.to_owned()));
        }
        self.serve_time();
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
        let (status, body) = self.route(instance, method, path, &request.body);
        Answer {
            status,
            body,
            fault: instance.fault,
        }
    }

    /// Takes a worker for the service time, waiting for one when all are
    /// busy.
    fn serve_time(&self) {
        if self.service.time.is_zero() {
            return;
        }
        let mut busy = self.workers.busy.lock().unwrap();
        while *busy >= self.service.workers {
            busy = self.workers.freed.wait(busy).unwrap();
        }
        *busy += 1;
        drop(busy);
        std::thread::sleep(self.service.time);
        *self.workers.busy.lock().unwrap() -= 1;
        self.workers.freed.notify_one();
    }

    /// Nova's answer for a known, correctly signed instance.
    fn route(
        &self,
        instance: &NovaInstance,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, String) {
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
            ("GET", "/latest/meta-data/") => (200, "hostname\ninstance-id\nlocal-hostname".into()),
            ("GET", "/latest/meta-data/hostname" | "/latest/meta-data/local-hostname") => {
                (200, instance.name.clone())
            }
            // The rest of what cloud-init's OpenStack reader reads.
            ("GET", path) if path.starts_with("/openstack/") && path.ends_with("/user_data") => {
                (200, format!("#cloud-config\nhostname: {}\n", instance.name))
            }
            ("GET", path)
                if path.starts_with("/openstack/")
                    && (path.ends_with("/vendor_data.json")
                        || path.ends_with("/vendor_data2.json")) =>
            {
                (200, "{}".into())
            }
            ("GET", path)
                if path.starts_with("/openstack/") && path.ends_with("/network_data.json") =>
            {
                (
                    200,
                    r#"{"links": [], "networks": [], "services": []}"#.into(),
                )
            }
            ("GET", "/openstack/latest/password") => {
                let passwords = self.passwords.lock().unwrap();
                (
                    200,
                    passwords.get(&instance.id).cloned().unwrap_or_default(),
                )
            }
            ("POST", "/openstack/latest/password") => {
                let mut passwords = self.passwords.lock().unwrap();
                if passwords.contains_key(&instance.id) {
                    return (409, "Conflict".into());
                }
                let password = String::from_utf8_lossy(body).into_owned();
                passwords.insert(instance.id.clone(), password);
                (200, String::new())
            }
            ("GET", _) => (404, "Not Found".into()),
            _ => (405, "Method Not Allowed".into()),
        }
    }
}

/// One request as the peer read it.
struct PeerRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl PeerRequest {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }

    /// The next request on the connection; `None` once it closed.
    fn read(reader: &mut impl BufRead) -> std::io::Result<Option<Self>> {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(None);
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
        Ok(Some(Self {
            method,
            target,
            headers,
            body,
        }))
    }
}

/// The peer's answer to one request.
struct Answer {
    status: u16,
    body: String,
    fault: Fault,
}

impl Answer {
    fn plain(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
            fault: Fault::None,
        }
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes (or a
/// fault closes it).
fn serve<S: Read + Write>(
    stream: S,
    fd: RawFd,
    rules: &Rules,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(request) = PeerRequest::read(&mut reader)? {
        let answer = rules.answer(&request, seen);
        if rules.service.record {
            seen.lock().unwrap().statuses.push(answer.status);
        }
        let content_type = if request.path().ends_with(".json") {
            "application/json; charset=UTF-8"
        } else {
            "text/plain; charset=UTF-8"
        };
        let stream = reader.get_mut();
        let (status, body) = (answer.status, answer.body);
        match answer.fault {
            Fault::None => stream.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )?,
            Fault::Reset => {
                reset(fd);
                return Ok(());
            }
            Fault::Garbage => {
                stream.write_all(b"\x00\xffnot http at all\r\n\r\n")?;
                stream.flush()?;
                return Ok(());
            }
            Fault::HalfBody => {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                    body.len() * 2,
                    body
                )?;
                stream.flush()?;
                return Ok(());
            }
            Fault::Oversized => {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {OVERSIZED_BODY}\r\n\r\n"
                )?;
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..OVERSIZED_BODY / chunk.len() {
                    if stream.write_all(&chunk).is_err() {
                        // The daemon stopped reading at its cap: as it should.
                        return Ok(());
                    }
                }
            }
        }
        stream.flush()?;
    }
    Ok(())
}

/// Closes `fd` with a TCP reset: SO_LINGER with a zero timeout, then the
/// caller drops the stream.
fn reset(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// X-Instance-ID-Signature as Nova checks it: lowercase hex HMAC-SHA256
/// of the instance id under the shared secret.
pub fn instance_signature(secret: &[u8], instance_id: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
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
