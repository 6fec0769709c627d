//! Reliable delivery of probe results from agents to the server, as pure state machines.
//!
//! The link adapter moves bytes; what must not go wrong (losing results while the server is
//! away, counting a result twice after a reconnect, growing without bound) is decided here, so it
//! is tested without sockets or clocks:
//!
//! - [`Outbox`] (agent): a bounded buffer of results, cut into `ResultBatch`es with per-instance
//!   sequence numbers; a batch stays until the server acknowledges its `seq` and is resent, with
//!   the same `seq`, on every new connection until then. When the bound is hit the oldest results
//!   go first and are counted.
//! - [`Deduplicator`] (server): remembers, per agent instance, which `seq`s were delivered, in a
//!   bounded window, so a batch resent after a reconnect is acknowledged again but delivered once.
//!
//! The guarantee they give together is written down in `docs/link.md`: within one server
//! process every result is delivered at most once, and every result an agent does not drop for
//! lack of room is delivered at least once; so exactly once while the server lives. A new
//! server process starts empty and accepts the batches that were never acknowledged.

pub mod dedup;
pub mod outbox;

pub use dedup::{Deduplicator, SeqWindow};
pub use outbox::{Outbox, OutboxConfig, OutboxStats, OutgoingBatch};
