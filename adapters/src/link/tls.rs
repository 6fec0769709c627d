//! TLS 1.3 for the link: the server's rustls configuration, and how an agent verifies the
//! server (a CA file, a pinned certificate fingerprint, or, for labs only, not at all).
//!
//! Every configuration is built with the ring provider explicitly
//! (`builder_with_provider`), so a second crypto provider turned on by some later dependency
//! can never make rustls panic at run time, and only TLS 1.3 is offered. Even the pinning and
//! insecure verifiers check the handshake signature with the certificate's key, so a peer that
//! presents a copied certificate without its private key fails.
//!
//! With a CA file, a server certificate that is byte for byte one of the file's certificates is
//! trusted whatever its basic constraints (as strong as a pinned fingerprint), so the
//! self-signed certificate `openssl req -x509` makes (`CA:TRUE`) works as it does with Go's TLS
//! stack; its validity dates and names are still checked. Every other certificate goes through
//! webpki's full chain verification. Every refusal is a [`CertificateRefusal`] that names the
//! certificate, the cause and the fix.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::cert::ServerCertificate;
use super::cert_check::{CertificateFacts, CertificateRefusal, RefusalReason, reason_of};
use super::fingerprint::Sha256Fingerprint;

/// The ALPN protocol of the link; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"probermesh/1";

/// How an agent verifies the server's certificate. There is no default: the operator chooses.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ServerVerification {
    /// Verify the chain against the CA certificates in this PEM file, and the server name.
    /// A server certificate that is itself in the file is trusted whatever its basic
    /// constraints (its dates and names are still checked).
    CaFile(PathBuf),
    /// Accept exactly the leaf certificate with this SHA-256 fingerprint (the server prints it
    /// at start); names and validity dates are not checked.
    PinnedSha256(Sha256Fingerprint),
    /// Accept any certificate. For labs only: the link is encrypted but anyone on the path can
    /// impersonate the server. Logged as a warning at every start.
    Insecure,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, …); the
    /// cause is in the message, not a `source`, so a chain says it once.
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

impl From<rustls::Error> for TlsSetupError {
    fn from(error: rustls::Error) -> Self {
        Self::Rustls(error)
    }
}

/// The ring provider every configuration of the link uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's rustls configuration: TLS 1.3 only, no client certificates (agents prove
/// themselves with the token inside the encrypted connection), ALPN [`ALPN`].
///
/// # Errors
/// [`TlsSetupError::Rustls`] when the key does not fit the certificate.
pub fn server_crypto(cert: &ServerCertificate) -> Result<rustls::ServerConfig, TlsSetupError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// An agent's rustls configuration for `verification`: TLS 1.3 only, ALPN [`ALPN`].
/// [`ServerVerification::Insecure`] logs a warning here, so at every start.
///
/// # Errors
/// [`TlsSetupError::CaFile`] for an unreadable or empty CA file.
pub fn client_crypto(
    verification: &ServerVerification,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match verification {
        ServerVerification::CaFile(path) => {
            let ca_err = |detail: String| TlsSetupError::CaFile {
                path: path.clone(),
                detail,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(ca_err(format!(
                    "no usable CA certificate ({ignored} unparsable)"
                )));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Verifier::new(Policy::CaFile {
                    trusted: certs,
                    webpki,
                }))
                .with_no_client_auth()
        }
        ServerVerification::PinnedSha256(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Verifier::new(Policy::Pinned(*expected)))
            .with_no_client_auth(),
        ServerVerification::Insecure => {
            tracing::warn!(
                "the server's certificate is NOT verified (insecure mode): anyone on the path \
                 can impersonate the server and read the agent token; pin the fingerprint or \
                 give a CA file outside labs"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Verifier::new(Policy::Insecure))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// How the agent's [`Verifier`] decides on the server's certificate.
#[derive(Debug)]
enum Policy {
    /// A CA file: a certificate that is byte for byte one of the file's (`trusted`) is trusted
    /// as a pin is, its dates and names still checked; anything else goes through webpki.
    CaFile {
        trusted: Vec<CertificateDer<'static>>,
        webpki: Arc<WebPkiServerVerifier>,
    },
    /// Exactly the leaf with this fingerprint; names and dates are not checked.
    Pinned(Sha256Fingerprint),
    /// Any certificate (labs only).
    Insecure,
}

/// The agent's verifier of the server's certificate. Whatever the policy, the handshake
/// signature is verified with the certificate's key (ring's algorithms), so a peer that
/// presents a copied certificate without its private key fails. A refusal is a
/// [`CertificateRefusal`]: which certificate, why, and what to do.
#[derive(Debug)]
struct Verifier {
    policy: Policy,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            provider: provider(),
        })
    }

    fn refuse(
        &self,
        end_entity: &CertificateDer<'_>,
        reason: RefusalReason,
        now: UnixTime,
    ) -> rustls::Error {
        let with_ca_file = matches!(self.policy, Policy::CaFile { .. });
        CertificateRefusal::new(end_entity, reason, with_ca_file, now).into_rustls()
    }

    /// The checks left for a certificate trusted because the CA file holds it: its validity
    /// dates and the server name.
    fn check_exact_copy(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(facts) = CertificateFacts::of_der(end_entity) else {
            return Err(self.refuse(
                end_entity,
                RefusalReason::Other("it does not parse as X.509".into()),
                now,
            ));
        };
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now_secs < facts.not_before_unix_secs {
            return Err(self.refuse(end_entity, RefusalReason::NotYetValid, now));
        }
        if now_secs > facts.not_after_unix_secs {
            return Err(self.refuse(end_entity, RefusalReason::Expired, now));
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)
            .map_err(|e| self.refuse(end_entity, reason_of(&e, server_name), now))?;
        rustls::client::verify_server_name(&parsed, server_name)
            .map_err(|e| self.refuse(end_entity, reason_of(&e, server_name), now))?;
        Ok(ServerCertVerified::assertion())
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.policy {
            Policy::CaFile { trusted, .. }
                if trusted
                    .iter()
                    .any(|cert| cert.as_ref() == end_entity.as_ref()) =>
            {
                self.check_exact_copy(end_entity, server_name, now)
            }
            Policy::CaFile { webpki, .. } => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| self.refuse(end_entity, reason_of(&e, server_name), now)),
            Policy::Pinned(expected) if Sha256Fingerprint::of_der(end_entity) == *expected => {
                Ok(ServerCertVerified::assertion())
            }
            Policy::Pinned(expected) => Err(self.refuse(
                end_entity,
                RefusalReason::FingerprintMismatch { pinned: *expected },
                now,
            )),
            Policy::Insecure => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
