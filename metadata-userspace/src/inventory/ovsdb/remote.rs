//! Where an OVSDB server listens, as ovs-vsctl and neutron write it:
//! `unix:PATH`, `tcp:HOST:PORT`, `ssl:HOST:PORT` (IPv6 hosts in brackets),
//! and comma-separated lists of them for a clustered database.

use std::{fmt, path::PathBuf, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncWrite};

use super::OvsdbError;

/// One server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Ssl { host: String, port: u16 },
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { host, port } => write!(f, "tcp:{}:{port}", bracketed(host)),
            Self::Ssl { host, port } => write!(f, "ssl:{}:{port}", bracketed(host)),
        }
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl std::str::FromStr for Remote {
    type Err = OvsdbError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || OvsdbError::BadRemote(text.to_owned());
        let (scheme, rest) = text.trim().split_once(':').ok_or_else(bad)?;
        if scheme == "unix" {
            return if rest.is_empty() {
                Err(bad())
            } else {
                Ok(Self::Unix(PathBuf::from(rest)))
            };
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        match scheme {
            "tcp" => Ok(Self::Tcp { host, port }),
            "ssl" => Ok(Self::Ssl { host, port }),
            _ => Err(bad()),
        }
    }
}

/// A comma-separated list of remotes (a clustered database's members).
pub fn parse_list(text: &str) -> Result<Vec<Remote>, OvsdbError> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// Certificates for `ssl:` remotes, as neutron's `[ovn]` options give them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub private_key: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// A connected byte stream of any transport.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Remote {
    /// Connects (and, for `ssl:`, completes the TLS handshake).
    pub async fn connect(&self, tls: &TlsFiles) -> Result<Box<dyn Stream>, OvsdbError> {
        let connect_err = |source| OvsdbError::Connect {
            remote: self.to_string(),
            source,
        };
        match self {
            Self::Unix(path) => Ok(Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?,
            )),
            Self::Tcp { host, port } => Ok(Box::new(
                tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_err)?,
            )),
            Self::Ssl { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_err)?;
                let config = self.tls_config(tls)?;
                let name = ServerName::try_from(host.clone()).map_err(|err| self.tls_err(err))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(connect_err)?;
                Ok(Box::new(stream))
            }
        }
    }

    fn tls_err(&self, reason: impl fmt::Display) -> OvsdbError {
        OvsdbError::Tls {
            remote: self.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The server is checked against the CA file; the client presents its
    /// certificate when one is given (OVN's SSL remotes require it).
    fn tls_config(&self, tls: &TlsFiles) -> Result<rustls::ClientConfig, OvsdbError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| self.tls_err(err))?;
        let ca = tls
            .ca_cert
            .as_ref()
            .ok_or_else(|| self.tls_err("no CA certificate given"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|err| self.tls_err(err))? {
            roots
                .add(cert.map_err(|err| self.tls_err(err))?)
                .map_err(|err| self.tls_err(err))?;
        }
        let builder = builder.with_root_certificates(roots);
        match (&tls.certificate, &tls.private_key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .map_err(|err| self.tls_err(err))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| self.tls_err(err))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|err| self.tls_err(err))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|err| self.tls_err(err))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(self.tls_err("give both the certificate and the private key, or neither")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_parse_as_neutron_writes_them() {
        let list =
            parse_list("tcp:192.0.2.10:6642, ssl:[2001:db8::1]:6642,unix:/run/ovn/ovnsb_db.sock")
                .unwrap();
        assert_eq!(
            list,
            [
                Remote::Tcp {
                    host: "192.0.2.10".into(),
                    port: 6642
                },
                Remote::Ssl {
                    host: "2001:db8::1".into(),
                    port: 6642
                },
                Remote::Unix("/run/ovn/ovnsb_db.sock".into()),
            ]
        );
        assert_eq!(list[1].to_string(), "ssl:[2001:db8::1]:6642");
        for bad in [
            "tcp:host",
            "udp:1.2.3.4:1",
            "unix:",
            "tcp::6642",
            "tcp:h:99999",
        ] {
            assert!(bad.parse::<Remote>().is_err(), "{bad}");
        }
    }
}
