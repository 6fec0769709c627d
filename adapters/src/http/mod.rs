//! The HTTP prober: core's [`HttpProber`] with per-phase timing, blackbox_exporter-compatible.
//!
//! We dial ourselves so each phase is measured where it happens:
//! `resolve` (the [`DnsResolver`] port, timed), `connect` (TCP, and the proxy's CONNECT when
//! there is one), `tls` (the tokio-rustls handshake), `processing` (request written → first
//! response byte, noted at the socket by `timed_io`) and `transfer` (first byte → end of
//! body). The Host header and SNI keep the URL's host while we connect to the resolved
//! address, as the Go system does. Redirects are followed (at most 10) and every phase is
//! summed over the hops, as blackbox_exporter does.
//!
//! A probe never errs: every failure is an [`HttpResult`] with a reason from core's bounded
//! [`HttpFailure`] set; the raw error goes to the log at debug level. The probe timeout
//! bounds everything, and the phases measured before it struck are kept.

mod body;
mod checks;
mod dial;
mod redirect;
mod timed_io;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use probermesh_core::model::http_module::{Compression, HttpVersion, SecretSource};
use probermesh_core::model::target::{Host, Scheme};
use probermesh_core::model::{HttpFailure, HttpModule, HttpPhases, HttpResult, HttpUrl, TlsInfo};
use probermesh_core::ports::{DnsResolver, HttpProber};

use body::BodyReader;
use dial::Connection;
use tls::TlsConfigs;
pub use tls::TlsSetupError;

/// The HTTP prober of a process (cheap to share: TLS configurations are cached inside).
pub struct HyperProber {
    dns: Arc<dyn DnsResolver>,
    tls: TlsConfigs,
    user_agent: String,
}

impl std::fmt::Debug for HyperProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperProber")
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl HyperProber {
    /// A prober resolving through `dns`, sending `User-Agent: probermesh/<version>` unless a
    /// module sets its own.
    #[must_use]
    pub fn new(dns: Arc<dyn DnsResolver>) -> Self {
        Self {
            dns,
            tls: TlsConfigs::default(),
            user_agent: format!("probermesh/{}", crate::version::VERSION),
        }
    }
}

/// Where a probe got to, kept outside the timed future so a timeout keeps it.
#[derive(Debug, Default)]
struct Progress {
    phases: HttpPhases,
    status_code: Option<u16>,
    tls: Option<TlsInfo>,
    connecting: bool,
}

/// The request of one hop.
#[derive(Debug)]
struct Hop {
    url: HttpUrl,
    method: String,
    /// The module's body, shared (never copied per request).
    body: Option<Arc<str>>,
    /// Whether credentials still apply (the redirect has not left the first host).
    credentials: bool,
}

/// The final response, for the checks.
#[derive(Debug)]
pub(crate) struct FinalResponse {
    pub(crate) status: u16,
    pub(crate) version: Option<HttpVersion>,
    pub(crate) over_tls: bool,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Vec<u8>>,
}

#[async_trait::async_trait]
impl HttpProber for HyperProber {
    async fn probe(&self, url: &HttpUrl, module: &HttpModule, timeout: Duration) -> HttpResult {
        let mut progress = Progress::default();
        let outcome = tokio::time::timeout(timeout, self.run(url, module, &mut progress)).await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) if progress.connecting => Some(HttpFailure::ConnectTimeout),
            Err(_) => Some(HttpFailure::Timeout),
        };
        if let Some(failure) = failure {
            tracing::debug!(target_addr = %url.host, %failure, "HTTP probe failed");
        }
        HttpResult {
            phases: progress.phases,
            status_code: progress.status_code,
            tls: progress.tls,
            failure,
        }
    }
}

impl HyperProber {
    async fn run(
        &self,
        url: &HttpUrl,
        module: &HttpModule,
        progress: &mut Progress,
    ) -> Result<(), HttpFailure> {
        // A credential whose file contents did not come fails before anything is sent.
        if let Some(token) = &module.client.bearer_token {
            read_secret(token)?;
        }
        if let Some(password) = module
            .client
            .basic_auth
            .as_ref()
            .and_then(|auth| auth.password.as_ref())
        {
            read_secret(password)?;
        }
        let mut hop = Hop {
            url: url.clone(),
            method: module.method.clone(),
            body: module.body.clone(),
            credentials: true,
        };
        let mut redirects = 0;
        loop {
            let keep_body = !module.fail_if_body_matches_regexp.is_empty()
                || !module.fail_if_body_not_matches_regexp.is_empty();
            let response = self.exchange(&hop, module, progress, keep_body).await?;
            if module.follows_redirects() && redirect::is_redirect(response.status) {
                redirects += 1;
                if redirects > redirect::MAX_REDIRECTS {
                    return Err(HttpFailure::TooManyRedirects);
                }
                let next = response
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|location| redirect::resolve(&hop.url, location))
                    .ok_or(HttpFailure::BadRedirect)?;
                let (method, keep) = redirect::method_after(response.status, &hop.method);
                hop = Hop {
                    credentials: hop.credentials && redirect::same_host(&hop.url, &next),
                    url: next,
                    method,
                    body: if keep { hop.body } else { None },
                };
                continue;
            }
            return checks::check(module, &response);
        }
    }

    /// One request and response, with every phase added to `progress`.
    async fn exchange(
        &self,
        hop: &Hop,
        module: &HttpModule,
        progress: &mut Progress,
        keep_body: bool,
    ) -> Result<FinalResponse, HttpFailure> {
        let offer_h2 = module.client.enable_http2
            && (module.valid_http_versions.is_empty()
                || module.valid_http_versions.contains(&HttpVersion::Http2));
        let host_header = host_header(module, &hop.url);
        let connection = dial::connect(
            self.dns.as_ref(),
            &self.tls,
            &hop.url,
            module,
            &host_header,
            offer_h2,
            progress,
        )
        .await?;
        let Connection {
            stream,
            marks,
            tls,
            h2,
            via_proxy,
        } = connection;
        progress.tls = tls;

        let request = self.build_request(hop, module, &host_header, h2, via_proxy)?;
        let sent_at = Instant::now();
        let io = TokioIo::new(stream);
        let response = if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| log_failure(HttpFailure::Request, &e))?;
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| log_failure(HttpFailure::Request, &e))?;
            tokio::spawn(conn);
            sender.send_request(request).await
        }
        .map_err(|e| log_failure(HttpFailure::BodyRead, &e))?;
        let headers_at = Instant::now();
        // HTTP/1: the socket marks. HTTP/2 interleaves SETTINGS frames with the response, so
        // its first byte is when hyper hands over the headers.
        let io_marks = marks.get();
        let (written_at, first_byte_at) = match (h2, io_marks.last_write, io_marks.first_read) {
            (false, Some(written), Some(first)) => (written, first),
            _ => (sent_at, headers_at),
        };
        progress.phases.processing += first_byte_at.saturating_duration_since(written_at);

        let status = response.status().as_u16();
        progress.status_code = Some(status);
        let version = match response.version() {
            Version::HTTP_10 => Some(HttpVersion::Http10),
            Version::HTTP_11 => Some(HttpVersion::Http11),
            Version::HTTP_2 => Some(HttpVersion::Http2),
            _ => None,
        };
        let (parts, mut incoming) = response.into_parts();
        let content_encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let compression = if module.compression == Compression::Identity {
            Compression::Identity
        } else {
            module.compression
        };
        let read = async {
            let mut reader = BodyReader::new(
                compression,
                content_encoding.as_deref(),
                module.body_size_limit,
                keep_body,
            )?;
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| log_failure(HttpFailure::BodyRead, &e))?;
                if let Some(data) = frame.data_ref() {
                    reader.push(data)?;
                }
            }
            reader.finish()
        }
        .await;
        progress.phases.transfer += first_byte_at.elapsed();
        let body = read?;
        Ok(FinalResponse {
            status,
            version,
            over_tls: progress.tls.is_some(),
            headers: parts.headers,
            body: body.kept,
        })
    }

    fn build_request(
        &self,
        hop: &Hop,
        module: &HttpModule,
        host_header: &str,
        h2: bool,
        via_proxy: bool,
    ) -> Result<Request<Full<Bytes>>, HttpFailure> {
        // HTTP/2 carries the authority in the URI; an HTTP proxy wants the absolute form.
        let uri = if h2 || via_proxy {
            format!(
                "{}://{host_header}{}",
                hop.url.scheme.as_str(),
                hop.url.path_and_query
            )
        } else {
            hop.url.path_and_query.clone()
        };
        let mut request = Request::builder()
            .method(hop.method.as_str())
            .uri(uri)
            .body(Full::new(
                hop.body
                    .clone()
                    .map_or_else(Bytes::new, |body| Bytes::from_owner(SharedBody(body))),
            ))
            .map_err(|e| log_failure(HttpFailure::Request, &e))?;
        let headers = request.headers_mut();
        if !h2 {
            headers.insert(header::HOST, header_value(host_header)?);
        }
        for (name, value) in &module.headers {
            if name.eq_ignore_ascii_case("host") {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| log_failure(HttpFailure::Request, &e))?;
            headers.append(name, header_value(value)?);
        }
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, header_value(&self.user_agent)?);
        }
        if module.compression != Compression::Identity
            && !headers.contains_key(header::ACCEPT_ENCODING)
        {
            headers.insert(
                header::ACCEPT_ENCODING,
                header_value(module.compression.as_str())?,
            );
        }
        if hop.credentials && !headers.contains_key(header::AUTHORIZATION) {
            if let Some(auth) = &module.client.basic_auth {
                let password = match &auth.password {
                    Some(source) => read_secret(source)?,
                    None => String::new(),
                };
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{password}", auth.username));
                headers.insert(
                    header::AUTHORIZATION,
                    header_value(&format!("Basic {token}"))?,
                );
            } else if let Some(source) = &module.client.bearer_token {
                let token = read_secret(source)?;
                headers.insert(
                    header::AUTHORIZATION,
                    header_value(&format!("Bearer {token}"))?,
                );
            }
        }
        Ok(request)
    }
}

/// A request body that borrows the module's copy instead of making one per request.
struct SharedBody(Arc<str>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The Host header (and SNI) of a hop: a `Host` entry of `headers:` wins over the URL's.
fn host_header(module: &HttpModule, url: &HttpUrl) -> String {
    module
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map_or_else(|| url.host_header(), |(_, value)| value.clone())
}

fn header_value(value: &str) -> Result<HeaderValue, HttpFailure> {
    HeaderValue::from_str(value).map_err(|e| log_failure(HttpFailure::Request, &e))
}

/// A secret given inline or read from a file by the server (one trailing newline dropped).
/// The agent never opens the file itself: without contents (from a server too old to send
/// them) the probe fails, and the agent said why when the pool arrived.
fn read_secret(source: &SecretSource) -> Result<String, HttpFailure> {
    source.value().map(str::to_owned).ok_or_else(|| {
        tracing::debug!("a credential file's contents did not come with the pool");
        HttpFailure::Request
    })
}

/// Logs the raw error behind a bounded failure reason.
fn log_failure(failure: HttpFailure, error: &dyn std::fmt::Display) -> HttpFailure {
    tracing::debug!(%failure, %error, "HTTP probe step failed");
    failure
}

/// The host to resolve (`None` for an address literal).
fn host_name(host: &Host) -> Option<&str> {
    match host {
        Host::Ip(_) => None,
        Host::Name(name) => Some(name),
    }
}

/// Whether a URL is HTTPS.
fn is_https(url: &HttpUrl) -> bool {
    url.scheme == Scheme::Https
}
