//! TEMPORARY STAND-IN for `core::wire`, written on branch `pool` only so that `core::ports` and
//! `core::fake` compile. The real wire protocol is being written on another branch; at the
//! merge, THAT branch's `core/src/wire/mod.rs` replaces this file entirely.
//!
//! Only the two variants below are relied upon (`AgentMessage::Heartbeat { sent_at_ms }` and
//! `ServerMessage::Ack { seq }`); the real enums have them with exactly these fields.

/// TEMPORARY: what an agent sends to the server (the real enum has many more variants).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum AgentMessage {
    /// A liveness beat, stamped with the agent's wall clock in Unix milliseconds.
    Heartbeat {
        /// When the agent sent it, in milliseconds since the Unix epoch.
        sent_at_ms: u64,
    },
}

/// TEMPORARY: what the server sends to an agent (the real enum has many more variants).
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ServerMessage {
    /// Acknowledges the agent message with sequence number `seq`.
    Ack {
        /// The acknowledged sequence number.
        seq: u64,
    },
}
