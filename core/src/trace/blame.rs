//! Which hop a finished trace blames: the first hop where loss starts *and persists* to the
//! destination. Loss at one hop with clean hops after it is that router rate-limiting its own
//! ICMP replies (Linux does by default, `net.ipv4.icmp_ratelimit`), not a fault on the path,
//! and is reported as such; a hop that never answered (`*`) is neither blamed nor clear.
//!
//! # The rule and its thresholds ([`BlameThresholds`])
//!
//! A hop *responds* when it sent probes and at least one answer came back from a known
//! address; a hop with no answer is *silent* and skipped by every comparison below.
//! A responding hop *loses* when it lost at least `min_lost_probes` (1) probes and at least
//! `min_loss_ratio` (10 %) of them: one lost probe of the 10 rounds a short trace runs, two
//! of the 20 the desk asks for by default. A single lost probe of 20 (5 %) is within what
//! one lost ICMP reply anywhere explains, and a 20-round trace cannot place a fault that
//! small anyway.
//!
//! Loss that happens on the path before hop `h` removes the probes of every TTL at or past
//! `h`, so every later hop loses at least as much in expectation; a router that rate-limits
//! only removes its own answers. So a losing hop is the *onset* when every later responding
//! hop, the destination included, also loses and loses at least `persist_fraction` (one half)
//! of the onset's loss ratio. One half tolerates the binomial noise of 20 probes (at 30 % true
//! loss a later hop reads under 15 % with a probability of 3.5 %) and still tells a router
//! that drops more than twice the loss that follows it (its own rate limiting on top of the
//! fault) from the fault's first hop. The first onset is blamed; a losing hop that is not an
//! onset is listed as rate-limited.
//!
//! The destination is the first hop whose address is the trace's target; hops past it are
//! ignored. When it never answered the verdict is [`Blame::Unreachable`] with the last hop
//! that did. Only loss is judged: a latency-triggered trace is shown with its RTTs.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::link::{TraceHop, TraceReport};

/// The thresholds of the rule (see the module documentation for why these defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlameThresholds {
    /// Fewest lost probes for a hop to count as losing (1).
    pub min_lost_probes: u32,
    /// Smallest loss ratio for a hop to count as losing (0.1).
    pub min_loss_ratio: f64,
    /// Share of the onset's loss ratio every later responding hop must lose at least (0.5).
    pub persist_fraction: f64,
}

impl Default for BlameThresholds {
    fn default() -> Self {
        Self {
            min_lost_probes: 1,
            min_loss_ratio: 0.1,
            persist_fraction: 0.5,
        }
    }
}

/// What a trace blames.
#[derive(Clone, Debug, PartialEq)]
pub enum Blame {
    /// Loss starts at this hop and persists to the destination.
    Hop {
        /// Its TTL.
        ttl: u8,
        /// Who answered there.
        address: IpAddr,
        /// Its loss ratio (0 to 1).
        loss_ratio: f64,
    },
    /// The destination answered without loss; the hops that lost answers were followed by
    /// hops that did not: ICMP rate limiting at those routers, not a fault.
    RateLimitedOnly,
    /// Nothing lost: the destination answered every probe and no hop lost answers.
    Clean,
    /// The destination never answered.
    Unreachable {
        /// The last hop that answered at all (`None`: none did).
        last_responding_ttl: Option<u8>,
    },
}

impl Blame {
    /// Every label, in order.
    pub const LABELS: [&'static str; 4] = ["hop", "rate_limited_only", "clean", "unreachable"];

    /// The bounded name in JSON and logs.
    #[must_use]
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Hop { .. } => "hop",
            Self::RateLimitedOnly => "rate_limited_only",
            Self::Clean => "clean",
            Self::Unreachable { .. } => "unreachable",
        }
    }
}

/// A trace's verdict: the blame, what it rests on, and why in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// What is blamed.
    pub blame: Blame,
    /// Whether the destination answered.
    pub reached_destination: bool,
    /// Hops that lost answers without the loss persisting (rate limiting), by TTL.
    pub rate_limited_ttls: Vec<u8>,
    /// Hops that never answered, by TTL (up to the destination).
    pub silent_ttls: Vec<u8>,
    /// The verdict in one sentence, for the pair page and the log.
    pub reason: String,
}

/// The verdict on `report` under `thresholds`.
#[must_use]
pub fn judge(report: &TraceReport, thresholds: &BlameThresholds) -> Verdict {
    let hops = path(report);
    let destination_idx = hops
        .iter()
        .position(|hop| hop.addr == Some(report.target) && responds(hop));
    let judged = destination_idx.map_or(&hops[..], |idx| &hops[..=idx]);
    let silent_ttls: Vec<u8> = judged
        .iter()
        .filter(|hop| !responds(hop))
        .map(|hop| hop.ttl)
        .collect();
    let mut rate_limited_ttls = Vec::new();
    let mut onset: Option<&TraceHop> = None;
    for (idx, hop) in judged.iter().enumerate() {
        if !loses(hop, thresholds) {
            continue;
        }
        let ratio = loss_ratio(hop);
        let persists = judged[idx + 1..]
            .iter()
            .filter(|later| responds(later))
            .all(|later| {
                loses(later, thresholds) && loss_ratio(later) >= thresholds.persist_fraction * ratio
            });
        // Without the destination, loss can only be said to persist to the last hop that
        // answered; it is not blamed then, but an onset is named in the reason.
        if persists && onset.is_none() {
            onset = Some(hop);
        } else if !persists {
            rate_limited_ttls.push(hop.ttl);
        }
    }
    let reached_destination = destination_idx.is_some();
    let blame = match (reached_destination, onset) {
        (false, _) => Blame::Unreachable {
            last_responding_ttl: judged.iter().rev().find(|h| responds(h)).map(|h| h.ttl),
        },
        (true, Some(hop)) => Blame::Hop {
            ttl: hop.ttl,
            // A responding hop has an address.
            address: hop.addr.unwrap_or(report.target),
            loss_ratio: loss_ratio(hop),
        },
        (true, None) if rate_limited_ttls.is_empty() => Blame::Clean,
        (true, None) => Blame::RateLimitedOnly,
    };
    // Hops past a blamed onset carry its loss: only those before it are called rate-limited.
    if let Blame::Hop { ttl, .. } = blame {
        rate_limited_ttls.retain(|t| *t < ttl);
    }
    let reason = reason_text(
        report,
        judged,
        &blame,
        onset,
        &rate_limited_ttls,
        &silent_ttls,
    );
    Verdict {
        blame,
        reached_destination,
        rate_limited_ttls,
        silent_ttls,
        reason,
    }
}

/// The hops by TTL, one per TTL (the first kept).
fn path(report: &TraceReport) -> Vec<TraceHop> {
    let mut hops = report.hops.clone();
    hops.sort_by_key(|hop| hop.ttl);
    hops.dedup_by_key(|hop| hop.ttl);
    hops
}

/// Whether a hop answered at all from a known address.
fn responds(hop: &TraceHop) -> bool {
    hop.sent > 0 && hop.received > 0 && hop.addr.is_some()
}

fn lost(hop: &TraceHop) -> u32 {
    hop.sent.saturating_sub(hop.received)
}

fn loss_ratio(hop: &TraceHop) -> f64 {
    if hop.sent == 0 {
        return 0.0;
    }
    f64::from(lost(hop)) / f64::from(hop.sent)
}

/// Whether a responding hop loses by the thresholds.
fn loses(hop: &TraceHop, thresholds: &BlameThresholds) -> bool {
    responds(hop)
        && lost(hop) >= thresholds.min_lost_probes.max(1)
        && loss_ratio(hop) >= thresholds.min_loss_ratio
}

fn percent(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

fn ttl_list(ttls: &[u8]) -> String {
    ttls.iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn reason_text(
    report: &TraceReport,
    judged: &[TraceHop],
    blame: &Blame,
    onset: Option<&TraceHop>,
    rate_limited_ttls: &[u8],
    silent_ttls: &[u8],
) -> String {
    let mut text = match blame {
        Blame::Hop {
            ttl,
            address,
            loss_ratio,
        } => {
            let destination = judged.last().map_or(0.0, self::loss_ratio);
            if *address == report.target {
                format!(
                    "only the destination {address} loses ({}) at hop {ttl}: the last link or the host itself",
                    percent(*loss_ratio)
                )
            } else {
                let mut text = format!(
                    "loss starts at hop {ttl} ({address}, {} lost) and persists to the destination ({} lost)",
                    percent(*loss_ratio),
                    percent(destination)
                );
                if *ttl > 1 && silent_ttls.contains(&(ttl - 1)) {
                    let _ = write!(
                        text,
                        "; hop {} before it did not answer, so the loss may start there",
                        ttl - 1
                    );
                }
                text
            }
        }
        Blame::RateLimitedOnly => format!(
            "the destination answered without loss; hop(s) {} lost answers that later hops did not: ICMP rate limiting at those routers, not a fault",
            ttl_list(rate_limited_ttls)
        ),
        Blame::Clean => format!(
            "no loss: the destination {} answered at hop {}",
            report.target,
            judged.last().map_or(0, |h| h.ttl)
        ),
        Blame::Unreachable {
            last_responding_ttl: Some(ttl),
        } => {
            let mut text = format!(
                "the destination {} never answered; the last hop that did is {ttl}",
                report.target
            );
            if let Some(hop) = judged.iter().find(|h| h.ttl == *ttl)
                && let Some(address) = hop.addr
            {
                let _ = write!(text, " ({address})");
            }
            if let Some(hop) = onset {
                let _ = write!(
                    text,
                    "; loss from hop {} ({} lost) persists to it",
                    hop.ttl,
                    percent(loss_ratio(hop))
                );
            }
            text
        }
        Blame::Unreachable {
            last_responding_ttl: None,
        } => format!("no hop answered on the way to {}", report.target),
    };
    if matches!(blame, Blame::Hop { .. }) && !rate_limited_ttls.is_empty() {
        let _ = write!(
            text,
            "; hop(s) {} before it rate-limit their answers",
            ttl_list(rate_limited_ttls)
        );
    }
    if let Some(error) = &report.error {
        let _ = write!(text, "; the trace stopped short: {error}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SENT: u32 = 20;

    fn target() -> IpAddr {
        "198.18.9.9".parse().unwrap()
    }

    /// A hop at `ttl` that received `received` of [`SENT`]; silent when `received` is 0.
    fn hop(ttl: u8, received: u32, last: bool) -> TraceHop {
        let addr = if received == 0 {
            None
        } else if last {
            Some(target())
        } else {
            Some(IpAddr::from([10, 0, 0, ttl]))
        };
        TraceHop {
            ttl,
            addr,
            sent: SENT,
            received,
            rtt_best: None,
            rtt_mean: None,
            rtt_worst: None,
            rtt_stddev: None,
        }
    }

    fn report(received: &[u32]) -> TraceReport {
        let n = received.len();
        TraceReport {
            id: 1,
            target: target(),
            hops: received
                .iter()
                .enumerate()
                .map(|(idx, r)| hop(u8::try_from(idx + 1).unwrap(), *r, idx + 1 == n))
                .collect(),
            error: None,
        }
    }

    fn verdict(received: &[u32]) -> Verdict {
        judge(&report(received), &BlameThresholds::default())
    }

    #[test]
    fn loss_at_the_middle_router_persisting_is_blamed_there() {
        let v = verdict(&[20, 14, 13, 14]);
        assert_eq!(
            v.blame,
            Blame::Hop {
                ttl: 2,
                address: IpAddr::from([10, 0, 0, 2]),
                loss_ratio: 0.3
            },
            "{}",
            v.reason
        );
        assert!(v.reason.contains("hop 2"), "{}", v.reason);
    }

    #[test]
    fn one_lossy_router_with_clean_hops_after_it_is_rate_limiting() {
        let v = verdict(&[20, 6, 20, 20]);
        assert_eq!(v.blame, Blame::RateLimitedOnly);
        assert_eq!(v.rate_limited_ttls, vec![2]);
        assert!(v.reason.contains("rate limiting"), "{}", v.reason);
    }

    #[test]
    fn silent_hops_are_neither_blamed_nor_clear() {
        // Hop 2 never answers; the loss from hop 3 on is blamed at hop 3, with a word on hop 2.
        let v = verdict(&[20, 0, 12, 12]);
        assert!(matches!(v.blame, Blame::Hop { ttl: 3, .. }), "{v:?}");
        assert_eq!(v.silent_ttls, vec![2]);
        assert!(
            v.reason.contains("hop 2 before it did not answer"),
            "{}",
            v.reason
        );
        // A silent hop between a lossy hop and the destination does not clear it either.
        let v = verdict(&[14, 0, 14]);
        assert!(matches!(v.blame, Blame::Hop { ttl: 1, .. }), "{v:?}");
    }

    #[test]
    fn a_destination_that_never_answers_is_unreachable_after_the_last_hop() {
        let v = verdict(&[20, 15, 0, 0]);
        assert_eq!(
            v.blame,
            Blame::Unreachable {
                last_responding_ttl: Some(2)
            }
        );
        assert!(!v.reached_destination);
        let v = verdict(&[0, 0]);
        assert_eq!(
            v.blame,
            Blame::Unreachable {
                last_responding_ttl: None
            }
        );
    }

    #[test]
    fn a_lossy_destination_alone_is_the_last_link() {
        let v = verdict(&[20, 20, 15]);
        assert!(matches!(v.blame, Blame::Hop { ttl: 3, .. }), "{v:?}");
        assert!(v.reason.contains("destination"), "{}", v.reason);
    }

    #[test]
    fn a_router_dropping_more_than_twice_what_follows_is_not_the_onset() {
        // Hop 2 drops 70 % (its own rate limiting on top), hop 3 on lose 25 %: blame hop 3.
        let v = verdict(&[20, 6, 15, 15, 15]);
        assert!(matches!(v.blame, Blame::Hop { ttl: 3, .. }), "{v:?}");
        assert_eq!(v.rate_limited_ttls, vec![2]);
    }

    #[test]
    fn one_lost_probe_of_twenty_is_not_loss() {
        assert_eq!(verdict(&[20, 19, 20, 19]).blame, Blame::Clean);
    }

    #[test]
    fn hops_past_the_destination_and_unsorted_hops_are_handled() {
        let mut r = report(&[20, 14, 14]);
        r.hops.reverse();
        let mut extra = hop(4, 1, true);
        extra.addr = Some(IpAddr::from([10, 9, 9, 9]));
        r.hops.push(extra);
        r.error = Some("max hops".into());
        let v = judge(&r, &BlameThresholds::default());
        assert!(matches!(v.blame, Blame::Hop { ttl: 2, .. }), "{v:?}");
        assert!(v.reason.contains("stopped short"), "{}", v.reason);
    }

    /// What one hop before the onset is.
    #[derive(Clone, Copy, Debug)]
    enum Before {
        Clean,
        Silent,
        RateLimited(u32),
    }

    fn before() -> impl Strategy<Value = Before> {
        prop_oneof![
            Just(Before::Clean),
            Just(Before::Silent),
            (1..SENT).prop_map(Before::RateLimited),
        ]
    }

    fn received_before(before: &[Before]) -> Vec<u32> {
        let mut kinds = before.to_vec();
        // The last hop that answers before the onset is clean: that is what tells the hops
        // before it rate-limit rather than lose.
        if let Some(last) = kinds
            .iter_mut()
            .rev()
            .find(|k| !matches!(k, Before::Silent))
        {
            *last = Before::Clean;
        }
        kinds
            .iter()
            .map(|k| match k {
                Before::Clean => SENT,
                Before::Silent => 0,
                Before::RateLimited(lost) => SENT - lost,
            })
            .collect()
    }

    proptest! {
        /// Loss that starts at hop h and persists (every later hop loses at least as much,
        /// some later hops silent) is blamed at h, whatever rate-limited hops come before it.
        #[test]
        fn persisting_loss_is_blamed_where_it_starts(
            before in proptest::collection::vec(before(), 0..8),
            onset_lost in 2..SENT,
            later in proptest::collection::vec((0u32..SENT, any::<bool>()), 0..6),
            destination_extra in 0u32..SENT,
        ) {
            let mut received = received_before(&before);
            let onset_ttl = u8::try_from(received.len() + 1).unwrap();
            received.push(SENT - onset_lost);
            for (extra, silent) in &later {
                let lost = (onset_lost + extra).min(SENT - 1);
                received.push(if *silent { 0 } else { SENT - lost });
            }
            if !later.is_empty() {
                received.push(SENT - (onset_lost + destination_extra).min(SENT - 1));
            }
            let v = verdict(&received);
            let blamed = matches!(v.blame, Blame::Hop { ttl, .. } if ttl == onset_ttl);
            prop_assert!(blamed, "{received:?}: {v:?}");
        }

        /// A rate-limiting router right before the onset, dropping more than twice what
        /// follows, is not blamed: the onset is.
        #[test]
        fn a_heavy_rate_limiter_right_before_the_onset_is_not_blamed(
            onset_lost in 2u32..5,
            heavy_lost in 11u32..SENT,
            later in proptest::collection::vec(0u32..2, 1..5),
        ) {
            let mut received = vec![SENT, SENT - heavy_lost, SENT - onset_lost];
            received.extend(later.iter().map(|extra| SENT - onset_lost - extra));
            let v = verdict(&received);
            prop_assert!(matches!(v.blame, Blame::Hop { ttl: 3, .. }), "{received:?}: {v:?}");
            prop_assert_eq!(v.rate_limited_ttls, vec![2]);
        }

        /// A single lossy hop followed by clean hops is never blamed, wherever it is and
        /// however much it loses (short of never answering).
        #[test]
        fn a_single_lossy_hop_before_clean_hops_is_never_blamed(
            clean_before in 0usize..6,
            lost in 1..SENT,
            clean_after in 1usize..6,
            silent_after in any::<bool>(),
        ) {
            let mut received = vec![SENT; clean_before];
            let lossy_ttl = u8::try_from(clean_before + 1).unwrap();
            received.push(SENT - lost);
            if silent_after {
                received.push(0);
            }
            received.extend(std::iter::repeat_n(SENT, clean_after));
            let v = verdict(&received);
            prop_assert!(!matches!(v.blame, Blame::Hop { .. }), "{received:?}: {v:?}");
            prop_assert!(matches!(v.blame, Blame::RateLimitedOnly | Blame::Clean));
            if loses(&hop(lossy_ttl, SENT - lost, false), &BlameThresholds::default()) {
                prop_assert_eq!(v.rate_limited_ttls, vec![lossy_ttl]);
            }
        }
    }
}
