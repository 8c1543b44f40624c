//! Connecting to an OVSDB server at a [`Remote`] (`unix:`, `tcp:` or
//! `ssl:`, as the configuration reads them), with TLS for `ssl:`.

use std::{fmt, path::PathBuf, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncRead, AsyncWrite};

use super::OvsdbError;

/// One server address; its syntax is the configuration's.
pub use crate::config::OvsdbRemote as Remote;

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
