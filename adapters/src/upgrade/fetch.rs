//! The server's download of a release (issue 15's intake): once per rollout, from the URL an
//! operator posted, bounded in every way a stranger's server could abuse (size, checked from
//! `Content-Length` before reading and again while streaming; total time; redirects, each hop's
//! scheme checked and `https` never downgraded), hashed while it streams (SHA-256 for the
//! rollout, md5 for the Go request's `md5Check`) into a temporary file, then named by its
//! SHA-256. The agents never see the URL: the server sends the file over the link in chunks
//! ([`read_chunk`]).
//!
//! Plain HTTP/1.1 over hyper, TLS by rustls with ring (the tree has no aws-lc) and the
//! system's roots (the Mozilla list when it has none). Errors name the URL without its
//! user-info and query, which may hold credentials.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use md5::Md5;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::hex;

/// The bounds of one download.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FetchLimits {
    /// The largest body accepted.
    pub max_bytes: u64,
    /// The whole download, redirects included.
    pub timeout: Duration,
    /// The most redirects followed.
    pub max_redirects: u32,
}

impl Default for FetchLimits {
    /// 256 MiB, 5 minutes, 5 redirects.
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(5 * 60),
            max_redirects: 5,
        }
    }
}

/// A downloaded release.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct FetchedRelease {
    /// `<dir>/<sha256 hex>.bin`.
    pub path: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its md5 (for the Go request's `md5Check` only).
    pub md5: [u8; 16],
}

/// Why a download failed. `url` is always the hop that failed, without user-info or query.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL cannot be downloaded.
    #[error("cannot download {url}: {reason}")]
    BadUrl {
        /// The URL (redacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A redirect from https to plain http.
    #[error("cannot download {url}: it redirects from https to plain http ({to}), refused")]
    Downgrade {
        /// The https URL (redacted).
        url: String,
        /// Where it redirects (redacted).
        to: String,
    },
    /// Too many redirects.
    #[error("cannot download {url}: more than {max_redirects} redirects")]
    TooManyRedirects {
        /// The last URL (redacted).
        url: String,
        /// The limit.
        max_redirects: u32,
    },
    /// The connection (TCP or TLS) failed.
    #[error("cannot download {url}: {stage} failed: {cause}")]
    Connect {
        /// The URL (redacted).
        url: String,
        /// `connecting` or `the TLS handshake`.
        stage: &'static str,
        /// What went wrong.
        cause: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("cannot download {url}: the HTTP exchange failed: {cause}")]
    Http {
        /// The URL (redacted).
        url: String,
        /// hyper's error.
        cause: hyper::Error,
    },
    /// An answer other than 200 (or a redirect).
    #[error("cannot download {url}: the server answered {status}")]
    Status {
        /// The URL (redacted).
        url: String,
        /// The status, with its reason (`404 Not Found`).
        status: String,
    },
    /// The body is larger than the limit.
    #[error("cannot download {url}: {what} is larger than the limit of {max_bytes} bytes")]
    TooLarge {
        /// The URL (redacted).
        url: String,
        /// `the announced length (N bytes)` or `the body`.
        what: String,
        /// The limit.
        max_bytes: u64,
    },
    /// No TLS client configuration could be built.
    #[error("cannot download {url}: no TLS client configuration: {reason}")]
    TlsSetup {
        /// The URL (redacted).
        url: String,
        /// rustls's refusal.
        reason: String,
    },
    /// The body ended early.
    #[error(
        "cannot download {url}: the body ended after {received_bytes} of the announced \
         {announced_bytes} bytes"
    )]
    Truncated {
        /// The URL (redacted).
        url: String,
        /// What arrived.
        received_bytes: u64,
        /// `Content-Length`.
        announced_bytes: u64,
    },
    /// Not finished in time.
    #[error("cannot download {url}: not finished within {timeout:?}")]
    Timeout {
        /// The URL first asked (redacted).
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// Writing the file failed.
    #[error("cannot download {url}: cannot {operation} {}: {cause}", path.display())]
    File {
        /// The URL (redacted).
        url: String,
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// Downloads the release at `url` into `dir` (see the module's first lines), trusting the
/// system's roots for https.
///
/// # Errors
/// [`FetchError`], naming the URL and what went wrong; no file is left behind.
pub async fn fetch_release(
    url: &str,
    limits: FetchLimits,
    dir: &Path,
) -> Result<FetchedRelease, FetchError> {
    let tls = default_tls().map_err(|reason| FetchError::TlsSetup {
        url: redact(url),
        reason,
    })?;
    fetch_release_with_tls(url, limits, dir, tls).await
}

/// [`fetch_release`] with the given TLS client configuration (other roots, for tests or a
/// private CA).
///
/// # Errors
/// As [`fetch_release`].
pub async fn fetch_release_with_tls(
    url: &str,
    limits: FetchLimits,
    dir: &Path,
    tls: Arc<rustls::ClientConfig>,
) -> Result<FetchedRelease, FetchError> {
    let shown = redact(url);
    match tokio::time::timeout(limits.timeout, fetch_following(url, limits, dir, tls)).await {
        Ok(result) => result,
        // The temporary file went with the dropped future (its guard removes it).
        Err(_) => Err(FetchError::Timeout {
            url: shown,
            timeout: limits.timeout,
        }),
    }
}

/// A TLS client configuration with the system's roots (the Mozilla list when it has none),
/// ring only, built once.
///
/// # Errors
/// rustls refuses the configuration (not with ring and its default versions).
pub fn default_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "skipping an unreadable system certificate");
            }
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            client_config(roots)
                .map(Arc::new)
                .map_err(|error| error.to_string())
        })
        .clone()
}

/// A ring-only TLS client configuration (TLS 1.2 and 1.3) trusting `roots`, offering
/// HTTP/1.1. The provider is named, never the process default, so no second provider can be
/// picked up (or panic) here.
///
/// # Errors
/// rustls refuses the protocol versions for the provider (not with ring).
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A URL for messages: scheme, host, port and path; no user-info, no query, no fragment.
#[must_use]
pub fn redact(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => {
            let authority = uri.authority().map_or("", |a| a.as_str());
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            let query = if uri.query().is_some() { "?…" } else { "" };
            format!(
                "{}://{host}{}{query}",
                uri.scheme_str().unwrap_or("?"),
                uri.path()
            )
        }
        // Not a URL: show its start only, up to anything that may be a secret.
        _ => {
            let cut = url.find(['@', '?', '#']).unwrap_or(url.len());
            format!("{:?}", url.get(..cut.min(200)).unwrap_or(""))
        }
    }
}

/// One parsed hop.
struct Hop {
    uri: Uri,
    https: bool,
    host: String,
    port: u16,
    /// `host[:port]` without user-info, for `Host`.
    authority: String,
    /// `user:password` from the URL, sent as basic authentication to this host only.
    userinfo: Option<String>,
}

fn parse_hop(url: &str) -> Result<Hop, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: redact(url),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("it does not parse as a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(other) => return Err(bad(&format!("the scheme {other:?} is not http or https"))),
        None => return Err(bad("it has no scheme (http:// or https://)")),
    };
    let full = uri
        .authority()
        .ok_or_else(|| bad("it has no host"))?
        .as_str();
    let (userinfo, authority) = match full.rsplit_once('@') {
        Some((userinfo, authority)) => (Some(userinfo.to_owned()), authority.to_owned()),
        None => (None, full.to_owned()),
    };
    let parsed: hyper::http::uri::Authority = authority
        .parse()
        .map_err(|_| bad("its host does not parse"))?;
    let host = parsed
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Hop {
        uri,
        https,
        host,
        port,
        authority,
        userinfo,
    })
}

/// `location` resolved against `base` (absolute, scheme-relative, absolute-path or relative).
fn resolve(base: &Hop, location: &str) -> String {
    let scheme = if base.https { "https" } else { "http" };
    if location
        .parse::<Uri>()
        .is_ok_and(|uri| uri.scheme().is_some())
    {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{}{location}", base.authority)
    } else {
        let path = base.uri.path();
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{scheme}://{}{dir}/{location}", base.authority)
    }
}

async fn fetch_following(
    url: &str,
    limits: FetchLimits,
    dir: &Path,
    tls: Arc<rustls::ClientConfig>,
) -> Result<FetchedRelease, FetchError> {
    let first = parse_hop(url)?;
    let origin = (first.host.clone(), first.port);
    let credentials = first.userinfo.clone();
    let mut hop = first;
    let mut redirects = 0;
    loop {
        // Credentials go to the host they were given for, not to where it redirects.
        let userinfo = if (hop.host.clone(), hop.port) == origin {
            hop.userinfo.clone().or_else(|| credentials.clone())
        } else {
            hop.userinfo.clone()
        };
        let shown = redact(&hop.uri.to_string());
        let response = request(&hop, userinfo.as_deref(), &tls, &shown).await?;
        let status = response.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| FetchError::Status {
                    url: shown.clone(),
                    status: format!("{status} without a usable Location"),
                })?;
            if redirects >= limits.max_redirects {
                return Err(FetchError::TooManyRedirects {
                    url: shown,
                    max_redirects: limits.max_redirects,
                });
            }
            redirects += 1;
            let next_url = resolve(&hop, location);
            let next = parse_hop(&next_url)?;
            if hop.https && !next.https {
                return Err(FetchError::Downgrade {
                    url: shown,
                    to: redact(&next_url),
                });
            }
            tracing::debug!(from = %shown, to = %redact(&next_url), "following a redirect");
            hop = next;
            continue;
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                url: shown,
                status: status.to_string(),
            });
        }
        return receive(response, limits, dir, &shown).await;
    }
}

/// Sends the GET of `hop` on a new connection and returns the response head.
async fn request(
    hop: &Hop,
    userinfo: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
    shown: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
    let connect_error = |stage, cause| FetchError::Connect {
        url: shown.to_owned(),
        stage,
        cause,
    };
    let tcp = TcpStream::connect((hop.host.as_str(), hop.port))
        .await
        .map_err(|cause| connect_error("connecting", cause))?;
    let path = hop
        .uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let mut builder = Request::get(path)
        .header(HOST, hop.authority.as_str())
        .header(
            USER_AGENT,
            format!("probermesh/{}", crate::version::VERSION),
        );
    if let Some(userinfo) = userinfo {
        let encoded = base64::engine::general_purpose::STANDARD.encode(userinfo);
        builder = builder.header(AUTHORIZATION, format!("Basic {encoded}"));
    }
    let request = builder
        .body(Empty::<Bytes>::new())
        .map_err(|_| FetchError::BadUrl {
            url: shown.to_owned(),
            reason: "it cannot be sent as a request".to_owned(),
        })?;
    let http_error = |cause| FetchError::Http {
        url: shown.to_owned(),
        cause,
    };
    if hop.https {
        let name = ServerName::try_from(hop.host.clone()).map_err(|_| FetchError::BadUrl {
            url: shown.to_owned(),
            reason: "its host is not a valid TLS server name".to_owned(),
        })?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|cause| connect_error("the TLS handshake", cause))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(http_error)
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(http_error)?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(http_error)
    }
}

/// A temporary download, removed unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Streams the body of a 200 answer into a temporary file in `dir`, hashing and counting it,
/// then renames it to `<sha256 hex>.bin`.
async fn receive(
    response: hyper::Response<hyper::body::Incoming>,
    limits: FetchLimits,
    dir: &Path,
    shown: &str,
) -> Result<FetchedRelease, FetchError> {
    let announced_bytes = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(announced) = announced_bytes
        && announced > limits.max_bytes
    {
        return Err(FetchError::TooLarge {
            url: shown.to_owned(),
            what: format!("the announced length ({announced} bytes)"),
            max_bytes: limits.max_bytes,
        });
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let temp = TempFile {
        path: dir.join(format!(
            ".release-{}-{}.part",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )),
        kept: false,
    };
    let file_error = |operation, path: &Path, cause| FetchError::File {
        url: shown.to_owned(),
        operation,
        path: path.to_owned(),
        cause,
    };
    let mut file = tokio::fs::File::create(&temp.path)
        .await
        .map_err(|cause| file_error("create", &temp.path, cause))?;
    let (mut sha256, mut md5) = (Sha256::new(), Md5::new());
    let mut received_bytes = 0u64;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(cause) => {
                // hyper reports a connection closed early as a body read error.
                if let Some(announced_bytes) = announced_bytes
                    && received_bytes < announced_bytes
                {
                    return Err(FetchError::Truncated {
                        url: shown.to_owned(),
                        received_bytes,
                        announced_bytes,
                    });
                }
                return Err(FetchError::Http {
                    url: shown.to_owned(),
                    cause,
                });
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received_bytes += data.len() as u64;
        if received_bytes > limits.max_bytes {
            return Err(FetchError::TooLarge {
                url: shown.to_owned(),
                what: "the body".to_owned(),
                max_bytes: limits.max_bytes,
            });
        }
        sha256.update(&data);
        md5.update(&data);
        file.write_all(&data)
            .await
            .map_err(|cause| file_error("write", &temp.path, cause))?;
    }
    if let Some(announced_bytes) = announced_bytes
        && received_bytes != announced_bytes
    {
        return Err(FetchError::Truncated {
            url: shown.to_owned(),
            received_bytes,
            announced_bytes,
        });
    }
    // The data is on disk before the name that says it is complete.
    file.sync_all()
        .await
        .map_err(|cause| file_error("flush", &temp.path, cause))?;
    drop(file);
    let sha256: [u8; 32] = sha256.finalize().into();
    let md5: [u8; 16] = md5.finalize().into();
    let path = dir.join(format!("{}.bin", hex(&sha256)));
    tokio::fs::rename(&temp.path, &path)
        .await
        .map_err(|cause| file_error("rename the download to", &path, cause))?;
    let mut temp = temp;
    temp.kept = true;
    Ok(FetchedRelease {
        path,
        size_bytes: received_bytes,
        sha256,
        md5,
    })
}

/// Up to `max_len` bytes of the file at `path` from `offset` (fewer at its end, none past it):
/// one chunk for an agent.
///
/// # Errors
/// The file cannot be opened or read.
pub fn read_chunk(path: &Path, offset: u64, max_len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = Vec::with_capacity(max_len.min(1024 * 1024));
    file.take(max_len as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::test_dir::TestDir;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const RELEASE: &[u8] = b"#!/bin/sh\necho probermesh 1.1.0\n";

    /// A local HTTP/1.1 origin on 127.0.0.1 answering by path with hand-written responses
    /// (a truncated body needs a server that lies about its length):
    /// `/release`, `/hop/<n>` (a redirect chain of n more hops to `/release`), `/big` (a
    /// `Content-Length` over any test limit), `/endless` (a chunked body with no end in
    /// sight), `/truncated` (100 bytes announced, 10 sent), `/to-http/<port>` (a redirect to
    /// plain http on that port), anything else 404.
    async fn origin(tls: Option<tokio_rustls::TlsAcceptor>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, port, "https").await;
                            }
                        }
                        None => serve(tcp, port, "http").await,
                    }
                });
            }
        });
        port
    }

    async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
        port: u16,
        scheme: &str,
    ) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let redirect = |to: String| {
            format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes()
        };
        let response: Vec<u8> = if path == "/release" {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                RELEASE.len()
            )
            .into_bytes();
            r.extend_from_slice(RELEASE);
            r
        } else if path == "/echo-auth" {
            let auth = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: ")
                        .or_else(|| l.strip_prefix("Authorization: "))
                })
                .unwrap_or("none")
                .to_owned();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{auth}",
                auth.len()
            )
            .into_bytes()
        } else if let Some(n) = path.strip_prefix("/hop/") {
            let n: u32 = n.parse().unwrap();
            // Relative, absolute-path and absolute Locations in turn.
            redirect(match n {
                0 => "/release".to_owned(),
                n if n % 2 == 0 => format!("{}", n - 1),
                n => format!("{scheme}://localhost:{port}/hop/{}", n - 1),
            })
        } else if path == "/big" {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n".to_vec()
        } else if path == "/endless" {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .ok();
            let chunk = format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            return;
        } else if path == "/truncated" {
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec()
        } else if let Some(to) = path.strip_prefix("/to-http/") {
            redirect(format!("http://127.0.0.1:{to}/release"))
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
        };
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    }

    fn limits() -> FetchLimits {
        FetchLimits {
            max_bytes: 64 * 1024,
            timeout: Duration::from_secs(30),
            max_redirects: 5,
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_release_is_streamed_hashed_and_named_by_its_digest_following_redirects() {
        let dir = TestDir::new("fetch-ok");
        let port = origin(None).await;
        let fetched = fetch_release(
            &format!("http://127.0.0.1:{port}/hop/4"),
            limits(),
            dir.path(),
        )
        .await
        .unwrap();
        let sha256: [u8; 32] = Sha256::digest(RELEASE).into();
        let md5: [u8; 16] = Md5::digest(RELEASE).into();
        assert_eq!(fetched.sha256, sha256);
        assert_eq!(fetched.md5, md5);
        assert_eq!(fetched.size_bytes, RELEASE.len() as u64);
        assert_eq!(
            fetched.path,
            dir.path().join(format!("{}.bin", hex(&sha256)))
        );
        assert_eq!(std::fs::read(&fetched.path).unwrap(), RELEASE);
        assert_eq!(files_in(dir.path()), vec![format!("{}.bin", hex(&sha256))]);

        assert_eq!(read_chunk(&fetched.path, 0, 9).unwrap(), &RELEASE[..9]);
        assert_eq!(read_chunk(&fetched.path, 9, 1000).unwrap(), &RELEASE[9..]);
        assert!(read_chunk(&fetched.path, 1000, 10).unwrap().is_empty());

        // Credentials in the URL go as basic authentication, and never into a message.
        let fetched = fetch_release(
            &format!("http://ops:s3cret@127.0.0.1:{port}/echo-auth"),
            limits(),
            dir.path(),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&fetched.path).unwrap(),
            "Basic b3BzOnMzY3JldA=="
        );
    }

    #[tokio::test]
    async fn every_failure_names_the_url_without_secrets_and_leaves_no_file() {
        let dir = TestDir::new("fetch-fail");
        let port = origin(None).await;
        let base = format!("http://127.0.0.1:{port}");
        let cases = [
            (
                format!("{base}/hop/5"),
                format!("cannot download http://localhost:{port}/hop/0: more than 5 redirects"),
            ),
            (
                format!("{base}/missing?token=s3cret"),
                format!("cannot download {base}/missing?…: the server answered 404 Not Found"),
            ),
            (
                format!("{base}/big"),
                format!(
                    "cannot download {base}/big: the announced length (1000000000 bytes) is larger than the limit of 65536 bytes"
                ),
            ),
            (
                format!("{base}/endless"),
                format!(
                    "cannot download {base}/endless: the body is larger than the limit of 65536 bytes"
                ),
            ),
            (
                format!("{base}/truncated"),
                format!(
                    "cannot download {base}/truncated: the body ended after 10 of the announced 100 bytes"
                ),
            ),
            (
                "ftp://127.0.0.1/x".to_owned(),
                "cannot download ftp://127.0.0.1/x: the scheme \"ftp\" is not http or https"
                    .to_owned(),
            ),
            (
                "http://user:pw@127.0.0.1:1/x".to_owned(),
                "cannot download http://127.0.0.1:1/x: connecting failed: ".to_owned(),
            ),
        ];
        for (url, expected) in cases {
            let error = fetch_release(&url, limits(), dir.path())
                .await
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&expected), "{url}: {error}");
            assert!(
                !error.contains("s3cret") && !error.contains("pw@"),
                "{error}"
            );
        }
        let error = fetch_release(
            &format!("{base}/endless"),
            FetchLimits {
                max_bytes: u64::MAX,
                timeout: Duration::from_millis(300),
                ..limits()
            },
            dir.path(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            format!("cannot download {base}/endless: not finished within 300ms")
        );
        assert_eq!(files_in(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn https_is_verified_and_never_downgraded_to_http() {
        let dir = TestDir::new("fetch-https");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let chain = vec![certified.cert.der().clone()];
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)
        .unwrap();
        let https_port = origin(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
        let http_port = origin(None).await;
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let tls = Arc::new(client_config(roots).unwrap());

        let fetched = fetch_release_with_tls(
            &format!("https://localhost:{https_port}/hop/2"),
            limits(),
            dir.path(),
            Arc::clone(&tls),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&fetched.path).unwrap(), RELEASE);

        let url = format!("https://localhost:{https_port}/to-http/{http_port}");
        let error = fetch_release_with_tls(&url, limits(), dir.path(), tls)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "cannot download {url}: it redirects from https to plain http (http://127.0.0.1:{http_port}/release), refused"
            )
        );
        // The system's roots do not trust the test certificate.
        let error = fetch_release(
            &format!("https://localhost:{https_port}/release"),
            limits(),
            dir.path(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("the TLS handshake failed"), "{error}");
    }
}
