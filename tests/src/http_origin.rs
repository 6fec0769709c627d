//! HTTP test origins on 127.0.0.1, for the HTTP prober's tests, the curl comparison and the
//! blackbox_exporter benchmark: plain HTTP/1.1, or HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with a
//! certificate chain from a test CA whose leaf expires at a known instant, optionally
//! requiring a client certificate. Also a minimal HTTP proxy (absolute-form and CONNECT).
//!
//! Routes (query parameters in milliseconds or bytes):
//! - `/delay?headers_ms=A&chunks=N&chunk_ms=B&chunk_bytes=C`: headers after A ms, then N
//!   chunks of C bytes, each B ms after the previous (the first B ms after the headers);
//! - `/timings`: what `/delay` really applied so far (its timers run late on a busy machine),
//!   a line per request: `<headers after, µs> <body span, µs> <arrival, Unix µs> <peer IP>
//!   <client>` (the client is the User-Agent's product name: `curl`, `probermesh`);
//! - `/status/<code>`; `/redirect/<n>` (302 to `/redirect/<n-1>`, `/redirect/0` is 200);
//! - `/gzip`: a gzip-encoded body (`hello gzip`) when the request accepts gzip;
//! - `/echo`: the method, the request headers (`name: value` lines) and the request body;
//! - `/version`: the protocol version the request came with;
//! - `/big?bytes=N`: N bytes of `a`; `/header?x-name=value`: a response header.
//!
//! Each origin runs on its own thread and runtime (its CPU is not the prober's) and stops when
//! dropped.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// When the test origin's leaf certificate expires: 2030-01-02T00:00:00Z.
pub const LEAF_NOT_AFTER_UNIX_SECS: i64 = 1_893_542_400;

/// PEM files of a test PKI, written to a temporary directory.
#[derive(Debug)]
pub struct TestPki {
    /// The directory holding the files (removed on drop).
    pub dir: PathBuf,
    /// The CA certificate (`ca_file`).
    pub ca_pem: PathBuf,
    /// A client certificate signed by the CA (`cert_file`).
    pub client_cert_pem: PathBuf,
    /// Its key (`key_file`).
    pub client_key_pem: PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key_der: Vec<u8>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl TestPki {
    /// A CA (valid to 2040), a server leaf for `localhost` and 127.0.0.1 expiring at
    /// [`LEAF_NOT_AFTER_UNIX_SECS`], and a client certificate.
    ///
    /// # Panics
    /// When key generation or the temporary directory fails (a broken test machine).
    #[must_use]
    pub fn new() -> Self {
        Self::in_dir(std::env::temp_dir().join(format!(
            "pm-pki-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// The same, written into `dir` (removed when the value is dropped).
    ///
    /// # Panics
    /// When key generation or the directory fails (a broken test machine).
    #[must_use]
    pub fn in_dir(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: with equal subject and issuer, OpenSSL (curl) takes a leaf for a
        // self-signed certificate.
        ca_params.distinguished_name = named("ProberMesh Test CA");
        ca_params.not_after = date_time_ymd(2040, 1, 1);
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("a leaf key");
        let mut leaf_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "origin.lab".to_owned(),
        ])
        .expect("leaf params");
        leaf_params.not_after = date_time_ymd(2030, 1, 2);
        leaf_params.distinguished_name = named("localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("the leaf certificate");

        let client_key = KeyPair::generate().expect("a client key");
        let mut client_params =
            CertificateParams::new(vec!["probe-client".to_owned()]).expect("client params");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.distinguished_name = named("probe-client");
        let client = client_params
            .signed_by(&client_key, &issuer)
            .expect("the client certificate");

        // Written whole and renamed, so a reader waiting for a file never sees half of it.
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            let partial = dir.join(format!("{name}.partial"));
            let mut file = std::fs::File::create(&partial).expect("a PEM file");
            file.write_all(text.as_bytes()).expect("writing a PEM file");
            std::fs::rename(&partial, &path).expect("renaming a PEM file");
            path
        };
        Self {
            ca_pem: write("ca.pem", &ca_cert.pem()),
            client_cert_pem: write("client.pem", &client.pem()),
            client_key_pem: write("client-key.pem", &client_key.serialize_pem()),
            server_chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            server_key_der: leaf_key.serialize_der(),
            ca_der: ca_cert.der().clone(),
            dir,
        }
    }
}

fn named(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    name
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// How an origin serves.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Security {
    /// Plain HTTP/1.1.
    #[default]
    Plain,
    /// HTTPS with HTTP/1.1 and HTTP/2.
    Tls,
    /// HTTPS that requires a client certificate from the test CA.
    MutualTls,
}

/// What the origin really did for one `/delay` request: timers run late on a busy machine,
/// so tests compare a prober with these, not with the nominal delays.
#[derive(Clone, Debug, Default)]
pub struct DelayTiming {
    /// From the request's arrival to the headers handed to the connection.
    pub headers_after: Duration,
    /// From then to the last chunk handed over.
    pub body_span: Duration,
    /// When the request arrived (its headers were read), wall clock, Unix microseconds.
    pub arrived_unix_micros: u64,
    /// Who sent it.
    pub peer: Option<std::net::IpAddr>,
    /// The product name of its User-Agent (`curl`, `probermesh`), `-` without one.
    pub client: String,
}

type Timings = Arc<std::sync::Mutex<Vec<DelayTiming>>>;

/// A running origin.
#[derive(Debug)]
pub struct Origin {
    addr: SocketAddr,
    tls: bool,
    timings: Timings,
    connections: Arc<std::sync::atomic::AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl Origin {
    /// Starts an origin; `pki` is needed for the TLS modes.
    ///
    /// # Panics
    /// When it cannot bind or a TLS mode lacks `pki`.
    #[must_use]
    pub fn start(security: Security, pki: Option<&TestPki>) -> Self {
        Self::start_on(security, pki, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts an origin listening on `bind` (the lab binds its namespace's address).
    ///
    /// # Panics
    /// When it cannot bind or a TLS mode lacks `pki`.
    #[must_use]
    pub fn start_on(security: Security, pki: Option<&TestPki>, bind: SocketAddr) -> Self {
        let acceptor = match security {
            Security::Plain => None,
            Security::Tls | Security::MutualTls => {
                let pki = pki.expect("a TLS origin needs a TestPki");
                Some(tls_acceptor(pki, security == Security::MutualTls))
            }
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let timings: Timings = Arc::default();
        let recorder = Arc::clone(&timings);
        let connections: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let accepted = Arc::clone(&connections);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("an origin runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind(bind).await.expect("a port");
                let _ = addr_tx.send(listener.local_addr().expect("an address"));
                let serve = async {
                    loop {
                        let Ok((tcp, peer)) = listener.accept().await else {
                            continue;
                        };
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let peer = peer.ip();
                        let _ = tcp.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        let recorder = Arc::clone(&recorder);
                        tokio::spawn(async move {
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(tls) = acceptor.accept(tcp).await {
                                        serve_connection(TokioIo::new(tls), recorder, peer).await;
                                    }
                                }
                                None => {
                                    serve_connection(TokioIo::new(tcp), recorder, peer).await;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        let addr = addr_rx.recv().expect("the origin's address");
        Self {
            addr,
            tls: security != Security::Plain,
            timings,
            connections,
            _stop: stop,
        }
    }

    /// What the origin really did for each `/delay` request so far, in completion order.
    #[must_use]
    pub fn delay_timings(&self) -> Vec<DelayTiming> {
        self.timings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// TCP connections accepted so far.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL of `path` on this origin (`https://localhost:port` for TLS origins, so the
    /// certificate name matches).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}{path}", self.addr.port())
        }
    }
}

fn tls_acceptor(pki: &TestPki, require_client_cert: bool) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("the CA as a root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("a client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der.clone().into());
    let mut config = builder
        .with_single_cert(pki.server_chain.clone(), key)
        .expect("the server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve_connection<I>(io: TokioIo<I>, timings: Timings, peer: std::net::IpAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request| route(request, Arc::clone(&timings), peer));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn query(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

fn number(request: &Request<Incoming>, name: &str) -> u64 {
    query(request, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn route(
    request: Request<Incoming>,
    timings: Timings,
    peer: std::net::IpAddr,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let mut response = Response::new(full(""));
    if path == "/delay" {
        let headers_ms = number(&request, "headers_ms");
        let chunks = number(&request, "chunks");
        let chunk_ms = number(&request, "chunk_ms");
        let chunk_bytes = usize::try_from(number(&request, "chunk_bytes").max(1)).unwrap_or(1);
        // Deadlines from the request's arrival, so timer rounding does not accumulate.
        let arrived = tokio::time::Instant::now();
        let client = request
            .headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(['/', ' ']).next())
            .filter(|name| !name.is_empty())
            .unwrap_or("-")
            .to_owned();
        let arrived_unix_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let headers_at = arrived + Duration::from_millis(headers_ms);
        tokio::time::sleep_until(headers_at).await;
        let headers_sent = tokio::time::Instant::now();
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            for i in 1..=chunks {
                tokio::time::sleep_until(headers_at + Duration::from_millis(chunk_ms * i)).await;
                if tx.send(Bytes::from(vec![b'x'; chunk_bytes])).await.is_err() {
                    return;
                }
            }
            timings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(DelayTiming {
                    headers_after: headers_sent - arrived,
                    body_span: headers_sent.elapsed(),
                    arrived_unix_micros,
                    peer: Some(peer),
                    client,
                });
        });
        *response.body_mut() = ChannelBody(rx).boxed();
    } else if path == "/timings" {
        // What `/delay` really applied, for a test that runs the origin in another process:
        // one line per request: `<headers_after µs> <body_span µs> <arrival Unix µs> <peer>
        // <client>`.
        let text: String = timings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|t| {
                format!(
                    "{} {} {} {} {}\n",
                    t.headers_after.as_micros(),
                    t.body_span.as_micros(),
                    t.arrived_unix_micros,
                    t.peer.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                    t.client
                )
            })
            .collect();
        *response.body_mut() = full(text);
    } else if let Some(code) = path.strip_prefix("/status/") {
        *response.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        *response.body_mut() = full(format!("status {code}"));
    } else if let Some(n) = path.strip_prefix("/redirect/") {
        let n: u32 = n.parse().unwrap_or(0);
        if n == 0 {
            *response.body_mut() = full("redirects done");
        } else {
            *response.status_mut() = StatusCode::FOUND;
            response.headers_mut().insert(
                hyper::header::LOCATION,
                hyper::header::HeaderValue::from_str(&format!("/redirect/{}", n - 1))
                    .expect("a valid location"),
            );
        }
    } else if path == "/gzip" {
        let accepts = request
            .headers()
            .get(hyper::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
        if accepts {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = encoder.write_all(b"hello gzip");
            let encoded = encoder.finish().unwrap_or_default();
            response.headers_mut().insert(
                hyper::header::CONTENT_ENCODING,
                hyper::header::HeaderValue::from_static("gzip"),
            );
            *response.body_mut() = full(encoded);
        } else {
            *response.body_mut() = full("hello plain");
        }
    } else if path == "/echo" {
        let mut text = format!("method={}\n", request.method());
        for (name, value) in request.headers() {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        text.push('\n');
        let body = request
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        text.push_str(&String::from_utf8_lossy(&body));
        *response.body_mut() = full(text);
    } else if path == "/version" {
        *response.body_mut() = full(format!("{:?}", request.version()));
    } else if path == "/big" {
        let bytes = usize::try_from(number(&request, "bytes")).unwrap_or(0);
        *response.body_mut() = full(vec![b'a'; bytes]);
    } else if path == "/header" {
        for pair in request.uri().query().unwrap_or_default().split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && let (Ok(name), Ok(value)) = (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    hyper::header::HeaderValue::from_str(value),
                )
            {
                response.headers_mut().append(name, value);
            }
        }
        *response.body_mut() = full("headers set");
    } else {
        *response.status_mut() = StatusCode::NOT_FOUND;
        *response.body_mut() = full("not found");
    }
    Ok(response)
}

/// A body fed by a channel: each message is one data frame, sent when it arrives.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// A minimal HTTP proxy on 127.0.0.1: absolute-form requests and CONNECT tunnels, each
/// forwarded byte for byte. Counts the connections it served.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl Proxy {
    /// Starts the proxy.
    ///
    /// # Panics
    /// When it cannot bind.
    #[must_use]
    pub fn start() -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&served);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
                let _ = addr_tx.send(listener.local_addr().expect("an address"));
                let serve = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(proxy_connection(client));
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr: addr_rx.recv().expect("the proxy's address"),
            served,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:port`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections served so far.
    #[must_use]
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

async fn proxy_connection(mut client: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        let rest = target.strip_prefix("http://").unwrap_or(target);
        rest.split('/').next().unwrap_or(rest).to_owned()
    };
    let Ok(mut upstream) = TcpStream::connect(&authority).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if method == "CONNECT" {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else if upstream.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
