//! TLS for HTTP probes: a rustls client configuration per `tls_config:` (roots, client
//! certificate, server name, minimum version, insecure mode), built once and cached, and the
//! facts a probe reports (version, earliest certificate expiry over the peer chain).
//!
//! Only the ring provider is used (no aws-lc-rs), and rustls speaks TLS 1.2 and 1.3 only: a
//! TLS 1.0/1.1-only server fails with `tls handshake`.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use probermesh_core::model::http_module::{FileRef, TlsConfig, TlsMinVersion};
use probermesh_core::model::{HttpFailure, TlsInfo, TlsVersion};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
};

/// Why a TLS configuration could not be built (a file is missing or not PEM).
#[derive(Debug, thiserror::Error)]
#[error("tls_config: {0}")]
pub struct TlsSetupError(String);

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The system's trust roots (the OS store, else the Mozilla list), loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "skipping an unreadable system certificate");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Arc::new(roots)
    }))
}

/// Most client configurations kept: a pool has few distinct `tls_config:` blocks, and a
/// rotated certificate (new contents at a reload) must not keep the old one alive for good.
const MAX_CACHED_CONFIGS: usize = 64;

/// Client configurations, cached by `tls_config:` (the files' contents, shared, included) and
/// whether HTTP/2 is offered.
#[derive(Debug, Default)]
pub(crate) struct TlsConfigs {
    cache: Mutex<HashMap<(TlsConfig, bool), Arc<ClientConfig>>>,
}

impl TlsConfigs {
    /// The configuration for `tls` offering `h2` (and `http/1.1`) by ALPN when `offer_h2`.
    pub(crate) fn get(
        &self,
        tls: &TlsConfig,
        offer_h2: bool,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let key = (tls.clone(), offer_h2);
        if let Some(config) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(build(tls, offer_h2)?);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // Rotated files make new keys: start afresh rather than keep every past one.
        if cache.len() >= MAX_CACHED_CONFIGS {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&config));
        Ok(config)
    }
}

fn build(tls: &TlsConfig, offer_h2: bool) -> Result<ClientConfig, TlsSetupError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        Some(TlsMinVersion::Tls13) => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsSetupError(e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider().signature_verification_algorithms,
            )))
    } else {
        let roots = match &tls.ca_file {
            Some(file) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("ca_file", file)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsSetupError(format!("ca_file {:?}: {e}", file.path())))?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certs("cert_file", cert_file)?;
            let key = PrivateKeyDer::from_pem_slice(contents("key_file", key_file)?)
                .map_err(|e| TlsSetupError(format!("key_file {:?}: {e}", key_file.path())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsSetupError(format!("cert_file {:?}: {e}", cert_file.path())))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if offer_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The bytes the server read for `file` (the agent never opens the path itself).
fn contents<'a>(key: &str, file: &'a FileRef) -> Result<&'a [u8], TlsSetupError> {
    file.contents()
        .map(|contents| contents.expose().as_bytes())
        .ok_or_else(|| {
            TlsSetupError(format!(
                "{key} {:?}: the server did not send its contents, and this agent does not read \
                 files the server names (upgrade the server)",
                file.path()
            ))
        })
}

fn read_certs(key: &str, file: &FileRef) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let path = file.path();
    let certs = CertificateDer::pem_slice_iter(contents(key, file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError(format!("{key} {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "{key} {path:?}: no PEM certificate in it"
        )));
    }
    Ok(certs)
}

/// `insecure_skip_verify: true`: any certificate is accepted, but handshake signatures are
/// still checked (so the connection is at least with the holder of the presented key).
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The version and earliest expiry of an established connection.
pub(crate) fn tls_info(connection: &rustls::ClientConnection) -> TlsInfo {
    let version = match connection.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
        Some(ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
        _ => TlsVersion::Unknown,
    };
    let earliest_expiry_unix_secs = connection
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
        .unwrap_or(0);
    TlsInfo {
        version,
        earliest_expiry_unix_secs,
    }
}

/// Classifies a failed handshake: a certificate problem or anything else.
pub(crate) fn handshake_failure(error: &io::Error) -> HttpFailure {
    let certificate = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if certificate {
        HttpFailure::CertificateInvalid
    } else {
        HttpFailure::TlsHandshake
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probermesh_core::model::http_module::Secret;

    #[test]
    fn a_file_the_server_did_not_send_is_a_setup_error_naming_it_and_is_not_read() {
        // The path exists on this machine: it must still not be read.
        let tls = TlsConfig {
            ca_file: Some(FileRef::named("/etc/hostname")),
            ..TlsConfig::default()
        };
        let error = TlsConfigs::default().get(&tls, true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tls_config: ca_file \"/etc/hostname\": the server did not send its contents, and this agent does \
             not read files the server names (upgrade the server)"
        );
    }

    #[test]
    fn a_ca_file_is_built_from_the_contents_the_server_sent() {
        let pem = rcgen::generate_simple_self_signed(vec!["ca.test".into()])
            .unwrap()
            .cert
            .pem();
        let tls = TlsConfig {
            ca_file: Some(FileRef::with_contents(
                "/not/on/this/agent.pem",
                Secret::new(pem),
            )),
            ..TlsConfig::default()
        };
        assert!(TlsConfigs::default().get(&tls, true).is_ok());
        let garbage = TlsConfig {
            ca_file: Some(FileRef::with_contents(
                "/x.pem",
                Secret::new("not a pem".into()),
            )),
            ..TlsConfig::default()
        };
        let error = TlsConfigs::default().get(&garbage, true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tls_config: ca_file \"/x.pem\": no PEM certificate in it"
        );
    }

    #[test]
    fn configurations_are_cached_per_settings() {
        let configs = TlsConfigs::default();
        let tls = TlsConfig::default();
        let a = configs.get(&tls, true).unwrap();
        let b = configs.get(&tls, true).unwrap();
        let c = configs.get(&tls, false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn tls13_minimum_offers_only_tls13() {
        let tls = TlsConfig {
            min_version: Some(TlsMinVersion::Tls13),
            insecure_skip_verify: true,
            ..TlsConfig::default()
        };
        assert!(TlsConfigs::default().get(&tls, false).is_ok());
    }
}
