//! Small pieces every test that runs the `probermesh` binary needs: a bounded poll, reading
//! one sample out of a `/metrics` scrape, and the fingerprint of a server's generated
//! certificate (which agents pin).

use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `check` every 250 ms until it gives a value; panics naming `what` after `timeout`.
///
/// # Panics
/// When `timeout` passes first.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value of the sample `series` (name and labels exactly as the exposition writes them).
#[must_use]
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The SHA-256 fingerprint of the certificate a server generated into `data_dir`.
///
/// # Panics
/// When the certificate is not there.
#[must_use]
pub fn server_fingerprint(data_dir: &Path) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(data_dir.join("server-cert.pem"))
        .expect("the generated certificate");
    probermesh_adapters::link::Sha256Fingerprint::of_der(&der).to_string()
}
