//! The mesh view's tests: state classification (property), the history ring's bound
//! (property), and a view built from a real aggregator with a healthy, a partial, a failed and
//! an empty pair.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::aggregate::{AggregationMethod, AggregatorConfig, IcmpOutlier};
use crate::model::{IcmpResult, ProbeOutcome, ProbeResult};

const WINDOW: Duration = Duration::from_secs(15);
const WINDOW_MS: u64 = 15_000;

fn region(name: &str) -> Region {
    Region::new(name).unwrap()
}

fn agent(region_name: &str, last_octet: u8) -> AgentId {
    AgentId::new(
        region(region_name),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)),
    )
}

fn icmp(
    source: &AgentId,
    target_region: &str,
    target: &str,
    round_start_ms: u64,
    received: usize,
    rtt: Duration,
) -> ProbeResult {
    ProbeResult {
        source: source.clone(),
        target_region: region(target_region),
        target: target.to_owned(),
        round_start: UnixMillis(round_start_ms),
        outcome: ProbeOutcome::Icmp(IcmpResult::measured(
            Duration::ZERO,
            10,
            &vec![rtt; received],
        )),
    }
}

fn point(at_ms: u64) -> HistoryPoint {
    HistoryPoint {
        at: UnixMillis(at_ms),
        loss_ratio: Some(0.0),
        rtt: None,
        rtt_p50: None,
        rtt_p90: None,
        jitter: None,
        failed_results: 0,
        left_out: 0,
    }
}

proptest! {
    #[test]
    fn a_cell_is_never_shown_better_than_its_facts(
        age_ms in 0u64..100_000,
        loss in prop::option::of(0.0f64..=1.0),
        all_lost in any::<bool>(),
        failed in 0u64..5,
        left_out in 0usize..4,
    ) {
        let loss = if all_lost { Some(1.0) } else { loss };
        let updated_at = UnixMillis(1_000_000);
        let now = updated_at.saturating_add(Duration::from_millis(age_ms));
        let facts = PairFacts { updated_at, loss_ratio: loss, failed_results: failed, left_out };
        let state = classify(now, WINDOW, Some(&facts));
        let stale = Duration::from_millis(age_ms) > stale_after(WINDOW);
        prop_assert_eq!(state == CellState::Stale, stale);
        if !stale {
            let lost_all = loss.map_or(failed > 0, |l| l >= 1.0);
            prop_assert_eq!(state == CellState::Failed, lost_all);
            if !lost_all {
                prop_assert_eq!(
                    state,
                    if left_out > 0 { CellState::Partial { left_out } } else { CellState::Healthy }
                );
            }
        }
        prop_assert_eq!(classify(now, WINDOW, None), CellState::NoData);
    }

    #[test]
    fn the_history_never_holds_more_than_its_bound(
        pushes in prop::collection::vec((0u8..12, 0u8..12), 1..400),
        max_points in 1usize..200,
        span_windows in 1u64..50,
    ) {
        let limits = HistoryLimits { span: WINDOW * span_windows as u32, max_points };
        let mut history = MeshHistory::new(WINDOW, limits);
        let mut last = std::collections::BTreeMap::new();
        for (i, (s, t)) in pushes.iter().enumerate() {
            let (source, target) = (region(&format!("r{s}")), region(&format!("r{t}")));
            let at = (i as u64 + 1) * WINDOW_MS;
            history.push(source.clone(), target.clone(), point(at));
            last.insert((source.clone(), target.clone()), at);
            let pairs = last.len();
            let capacity = history.capacity_per_pair();
            prop_assert!(capacity as u64 <= span_windows.max(1));
            prop_assert!(capacity <= (max_points / pairs).max(1));
            prop_assert!(history.total_points() <= max_points.max(pairs));
            // The newest point is always kept, and a ring is in time order.
            prop_assert_eq!(history.latest(&source, &target).map(|p| p.at), Some(UnixMillis(at)));
        }
        for ((source, target), _) in last {
            let points = history.points(&source, &target);
            prop_assert!(points.len() <= history.capacity_per_pair());
            prop_assert!(points.windows(2).all(|w| w[0].at < w[1].at));
        }
    }
}

/// An aggregator fed one window: a→b healthy, c→b with one broken agent of three left out,
/// a→c losing everything; b probes nothing.
fn fed(now_ms: u64) -> (Aggregator, MeshHistory, UnixMillis) {
    let config = AggregatorConfig {
        window: WINDOW,
        method: AggregationMethod::Robust,
        ..AggregatorConfig::default()
    };
    let start = now_ms;
    let mut agg = Aggregator::new(config, UnixMillis(start)).unwrap();
    let round = start + 100;
    let ms = Duration::from_millis;
    let (a1, c1, c2, c3, b1) = (
        agent("a", 1),
        agent("c", 11),
        agent("c", 12),
        agent("c", 13),
        agent("b", 21),
    );
    let version = AgentVersion::new("1.0.0");
    for who in [&a1, &c1, &c2, &c3, &b1] {
        agg.handle_heartbeat(UnixMillis(round), who, &version);
    }
    agg.handle_results(
        UnixMillis(round),
        [
            icmp(&a1, "b", "10.0.0.21", round, 10, ms(12)),
            icmp(&c1, "b", "10.0.0.21", round, 10, ms(30)),
            icmp(&c2, "b", "10.0.0.21", round, 10, ms(31)),
            icmp(&c3, "b", "10.0.0.21", round, 0, ms(31)),
            icmp(&a1, "c", "10.0.0.11", round, 0, ms(1)),
        ],
    );
    let settled = UnixMillis(start + 2 * WINDOW_MS);
    agg.handle_timeout(settled);
    let mut history = MeshHistory::new(WINDOW, HistoryLimits::default());
    history.record(settled, &agg);
    (agg, history, settled)
}

#[test]
fn the_view_shows_every_pair_in_the_state_its_window_left_it() {
    let (agg, history, settled) = fed(100 * WINDOW_MS);
    let view = build(&agg, &history, Some("simulated"), settled);
    let names: Vec<&str> = view.regions.iter().map(Region::as_str).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(view.cells.len(), 9);
    let cell = |s: usize, t: usize| &view.cells[s * 3 + t];
    assert_eq!(cell(0, 1).state, CellState::Healthy);
    assert_eq!(cell(0, 1).metrics.loss_ratio, Some(0.0));
    assert_eq!(cell(0, 1).metrics.rtt, Some(Duration::from_millis(12)));
    // 12 ms is in the (6.4 ms, 12.8 ms] bucket: the p50 is interpolated inside it.
    let p50 = cell(0, 1).metrics.rtt_p50.unwrap();
    assert!(p50 > Duration::from_micros(6400) && p50 <= Duration::from_micros(12800));
    assert_eq!(cell(0, 2).state, CellState::Failed);
    assert_eq!(cell(2, 1).state, CellState::Partial { left_out: 1 });
    assert_eq!(cell(2, 1).metrics.loss_ratio, Some(0.0));
    assert_eq!(cell(1, 0).state, CellState::NoData);
    assert_eq!(view.agents.len(), 5);
    assert!(view.agents.iter().all(|a| a.alive));
    assert_eq!(view.notice.as_deref(), Some("simulated"));

    // Two windows later with nothing new, the measured cells are stale.
    let later = settled.saturating_add(WINDOW * 2);
    let view = build(&agg, &history, None, later);
    assert_eq!(view.cells[1].state, CellState::Stale);
    assert_eq!(view.cells[3].state, CellState::NoData);
}

#[test]
fn the_pair_page_has_the_history_and_names_the_member_left_out() {
    let (agg, history, settled) = fed(100 * WINDOW_MS);
    let page = pair(&agg, &history, &region("c"), &region("b"), settled).unwrap();
    assert_eq!(page.history.len(), 1);
    assert_eq!(page.history[0].left_out, 1);
    let left_out: Vec<&IcmpMember> = page.members.iter().filter(|m| m.left_out).collect();
    assert_eq!(left_out.len(), 1);
    assert_eq!(
        left_out[0].member,
        IcmpOutlier::Source("10.0.0.13".to_owned())
    );
    assert_eq!(left_out[0].loss_ratio, Some(1.0));
    // Sources c1..c3 and the one target host, which is not blamed for the broken source.
    assert_eq!(page.members.len(), 4);
    let host = &page.members[3];
    assert_eq!(host.member, IcmpOutlier::Target("10.0.0.21".to_owned()));
    assert_eq!((host.loss_ratio, host.left_out), (Some(0.0), false));
    assert!(pair(&agg, &history, &region("x"), &region("y"), settled).is_none());
    // Between known regions a pair with no data still has its page; one unknown side: none.
    let empty = pair(&agg, &history, &region("b"), &region("a"), settled).unwrap();
    assert_eq!(empty.cell.state, CellState::NoData);
    assert!(empty.history.is_empty());
    assert!(pair(&agg, &history, &region("a"), &region("x"), settled).is_none());
    assert!(pair(&agg, &history, &region("x"), &region("a"), settled).is_none());
}

#[test]
fn each_new_window_adds_one_point_with_its_own_quantiles() {
    let start = 100 * WINDOW_MS;
    let (mut agg, mut history, settled) = fed(start);
    history.record(settled, &agg);
    assert_eq!(
        history.points(&region("a"), &region("b")).len(),
        1,
        "no window, no point"
    );
    let a1 = agent("a", 1);
    let round = start + WINDOW_MS + 100;
    agg.handle_results(
        UnixMillis(round),
        [icmp(
            &a1,
            "b",
            "10.0.0.21",
            round,
            10,
            Duration::from_millis(100),
        )],
    );
    let next = settled.saturating_add(WINDOW);
    agg.handle_timeout(next);
    history.record(next, &agg);
    let points = history.points(&region("a"), &region("b"));
    assert_eq!(points.len(), 2);
    // The second window's median is its own (100 ms), not the cumulative one's.
    let p50 = points[1].rtt_p50.unwrap();
    assert!(p50 > Duration::from_micros(51_200), "{p50:?}");
}
