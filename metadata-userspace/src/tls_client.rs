//! TLS client settings for the daemon's HTTPS peers (Nova, Keystone,
//! Neutron): roots from a CA file or the system, an optional client
//! certificate, and `insecure` for test clouds.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// Where a client's TLS material comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsClientFiles<'a> {
    pub ca_file: Option<&'a Path>,
    /// Do not verify the server's certificate.
    pub insecure: bool,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
}

/// TLS material that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("{what} {}: {message}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// An http-or-https connector with `tls`, HTTP/1.1, the given connect
/// timeout, TCP keepalive and no Nagle delay: for every HTTPS peer.
pub fn https_connector(
    tls: rustls::ClientConfig,
    connect_timeout: std::time::Duration,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// A TLS client configuration: the CA file's roots (the system's trust
/// store without one), or no verification with `insecure`, and a client
/// certificate when both its files are given.
pub fn client_config(config: &TlsClientFiles<'_>) -> Result<rustls::ClientConfig, TlsClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = if config.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match config.ca_file {
            Some(path) => {
                for cert in read_certs("the CA file", path)? {
                    roots.add(cert)?;
                }
            }
            None => {
                let native = rustls_native_certs();
                roots.add_parsable_certificates(native);
            }
        }
        builder.with_root_certificates(roots)
    };
    match (config.client_cert, config.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs("the client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsClientError::Pem {
                what: "the client key",
                path: key.to_owned(),
                message: err.to_string(),
            })?;
            Ok(builder.with_client_auth_cert(certs, key)?)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsClientError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|err| TlsClientError::Pem {
            what,
            path: path.to_owned(),
            message: err.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|err| TlsClientError::Pem {
        what,
        path: path.to_owned(),
        message: err.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsClientError::Pem {
            what,
            path: path.to_owned(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// The system's trust store, for https without a CA file.
fn rustls_native_certs() -> Vec<CertificateDer<'static>> {
    let mut certs = Vec::new();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            certs.extend(iter.flatten());
            break;
        }
    }
    certs
}

/// `insecure = true`: accepts any server certificate (signatures on the
/// handshake are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
