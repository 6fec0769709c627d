//! Small pieces every test that runs the `probermesh` binary needs: a bounded poll, a
//! temporary directory, reading one sample (or an agent's liveness) out of a `/metrics`
//! scrape, the fingerprint of a server's generated certificate (which agents pin), a child
//! process that dies with the test, free loopback ports, and a process's peak memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed when dropped (also when the test panics).
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long a graceful stop may take before [`terminate`] kills.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(30);

/// Stops `child` gracefully: SIGTERM, up to `GRACEFUL_STOP` for it to exit, then SIGKILL;
/// reaps it. Never waits unbounded, so a process that ignores SIGTERM fails its test
/// instead of hanging it. Whether it exited by itself.
pub fn terminate(child: &mut Child) -> bool {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + GRACEFUL_STOP;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A TCP port on 127.0.0.1 free a moment ago.
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

/// A UDP port on 127.0.0.1 free a moment ago.
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, the peak resident set; `VmRSS`), in bytes.
#[must_use]
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A fresh directory `<temp>/<name>-<pid>`, emptied first and removed with everything in it
/// when dropped (also when the test fails).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates it.
    ///
    /// # Panics
    /// When the directory cannot be created.
    #[must_use]
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }

    /// Its path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 250 ms until it gives a value; panics naming `what` after `timeout`.
///
/// # Panics
/// When `timeout` passes first.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, check, String::new)
}

/// As [`wait_for`], adding what `explain` says (logs, state) to the panic's message.
///
/// # Panics
/// When `timeout` passes first.
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                explain()
            );
        }
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

/// Whether the scrape `metrics` holds a `prober_agent_is_alive` series of the agent at `ip`
/// with the value `value` (1 alive, 0 not).
#[must_use]
pub fn agent_alive_reads(metrics: &str, ip: &str, value: u8) -> bool {
    let ip_label = format!("ip=\"{ip}\"");
    let ending = format!(" {value}");
    metrics.lines().any(|line| {
        line.starts_with("prober_agent_is_alive{")
            && line.contains(&ip_label)
            && line.ends_with(&ending)
    })
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

/// Raises the calling thread's scheduling priority to nice −10 for a timing comparison; the
/// threads and processes it starts afterwards (origins, runtimes, `curl`) inherit it. A busy
/// machine then delays the measured tools far less: beside two CPU-spinning processes on two
/// cores, a preempted `curl` took 6.7 ms for a 2 ms TLS handshake and our prober 3.3 ms for a
/// 0.1 ms connect. Best effort: without the right to raise it (not root), this says so and
/// the test runs at the normal priority.
pub fn raise_timing_priority() {
    // `/proc/thread-self` links to `<pid>/task/<tid>`; Linux sets the priority per thread.
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| {
            link.file_name()
                .map(|tid| tid.to_string_lossy().into_owned())
        });
    let raised = tid.is_some_and(|tid| {
        std::process::Command::new("renice")
            .args(["-n", "-10", "-p", &tid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if !raised {
        eprintln!(
            "could not raise this test's priority (not root?): its timings share the CPU with any load"
        );
    }
}

/// A plain HTTP/1.1 request to `addr`; (status, body), `None` when it failed.
pub fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Option<(u16, String)> {
    http_with_body(method, addr, path, bearer, "", Duration::from_secs(5))
}

/// [`http`] with a JSON `body`, waiting up to `read_timeout` for the answer (an upgrade's
/// POST answers once the server has downloaded the release).
pub fn http_with_body(
    method: &str,
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    read_timeout: Duration,
) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(read_timeout)).ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content_type}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    // Chunked bodies: good enough to search in (the chunk sizes stay in the text).
    Some((status, body))
}
