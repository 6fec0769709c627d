//! What the HTTP endpoints' test binaries share: a fixed server behind the endpoints and a
//! raw HTTP/1.1 request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use probermesh_adapters::admin::AdminApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TOKEN: &str = "admin-token-0123456789";

/// A server that answers the same every time, counting reloads.
pub struct FixedApi {
    pub reloads: AtomicUsize,
    /// What `/metrics` answers.
    pub metrics: Vec<u8>,
}

impl Default for FixedApi {
    fn default() -> Self {
        Self {
            reloads: AtomicUsize::new(0),
            metrics: b"prober_server_receive_points{prober_type=\"icmp\"} 1\n".to_vec(),
        }
    }
}

#[async_trait::async_trait]
impl AdminApi for FixedApi {
    fn metrics(&self) -> Vec<u8> {
        self.metrics.clone()
    }
    fn targets_generation(&self) -> u64 {
        0
    }
    fn targets_json(&self) -> (u64, String) {
        (0, "{}".into())
    }
    async fn reload(&self) -> Result<(), String> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn ready(&self) -> bool {
        true
    }
}

/// One request (`Connection: close`): the status, the head and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    request_with_body(addr, method, path, authorization, "").await
}

/// As [`request`], sending `body` (as JSON when it is not empty).
pub async fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    tcp.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{authorization}Connection: close\r\n\
             {content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
