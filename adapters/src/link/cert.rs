//! The server's TLS certificate: loaded from PEM files, or generated on first start and kept
//! in the data directory (private key mode 0600), so agents can pin its fingerprint once. The
//! data directory is checked first (`crate::data_dir`: refused when others could plant a key
//! in it), and a private key readable by other users is warned about.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::fingerprint::Sha256Fingerprint;
use crate::data_dir::{self, DataDirError};

/// File name of the generated certificate inside the data directory.
pub const GENERATED_CERT_FILE: &str = "server-cert.pem";
/// File name of the generated private key inside the data directory.
pub const GENERATED_KEY_FILE: &str = "server-key.pem";

/// Where the server's certificate comes from.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum CertificateSource {
    /// PEM files given by the operator (`-server.tls.cert-file`, `-server.tls.key-file`):
    /// the certificate chain, leaf first, and its private key (PKCS#8, PKCS#1 or SEC1).
    Files {
        /// The certificate chain.
        cert_file: PathBuf,
        /// The private key.
        key_file: PathBuf,
    },
    /// A self-signed certificate generated on first start and reused afterwards, kept in
    /// `data_dir` (`-server.data.dir`) as [`GENERATED_CERT_FILE`] and [`GENERATED_KEY_FILE`].
    Generated {
        /// The directory (created with mode 0700 when missing).
        data_dir: PathBuf,
        /// Subject alternative names of a new certificate (DNS names or IP addresses).
        /// Agents that pin the fingerprint ignore them; agents that verify with a CA file
        /// need the name they connect to among them.
        names: Vec<String>,
    },
}

/// Why the certificate could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read, written or created. (The cause is in the message, not a
    /// `source`, so an error chain says it once.)
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The data directory cannot hold the generated certificate.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A PEM file holds nothing usable.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Only one of the two generated files exists.
    #[error(
        "{present} exists but {missing} does not; remove the first to generate a new certificate, or restore the second"
    )]
    HalfGenerated {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Generating the certificate failed.
    #[error("generating the server certificate failed: {0}")]
    Generate(String),
}

/// The server's certificate chain and private key.
pub struct ServerCertificate {
    /// Leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    fingerprint: Sha256Fingerprint,
    generated_now: bool,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .field("generated_now", &self.generated_now)
            .finish()
    }
}

impl ServerCertificate {
    /// Loads the certificate, generating it first for [`CertificateSource::Generated`] when
    /// the data directory has none.
    ///
    /// # Errors
    /// [`CertError`] naming the file at fault.
    pub fn load(source: &CertificateSource) -> Result<Self, CertError> {
        match source {
            CertificateSource::Files {
                cert_file,
                key_file,
            } => {
                warn_if_key_readable_by_others(key_file);
                Self::from_files(cert_file, key_file, false)
            }
            CertificateSource::Generated { data_dir, names } => {
                data_dir::ensure(data_dir)?;
                let cert_file = data_dir.join(GENERATED_CERT_FILE);
                let key_file = data_dir.join(GENERATED_KEY_FILE);
                match (cert_file.exists(), key_file.exists()) {
                    (true, true) => {
                        warn_if_key_readable_by_others(&key_file);
                        Self::from_files(&cert_file, &key_file, false)
                    }
                    (false, false) => {
                        generate(data_dir, &cert_file, &key_file, names)?;
                        Self::from_files(&cert_file, &key_file, true)
                    }
                    (true, false) => Err(CertError::HalfGenerated {
                        present: cert_file,
                        missing: key_file,
                    }),
                    (false, true) => Err(CertError::HalfGenerated {
                        present: key_file,
                        missing: cert_file,
                    }),
                }
            }
        }
    }

    /// The SHA-256 fingerprint of the leaf certificate, for agents to pin.
    #[must_use]
    pub fn fingerprint(&self) -> Sha256Fingerprint {
        self.fingerprint
    }

    /// Whether this start generated the certificate.
    #[must_use]
    pub fn generated_now(&self) -> bool {
        self.generated_now
    }

    /// The leaf certificate, DER.
    #[must_use]
    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    fn from_files(
        cert_file: &Path,
        key_file: &Path,
        generated_now: bool,
    ) -> Result<Self, CertError> {
        let pem_err = |path: &Path, detail: String| CertError::Pem {
            path: path.to_owned(),
            detail,
        };
        let chain = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| pem_err(cert_file, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert_file, e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(pem_err(cert_file, "no CERTIFICATE block found".into()));
        };
        let fingerprint = Sha256Fingerprint::of_der(leaf);
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| pem_err(key_file, format!("no usable private key: {e}")))?;
        Ok(Self {
            chain,
            key,
            fingerprint,
            generated_now,
        })
    }
}

/// Generates a self-signed certificate into `data_dir`: the key first, written to a
/// temporary file created with mode 0600 and renamed, then the certificate.
fn generate(
    data_dir: &Path,
    cert_file: &Path,
    key_file: &Path,
    names: &[String],
) -> Result<(), CertError> {
    fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertError {
        let path = path.to_owned();
        move |cause| CertError::Io {
            action,
            path,
            cause,
        }
    }
    let names = if names.is_empty() {
        vec!["probermesh-server".to_owned()]
    } else {
        names.to_vec()
    };
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let key_tmp = data_dir.join(format!("{GENERATED_KEY_FILE}.tmp"));
    let _ = fs::remove_file(&key_tmp);
    write_new(
        &key_tmp,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )
    .map_err(io_err("cannot write", &key_tmp))?;
    fs::rename(&key_tmp, key_file).map_err(io_err("cannot rename into", key_file))?;
    let cert_tmp = data_dir.join(format!("{GENERATED_CERT_FILE}.tmp"));
    let _ = fs::remove_file(&cert_tmp);
    write_new(&cert_tmp, certified.cert.pem().as_bytes(), 0o644)
        .map_err(io_err("cannot write", &cert_tmp))?;
    fs::rename(&cert_tmp, cert_file).map_err(io_err("cannot rename into", cert_file))?;
    tracing::info!(
        cert_file = %cert_file.display(),
        key_file = %key_file.display(),
        "generated a self-signed server certificate"
    );
    Ok(())
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`, synced to disk.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn warn_if_key_readable_by_others(key_file: &Path) {
    if let Ok(meta) = fs::metadata(key_file)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            key_file = %key_file.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the server's private key is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("probermesh-cert-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_generated_certificate_is_kept_with_a_private_key_and_reused() {
        let dir = temp_dir("generated");
        let source = CertificateSource::Generated {
            data_dir: dir.join("data"),
            names: vec!["localhost".into()],
        };
        let first = ServerCertificate::load(&source).unwrap();
        assert!(first.generated_now());
        let key_mode = fs::metadata(dir.join("data").join(GENERATED_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.join("data")).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let second = ServerCertificate::load(&source).unwrap();
        assert!(!second.generated_now());
        assert_eq!(second.fingerprint(), first.fingerprint());
        assert_eq!(
            second.fingerprint(),
            Sha256Fingerprint::of_der(second.leaf_der())
        );
        let debug = format!("{second:?}");
        assert!(debug.contains("<redacted>"), "{debug}");

        // The same files, given explicitly.
        let files = CertificateSource::Files {
            cert_file: dir.join("data").join(GENERATED_CERT_FILE),
            key_file: dir.join("data").join(GENERATED_KEY_FILE),
        };
        assert_eq!(
            ServerCertificate::load(&files).unwrap().fingerprint(),
            first.fingerprint()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_key_is_generated_into_a_directory_every_user_may_write() {
        let dir = temp_dir("world-writable");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = ServerCertificate::load(&CertificateSource::Generated {
            data_dir: dir.clone(),
            names: vec![],
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&dir.display().to_string())
                && text.contains("every user may write it (mode 1777)"),
            "{text}"
        );
        assert!(!dir.join(GENERATED_KEY_FILE).exists(), "no key written");

        // A file in the directory's place is named as what it is.
        fs::remove_dir_all(&dir).unwrap();
        fs::write(&dir, "x").unwrap();
        let text = ServerCertificate::load(&CertificateSource::Generated {
            data_dir: dir.clone(),
            names: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("it is a regular file, not a directory"),
            "{text}"
        );
        fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn missing_or_broken_files_are_named_in_the_error() {
        let dir = temp_dir("broken");
        fs::create_dir_all(&dir).unwrap();
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        fs::write(&cert_file, "not pem").unwrap();
        let err = ServerCertificate::load(&CertificateSource::Files {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("cert.pem"), "{err}");

        let data_dir = dir.join("half");
        fs::create_dir_all(&data_dir).unwrap();
        fs::write(data_dir.join(GENERATED_CERT_FILE), "x").unwrap();
        let err = ServerCertificate::load(&CertificateSource::Generated {
            data_dir,
            names: vec![],
        })
        .unwrap_err();
        assert!(matches!(err, CertError::HalfGenerated { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
