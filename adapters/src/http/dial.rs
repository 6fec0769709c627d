//! Dialling one hop: resolve (timed), TCP connect (timed; through an HTTP proxy when
//! configured, with CONNECT for HTTPS), then the TLS handshake (timed), keeping the URL's
//! host for SNI while connecting to the resolved address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use probermesh_core::model::{HttpFailure, HttpModule, HttpUrl, TlsInfo};
use probermesh_core::ports::{DnsResolver, IpPreference};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::timed_io::{MarksHandle, TimedIo};
use super::tls::{self, TlsConfigs};
use super::{Progress, host_name, is_https, log_failure};

/// Longest proxy CONNECT answer we read.
const MAX_PROXY_RESPONSE_BYTES: usize = 8 * 1024;

/// A plain or TLS stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, data),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    // Vectored writes let hyper send a request body from the module's shared copy instead of
    // copying it into its write buffer (which would cost one body per request in flight).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A dialled hop, ready for the request.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) stream: TimedIo<Stream>,
    pub(crate) marks: MarksHandle,
    pub(crate) tls: Option<TlsInfo>,
    /// ALPN chose HTTP/2.
    pub(crate) h2: bool,
    /// Plain HTTP through a proxy: the request uses the absolute URI.
    pub(crate) via_proxy: bool,
}

/// An `http://[user:password@]host:port` proxy.
#[derive(Debug)]
struct Proxy {
    host: String,
    port: u16,
    authorization: Option<String>,
}

fn parse_proxy(text: &str) -> Option<Proxy> {
    let rest = text.strip_prefix("http://")?.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
            (host, port.parse().ok()?)
        }
        _ => (hostport, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    let authorization = userinfo.map(|userinfo| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(userinfo)
        )
    });
    Some(Proxy {
        host: host.to_owned(),
        port,
        authorization,
    })
}

pub(crate) async fn connect(
    dns: &dyn DnsResolver,
    tls_configs: &TlsConfigs,
    url: &HttpUrl,
    module: &HttpModule,
    host_header: &str,
    offer_h2: bool,
    progress: &mut Progress,
) -> Result<Connection, HttpFailure> {
    let proxy = match &module.client.proxy_url {
        Some(text) => Some(parse_proxy(text).ok_or_else(|| {
            tracing::warn!(proxy_url = %text, "unusable proxy_url");
            HttpFailure::Request
        })?),
        None => None,
    };
    let preference = IpPreference::of_module(module);
    // The target's lookup is the resolve phase (also through a proxy, as blackbox does,
    // unless skip_resolve_phase_with_proxy).
    let target_addr = if proxy.is_some() && module.skip_resolve_phase_with_proxy {
        None
    } else {
        Some(resolve(dns, &url.host, preference, progress).await?)
    };
    progress.connecting = true;
    let connect_started = Instant::now();
    let tcp_addr = match &proxy {
        Some(proxy) => {
            let host = probermesh_core::model::Host::parse(&proxy.host)
                .map_err(|e| log_failure(HttpFailure::Request, &e))?;
            let addr = match host {
                probermesh_core::model::Host::Ip(ip) => ip,
                probermesh_core::model::Host::Name(name) => {
                    dns.resolve(&name, preference)
                        .await
                        .map_err(|e| log_failure(HttpFailure::Resolve, &e))?
                        .addr
                }
            };
            SocketAddr::new(addr, proxy.port)
        }
        None => SocketAddr::new(target_addr.ok_or(HttpFailure::Resolve)?, url.port),
    };
    let mut tcp = TcpStream::connect(tcp_addr).await.map_err(|e| {
        let failure = match e.kind() {
            io::ErrorKind::ConnectionRefused => HttpFailure::ConnectRefused,
            io::ErrorKind::TimedOut => HttpFailure::ConnectTimeout,
            _ => HttpFailure::Connect,
        };
        log_failure(failure, &e)
    })?;
    let _ = tcp.set_nodelay(true);
    if let Some(proxy) = &proxy
        && is_https(url)
    {
        tunnel(&mut tcp, proxy, url).await?;
    }
    progress.phases.connect += connect_started.elapsed();
    progress.connecting = false;

    if !is_https(url) {
        let (stream, marks) = TimedIo::new(Stream::Plain(tcp));
        return Ok(Connection {
            stream,
            marks,
            tls: None,
            h2: false,
            via_proxy: proxy.is_some(),
        });
    }
    let config = tls_configs
        .get(&module.client.tls, offer_h2)
        .map_err(|e| log_failure(HttpFailure::TlsHandshake, &e))?;
    let name = module
        .client
        .tls
        .server_name
        .clone()
        .unwrap_or_else(|| strip_port(host_header));
    let server_name =
        ServerName::try_from(name).map_err(|e| log_failure(HttpFailure::TlsHandshake, &e))?;
    let handshake_started = Instant::now();
    let handshake = TlsConnector::from(config).connect(server_name, tcp).await;
    progress.phases.tls += handshake_started.elapsed();
    let tls_stream = handshake.map_err(|e| log_failure(tls::handshake_failure(&e), &e))?;
    let (_, session) = tls_stream.get_ref();
    let info = tls::tls_info(session);
    let h2 = session.alpn_protocol() == Some(b"h2");
    let (stream, marks) = TimedIo::new(Stream::Tls(Box::new(tls_stream)));
    Ok(Connection {
        stream,
        marks,
        tls: Some(info),
        h2,
        via_proxy: false,
    })
}

async fn resolve(
    dns: &dyn DnsResolver,
    host: &probermesh_core::model::Host,
    preference: IpPreference,
    progress: &mut Progress,
) -> Result<IpAddr, HttpFailure> {
    let Some(name) = host_name(host) else {
        return match host {
            probermesh_core::model::Host::Ip(ip) => Ok(*ip),
            probermesh_core::model::Host::Name(_) => Err(HttpFailure::Resolve),
        };
    };
    match dns.resolve(name, preference).await {
        Ok(resolution) => {
            progress.phases.resolve += resolution.elapsed;
            Ok(resolution.addr)
        }
        Err(failure) => {
            progress.phases.resolve += failure.elapsed;
            Err(log_failure(HttpFailure::Resolve, &failure))
        }
    }
}

/// Opens a CONNECT tunnel to the URL's host through the proxy.
async fn tunnel(tcp: &mut TcpStream, proxy: &Proxy, url: &HttpUrl) -> Result<(), HttpFailure> {
    let authority = format!("{}:{}", bracketed(&url.host.to_string()), url.port);
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(authorization) = &proxy.authorization {
        request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| log_failure(HttpFailure::Connect, &e))?;
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_PROXY_RESPONSE_BYTES {
            return Err(log_failure(HttpFailure::Request, &"proxy answer too long"));
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| log_failure(HttpFailure::Connect, &e))?;
        if n == 0 {
            return Err(log_failure(
                HttpFailure::Connect,
                &"proxy closed the tunnel",
            ));
        }
        answer.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&answer);
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    if ok {
        Ok(())
    } else {
        let line = status_line.lines().next().unwrap_or_default().to_owned();
        Err(log_failure(
            HttpFailure::Request,
            &format!("proxy refused CONNECT: {line}"),
        ))
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The host of a `Host` header value (`name`, `name:port`, `[v6]:port`).
fn strip_port(host_header: &str) -> String {
    if let Some(rest) = host_header.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match host_header.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
        _ => host_header.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_credentials_and_ports() {
        let p = parse_proxy("http://user:pw@proxy.lab:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.lab", 3128));
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwdw=="));
        let p = parse_proxy("http://[::1]:8080").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
        assert_eq!(parse_proxy("http://proxy.lab").unwrap().port, 80);
        assert!(parse_proxy("socks5://x:1").is_none());
    }

    #[test]
    fn sni_is_the_host_without_port() {
        assert_eq!(strip_port("example.lab:8443"), "example.lab");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("example.lab"), "example.lab");
    }
}
