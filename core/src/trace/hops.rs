//! From the probes of one trace to its hops, and a hop table for people: the pure half of the
//! ICMP path-tracing engine (`adapters::icmp::trace`), kept here so the rules are unit-tested
//! without sockets or clocks.
//!
//! Rules ([`summarize`]):
//! - probes are grouped by TTL; a hop's `sent` counts every probe sent with that TTL and
//!   `received` every answer (a Time Exceeded, a Destination Unreachable or the echo reply);
//! - a hop's address is the one that answered most often at its TTL (ties: the first to
//!   answer, by round), `None` when nobody answered;
//! - the round-trip statistics (best, mean, worst, population standard deviation) are over
//!   every answer of the hop;
//! - the destination's hop is the lowest TTL the target itself answered at; hops after it
//!   are dropped (probes sent there before the destination was known answer from the target
//!   too, and would repeat it);
//! - when the destination never answered, trailing silent hops are dropped (they only say
//!   that nothing answered past the last router that did).
//!
//! [`render_table`] prints a report as `mtr -r` does: one row per TTL, `???` for a silent hop.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::link::{TraceHop, TraceReport};
use crate::stats::RttSummary;

/// What became of one probe of a trace.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ProbeOutcome {
    /// The round it was sent in (0-based).
    pub round: u16,
    /// Its TTL.
    pub ttl: u8,
    /// Who answered and after how long; `None` when nothing came before its timeout.
    pub answer: Option<Answer>,
}

/// An answer to a probe.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Answer {
    /// The address the answer came from.
    pub from: IpAddr,
    /// Its round trip.
    pub rtt: Duration,
}

/// The lowest TTL at which `target` itself answered, if it did.
#[must_use]
pub fn destination_ttl(target: IpAddr, probes: &[ProbeOutcome]) -> Option<u8> {
    probes
        .iter()
        .filter(|p| p.answer.is_some_and(|a| a.from == target))
        .map(|p| p.ttl)
        .min()
}

/// The hops of a trace to `target` from its probes, by TTL (see the module documentation).
#[must_use]
pub fn summarize(target: IpAddr, probes: &[ProbeOutcome]) -> Vec<TraceHop> {
    let last = destination_ttl(target, probes).or_else(|| {
        probes
            .iter()
            .filter(|p| p.answer.is_some())
            .map(|p| p.ttl)
            .max()
    });
    let Some(last) = last else {
        return Vec::new();
    };
    let mut by_ttl: BTreeMap<u8, Vec<&ProbeOutcome>> = BTreeMap::new();
    for probe in probes.iter().filter(|p| p.ttl >= 1 && p.ttl <= last) {
        by_ttl.entry(probe.ttl).or_default().push(probe);
    }
    (1..=last)
        .map(|ttl| hop(ttl, by_ttl.get_mut(&ttl).map(Vec::as_mut_slice)))
        .collect()
}

fn hop(ttl: u8, probes: Option<&mut [&ProbeOutcome]>) -> TraceHop {
    let probes = probes.unwrap_or_default();
    probes.sort_by_key(|p| p.round);
    let answers: Vec<Answer> = probes.iter().filter_map(|p| p.answer).collect();
    let rtts: Vec<Duration> = answers.iter().map(|a| a.rtt).collect();
    let summary = RttSummary::from_rtts(&rtts);
    TraceHop {
        ttl,
        addr: most_frequent(&answers),
        sent: u32::try_from(probes.len()).unwrap_or(u32::MAX),
        received: u32::try_from(answers.len()).unwrap_or(u32::MAX),
        rtt_best: summary.map(|s| s.min),
        rtt_mean: summary.map(|s| s.mean),
        rtt_worst: summary.map(|s| s.max),
        rtt_stddev: summary.map(|s| s.stddev),
    }
}

/// The address that answered most often; ties go to the one that answered first.
fn most_frequent(answers: &[Answer]) -> Option<IpAddr> {
    let mut counts: Vec<(IpAddr, usize)> = Vec::new();
    for answer in answers {
        match counts.iter_mut().find(|(addr, _)| *addr == answer.from) {
            Some((_, count)) => *count += 1,
            None => counts.push((answer.from, 1)),
        }
    }
    // `max_by_key` keeps the last maximum; scanning in reverse makes it the first seen.
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, count)| *count)
        .map(|(addr, _)| addr)
}

/// A report as an `mtr -r` table: a header naming `source` (the local host's name) and one
/// row per hop with loss, sent, mean, best, worst and standard deviation in milliseconds;
/// `???` for a hop nobody answered. The report's error is not printed (the caller says it).
#[must_use]
pub fn render_table(source: &str, report: &TraceReport) -> String {
    let mut out = format!("HOST: {:<36} Loss%   Snt   Avg  Best  Wrst StDev\n", source);
    let ms = |d: Option<Duration>| {
        d.map_or_else(String::new, |d| format!("{:.1}", d.as_secs_f64() * 1e3))
    };
    for hop in &report.hops {
        let name = hop.addr.map_or_else(|| "???".to_owned(), |a| a.to_string());
        let loss = if hop.sent == 0 {
            0.0
        } else {
            f64::from(hop.sent - hop.received.min(hop.sent)) * 100.0 / f64::from(hop.sent)
        };
        out.push_str(&format!(
            "{:>3}.|-- {:<31} {:>5.1}% {:>5} {:>5} {:>5} {:>5} {:>5}\n",
            hop.ttl,
            name,
            loss,
            hop.sent,
            ms(hop.rtt_mean),
            ms(hop.rtt_best),
            ms(hop.rtt_worst),
            ms(hop.rtt_stddev),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn probe(round: u16, ttl: u8, from: Option<&str>, ms: u64) -> ProbeOutcome {
        ProbeOutcome {
            round,
            ttl,
            answer: from.map(|f| Answer {
                from: addr(f),
                rtt: Duration::from_millis(ms),
            }),
        }
    }

    const TARGET: &str = "198.18.3.2";

    #[test]
    fn hops_are_grouped_by_ttl_with_population_statistics() {
        let probes = [
            probe(0, 1, Some("198.18.1.1"), 1),
            probe(0, 2, Some(TARGET), 2),
            probe(1, 1, Some("198.18.1.1"), 3),
            probe(1, 2, None, 0),
            probe(2, 1, None, 0),
            probe(2, 2, Some(TARGET), 4),
        ];
        let hops = summarize(addr(TARGET), &probes);
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].addr, Some(addr("198.18.1.1")));
        assert_eq!((hops[0].sent, hops[0].received), (3, 2));
        assert_eq!(hops[0].rtt_best, Some(Duration::from_millis(1)));
        assert_eq!(hops[0].rtt_worst, Some(Duration::from_millis(3)));
        assert_eq!(hops[0].rtt_mean, Some(Duration::from_millis(2)));
        // Population: deviations ±1 ms, variance 1 ms², stddev 1 ms.
        assert_eq!(hops[0].rtt_stddev, Some(Duration::from_millis(1)));
        assert_eq!(hops[1].addr, Some(addr(TARGET)));
        assert_eq!((hops[1].sent, hops[1].received), (3, 2));
    }

    #[test]
    fn hops_after_the_destination_are_dropped() {
        let probes = [
            probe(0, 1, Some("198.18.1.1"), 1),
            probe(0, 2, Some(TARGET), 2),
            probe(0, 3, Some(TARGET), 2),
            probe(0, 4, Some(TARGET), 2),
        ];
        let hops = summarize(addr(TARGET), &probes);
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[1].addr, Some(addr(TARGET)));
        assert_eq!(destination_ttl(addr(TARGET), &probes), Some(2));
    }

    #[test]
    fn a_silent_hop_has_no_address_and_no_statistics() {
        let probes = [
            probe(0, 1, None, 0),
            probe(0, 2, Some(TARGET), 2),
            probe(1, 1, None, 0),
            probe(1, 2, Some(TARGET), 2),
        ];
        let hops = summarize(addr(TARGET), &probes);
        assert_eq!(hops[0].addr, None);
        assert_eq!((hops[0].sent, hops[0].received), (2, 0));
        assert_eq!(hops[0].rtt_mean, None);
        assert_eq!(hops[0].rtt_stddev, None);
    }

    #[test]
    fn the_most_frequent_address_wins_and_ties_go_to_the_first() {
        let probes = [
            probe(0, 1, Some("198.18.1.1"), 1),
            probe(1, 1, Some("198.18.9.9"), 1),
            probe(2, 1, Some("198.18.9.9"), 1),
        ];
        assert_eq!(
            summarize(addr(TARGET), &probes)[0].addr,
            Some(addr("198.18.9.9"))
        );
        // Given out of round order: the earlier round wins the tie.
        let probes = [
            probe(1, 1, Some("198.18.9.9"), 1),
            probe(0, 1, Some("198.18.1.1"), 1),
        ];
        assert_eq!(
            summarize(addr(TARGET), &probes)[0].addr,
            Some(addr("198.18.1.1"))
        );
    }

    #[test]
    fn without_the_destination_trailing_silent_hops_are_dropped() {
        let probes = [
            probe(0, 1, Some("198.18.1.1"), 1),
            probe(0, 2, None, 0),
            probe(0, 3, Some("198.18.2.1"), 1),
            probe(0, 4, None, 0),
            probe(0, 5, None, 0),
        ];
        let hops = summarize(addr(TARGET), &probes);
        assert_eq!(hops.len(), 3);
        assert_eq!(hops[1].addr, None);
        assert!(summarize(addr(TARGET), &[probe(0, 1, None, 0)]).is_empty());
    }

    #[test]
    fn the_table_has_a_row_per_hop_and_question_marks_for_silence() {
        let probes = [
            probe(0, 1, None, 0),
            probe(0, 2, Some(TARGET), 2),
            probe(1, 1, None, 0),
            probe(1, 2, None, 0),
        ];
        let report = TraceReport {
            id: 1,
            target: addr(TARGET),
            hops: summarize(addr(TARGET), &probes),
            error: None,
        };
        let table = render_table("lab", &report);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("HOST: lab"), "{table}");
        assert!(lines[0].contains("Loss%"), "{table}");
        assert!(lines[1].contains("1.|-- ???"), "{table}");
        assert!(lines[1].contains("100.0%"), "{table}");
        assert!(
            lines[2].contains(TARGET) && lines[2].contains(" 50.0%"),
            "{table}"
        );
        assert!(lines[2].contains("2.0"), "{table}");
    }
}
