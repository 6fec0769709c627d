//! The exposed state between windows: for every region pair and URL, the last value of each
//! gauge with the time it was last set, and the cumulative RTT histogram. Each part expires on
//! its own after ratio × window without an update (the Go system never expired loss, jitter and
//! the histogram).

use std::collections::BTreeMap;
use std::time::Duration;

use super::http::HttpGroupWindow;
use super::icmp::{IcmpMember, IcmpOutlier, IcmpPairWindow};
use crate::model::{Region, TlsVersion, UnixMillis};
use crate::stats::RttHistogram;

/// A value and when it was last set.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Stamped<T> {
    pub(crate) value: T,
    pub(crate) updated_at: UnixMillis,
}

impl<T> Stamped<T> {
    fn new(value: T, updated_at: UnixMillis) -> Self {
        Self { value, updated_at }
    }
}

/// Drops `slot` when it was last set longer than `ttl` before `now`.
fn expire_slot<T>(slot: &mut Option<Stamped<T>>, now: UnixMillis, ttl: Duration) {
    if slot
        .as_ref()
        .is_some_and(|s| now.saturating_duration_since(s.updated_at) > ttl)
    {
        *slot = None;
    }
}

/// Exposed state of one ICMP (source region, target region) pair.
#[derive(Clone, Debug, Default)]
pub(crate) struct IcmpPairSeries {
    pub(crate) failed: Option<Stamped<u64>>,
    pub(crate) loss_percent: Option<Stamped<f64>>,
    pub(crate) durations_seconds: Option<Stamped<[f64; 4]>>,
    pub(crate) jitter_seconds: Option<Stamped<f64>>,
    /// Cumulative since the series appeared.
    pub(crate) histogram: Option<Stamped<RttHistogram>>,
    /// The members left out in the pair's latest window.
    pub(crate) outliers: Option<Stamped<Vec<IcmpOutlier>>>,
    /// Every member's numbers in the pair's latest window (the mesh view's breakdown).
    pub(crate) members: Option<Stamped<Vec<IcmpMember>>>,
}

impl IcmpPairSeries {
    fn apply(&mut self, now: UnixMillis, window: IcmpPairWindow) {
        self.failed = Some(Stamped::new(window.failed, now));
        if let Some(loss) = window.loss_percent {
            self.loss_percent = Some(Stamped::new(loss, now));
        }
        if let Some(durations) = window.durations_seconds {
            self.durations_seconds = Some(Stamped::new(durations, now));
        }
        if let Some(jitter) = window.jitter_seconds {
            self.jitter_seconds = Some(Stamped::new(jitter, now));
        }
        let mut histogram = self.histogram.take().map(|h| h.value).unwrap_or_default();
        histogram.merge(&window.histogram);
        self.histogram = Some(Stamped::new(histogram, now));
        self.outliers = Some(Stamped::new(window.outliers, now));
        self.members = Some(Stamped::new(window.members, now));
    }

    fn expire(&mut self, now: UnixMillis, ttl: Duration) -> bool {
        expire_slot(&mut self.members, now, ttl);
        expire_slot(&mut self.failed, now, ttl);
        expire_slot(&mut self.loss_percent, now, ttl);
        expire_slot(&mut self.durations_seconds, now, ttl);
        expire_slot(&mut self.jitter_seconds, now, ttl);
        expire_slot(&mut self.histogram, now, ttl);
        expire_slot(&mut self.outliers, now, ttl);
        self.failed.is_some()
            || self.loss_percent.is_some()
            || self.durations_seconds.is_some()
            || self.jitter_seconds.is_some()
            || self.histogram.is_some()
    }
}

/// Exposed state of one HTTP (source region, target region, target) group.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpGroupSeries {
    /// Failed count and the reason label it is exposed under.
    pub(crate) failed: Option<Stamped<(u64, String)>>,
    pub(crate) phases_seconds: Option<Stamped<[f64; 5]>>,
    pub(crate) status_code: Option<Stamped<u16>>,
    pub(crate) tls: Option<Stamped<(TlsVersion, i64)>>,
    pub(crate) outliers: Option<Stamped<Vec<String>>>,
}

impl HttpGroupSeries {
    fn apply(&mut self, now: UnixMillis, window: HttpGroupWindow) {
        self.failed = Some(Stamped::new((window.failed, window.failed_reason), now));
        if let Some(phases) = window.phases_seconds {
            self.phases_seconds = Some(Stamped::new(phases, now));
        }
        self.status_code = Some(Stamped::new(window.status_code, now));
        if let Some(tls) = window.tls {
            self.tls = Some(Stamped::new(tls, now));
        }
        self.outliers = Some(Stamped::new(window.outliers, now));
    }

    fn expire(&mut self, now: UnixMillis, ttl: Duration) -> bool {
        expire_slot(&mut self.failed, now, ttl);
        expire_slot(&mut self.phases_seconds, now, ttl);
        expire_slot(&mut self.status_code, now, ttl);
        expire_slot(&mut self.tls, now, ttl);
        expire_slot(&mut self.outliers, now, ttl);
        self.failed.is_some()
            || self.phases_seconds.is_some()
            || self.status_code.is_some()
            || self.tls.is_some()
    }
}

/// Key of an ICMP pair.
pub(crate) type PairKey = (Region, Region);
/// Key of an HTTP group: source region, target region, target as configured.
pub(crate) type HttpKey = (Region, Region, String);

/// All exposed per-pair and per-URL state.
#[derive(Clone, Debug, Default)]
pub(crate) struct SeriesStore {
    pub(crate) icmp: BTreeMap<PairKey, IcmpPairSeries>,
    pub(crate) http: BTreeMap<HttpKey, HttpGroupSeries>,
}

impl SeriesStore {
    pub(crate) fn apply_icmp(&mut self, now: UnixMillis, key: PairKey, window: IcmpPairWindow) {
        self.icmp.entry(key).or_default().apply(now, window);
    }

    pub(crate) fn apply_http(&mut self, now: UnixMillis, key: HttpKey, window: HttpGroupWindow) {
        self.http.entry(key).or_default().apply(now, window);
    }

    /// Removes every part not set within `ttl`, and pairs with nothing left.
    pub(crate) fn expire(&mut self, now: UnixMillis, ttl: Duration) {
        self.icmp.retain(|_, series| series.expire(now, ttl));
        self.http.retain(|_, series| series.expire(now, ttl));
    }
}
