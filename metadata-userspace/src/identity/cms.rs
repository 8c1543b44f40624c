//! The PKCS#7 form of a signed document, as AWS serves `pkcs7` and
//! `rsa2048`: CMS SignedData (RFC 5652) with the document as its content,
//! SHA-256, one signer named by the certificate's issuer and serial, that
//! certificate included, and the two signed attributes every verifier
//! expects (content type and message digest). The RSA signature comes
//! from [`SigningKey`] (ring); the `cms` crate only encodes.

use cms::{
    cert::{CertificateChoices, IssuerAndSerialNumber},
    content_info::{CmsVersion, ContentInfo},
    signed_data::{
        CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo,
        SignerInfos,
    },
};
use const_oid::{
    ObjectIdentifier,
    db::{
        rfc5911::{ID_CONTENT_TYPE, ID_DATA, ID_MESSAGE_DIGEST, ID_SIGNED_DATA},
        rfc5912::{ID_SHA_256, SHA_256_WITH_RSA_ENCRYPTION},
    },
};
use der::{
    Any, Decode as _, Encode as _, Tag,
    asn1::{OctetString, SetOfVec},
};
use sha2::{Digest as _, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::{Certificate, attr::Attribute};

use super::keys::{KeyError, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum CmsError {
    #[error("encoding the PKCS#7 structure: {0}")]
    Der(#[from] der::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A parsed certificate, ready to name a signer.
#[derive(Debug, Clone)]
pub struct SignerCertificate(Certificate);

impl SignerCertificate {
    pub fn from_der(der: &[u8]) -> Result<Self, der::Error> {
        Certificate::from_der(der).map(Self)
    }

    /// The DER RSAPublicKey the certificate certifies.
    pub fn public_key(&self) -> &[u8] {
        self.0
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
    }
}

/// `content` signed by `key` as DER ContentInfo(SignedData).
pub fn signed_data(
    key: &SigningKey,
    certificate: &SignerCertificate,
    content: &[u8],
) -> Result<Vec<u8>, CmsError> {
    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA_256,
        parameters: None,
    };
    let digest = Sha256::digest(content);
    let attributes = SetOfVec::try_from(vec![
        attribute(ID_CONTENT_TYPE, Any::encode_from(&ID_DATA)?)?,
        attribute(
            ID_MESSAGE_DIGEST,
            Any::new(Tag::OctetString, digest.as_slice())?,
        )?,
    ])?;
    // RFC 5652 section 5.4: the signature covers the attributes' DER with
    // the SET OF tag, not the [0] they are stored under.
    let signature = key.sign(&attributes.to_der()?)?;
    let tbs = &certificate.0.tbs_certificate;
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: Some(attributes),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let certificates = vec![CertificateChoices::Certificate(certificate.0.clone())];
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: Some(Any::new(Tag::OctetString, content)?),
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certificates)?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer])?),
    };
    let info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed)?,
    };
    Ok(info.to_der()?)
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, der::Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}
