//! The agent↔server link over QUIC (quinn) with TLS 1.3: ports `ServerLink` (agent side,
//! [`AgentLink`]) and `ReportSource` (server side, [`ReportServer`]), carrying
//! `core::wire` frames. The design, guarantees and limits are in `docs/link.md`.
//!
//! - Security: the server's certificate comes from PEM files or is generated once and kept
//!   ([`cert`]); agents verify it with a CA file or a pinned SHA-256 fingerprint ([`tls`]) and
//!   authenticate with a shared token compared in constant time ([`crate::secret`]).
//! - Protocol: one bidirectional stream per connection, opened by the agent; `Hello` first,
//!   within the handshake timeout ([`handshake`]), in the newest version both ends speak (v2,
//!   or v1 with a server that speaks only v1: `session`); length-prefixed frames both ways,
//!   bounded by the maximum frame size (`framed`), each decoded in the connection's version;
//!   a bad frame closes that connection with a code and a reason ([`close`]).
//! - Resilience: agents reconnect with backoff and jitter ([`backoff`]), buffer results in
//!   core's `Outbox` and resend unacknowledged batches; the server deduplicates with core's
//!   `Deduplicator` ([`server`], `session`). A restarted server resets the connections of the
//!   process before it (keys derived from its certificate, `stable_keys`), so agents of a
//!   crashed server reconnect at once instead of at the idle timeout.

pub mod admission;
pub mod agent;
pub mod backoff;
pub mod cert;
pub mod cert_check;
pub mod close;
pub mod config;
pub mod fingerprint;
mod framed;
pub mod handshake;
pub mod peer_log;
pub mod server;
mod session;
mod stable_keys;
pub mod tls;

pub use admission::AdmissionLimits;
pub use agent::{AgentLink, AgentLinkStats, AgentSetupError};
pub use backoff::BackoffConfig;
pub use cert::{CertError, CertificateSource, GENERATED_KEY_FILE, ServerCertificate};
pub use close::CloseCode;
pub use config::{
    AgentIdentity, AgentLinkConfig, HANDSHAKE_RECEIVE_WINDOW_BYTES, LinkLimits,
    MAX_HELLO_FRAME_LEN, ServerConfig,
};
pub use fingerprint::{FingerprintError, Sha256Fingerprint};
pub use handshake::describe_refusal;
pub use server::{ReportServer, ServerSetupError, ServerStats};
pub use tls::{ALPN, ServerVerification, TlsSetupError, client_crypto, server_crypto};
