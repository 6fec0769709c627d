//! A tiny plain-HTTP client for the identity questions (cloud metadata, the public-IP echo):
//! one request per connection, a timeout over the whole exchange and a cap on the answer, so
//! a slow, silent or chatty service can neither hold the agent's start-up nor fill its memory.
//!
//! Plain `http://` only: metadata services speak nothing else, and the echo answer is a hint
//! that the server's own view of the agent overrides.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an identity HTTP request gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not a plain `http://host[:port]/path` URL.
    #[error("{url:?} is not a plain http:// URL: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header value cannot be sent (it holds control characters).
    #[error("header {name} for {url} holds characters that cannot be sent")]
    BadHeader {
        /// The URL asked.
        url: String,
        /// The header's name.
        name: &'static str,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {url}: {cause}")]
    Connect {
        /// The URL asked.
        url: String,
        /// The socket error (in the message, not a `source`: a chain says it once).
        cause: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {url} failed: {cause}")]
    Http {
        /// The URL asked.
        url: String,
        /// hyper's error (in the message, not a `source`: a chain says it once).
        cause: hyper::Error,
    },
    /// The answer's body is longer than the cap.
    #[error("the answer from {url} is longer than {limit} bytes")]
    TooLarge {
        /// The URL asked.
        url: String,
        /// The cap, in bytes.
        limit: usize,
    },
    /// No complete answer within the timeout.
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// An HTTP answer: its status and its (capped) body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// Sends one request with an empty body and `headers`, reading at most `limit` body bytes,
/// all within `timeout`.
///
/// Header names must be lowercase constants (they go through `HeaderName::from_static`).
pub(crate) async fn fetch(
    method: Method,
    url: &str,
    headers: &[(&'static str, &str)],
    limit: usize,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    match tokio::time::timeout(timeout, exchange(method, url, headers, limit)).await {
        Ok(answer) => answer,
        Err(_) => Err(FetchError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

/// The host (without IPv6 brackets), the port and the `Host` header value of a plain HTTP URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    authority: String,
}

fn parse(url: &str) -> Result<(Uri, Target), FetchError> {
    let bad = |reason| FetchError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| bad("it does not parse as a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("the scheme must be http"));
    }
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let target = Target {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_owned(),
    };
    Ok((uri, target))
}

async fn exchange(
    method: Method,
    url: &str,
    headers: &[(&'static str, &str)],
    limit: usize,
) -> Result<Answer, FetchError> {
    let (uri, target) = parse(url)?;
    let path = uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, target.authority.as_str())
        .header(
            USER_AGENT,
            format!("probermesh/{}", crate::version::VERSION),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|_| FetchError::BadUrl {
            url: url.to_owned(),
            reason: "it cannot be used as a request target",
        })?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).map_err(|_| FetchError::BadHeader {
            url: url.to_owned(),
            name,
        })?;
        request
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }

    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|cause| FetchError::Connect {
            url: url.to_owned(),
            cause,
        })?;
    let http_error = |cause| FetchError::Http {
        url: url.to_owned(),
        cause,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(http_error)?;
    // The connection task ends with the exchange (or when this future is dropped, which
    // drops the sender and so closes it).
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "identity HTTP connection ended with an error");
        }
    });
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status().as_u16();
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(http_error)?;
        if let Some(data) = frame.data_ref() {
            if body.len() + data.len() > limit {
                return Err(FetchError::TooLarge {
                    url: url.to_owned(),
                    limit,
                });
            }
            body.extend_from_slice(data);
        }
    }
    Ok(Answer {
        status,
        body: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_http_urls() {
        let (uri, target) = parse("http://127.0.0.1:8080/latest/region_id").unwrap();
        assert_eq!(uri.path(), "/latest/region_id");
        assert_eq!(
            target,
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into()
            }
        );
        let (_, target) = parse("http://[::1]/ip").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 80));
        let (_, target) = parse("http://metadata.google.internal/x").unwrap();
        assert_eq!(target.authority, "metadata.google.internal");
    }

    #[test]
    fn rejects_what_it_cannot_send() {
        for (url, reason) in [
            ("https://ifconfig.me/ip", "scheme"),
            ("ifconfig.me/ip", "parse"),
            ("ftp://host/x", "scheme"),
            ("http://user:pw@host/", "credentials"),
            ("not a url", "parse"),
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(error.contains(url) && error.contains(reason), "{error}");
        }
    }
}
