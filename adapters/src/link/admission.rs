//! Who gets a handshake: the server's defence against floods of unauthenticated connection
//! attempts (docs/link.md, "Denial of service").
//!
//! A QUIC Initial costs the sender one datagram, from any source address it likes; accepting
//! it costs the server a TLS handshake and a place until the handshake timeout. So a place is
//! given in two budgets, decided per attempt before any TLS, from counts and the source:
//!
//! - *handshakes* (between the first Initial and an accepted `Hello`; default 512): a small
//!   share of them (default 64) may go to addresses not validated yet; beyond it every
//!   attempt from an unvalidated address is answered with a QUIC Retry, which costs the
//!   server no state: only a sender that receives at its address comes back, validated;
//! - *connections* (authenticated agents; default 4,096): taken when the `Hello` is accepted,
//!   never by a handshake.
//!
//! A validated source is also held to a token bucket (per IPv4 address or IPv6 /64, in a
//! bounded table), so one real host cannot take the whole handshake budget. Unvalidated
//! attempts never spend a source's tokens: their address may be forged, and spending them
//! would let a flood lock out the agent whose address it forges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The admission limits (from `ServerConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionLimits {
    /// Most authenticated connections at once (default 4,096); further attempts are refused
    /// at once. A connection counts from its accepted `Hello`, never during its handshake.
    pub max_connections: usize,
    /// Most connections in their handshake at once, between the first Initial and an accepted
    /// `Hello` (default 512). Attempts from validated addresses beyond it are refused.
    pub max_handshakes: usize,
    /// Of those, most from addresses not validated yet (default 64): beyond it, an attempt
    /// from an unvalidated address is answered with a QUIC Retry (address validation), so a
    /// flood with forged sources costs one stateless packet per Initial. 0 always retries.
    pub max_unvalidated_handshakes: usize,
    /// Handshakes one validated source (an IPv4 address, an IPv6 /64) may start per second
    /// on average (default 8); beyond, its attempts are refused.
    pub per_source_handshakes_per_sec: f64,
    /// Handshakes one validated source may start at once after a quiet spell (default 32):
    /// room for the agents behind one NAT reconnecting together.
    pub per_source_burst: u32,
    /// Sources whose rates are remembered (default 16,384); beyond, new sources share one
    /// rate until remembered ones have been quiet long enough to be forgotten.
    pub max_tracked_sources: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4_096,
            max_handshakes: 512,
            max_unvalidated_handshakes: 64,
            per_source_handshakes_per_sec: 8.0,
            per_source_burst: 32,
            max_tracked_sources: 16_384,
        }
    }
}

/// The connections open now, as the budgets count them.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Load {
    /// Authenticated connections.
    pub connections: usize,
    /// Connections in their handshake (validated or not).
    pub handshakes: usize,
    /// Of those, the ones from unvalidated addresses.
    pub unvalidated_handshakes: usize,
}

/// Why a connection attempt was refused.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Refusal {
    /// `max_connections` agents are connected.
    Capacity,
    /// The handshake budget is spent (by validated sources).
    Busy,
    /// This source started too many handshakes lately.
    RateLimited,
}

/// What to do with one connection attempt.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Admission {
    /// Start the handshake; it counts in the handshake budget (and, when `validated` is
    /// false, in the unvalidated share).
    Accept {
        /// Whether the source address was validated (a Retry token).
        validated: bool,
    },
    /// Answer with a Retry: the attempt costs nothing, and comes back validated if real.
    Retry,
    /// Refuse it at once (a QUIC `CONNECTION_REFUSED`).
    Refuse(Refusal),
}

/// Decides one attempt. `validated` says whether its address was validated; `source_ok`
/// spends one of its source's tokens and says whether there was one (called only for a
/// validated attempt that the budgets would admit).
pub fn decide(
    limits: &AdmissionLimits,
    load: Load,
    validated: bool,
    source_ok: impl FnOnce() -> bool,
) -> Admission {
    if load.connections >= limits.max_connections {
        return Admission::Refuse(Refusal::Capacity);
    }
    if !validated {
        let room = load.handshakes < limits.max_handshakes
            && load.unvalidated_handshakes < limits.max_unvalidated_handshakes;
        return if room {
            Admission::Accept { validated: false }
        } else {
            Admission::Retry
        };
    }
    if load.handshakes >= limits.max_handshakes {
        return Admission::Refuse(Refusal::Busy);
    }
    if !source_ok() {
        return Admission::Refuse(Refusal::RateLimited);
    }
    Admission::Accept { validated: true }
}

/// A source as the rate limit sees it: an IPv4 address, or the /64 of an IPv6 address (one
/// host usually holds a whole /64).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
enum SourceKey {
    V4(u32),
    V6Prefix(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate_per_sec: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_sec).min(burst);
        self.at = now;
    }

    fn take(&mut self, rate_per_sec: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate_per_sec, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How often a full table is swept for buckets that have refilled (which carry nothing).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Token buckets of validated sources, in a table of at most `max_tracked_sources`. A full
/// bucket is the same as none, so a full table drops the full ones (at most once a second);
/// when every remembered source is still active, new sources share one overflow bucket.
#[derive(Debug)]
pub struct SourceLimiter {
    rate_per_sec: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<SourceKey, Bucket>,
    overflow: Bucket,
    last_sweep: Option<Instant>,
}

impl SourceLimiter {
    /// An empty table for `limits`.
    #[must_use]
    pub fn new(limits: &AdmissionLimits, now: Instant) -> Self {
        let burst = f64::from(limits.per_source_burst.max(1));
        Self {
            rate_per_sec: limits.per_source_handshakes_per_sec.max(0.0),
            burst,
            max_sources: limits.max_tracked_sources.max(1),
            buckets: HashMap::new(),
            overflow: Bucket::full(burst, now),
            last_sweep: None,
        }
    }

    /// Spends one of `ip`'s tokens; `false` when it has none left.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = SourceKey::of(ip);
        let (rate, burst) = (self.rate_per_sec, self.burst);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.take(rate, burst, now);
        }
        if self.buckets.len() >= self.max_sources {
            self.sweep(now);
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.take(rate, burst, now);
        }
        let mut bucket = Bucket::full(burst, now);
        let took = bucket.take(rate, burst, now);
        self.buckets.insert(key, bucket);
        took
    }

    /// Sources remembered now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let (rate, burst) = (self.rate_per_sec, self.burst);
        self.buckets.retain(|_, bucket| {
            bucket.refill(rate, burst, now);
            bucket.tokens < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 10,
            max_handshakes: 4,
            max_unvalidated_handshakes: 2,
            per_source_handshakes_per_sec: 2.0,
            per_source_burst: 3,
            max_tracked_sources: 2,
        }
    }

    fn load(connections: usize, handshakes: usize, unvalidated_handshakes: usize) -> Load {
        Load {
            connections,
            handshakes,
            unvalidated_handshakes,
        }
    }

    #[test]
    fn unvalidated_attempts_get_a_small_share_then_a_retry_and_never_spend_tokens() {
        let l = limits();
        let never = || panic!("an unvalidated attempt spent a source's token");
        assert_eq!(
            decide(&l, load(0, 0, 0), false, never),
            Admission::Accept { validated: false }
        );
        assert_eq!(
            decide(&l, load(0, 1, 1), false, never),
            Admission::Accept { validated: false }
        );
        assert_eq!(decide(&l, load(0, 2, 2), false, never), Admission::Retry);
        // The whole budget taken by validated handshakes: still a Retry, never a refusal.
        assert_eq!(decide(&l, load(0, 4, 0), false, never), Admission::Retry);
    }

    #[test]
    fn validated_attempts_use_the_whole_budget_within_their_source_rate() {
        let l = limits();
        assert_eq!(
            decide(&l, load(0, 3, 2), true, || true),
            Admission::Accept { validated: true }
        );
        assert_eq!(
            decide(&l, load(0, 3, 2), true, || false),
            Admission::Refuse(Refusal::RateLimited)
        );
        assert_eq!(
            decide(&l, load(0, 4, 2), true, || panic!(
                "no token needed when busy"
            )),
            Admission::Refuse(Refusal::Busy)
        );
    }

    #[test]
    fn only_authenticated_connections_fill_the_connection_limit() {
        let l = limits();
        // Handshakes far beyond max_connections leave room for agents.
        assert_eq!(
            decide(&l, load(9, 3, 0), true, || true),
            Admission::Accept { validated: true }
        );
        for validated in [false, true] {
            assert_eq!(
                decide(&l, load(10, 0, 0), validated, || true),
                Admission::Refuse(Refusal::Capacity)
            );
        }
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut limiter = SourceLimiter::new(&limits(), t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| limiter.take(ip, t0)));
        assert!(!limiter.take(ip, t0));
        // 2 per second: one more after half a second, not before.
        assert!(!limiter.take(ip, t0 + Duration::from_millis(400)));
        assert!(limiter.take(ip, t0 + Duration::from_millis(600)));
        // Another source is not affected.
        assert!(limiter.take("192.0.2.2".parse().unwrap(), t0));
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_slash_64_and_mapped_ipv4_is_ipv4() {
        let t0 = Instant::now();
        let mut limiter = SourceLimiter::new(&limits(), t0);
        for i in 0..3 {
            let ip: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            assert!(limiter.take(ip, t0));
        }
        assert!(!limiter.take("2001:db8::ffff:1".parse().unwrap(), t0));
        assert!(limiter.take("2001:db8:0:1::1".parse().unwrap(), t0));
        assert_eq!(
            SourceKey::of("::ffff:192.0.2.1".parse().unwrap()),
            SourceKey::of("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn the_table_is_bounded_forgets_refilled_sources_and_shares_an_overflow_bucket() {
        let t0 = Instant::now();
        let mut limiter = SourceLimiter::new(&limits(), t0);
        let ip = |i: u8| IpAddr::from([198, 51, 100, i]);
        assert!(limiter.take(ip(1), t0));
        assert!(limiter.take(ip(2), t0));
        // Full of active sources: newcomers share the overflow bucket (3 tokens).
        assert!((3..6).all(|i| limiter.take(ip(i), t0)));
        assert!(!limiter.take(ip(6), t0));
        assert_eq!(limiter.tracked(), 2);
        // Once the remembered sources have refilled, they are forgotten and room is made.
        let later = t0 + Duration::from_secs(5);
        assert!(limiter.take(ip(7), later));
        assert_eq!(limiter.tracked(), 1);
        // Many sources over a long time never grow the table beyond its bound.
        for i in 0..=255 {
            let _ = limiter.take(ip(i), later + Duration::from_secs(u64::from(i) * 2));
            assert!(limiter.tracked() <= 2);
        }
    }
}
