//! The operator's client of the server's HTTP endpoints (`probermesh task`, `targets`,
//! `task-key`), as the Go CLI: plain HTTP/1.1 over TCP, one connection per request, a timeout
//! on every request and a limit on every answer's body.
//!
//! - [`ServerUrl`]: the Go `--server.http.url` (`host:port`, `http://host:port`, a trailing
//!   `/` or not; `https://` is refused: the endpoints are plain HTTP).
//! - [`AdminClient`]: `POST /-/task`, `GET /-/task/<id>`, `GET /-/targets`, with the admin
//!   bearer token when given; a non-200 answer is [`ClientError::Status`], saying the HTTP
//!   status and the envelope's `msg` and `data` (`401 unauthorized: no Authorization header`).
//! - [`TaskRequest`]: the Go request body, and [`TaskRequest::sign`] for agents that pin a task
//!   key (the fields `core::wire::task_signing_bytes` covers, and the signature).
//! - [`TraceAsk`], [`AdminClient::request_trace`], [`AdminClient::traces`] and
//!   [`AdminClient::wait_trace`] for `probermesh trace` and `traces`; [`TraceView::render`]
//!   prints a finished trace as mtr does, with its blame line.
//! - [`admin_token`], [`read_signing_key`], [`write_new_key`]: the files the client reads and
//!   writes (the private key 0600, never overwritten).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use probermesh_core::link::TaskSpec;
use probermesh_core::matcher::MatchOp;
use probermesh_core::model::UnixMillis;
use probermesh_core::task::TaskState;
use probermesh_core::task::signing::{TaskSigningKey, encode_hex};
use probermesh_core::wire::task_signing_bytes;
use serde::{Deserialize, Serialize};

use crate::secret::Token;

/// The longest an answer's body may be.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// The default timeout of one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A signed task's default lifetime (`--ttl`), as the server's.
pub const DEFAULT_SIGNED_TTL: Duration = Duration::from_secs(300);
/// A signed task's default timeout (`--timeout`), as the agents'.
pub const DEFAULT_SIGNED_TIMEOUT: Duration = Duration::from_secs(30);
/// A signed task's output limit, per stream.
pub const SIGNED_OUTPUT_LIMIT_BYTES: usize = 65536;
/// The environment variables holding the admin token, first found wins.
pub const TOKEN_ENV_VARS: [&str; 2] = ["PROBERMESH_ADMIN_TOKEN", "PROBERMESH_TOKEN"];

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not one we can use.
    #[error("server URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// No TCP connection, or the connection broke.
    #[error("{what} {url}: {cause}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The request's URL.
        url: String,
        /// The cause.
        cause: String,
    },
    /// No answer in time.
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        /// The request's URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The server answered with another status than 200.
    #[error("{url}: {status} {msg}: {data}")]
    Status {
        /// The request's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The envelope's `msg` (or the status' reason).
        msg: String,
        /// The envelope's `data`, or the body's text.
        data: String,
    },
    /// The answer is not the JSON we expect.
    #[error("{url}: unexpected answer: {why}")]
    Decode {
        /// The request's URL.
        url: String,
        /// What is wrong.
        why: String,
    },
}

/// The server's HTTP address.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ServerUrl {
    host: String,
    port: u16,
}

impl ServerUrl {
    /// Parses the Go `--server.http.url`: `host:port` or `http://host:port`, optionally with a
    /// trailing `/`; the port defaults to 80 with `http://`. IPv6 hosts go in brackets.
    ///
    /// # Errors
    /// [`ClientError::Url`].
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let refuse = |why| ClientError::Url {
            url: text.to_owned(),
            why,
        };
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let (rest, default_port) = if lower.starts_with("https://") {
            return Err(refuse(
                "https is not served: the server's HTTP endpoints are plain HTTP (use http://host:port)",
            ));
        } else if lower.starts_with("http://") {
            (&trimmed["http://".len()..], Some(80))
        } else if trimmed.contains("://") {
            return Err(refuse("only http:// URLs are served"));
        } else {
            (trimmed, None)
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains(['/', '?', '#', '@']) {
            return Err(refuse(
                "expected host:port, without a path, query or user (the endpoints' paths are fixed)",
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| refuse("an IPv6 address without its closing ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| refuse("expected ':port' after ']'"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(refuse("an IPv6 address goes in brackets: [::1]:6001"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(refuse("no host"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| refuse("the port is not a number from 1 to 65535"))?,
            None => default_port.ok_or_else(|| refuse("no port: expected host:port"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port` (IPv6 in brackets), as the `Host` header says it.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The full URL of `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority())
    }
}

/// The admin token: from `file` when given, else from the first of [`TOKEN_ENV_VARS`] that is
/// set; `None` when neither (the server may not need one, and says so when it does).
///
/// # Errors
/// The token error, naming the file or variable.
pub fn admin_token(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Option<Token>, crate::secret::TokenError> {
    if let Some(path) = file {
        return Token::from_file(path).map(Some);
    }
    for name in TOKEN_ENV_VARS {
        if let Some(value) = env(name) {
            let text = value
                .into_string()
                .map_err(|_| crate::secret::TokenError::NotUtf8 {
                    origin: name.to_owned(),
                })?;
            return Token::new(&text, name).map(Some);
        }
    }
    Ok(None)
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file holds no usable key.
    #[error("{path}: {cause}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: probermesh_core::task::signing::KeyError,
    },
    /// No randomness for a new key.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Reads a task private key file.
///
/// # Errors
/// [`KeyFileError`].
pub fn read_signing_key(path: &Path) -> Result<TaskSigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|cause| KeyFileError::Io {
        path: path.to_owned(),
        cause,
    })?;
    TaskSigningKey::parse(&text).map_err(|cause| KeyFileError::Key {
        path: path.to_owned(),
        cause,
    })
}

/// A new key pair from the operating system's randomness.
///
/// # Errors
/// [`KeyFileError::Random`].
pub fn new_signing_key() -> Result<TaskSigningKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
    Ok(TaskSigningKey::from_seed(seed))
}

/// Writes `key` to `path` (mode 0600, refused when the file exists) and its public half to
/// `<path>.pub` (mode 0644, also refused when it exists); returns the public file's path.
///
/// # Errors
/// [`KeyFileError::Io`] naming the file.
pub fn write_new_key(path: &Path, key: &TaskSigningKey) -> Result<PathBuf, KeyFileError> {
    let mut public_path = path.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |cause| KeyFileError::Io { path, cause }
    };
    for existing in [path, public_path.as_path()] {
        if existing.exists() {
            return Err(io(existing)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; not overwritten",
            )));
        }
    }
    let write = |path: &Path, mode: u32, text: String| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io(path))?;
        file.write_all(text.as_bytes()).map_err(io(path))?;
        file.sync_all().map_err(io(path))
    };
    write(
        path,
        0o600,
        format!("# probermesh task private key\n{}\n", key.to_hex()),
    )?;
    write(
        &public_path,
        0o644,
        format!(
            "# probermesh task public key (-agent.task.pubkey)\n{}\n",
            key.public().to_hex()
        ),
    )?;
    Ok(public_path)
}

/// The `POST /-/task` body: the Go request and our optional fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The region pattern.
    pub region: String,
    /// The region operator (`=`, `!=`, `=~`, `!~`).
    pub expr: String,
    /// The command line.
    pub cmd: String,
    /// The command's timeout, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// How long the task waits for agents, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<f64>,
    /// Reach more agents than the server's cap.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub confirm: bool,
    /// A signed task's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// A signed task's expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// A signed task's timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A signed task's output limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_limit_bytes: Option<usize>,
    /// The signature, 128 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Why a task could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The operator is not one of `=`, `!=`, `=~`, `!~`.
    #[error("operator {0:?}: expected =, !=, =~ or !~")]
    Operator(String),
    /// No randomness for the id.
    #[error("no randomness for the task id: {0}")]
    Random(String),
}

/// A random signed-task id in [2^52, 2^53) (exact as a JSON number in any client).
///
/// # Errors
/// [`SignError::Random`].
pub fn random_task_id() -> Result<u64, SignError> {
    let r = getrandom::u64().map_err(|e| SignError::Random(e.to_string()))?;
    Ok((1 << 52) | (r & ((1 << 52) - 1)))
}

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn now_unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl TaskRequest {
    /// The task spec the signature covers, from this request's fields (`None` when it is not
    /// signed or its operator is unknown).
    #[must_use]
    pub fn signed_spec(&self) -> Option<TaskSpec> {
        Some(TaskSpec {
            id: self.id?,
            command: self.cmd.clone(),
            timeout: Duration::from_millis(self.timeout_ms?),
            output_limit_bytes: self.output_limit_bytes?,
            expires_at: UnixMillis(self.expires_at_ms?),
            region_op: self.expr.parse::<MatchOp>().ok()?,
            region_pattern: self.region.clone(),
            signature: None,
        })
    }

    /// Signs the task with `key` as task `id`, expiring `ttl` (else 300 s) after `now_ms`,
    /// with the timeout (else 30 s) and the output limit of 64 KiB: fills `id`,
    /// `expires_at_ms`, `timeout_ms`, `output_limit_bytes` and `signature`.
    ///
    /// # Errors
    /// [`SignError::Operator`].
    pub fn sign(&mut self, key: &TaskSigningKey, id: u64, now_ms: u64) -> Result<(), SignError> {
        let region_op = self
            .expr
            .parse::<MatchOp>()
            .map_err(|_| SignError::Operator(self.expr.clone()))?;
        let seconds = |s: Option<f64>, default: Duration| {
            s.filter(|s| s.is_finite() && *s > 0.0 && *s <= 1e9)
                .map_or(default, Duration::from_secs_f64)
        };
        let ttl = seconds(self.ttl, DEFAULT_SIGNED_TTL);
        let timeout = seconds(self.timeout, DEFAULT_SIGNED_TIMEOUT);
        let spec = TaskSpec {
            id,
            command: self.cmd.clone(),
            timeout: Duration::from_millis(millis(timeout)),
            output_limit_bytes: SIGNED_OUTPUT_LIMIT_BYTES,
            expires_at: UnixMillis(now_ms.saturating_add(millis(ttl))),
            region_op,
            region_pattern: self.region.clone(),
            signature: None,
        };
        let signature = key.sign(&task_signing_bytes(&spec));
        self.id = Some(spec.id);
        self.expires_at_ms = Some(spec.expires_at.as_millis());
        self.timeout_ms = Some(millis(spec.timeout));
        self.output_limit_bytes = Some(spec.output_limit_bytes);
        self.signature = Some(encode_hex(&signature.0));
        Ok(())
    }
}

/// An agent a task matched, and where its run stands.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct MatchedAgent {
    /// Its region.
    #[serde(default)]
    pub region: String,
    /// Its IP.
    #[serde(default)]
    pub ip: String,
    /// Its state (`pending`, `running`, `done`, …).
    #[serde(default)]
    pub state: String,
    /// Why it is in that state, when said.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer to `POST /-/task`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Submitted {
    /// The task id.
    pub task_id: u64,
    /// When it expires.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// The agents it matched.
    #[serde(default)]
    pub matched: Vec<MatchedAgent>,
}

/// One agent's run of a task (`GET /-/task/<id>`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct AgentRun {
    /// Its region.
    #[serde(default)]
    pub region: String,
    /// Its IP.
    #[serde(default)]
    pub ip: String,
    /// Its state.
    #[serde(default)]
    pub state: String,
    /// Why, when said.
    #[serde(default)]
    pub reason: Option<String>,
    /// The exit code, once filed.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Whether it timed out.
    #[serde(default)]
    pub timed_out: Option<bool>,
    /// Whether output was cut at the limit.
    #[serde(default)]
    pub truncated: Option<bool>,
    /// How long it ran.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Its standard output.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Its standard error.
    #[serde(default)]
    pub stderr: Option<String>,
    /// When it ended, present once its record (exit code and output) is filed.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
}

impl AgentRun {
    /// Whether its state is final: nothing more will happen to this run.
    #[must_use]
    pub fn is_final(&self) -> bool {
        TaskState::from_name(&self.state).is_some_and(TaskState::is_final)
    }

    /// Whether it is final and its record is filed (`finished_at_ms`): the server shows a
    /// run's final state a moment before the exit code and output that come with the record.
    #[must_use]
    pub fn is_filed(&self) -> bool {
        self.is_final() && self.finished_at_ms.is_some()
    }

    /// The header line, `== <region> <ip>: <state> (exit <code>, <duration> ms)`, and the
    /// reason when there is one.
    #[must_use]
    pub fn header(&self) -> String {
        let exit = self
            .exit_code
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        let duration = self
            .duration_ms
            .map_or_else(|| "-".to_owned(), |d| d.to_string());
        let mut line = format!(
            "== {} {}: {} (exit {exit}, {duration} ms)",
            self.region, self.ip, self.state
        );
        if self.timed_out == Some(true) {
            line.push_str(" [timed out]");
        }
        if self.truncated == Some(true) {
            line.push_str(" [output truncated]");
        }
        if let Some(reason) = self.reason.as_deref().filter(|r| !r.is_empty()) {
            line.push_str(&format!(": {reason}"));
        }
        line
    }

    /// The header, then stdout and stderr, each labelled (an empty one is left out).
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = self.header();
        text.push('\n');
        for (label, stream) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if let Some(stream) = stream.as_deref().filter(|s| !s.is_empty()) {
                text.push_str(&format!("-- {label}:\n{stream}"));
                if !stream.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        text
    }
}

/// The answer to `GET /-/task/<id>`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct TaskStatus {
    /// The task id.
    #[serde(default)]
    pub task_id: u64,
    /// Each agent's run.
    #[serde(default)]
    pub agents: Vec<AgentRun>,
    /// How many runs are in each state.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// Whether the server considers the task over.
    #[serde(default)]
    pub finished: Option<bool>,
}

impl TaskStatus {
    /// The run of the agent at `region`/`ip`.
    #[must_use]
    pub fn run_of(&self, region: &str, ip: &str) -> Option<&AgentRun> {
        self.agents
            .iter()
            .find(|a| a.region == region && a.ip == ip)
    }

    /// Whether every agent of `matched` has a run in a final state.
    #[must_use]
    pub fn all_final(&self, matched: &[MatchedAgent]) -> bool {
        matched.iter().all(|m| {
            self.run_of(&m.region, &m.ip)
                .is_some_and(AgentRun::is_final)
        })
    }

    /// Whether every agent of `matched` has a final run whose record is filed.
    #[must_use]
    pub fn all_filed(&self, matched: &[MatchedAgent]) -> bool {
        matched.iter().all(|m| {
            self.run_of(&m.region, &m.ip)
                .is_some_and(AgentRun::is_filed)
        })
    }

    /// Whether every agent of `matched` is `done`.
    #[must_use]
    pub fn all_done(&self, matched: &[MatchedAgent]) -> bool {
        matched.iter().all(|m| {
            self.run_of(&m.region, &m.ip)
                .is_some_and(|run| run.state == TaskState::Done.as_str())
        })
    }
}

/// Keeps the regions of the `/-/targets` JSON whose name `region` matches as a whole, and of
/// those the blocks of `prober_type` (when given).
///
/// # Errors
/// The regex error; a JSON that is not `{region: [block]}` is returned unfiltered.
pub fn filter_targets(
    targets: serde_json::Value,
    region: &str,
    prober_type: Option<&str>,
) -> Result<serde_json::Value, regex::Error> {
    let anchored = regex::Regex::new(&format!("^(?:{region})$"))?;
    let serde_json::Value::Object(regions) = targets else {
        return Ok(targets);
    };
    let kept = regions
        .into_iter()
        .filter(|(name, _)| anchored.is_match(name))
        .filter_map(|(name, blocks)| match (prober_type, blocks) {
            (None, blocks) => Some((name, blocks)),
            (Some(kind), serde_json::Value::Array(blocks)) => {
                let blocks: Vec<serde_json::Value> = blocks
                    .into_iter()
                    .filter(|b| b.get("prober_type").and_then(|t| t.as_str()) == Some(kind))
                    .collect();
                (!blocks.is_empty()).then_some((name, serde_json::Value::Array(blocks)))
            }
            (Some(_), other) => Some((name, other)),
        })
        .collect();
    Ok(serde_json::Value::Object(kept))
}

/// An operator's trace request (the `POST /-/trace` body): `agent` or `source_region`, and
/// `target_region` or `target`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceAsk {
    /// `<region>/<ip>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The source region (a free agent of it runs the trace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_region: Option<String>,
    /// The target region (a host of it is traced to, and the trace is filed under the pair).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_region: Option<String>,
    /// The address to trace to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Probes per hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u16>,
    /// The highest TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hops: Option<u8>,
}

/// The `/api/v1/traces` query of these filters, percent-encoded (empty ones left out).
#[must_use]
pub fn traces_query(filters: &[(&str, Option<&str>)]) -> String {
    filters
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What `POST /-/trace` answered: the trace sent.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq)]
pub struct TraceSent {
    /// Its id.
    pub id: u64,
    /// Who runs it (`<region>/<ip>`).
    pub agent: String,
    /// Where to.
    pub target: String,
}

/// One hop of a finished trace.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct HopView {
    /// The TTL.
    pub ttl: u8,
    /// Who answered (`None`: nobody).
    #[serde(default)]
    pub host: Option<String>,
    /// Probes sent.
    pub sent: u32,
    /// Answers.
    pub received: u32,
    /// Fastest answer.
    #[serde(default)]
    pub rtt_best_seconds: Option<f64>,
    /// Mean.
    #[serde(default)]
    pub rtt_mean_seconds: Option<f64>,
    /// Slowest.
    #[serde(default)]
    pub rtt_worst_seconds: Option<f64>,
    /// Standard deviation.
    #[serde(default)]
    pub rtt_stddev_seconds: Option<f64>,
}

/// What a finished trace blames.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BlameView {
    /// `hop`, `rate_limited_only`, `clean` or `unreachable`.
    pub kind: String,
    /// The blamed hop's TTL.
    #[serde(default)]
    pub hop: Option<u8>,
    /// Who answered there.
    #[serde(default)]
    pub address: Option<String>,
    /// Its loss ratio.
    #[serde(default)]
    pub loss_ratio: Option<f64>,
    /// The verdict in one sentence.
    #[serde(default)]
    pub explanation: String,
}

/// A finished trace as `/api/v1/traces` shows it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TraceView {
    /// Its id.
    pub id: u64,
    /// The pair's source region.
    #[serde(default)]
    pub source_region: Option<String>,
    /// The pair's target region.
    #[serde(default)]
    pub target_region: Option<String>,
    /// Why it ran.
    #[serde(default)]
    pub reason: String,
    /// Who ran it.
    pub agent: String,
    /// Where to.
    pub target: String,
    /// When it ended.
    #[serde(default)]
    pub ended_at_unix_ms: u64,
    /// `reported`, `failed`, `timed_out` or `abandoned`.
    pub outcome: String,
    /// Why the agent's trace stopped short.
    #[serde(default)]
    pub error: Option<String>,
    /// The verdict (reported traces).
    #[serde(default)]
    pub blame: Option<BlameView>,
    /// The hops.
    #[serde(default)]
    pub hops: Vec<HopView>,
}

/// A trace still running.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RunningView {
    /// Its id.
    pub id: u64,
    /// Who runs it.
    pub agent: String,
    /// Where to.
    pub target: String,
}

/// The `/api/v1/traces` answer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TracesAnswer {
    /// Finished traces, newest first.
    #[serde(default)]
    pub traces: Vec<TraceView>,
    /// Traces running.
    #[serde(default)]
    pub in_flight: Vec<RunningView>,
}

impl TraceView {
    /// Whether the trace was reported without an agent error.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.outcome == "reported" && self.error.is_none()
    }

    /// The blame line: what the verdict blames, in words.
    #[must_use]
    pub fn blame_line(&self) -> String {
        match (&self.blame, self.outcome.as_str()) {
            (Some(blame), _) => {
                let what = match (blame.hop, &blame.address, blame.loss_ratio) {
                    (Some(ttl), Some(address), Some(loss)) if blame.kind == "hop" => {
                        format!("hop {ttl} ({address}, {:.1}% loss)", loss * 100.0)
                    }
                    _ => blame.kind.replace('_', " "),
                };
                format!("blame: {what}: {}", printable(&blame.explanation))
            }
            (None, "timed_out") => "blame: none: no report came in time".to_owned(),
            (None, "abandoned") => {
                "blame: none: the agent disconnected before reporting".to_owned()
            }
            (None, "failed") => "blame: none: the trace did not run (see the error)".to_owned(),
            (None, other) => format!("blame: none ({other})"),
        }
    }

    /// An mtr-like report: a header, one line per hop (TTL, host, Loss%, Snt, Avg, Best,
    /// Wrst, StDev in milliseconds), the blame line, and the agent's error if any.
    #[must_use]
    pub fn render(&self) -> String {
        let pair = match (&self.source_region, &self.target_region) {
            (Some(s), Some(t)) => format!(" ({s} -> {t})"),
            _ => String::new(),
        };
        let mut out = format!(
            "trace {} from {} to {}{pair}, {}: {}\n",
            self.id, self.agent, self.target, self.reason, self.outcome
        );
        let host_width = self
            .hops
            .iter()
            .map(|h| h.host.as_deref().map_or(3, str::len))
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!(
            "{:>3}  {:<host_width$}  {:>6}  {:>4}  {:>7}  {:>7}  {:>7}  {:>7}\n",
            "TTL", "Host", "Loss%", "Snt", "Avg", "Best", "Wrst", "StDev"
        ));
        let ms = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{:.1}", s * 1e3));
        for hop in &self.hops {
            let loss = if hop.sent == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{:.1}%",
                    100.0 * (1.0 - f64::from(hop.received) / f64::from(hop.sent))
                )
            };
            out.push_str(&format!(
                "{:>3}  {:<host_width$}  {:>6}  {:>4}  {:>7}  {:>7}  {:>7}  {:>7}\n",
                hop.ttl,
                hop.host.as_deref().unwrap_or("???"),
                loss,
                hop.sent,
                ms(hop.rtt_mean_seconds),
                ms(hop.rtt_best_seconds),
                ms(hop.rtt_worst_seconds),
                ms(hop.rtt_stddev_seconds),
            ));
        }
        out.push_str(&self.blame_line());
        out.push('\n');
        if let Some(error) = &self.error {
            out.push_str(&format!("error: {}\n", printable(error)));
        }
        out
    }
}

/// `text` with control characters (an agent's error could carry terminal escapes) shown as
/// `\u{..}` escapes, so printing it cannot drive the operator's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The client of one server.
#[derive(Debug)]
pub struct AdminClient {
    server: ServerUrl,
    token: Option<Token>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

impl AdminClient {
    /// A client of `server`, sending `token` as a bearer token when given, each request given
    /// up after `timeout`.
    #[must_use]
    pub const fn new(server: ServerUrl, token: Option<Token>, timeout: Duration) -> Self {
        Self {
            server,
            token,
            timeout,
        }
    }

    /// The server's URL of `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Submits a task.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn submit(&self, task: &TaskRequest) -> Result<Submitted, ClientError> {
        let body = serde_json::to_vec(task).map_err(|e| ClientError::Decode {
            url: self.url("/-/task"),
            why: e.to_string(),
        })?;
        let data = self.envelope(Method::POST, "/-/task", Some(body)).await?;
        self.decode("/-/task", data)
    }

    /// Where task `id` stands.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self, id: u64) -> Result<TaskStatus, ClientError> {
        let path = format!("/-/task/{id}");
        let data = self.envelope(Method::GET, &path, None).await?;
        self.decode(&path, data)
    }

    /// Polls task `id` every `every` until every agent of `matched` has a final run with
    /// its record filed (its output) or `wait` has passed; the last status seen.
    ///
    /// # Errors
    /// [`ClientError`] of a poll.
    pub async fn wait(
        &self,
        id: u64,
        matched: &[MatchedAgent],
        every: Duration,
        wait: Duration,
    ) -> Result<TaskStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let status = self.status(id).await?;
            if status.all_filed(matched) || tokio::time::Instant::now() + every > deadline {
                return Ok(status);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The `/-/targets` JSON.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn targets(&self) -> Result<serde_json::Value, ClientError> {
        let (status, body) = self.request(Method::GET, "/-/targets", None).await?;
        if status != StatusCode::OK {
            return Err(self.status_error("/-/targets", status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: self.url("/-/targets"),
            why: e.to_string(),
        })
    }

    /// The envelope's `data` of `GET path` (a 200 answer).
    ///
    /// # Errors
    /// [`ClientError`], a status other than 200 with the server's `msg` and `data`.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.envelope(Method::GET, path, None).await
    }

    /// The envelope's `data` of `POST path` with `body` as JSON (a 200 answer).
    ///
    /// # Errors
    /// [`ClientError`], a status other than 200 with the server's `msg` and `data`.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            why: e.to_string(),
        })?;
        self.envelope(Method::POST, path, Some(bytes)).await
    }

    /// Asks for a path trace (`POST /-/trace`).
    ///
    /// # Errors
    /// [`ClientError`]; a refusal is [`ClientError::Status`] (404 no agent, 409 busy, 503 off).
    pub async fn request_trace(&self, ask: &TraceAsk) -> Result<TraceSent, ClientError> {
        let body = serde_json::to_vec(ask).map_err(|e| ClientError::Decode {
            url: self.url("/-/trace"),
            why: e.to_string(),
        })?;
        let data = self.envelope(Method::POST, "/-/trace", Some(body)).await?;
        self.decode("/-/trace", data)
    }

    /// `GET /api/v1/traces?<query>` (`query` already encoded, see [`traces_query`]).
    ///
    /// # Errors
    /// [`ClientError`]; an error answer says the server's `error`.
    pub async fn traces(&self, query: &str) -> Result<TracesAnswer, ClientError> {
        let path = format!("/api/v1/traces?{query}");
        let (status, body) = self.request(Method::GET, &path, None).await?;
        if status != StatusCode::OK {
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(ClientError::Status {
                url: self.url(&path),
                status: status.as_u16(),
                msg: status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase(),
                data: error,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: self.url(&path),
            why: e.to_string(),
        })
    }

    /// Polls trace `id` every `every` until it is done or `wait` has passed: its record, or
    /// `None` when it is still running then.
    ///
    /// # Errors
    /// [`ClientError`] of a poll (404 when the server neither keeps nor runs it).
    pub async fn wait_trace(
        &self,
        id: u64,
        every: Duration,
        wait: Duration,
    ) -> Result<Option<TraceView>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut answer = self.traces(&format!("id={id}")).await?;
            if let Some(done) = answer.traces.pop() {
                return Ok(Some(done));
            }
            if tokio::time::Instant::now() + every > deadline {
                return Ok(None);
            }
            tokio::time::sleep(every).await;
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        data: serde_json::Value,
    ) -> Result<T, ClientError> {
        serde_json::from_value(data).map_err(|e| ClientError::Decode {
            url: self.url(path),
            why: e.to_string(),
        })
    }

    fn status_error(&self, path: &str, status: StatusCode, body: &[u8]) -> ClientError {
        let (msg, data) = match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => (
                envelope.msg.unwrap_or_default(),
                match envelope.data {
                    serde_json::Value::String(text) => text,
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                },
            ),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase(),
                String::from_utf8_lossy(body).trim().to_owned(),
            ),
        };
        ClientError::Status {
            url: self.url(path),
            status: status.as_u16(),
            msg,
            data,
        }
    }

    /// The envelope's `data` of a 200 answer.
    async fn envelope(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, ClientError> {
        let (status, body) = self.request(method, path, body).await?;
        // 200, or 202 for a trace sent.
        if !status.is_success() {
            return Err(self.status_error(path, status, &body));
        }
        serde_json::from_slice::<Envelope>(&body)
            .map(|e| e.data)
            .map_err(|e| ClientError::Decode {
                url: self.url(path),
                why: e.to_string(),
            })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = self.url(path);
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                after: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = self.url(path);
        let io = |what: &'static str| {
            let url = url.clone();
            move |cause: &dyn std::fmt::Display| ClientError::Io {
                what,
                url,
                cause: cause.to_string(),
            }
        };
        let stream = tokio::net::TcpStream::connect((self.server.host.as_str(), self.server.port))
            .await
            .map_err(|e| io("connecting to")(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io("connecting to")(&e))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.server.authority())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "probermesh-cli");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| io("building the request to")(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| io("requesting")(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| io("reading the answer of")(&*e))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn server_urls_in_the_go_forms_are_accepted() {
        for (text, authority) in [
            ("0.0.0.0:6001", "0.0.0.0:6001"),
            ("localhost:6001/", "localhost:6001"),
            ("http://10.0.0.1:6001", "10.0.0.1:6001"),
            ("HTTP://host:6001/", "host:6001"),
            ("http://host", "host:80"),
            ("[::1]:6001", "[::1]:6001"),
            ("http://[fe80::1]:7000/", "[fe80::1]:7000"),
        ] {
            let url = ServerUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.authority(), authority, "{text}");
        }
        assert_eq!(
            ServerUrl::parse("host:1").expect("ok").url("/-/task/3"),
            "http://host:1/-/task/3"
        );
    }

    #[test]
    fn other_server_urls_are_refused_with_the_reason() {
        for (text, says) in [
            ("https://host:6001", "plain HTTP"),
            ("ftp://host:21", "only http://"),
            ("host", "no port"),
            ("host:0", "port"),
            ("host:99999", "port"),
            ("host:6001/metrics", "path"),
            ("::1:6001", "brackets"),
            ("[::1:6001", "']'"),
            (":6001", "no host"),
            ("http://user@host:1", "user"),
        ] {
            let error = ServerUrl::parse(text).expect_err(text).to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn the_token_comes_from_the_admin_variable_first() {
        let env = |name: &str| match name {
            "PROBERMESH_ADMIN_TOKEN" => Some("admin\n".into()),
            "PROBERMESH_TOKEN" => Some("agents".into()),
            _ => None,
        };
        let token = admin_token(None, env).expect("ok").expect("some");
        assert_eq!(token.expose(), "admin");
        let token = admin_token(None, |n: &str| {
            (n == "PROBERMESH_TOKEN").then(|| "agents".into())
        })
        .expect("ok")
        .expect("some");
        assert_eq!(token.expose(), "agents");
        assert!(admin_token(None, |_: &str| None).expect("ok").is_none());
    }

    #[test]
    fn a_signed_request_verifies_from_its_json_fields() {
        let key = TaskSigningKey::from_seed([9; 32]);
        let mut request = TaskRequest {
            region: "eu-.*".into(),
            expr: "=~".into(),
            cmd: "mtr -rwc 3 example.com".into(),
            timeout: Some(12.0),
            ..TaskRequest::default()
        };
        let id = random_task_id().expect("random");
        assert!((1 << 52..1 << 53).contains(&id));
        request.sign(&key, id, 1_000_000).expect("signed");
        let json = serde_json::to_string(&request).expect("json");
        let sent: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(sent["expires_at_ms"], 1_000_000 + 300_000);
        assert_eq!(sent["timeout_ms"], 12_000);
        assert_eq!(sent["output_limit_bytes"], 65536);
        assert_eq!(sent["id"], id);
        // What the server rebuilds from the JSON it receives.
        let received: TaskRequest = serde_json::from_str(&json).expect("parse");
        let spec = received.signed_spec().expect("signed fields");
        let hex = received.signature.expect("signature");
        let bytes = probermesh_core::task::signing::decode_hex(&hex).expect("hex");
        let signature = probermesh_core::link::Signature(bytes.try_into().expect("64 bytes"));
        assert_eq!(
            key.public()
                .verify(&task_signing_bytes(&spec), Some(&signature)),
            Ok(())
        );
        let mut widened = spec;
        widened.region_pattern = ".*".into();
        assert!(
            key.public()
                .verify(&task_signing_bytes(&widened), Some(&signature))
                .is_err()
        );
        assert!(matches!(
            TaskRequest {
                expr: "~".into(),
                ..TaskRequest::default()
            }
            .sign(&key, id, 0),
            Err(SignError::Operator(_))
        ));
    }

    #[test]
    fn a_new_key_is_written_once_private_and_public() {
        let dir = std::env::temp_dir().join(format!("pm-admin-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("task.key");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(dir.join("task.key.pub"));
        let key = TaskSigningKey::from_seed([3; 32]);
        let public = write_new_key(&path, &key).expect("written");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            read_signing_key(&path).expect("read").to_hex(),
            key.to_hex()
        );
        let public_text = std::fs::read_to_string(&public).expect("pub");
        assert_eq!(
            probermesh_core::task::signing::TaskPublicKey::parse(&public_text).expect("parse"),
            key.public()
        );
        assert!(write_new_key(&path, &key).is_err(), "not overwritten");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    /// A one-request HTTP server: hands the request's text to `check` and answers `status`
    /// with `body`.
    async fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (ServerUrl, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).into_owned();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().expect("length"))
                        })
                        .unwrap_or(0);
                    if rest.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&seen).into_owned()
        });
        (
            ServerUrl::parse(&format!("http://{addr}/")).expect("url"),
            handle,
        )
    }

    fn client(url: ServerUrl) -> AdminClient {
        AdminClient::new(
            url,
            Some(Token::new("s3cret", "test").expect("token")),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn a_task_is_posted_with_the_token_and_its_answer_parsed() {
        let (url, server) = serve_once(
            "200 OK",
            r#"{"code":200,"msg":"success","data":{"task_id":42,"expires_at_ms":9,"matched":[{"region":"eu","ip":"10.0.0.1","state":"pending","reason":null}],"status":"/-/task/42"}}"#,
        )
        .await;
        let request = TaskRequest {
            region: ".*".into(),
            expr: "=~".into(),
            cmd: "ping -c 1 x".into(),
            ttl: Some(60.0),
            confirm: true,
            ..TaskRequest::default()
        };
        let submitted = client(url).submit(&request).await.expect("submitted");
        assert_eq!(submitted.task_id, 42);
        assert_eq!(submitted.expires_at_ms, Some(9));
        assert_eq!(
            submitted.matched,
            vec![MatchedAgent {
                region: "eu".into(),
                ip: "10.0.0.1".into(),
                state: "pending".into(),
                reason: None
            }]
        );
        let seen = server.await.expect("server");
        assert!(seen.starts_with("POST /-/task HTTP/1.1\r\n"), "{seen}");
        let lower = seen.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer s3cret\r\n"), "{seen}");
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{seen}"
        );
        let body: serde_json::Value =
            serde_json::from_str(seen.split_once("\r\n\r\n").expect("body").1).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"region": ".*", "expr": "=~", "cmd": "ping -c 1 x", "ttl": 60.0, "confirm": true})
        );
    }

    #[tokio::test]
    async fn a_trace_is_asked_for_and_its_answer_and_record_parsed() {
        let (url, server) = serve_once(
            "202 Accepted",
            r#"{"code":202,"msg":"success","data":{"id":9,"agent":"eu/10.0.0.1","target":"10.0.1.1","status":"/api/v1/traces?id=9"}}"#,
        )
        .await;
        let ask = TraceAsk {
            source_region: Some("eu".into()),
            target_region: Some("us".into()),
            rounds: Some(5),
            ..TraceAsk::default()
        };
        let sent = client(url).request_trace(&ask).await.expect("sent");
        assert_eq!(sent.id, 9);
        assert_eq!(sent.agent, "eu/10.0.0.1");
        let seen = server.await.expect("server");
        assert!(seen.starts_with("POST /-/trace HTTP/1.1\r\n"), "{seen}");
        let body: serde_json::Value =
            serde_json::from_str(seen.split_once("\r\n\r\n").expect("body").1).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"source_region": "eu", "target_region": "us", "rounds": 5})
        );
        let (url, server) = serve_once(
            "409 Conflict",
            r#"{"code":409,"msg":"error","data":"every agent of the source region that takes traces has a trace in flight"}"#,
        )
        .await;
        let error = client(url).request_trace(&ask).await.expect_err("busy");
        assert!(
            error.to_string().contains("409 error: every agent"),
            "{error}"
        );
        server.await.expect("server");
        let (url, server) =
            serve_once("404 Not Found", r#"{"version":1,"error":"no trace 9"}"#).await;
        let error = client(url).traces("id=9").await.expect_err("unknown");
        assert!(
            error.to_string().contains("404 not found: no trace 9"),
            "{error}"
        );
        server.await.expect("server");
    }

    fn finished_trace() -> TraceView {
        let hop = |ttl: u8, host: Option<&str>, received: u32| HopView {
            ttl,
            host: host.map(str::to_owned),
            sent: 20,
            received,
            rtt_best_seconds: host.map(|_| 0.001),
            rtt_mean_seconds: host.map(|_| 0.0025),
            rtt_worst_seconds: host.map(|_| 0.004),
            rtt_stddev_seconds: host.map(|_| 0.0005),
        };
        TraceView {
            id: 9,
            source_region: Some("eu".into()),
            target_region: Some("us".into()),
            reason: "operator".into(),
            agent: "eu/10.0.0.1".into(),
            target: "10.0.1.1".into(),
            ended_at_unix_ms: 1,
            outcome: "reported".into(),
            error: None,
            blame: Some(BlameView {
                kind: "hop".into(),
                hop: Some(2),
                address: Some("10.9.0.2".into()),
                loss_ratio: Some(0.3),
                explanation: "loss starts at hop 2 and persists".into(),
            }),
            hops: vec![
                hop(1, Some("10.9.0.1"), 20),
                hop(2, Some("10.9.0.2"), 14),
                hop(3, None, 0),
                hop(4, Some("10.0.1.1"), 14),
            ],
        }
    }

    #[test]
    fn a_finished_trace_renders_as_an_mtr_table_with_its_blame_line() {
        let text = finished_trace().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "trace 9 from eu/10.0.0.1 to 10.0.1.1 (eu -> us), operator: reported"
        );
        assert_eq!(
            lines[1],
            "TTL  Host       Loss%   Snt      Avg     Best     Wrst    StDev"
        );
        assert_eq!(
            lines[2],
            "  1  10.9.0.1    0.0%    20      2.5      1.0      4.0      0.5"
        );
        assert_eq!(
            lines[3],
            "  2  10.9.0.2   30.0%    20      2.5      1.0      4.0      0.5"
        );
        assert_eq!(
            lines[4],
            "  3  ???       100.0%    20        -        -        -        -"
        );
        assert_eq!(
            lines[6],
            "blame: hop 2 (10.9.0.2, 30.0% loss): loss starts at hop 2 and persists"
        );
        assert_eq!(lines.len(), 7);
        let mut failed = finished_trace();
        failed.error = Some("no permission".into());
        assert!(!failed.succeeded());
        assert!(failed.render().ends_with("error: no permission\n"));
        let timed_out = TraceView {
            outcome: "timed_out".into(),
            blame: None,
            hops: Vec::new(),
            ..finished_trace()
        };
        assert!(!timed_out.succeeded());
        assert!(
            timed_out
                .render()
                .contains("blame: none: no report came in time")
        );
        assert_eq!(
            traces_query(&[
                ("source_region", Some("eu west")),
                ("agent", Some("eu/1.2.3.4")),
                ("id", None)
            ]),
            "source_region=eu%20west&agent=eu%2F1.2.3.4"
        );
    }

    #[tokio::test]
    async fn a_refusal_says_the_status_and_the_envelope() {
        let (url, server) = serve_once(
            "401 Unauthorized",
            r#"{"code":401,"msg":"unauthorized","data":"no Authorization header"}"#,
        )
        .await;
        let error = client(url)
            .submit(&TaskRequest::default())
            .await
            .expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("401 unauthorized: no Authorization header"),
            "{text}"
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_status_is_fetched_and_judged() {
        let (url, server) = serve_once(
            "200 OK",
            r#"{"code":200,"msg":"success","data":{"task_id":7,"agents":[
                {"region":"eu","ip":"10.0.0.1","state":"done","reason":null,"exit_code":0,"timed_out":false,"truncated":false,"duration_ms":15,"stdout":"hi\n","stderr":"","finished_at_ms":5},
                {"region":"us","ip":"10.0.0.2","state":"refused","reason":"no opt-in"}],
                "counts":{"done":1,"refused":1},"finished":true}}"#,
        )
        .await;
        let status = client(url).status(7).await.expect("status");
        let seen = server.await.expect("server");
        assert!(seen.starts_with("GET /-/task/7 HTTP/1.1\r\n"), "{seen}");
        let eu = MatchedAgent {
            region: "eu".into(),
            ip: "10.0.0.1".into(),
            ..MatchedAgent::default()
        };
        let us = MatchedAgent {
            region: "us".into(),
            ip: "10.0.0.2".into(),
            ..MatchedAgent::default()
        };
        assert!(status.all_final(&[eu.clone(), us.clone()]));
        assert!(status.all_filed(std::slice::from_ref(&eu)));
        assert!(
            !status.all_filed(&[eu.clone(), us.clone()]),
            "us is final but not filed yet"
        );
        assert!(status.all_done(std::slice::from_ref(&eu)));
        assert!(!status.all_done(&[eu, us]));
        assert_eq!(status.counts.get("done"), Some(&1));
        assert_eq!(
            status.agents[0].render(),
            "== eu 10.0.0.1: done (exit 0, 15 ms)\n-- stdout:\nhi\n"
        );
        assert_eq!(
            status.agents[1].header(),
            "== us 10.0.0.2: refused (exit -, - ms): no opt-in"
        );
    }

    #[tokio::test]
    async fn waiting_ends_once_the_final_runs_are_filed_not_at_their_final_state() {
        // The server's book says `done` a moment before the record with the output is filed.
        let (first, server1) = serve_once(
            "200 OK",
            r#"{"code":200,"msg":"success","data":{"task_id":7,"agents":[
                {"region":"eu","ip":"10.0.0.1","state":"done","reason":null}]}}"#,
        )
        .await;
        let (second, server2) = serve_once(
            "200 OK",
            r#"{"code":200,"msg":"success","data":{"task_id":7,"agents":[
                {"region":"eu","ip":"10.0.0.1","state":"done","reason":null,"exit_code":0,"duration_ms":3,"stdout":"hi\n","stderr":"","finished_at_ms":5}]}}"#,
        )
        .await;
        let eu = MatchedAgent {
            region: "eu".into(),
            ip: "10.0.0.1".into(),
            ..MatchedAgent::default()
        };
        // The first server answers once: a client that stopped at `done` would return its
        // answer, with no output; one that waits for the record polls again and fails.
        let early = client(first)
            .wait(
                7,
                std::slice::from_ref(&eu),
                Duration::from_millis(10),
                Duration::from_secs(5),
            )
            .await;
        server1.await.expect("server");
        assert!(
            early.is_err(),
            "polled again after an unfiled `done`: {early:?}"
        );
        let status = client(second)
            .wait(
                7,
                std::slice::from_ref(&eu),
                Duration::from_millis(10),
                Duration::from_secs(5),
            )
            .await
            .expect("filed");
        server2.await.expect("server");
        assert_eq!(status.agents[0].stdout.as_deref(), Some("hi\n"));
    }

    #[tokio::test]
    async fn no_server_is_a_connection_error_naming_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let error = client(ServerUrl::parse(&addr.to_string()).expect("url"))
            .targets()
            .await
            .expect_err("no server");
        assert!(matches!(error, ClientError::Io { .. }), "{error}");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[tokio::test]
    async fn targets_are_fetched_and_filtered() {
        let (url, server) = serve_once(
            "200 OK",
            r#"{"eu":[{"prober_type":"icmp","targets":["1.1.1.1"]},{"prober_type":"http","targets":["http://a"]}],"eu-west":[{"prober_type":"icmp","targets":["2.2.2.2"]}],"us":[{"prober_type":"icmp","targets":["3.3.3.3"]}]}"#,
        )
        .await;
        let targets = client(url).targets().await.expect("targets");
        server.await.expect("server");
        let eu = filter_targets(targets.clone(), "eu", Some("http")).expect("filter");
        assert_eq!(
            eu,
            serde_json::json!({"eu": [{"prober_type": "http", "targets": ["http://a"]}]})
        );
        let icmp = filter_targets(targets.clone(), "eu.*", Some("icmp")).expect("filter");
        assert_eq!(icmp.as_object().expect("object").len(), 2);
        assert_eq!(
            filter_targets(targets, ".+", None)
                .expect("all")
                .as_object()
                .expect("o")
                .len(),
            3
        );
        assert!(filter_targets(serde_json::json!({}), "(", None).is_err());
    }

    #[test]
    fn an_agents_error_cannot_drive_the_terminal() {
        assert_eq!(
            super::printable("no socket\u{1b}[2Jok\n"),
            "no socket\\u{1b}[2Jok\\u{a}"
        );
    }
}
