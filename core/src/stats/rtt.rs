//! Per-probe RTT statistics: mean, min, max and the population standard deviation (the
//! "jitter" of `prober_icmp_jitter_stddev_seconds`), as go-ping computed them.

use std::time::Duration;

/// Summary of the round-trip times of one probe's received echoes.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct RttSummary {
    /// Mean RTT.
    pub mean: Duration,
    /// Smallest RTT.
    pub min: Duration,
    /// Largest RTT.
    pub max: Duration,
    /// Population standard deviation (variance divided by n, then the square root).
    pub stddev: Duration,
}

impl RttSummary {
    /// Summarises `rtts`; `None` when there is none (every echo was lost).
    #[must_use]
    pub fn from_rtts(rtts: &[Duration]) -> Option<Self> {
        let (first, rest) = rtts.split_first()?;
        let (mut min, mut max) = (*first, *first);
        // Welford's update in f64 seconds: stable for any number of samples.
        let (mut n, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
        for rtt in std::iter::once(first).chain(rest) {
            min = min.min(*rtt);
            max = max.max(*rtt);
            n += 1.0;
            let x = rtt.as_secs_f64();
            let delta = x - mean;
            mean += delta / n;
            m2 += delta * (x - mean);
        }
        let stddev = (m2 / n).max(0.0).sqrt();
        Some(Self {
            mean: Duration::from_secs_f64(mean),
            min,
            max,
            stddev: Duration::from_secs_f64(stddev),
        })
    }
}

/// Packet loss in percent (0–100, the scale of `prober_icmp_packet_loss_rate`):
/// (sent − received) / sent × 100. `None` when nothing was sent (the Go system produced NaN).
#[must_use]
pub fn loss_percent(sent: u32, received: u32) -> Option<f64> {
    if sent == 0 {
        return None;
    }
    let lost = sent.saturating_sub(received);
    Some(f64::from(lost) / f64::from(sent) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn summary_of_a_known_series() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, population stddev 2.
        let rtts: Vec<_> = [2, 4, 4, 4, 5, 5, 7, 9].into_iter().map(ms).collect();
        let s = RttSummary::from_rtts(&rtts).unwrap();
        assert_eq!((s.min, s.max), (ms(2), ms(9)));
        assert!((s.mean.as_secs_f64() - 0.005).abs() < 1e-12);
        assert!((s.stddev.as_secs_f64() - 0.002).abs() < 1e-12);
    }

    #[test]
    fn no_replies_means_no_summary() {
        assert_eq!(RttSummary::from_rtts(&[]), None);
        let one = RttSummary::from_rtts(&[ms(3)]).unwrap();
        assert_eq!(one.stddev, Duration::ZERO);
        assert_eq!(one.mean, ms(3));
    }

    #[test]
    fn loss_is_a_percentage() {
        assert_eq!(loss_percent(64, 64), Some(0.0));
        assert_eq!(loss_percent(64, 0), Some(100.0));
        assert_eq!(loss_percent(10, 9), Some(10.0));
        assert_eq!(loss_percent(0, 0), None);
        assert_eq!(
            loss_percent(4, 9),
            Some(0.0),
            "duplicates never make loss negative"
        );
    }

    proptest! {
        #[test]
        fn summary_is_bounded_and_matches_two_pass_math(xs in proptest::collection::vec(0u64..10_000_000_000, 1..200)) {
            let rtts: Vec<_> = xs.iter().map(|n| Duration::from_nanos(*n)).collect();
            let s = RttSummary::from_rtts(&rtts).unwrap();
            prop_assert!(s.min <= s.mean + Duration::from_nanos(1) && s.mean <= s.max + Duration::from_nanos(1));
            let n = xs.len() as f64;
            let mean = xs.iter().map(|x| *x as f64 / 1e9).sum::<f64>() / n;
            let var = xs.iter().map(|x| (*x as f64 / 1e9 - mean).powi(2)).sum::<f64>() / n;
            prop_assert!((s.mean.as_secs_f64() - mean).abs() <= 1e-9 + mean * 1e-9);
            prop_assert!((s.stddev.as_secs_f64() - var.sqrt()).abs() <= 1e-9 + var.sqrt() * 1e-6);
        }

        #[test]
        fn loss_stays_within_0_and_100(sent in 0u32..100_000, received in 0u32..100_000) {
            if let Some(loss) = loss_percent(sent, received) {
                prop_assert!((0.0..=100.0).contains(&loss));
            }
        }
    }
}
