//! The server's HTTP endpoints (`-server.http.listen.addr`): `/metrics` for Prometheus, the
//! Go system's `/-/reload` and `/-/targets`, and `/-/healthy` and `/-/ready` for probes of the
//! server itself. The answers come from an [`AdminApi`] the server implements; this module
//! only speaks HTTP: routing, the bearer token of admin endpoints, and limits.
//!
//! Admin endpoints (today `/-/reload`; `/-/task` and `/-/upgrade` later) need
//! `Authorization: Bearer <token>` when a token is configured; the token is compared in
//! constant time ([`Token::matches`]) and never logged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use probermesh_core::model::{ProbeConfig, Region};
use probermesh_core::server::PoolRefusal;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::secret::Token;

/// The content type of a scrape answer: the Prometheus text format 0.0.4, which the
/// `metrics` adapter renders.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the HTTP endpoints ask of the server.
#[async_trait::async_trait]
pub trait AdminApi: Send + Sync {
    /// The `/metrics` body (Prometheus text format).
    fn metrics(&self) -> Vec<u8>;
    /// The `/-/targets` JSON.
    fn targets_json(&self) -> String;
    /// Re-reads the probe file; `Err` names the problem, and the running pool stays.
    async fn reload(&self) -> Result<(), String>;
    /// Whether the server is ready (its listeners are up and the first pool is loaded).
    fn ready(&self) -> bool;
}

/// Why the HTTP endpoints could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {cause}")]
pub struct AdminBindError {
    addr: String,
    /// In the message, not a `source`: a chain says it once.
    cause: std::io::Error,
}

/// The running endpoints.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl AdminServer {
    /// Binds `addr` (`host:port`) and serves `api` until dropped or [`AdminServer::stop`].
    /// `admin_token` protects the admin endpoints when set.
    ///
    /// # Errors
    /// When the address cannot be bound (the message names it).
    pub async fn start(
        addr: &str,
        api: Arc<dyn AdminApi>,
        admin_token: Option<Token>,
    ) -> Result<Self, AdminBindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|cause| AdminBindError {
                addr: addr.to_owned(),
                cause,
            })?;
        let local_addr = listener.local_addr().map_err(|cause| AdminBindError {
            addr: addr.to_owned(),
            cause,
        })?;
        let (stop, mut stopped) = watch::channel(false);
        let token = Arc::new(admin_token);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => return,
                };
                let Ok((tcp, _)) = accepted else {
                    continue;
                };
                let (api, token) = (Arc::clone(&api), Arc::clone(&token));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (api, token) = (Arc::clone(&api), Arc::clone(&token));
                        async move {
                            Ok::<_, Infallible>(
                                route(request, api.as_ref(), (*token).as_ref()).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .max_buf_size(64 * 1024)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Self { local_addr, stop })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn authorized(request: &Request<Incoming>, token: Option<&Token>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    token.matches(presented)
}

async fn route(
    request: Request<Incoming>,
    api: &dyn AdminApi,
    token: Option<&Token>,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, api.metrics());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        "/-/targets" => {
            let mut response = text(StatusCode::OK, api.targets_json());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        "/-/healthy" => text(StatusCode::OK, "ProberMesh is healthy.\n"),
        "/-/ready" => {
            if api.ready() {
                text(StatusCode::OK, "ProberMesh is ready.\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ProberMesh is not ready.\n",
                )
            }
        }
        "/-/reload" => {
            if !authorized(&request, token) {
                tracing::warn!("/-/reload refused: missing or wrong bearer token");
                let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            match api.reload().await {
                Ok(()) => text(StatusCode::OK, "ok"),
                Err(problem) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("one or more reloader reload failed: {problem}\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// The Go `/-/targets` JSON: `{region: [{"prober_type": "icmp", "targets": [...]}]}`, plus
/// `refused_by` on a block that agents refused (absent otherwise, so the Go shape is kept).
#[must_use]
pub fn targets_json(
    regions: &BTreeMap<Region, Vec<ProbeConfig>>,
    refusals: &[&PoolRefusal],
) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        prober_type: &'a str,
        targets: Vec<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        refused_by: Vec<RefusedBy>,
    }
    #[derive(Serialize)]
    struct RefusedBy {
        agent: String,
        revision: u64,
        error: String,
    }
    let shaped: BTreeMap<&str, Vec<Entry<'_>>> = regions
        .iter()
        .map(|(region, configs)| {
            let entries = configs
                .iter()
                .map(|config| Entry {
                    prober_type: config.kind().as_str(),
                    targets: config.targets.iter().map(|t| t.raw()).collect(),
                    refused_by: refusals
                        .iter()
                        .filter(|r| {
                            r.block.as_ref() == Some(&(config.region.clone(), config.kind()))
                        })
                        .map(|r| RefusedBy {
                            agent: r.agent.to_string(),
                            revision: r.revision,
                            error: r.to_string(),
                        })
                        .collect(),
                })
                .collect();
            (region.as_str(), entries)
        })
        .collect();
    serde_json::to_string(&shaped).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake {
        reload_ok: AtomicBool,
    }

    #[async_trait::async_trait]
    impl AdminApi for Fake {
        fn metrics(&self) -> Vec<u8> {
            b"prober_server_receive_points{prober_type=\"icmp\"} 1\n".to_vec()
        }
        fn targets_json(&self) -> String {
            "{}".into()
        }
        async fn reload(&self) -> Result<(), String> {
            if self.reload_ok.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("probe.yaml:3:5: unknown key `intervall`".into())
            }
        }
        fn ready(&self) -> bool {
            true
        }
    }

    async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        tcp.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn routes_tokens_and_errors() {
        let api = Arc::new(Fake {
            reload_ok: AtomicBool::new(false),
        });
        let token = Token::new("s3cret", "the test").unwrap();
        let server = AdminServer::start("127.0.0.1:0", api.clone(), Some(token))
            .await
            .unwrap();
        let addr = server.local_addr();
        let metrics = get(addr, "/metrics", None).await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"));
        assert!(get(addr, "/-/targets", None).await.ends_with("{}"));
        assert!(
            get(addr, "/-/healthy", None)
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, "/-/ready", None)
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(get(addr, "/nope", None).await.starts_with("HTTP/1.1 404"));
        assert!(
            get(addr, "/-/reload", None)
                .await
                .starts_with("HTTP/1.1 401")
        );
        assert!(
            get(addr, "/-/reload", Some("wrong"))
                .await
                .starts_with("HTTP/1.1 401")
        );
        let failed = get(addr, "/-/reload", Some("s3cret")).await;
        assert!(failed.starts_with("HTTP/1.1 500"), "{failed}");
        assert!(failed.contains("probe.yaml:3:5"), "{failed}");
        api.reload_ok.store(true, Ordering::Relaxed);
        assert!(get(addr, "/-/reload", Some("s3cret")).await.ends_with("ok"));
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let api = Arc::new(Fake {
            reload_ok: AtomicBool::new(true),
        });
        let error = AdminServer::start(&addr, api, None).await.unwrap_err();
        assert!(error.to_string().contains(&addr), "{error}");
    }
}
