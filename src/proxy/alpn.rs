//! The TLS-ALPN-01 challenge (RFC 8737), answered by the HTTPS listener.
//!
//! While an order waits, a handshake that offers ALPN `acme-tls/1` and
//! nothing else, and names (SNI) a host with a pending challenge, gets a
//! self-signed certificate for that host carrying the critical
//! acmeIdentifier extension (the SHA-256 of the key authorization). The
//! handshake itself is the answer: no HTTP is served over it. Every other
//! handshake goes through the normal settings, which never offer
//! `acme-tls/1`, so ordinary clients can neither get the challenge
//! certificate nor negotiate the protocol.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, SanType};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tls::provider;

/// The ALPN protocol of ACME validation handshakes.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";

/// The self-signed certificate (and its fresh key) that answers the
/// TLS-ALPN-01 challenge for `host`: one DNS name, `host`, and the critical
/// id-pe-acmeIdentifier extension holding `digest`, the SHA-256 of the key
/// authorization.
pub(crate) fn challenge_certificate(host: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    // rcgen asserts the length; say it instead of panicking.
    if digest.len() != 32 {
        return Err(format!(
            "the key authorization digest is {} bytes, not the 32 of SHA-256",
            digest.len()
        ));
    }
    let name: rcgen::string::Ia5String = host
        .try_into()
        .map_err(|e| format!("{host:?} cannot be a certificate name: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, host);
    params.subject_alt_names = vec![SanType::DnsName(name)];
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the challenge certificate for {host}: {e}"))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("cannot use the challenge key for {host}: {e}"))?;
    // Not `CertifiedKey::from_der`: its check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier it does not know.
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signer,
    ))
}

/// Whether a ClientHello is an ACME validation: ALPN `acme-tls/1` and no
/// other protocol, as RFC 8737 has the CA send it.
pub(crate) fn is_validation(hello: &ClientHello<'_>) -> bool {
    match hello.alpn() {
        Some(mut protocols) => protocols.next() == Some(ACME_TLS_1) && protocols.next().is_none(),
        None => false,
    }
}

/// The rustls settings of one validation handshake: `key` as the
/// certificate, `acme-tls/1` as the only protocol.
pub(crate) fn validation_config(
    key: Arc<CertifiedKey>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Validation(key)));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    Ok(Arc::new(config))
}

/// Serves the challenge certificate, and only to a validation handshake
/// (checked again here, whatever picked these settings).
#[derive(Debug)]
struct Validation(Arc<CertifiedKey>);

impl ResolvesServerCert for Validation {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        is_validation(&hello).then(|| Arc::clone(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    /// id-pe-acmeIdentifier (RFC 8737 section 6.1).
    const ACME_IDENTIFIER: &str = "1.3.6.1.5.5.7.1.31";

    #[test]
    fn the_certificate_names_the_host_and_carries_the_digest_critically() {
        let digest: Vec<u8> = (0..32).collect();
        let key = challenge_certificate("shop.example.com", &digest).unwrap();
        assert_eq!(key.cert.len(), 1, "one self-signed certificate, no chain");
        let (_, cert) = parse_x509_certificate(&key.cert[0]).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            cert.issuer().to_string(),
            "self-signed"
        );

        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            matches!(
                san.value.general_names.as_slice(),
                [GeneralName::DNSName("shop.example.com")]
            ),
            "exactly one dNSName, the host: {:?}",
            san.value.general_names
        );

        let acme: Vec<_> = cert
            .extensions()
            .iter()
            .filter(|e| e.oid.to_id_string() == ACME_IDENTIFIER)
            .collect();
        assert_eq!(acme.len(), 1);
        assert!(acme[0].critical, "the acmeIdentifier must be critical");
        // extnValue: DER OCTET STRING (tag 4, length 32) of the digest.
        let mut expected = vec![0x04, 32];
        expected.extend_from_slice(&digest);
        assert_eq!(acme[0].value, expected.as_slice());
    }

    #[test]
    fn each_certificate_has_a_key_of_its_own() {
        let a = challenge_certificate("a.test", &[1; 32]).unwrap();
        let b = challenge_certificate("a.test", &[1; 32]).unwrap();
        assert_ne!(a.cert[0], b.cert[0]);
    }

    #[test]
    fn bad_digests_and_names_are_errors_not_panics() {
        let err = challenge_certificate("a.test", &[0; 20]).unwrap_err();
        assert!(err.contains("20 bytes"), "{err}");
        let err = challenge_certificate("bücher.test", &[0; 32]).unwrap_err();
        assert!(err.contains("cannot be a certificate name"), "{err}");
    }
}
