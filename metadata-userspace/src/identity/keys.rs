//! The identity signing keys: PEM files, RSA 2048 bits or more, readable
//! only by the daemon.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::cms::SignerCertificate;

/// The smallest modulus accepted, in bits.
pub const MIN_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: readable by group or others (mode {mode:o}); the signing key must be readable by the \
         daemon only: chmod 600",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{}: no PEM private key in it: {why}", path.display())]
    NotPem { path: PathBuf, why: String },
    #[error("{}: not an RSA private key this build can sign with: {why}", path.display())]
    Rejected { path: PathBuf, why: String },
    #[error("{}: a {bits}-bit RSA key; at least {MIN_BITS} bits are needed", path.display())]
    TooShort { path: PathBuf, bits: usize },
    #[error("{}: no PEM certificate in it: {why}", path.display())]
    NoCertificate { path: PathBuf, why: String },
    #[error(
        "{} does not certify the key in {}: their public keys differ",
        certificate.display(),
        key.display()
    )]
    Mismatch { certificate: PathBuf, key: PathBuf },
    #[error("signing failed")]
    Sign,
}

/// One RSA signing key with its key id.
#[derive(Debug)]
pub struct SigningKey {
    pub id: String,
    pair: RsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// Reads a PEM private key (PKCS#8 or PKCS#1) from `path`.
    pub fn load(path: &Path, id: &str) -> Result<Self, KeyError> {
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.into(),
                mode,
            });
        }
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_pem(&pem, id).map_err(|err| err.at(path))
    }

    /// The key in `pem`; errors name no file yet (see [`KeyError::at`]).
    pub fn from_pem(pem: &[u8], id: &str) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|err| KeyError::NotPem {
            path: PathBuf::new(),
            why: err.to_string(),
        })?;
        let parsed = match &der {
            PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
            _ => {
                return Err(KeyError::Rejected {
                    path: PathBuf::new(),
                    why: "not RSA (an EC key?)".into(),
                });
            }
        };
        let pair = parsed.map_err(|err| KeyError::Rejected {
            path: PathBuf::new(),
            why: err.to_string(),
        })?;
        let bits = pair.public().modulus_len() * 8;
        if bits < MIN_BITS {
            return Err(KeyError::TooShort {
                path: PathBuf::new(),
                bits,
            });
        }
        Ok(Self {
            id: id.to_owned(),
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message` (deterministic: the
    /// same bytes always get the same signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|_| KeyError::Sign)?;
        Ok(signature)
    }

    /// The modulus's size in bits.
    pub fn bits(&self) -> usize {
        self.pair.public().modulus_len() * 8
    }

    /// The DER RSAPublicKey (PKCS#1), as a certificate's key carries it.
    pub fn public_der(&self) -> &[u8] {
        self.pair.public().as_ref()
    }

    /// The public key as a JSON Web Key (RFC 7517), for the JWKS.
    pub fn jwk(&self) -> serde_json::Value {
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(self.pair.public());
        serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.id,
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        })
    }
}

impl KeyError {
    /// The error with the file it came from.
    fn at(self, file: &Path) -> Self {
        let path = file.to_path_buf();
        match self {
            Self::NotPem { why, .. } => Self::NotPem { path, why },
            Self::Rejected { why, .. } => Self::Rejected { path, why },
            Self::TooShort { bits, .. } => Self::TooShort { path, bits },
            other => other,
        }
    }
}

/// Reads the PEM certificate at `path` and checks that it certifies
/// `key` (the same RSA public key).
pub fn load_certificate(
    path: &Path,
    key: &SigningKey,
    key_path: &Path,
) -> Result<SignerCertificate, KeyError> {
    let no_certificate = |why: String| KeyError::NoCertificate {
        path: path.into(),
        why,
    };
    let der = CertificateDer::from_pem_file(path).map_err(|err| no_certificate(err.to_string()))?;
    let certificate =
        SignerCertificate::from_der(&der).map_err(|err| no_certificate(err.to_string()))?;
    if certificate.public_key() != key.public_der() {
        return Err(KeyError::Mismatch {
            certificate: path.into(),
            key: key_path.into(),
        });
    }
    Ok(certificate)
}
