//! The rollout's and the agent's upgrade state machines, driven through their public methods
//! in virtual time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::MemberState;
use super::agent::{AgentUpgrades, Probation, UpgradePolicy, UpgradeSetup, UpgradeStep};
use super::rollout::{
    BatchSize, CHUNK_LEN, Candidate, ChunkGrant, Control, Phase, Release, RolloutRequest,
    RolloutSettings, StartError, Strategy, UpgradeDesk,
};
use crate::link::{FromAgent, ToAgent, UpgradePlan, UpgradeState};
use crate::matcher::RegionMatcher;
use crate::model::{AgentId, Region, UnixMillis};

const T0: UnixMillis = UnixMillis::from_secs(1_800_000_000);

fn at(secs: u64) -> UnixMillis {
    T0.saturating_add(Duration::from_secs(secs))
}

fn agent(region: &str, n: u8) -> AgentId {
    AgentId::new(
        Region::new(region).expect("region"),
        std::net::IpAddr::from([198, 18, 0, n]),
    )
}

fn candidate(agent: &AgentId, version: &str, instance: u64) -> Candidate {
    Candidate {
        agent: agent.clone(),
        version: version.into(),
        instance,
        protocol_version: 2,
        takes_upgrades: true,
    }
}

fn request(strategy: Strategy, force: bool, version: &str) -> RolloutRequest {
    RolloutRequest {
        release: Release {
            version: version.parse().expect("version"),
            size_bytes: 600_000,
            sha256: [7; 32],
            signature: None,
            source: "http://198.18.0.1/probermesh".into(),
        },
        force,
        strategy,
        regions: None,
        actor: "admin".into(),
        remote: "127.0.0.1:5000".into(),
    }
}

fn strategy(canary: u32, batch: u32, max_failures: u32) -> Strategy {
    Strategy {
        canary,
        batch: BatchSize::Agents(batch),
        max_failures,
        soak: Duration::from_secs(30),
    }
}

fn offered(changes: &super::rollout::DeskChanges) -> BTreeSet<AgentId> {
    changes.offers.iter().map(|(a, _, _)| a.clone()).collect()
}

/// Takes an offered agent through the whole upgrade: status by status, then the new process
/// (instance + 100) connecting on the new version and committing.
fn commit(
    desk: &mut UpgradeDesk,
    now: UnixMillis,
    agent: &AgentId,
    offer_id: u64,
    version: &str,
    instance: u64,
) -> Vec<super::rollout::DeskChanges> {
    let mut all = Vec::new();
    assert!(
        desk.chunk(now, agent, offer_id, 0).is_some(),
        "{agent} may download"
    );
    for state in [
        UpgradeState::Downloading {
            received_bytes: 600_000,
        },
        UpgradeState::Verified,
        UpgradeState::Applied,
    ] {
        all.push(desk.reported(now, agent, offer_id, state));
    }
    desk.disconnected(agent, instance);
    all.push(desk.connected(now, candidate(agent, version, instance + 100)));
    assert_eq!(
        desk.rollout().expect("rollout").members[agent].state,
        MemberState::Probation
    );
    all.push(desk.reported(now, agent, offer_id, UpgradeState::Committed));
    all
}

fn six_agents(desk: &mut UpgradeDesk) -> Vec<AgentId> {
    let agents: Vec<AgentId> = (1..=6)
        .map(|n| agent(if n % 2 == 0 { "eu" } else { "us" }, n))
        .collect();
    for (i, a) in agents.iter().enumerate() {
        let changes = desk.connected(T0, candidate(a, "1.0.0", i as u64 + 1));
        assert!(
            changes.offers.is_empty(),
            "nothing is offered before a POST (the Go bug)"
        );
    }
    agents
}

#[test]
fn six_agents_go_through_a_canary_and_batches_of_two() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    let agents = six_agents(&mut desk);
    let changes = desk
        .start(T0, request(strategy(1, 2, 0), false, "1.1.0"))
        .expect("started");
    assert_eq!(changes.offers.len(), 1, "one canary");
    let id = desk.rollout().expect("rollout").id;
    let mut now = 0;
    let mut batch = offered(&changes);
    let mut seen: BTreeSet<AgentId> = BTreeSet::new();
    let mut sizes = Vec::new();
    while !batch.is_empty() {
        sizes.push(batch.len());
        assert!(batch.is_disjoint(&seen), "an agent is offered once");
        seen.extend(batch.iter().cloned());
        let mut next = BTreeSet::new();
        for a in &batch {
            let instance = agents.iter().position(|x| x == a).expect("known") as u64 + 1;
            for changes in commit(&mut desk, at(now), a, id, "1.1.0", instance) {
                next.extend(offered(&changes));
            }
        }
        assert!(next.is_empty(), "the next batch waits for the soak");
        now += 29;
        assert!(
            offered(&desk.tick(at(now))).is_empty(),
            "29 s of a 30 s soak"
        );
        now += 1;
        batch = offered(&desk.tick(at(now)));
    }
    assert_eq!(sizes, [1, 2, 2, 1]);
    let rollout = desk.rollout().expect("rollout");
    assert_eq!(rollout.phase, Phase::Completed);
    assert_eq!(rollout.counts()[&MemberState::Committed], 6);
}

#[test]
fn a_canary_that_rolls_back_halts_the_rollout_with_the_others_untouched() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    six_agents(&mut desk);
    let changes = desk
        .start(T0, request(strategy(1, 2, 0), false, "1.1.0"))
        .expect("started");
    let canary = offered(&changes).into_iter().next().expect("a canary");
    let id = desk.rollout().expect("rollout").id;
    desk.reported(at(1), &canary, id, UpgradeState::Applied);
    let changes = desk.reported(
        at(2),
        &canary,
        id,
        UpgradeState::RolledBack {
            reason: "the new version exited with status 1".into(),
        },
    );
    assert!(changes.offers.is_empty());
    assert!(
        changes.events.iter().any(|e| e.contains("halted")),
        "{:?}",
        changes.events
    );
    for secs in [40, 400, 4000] {
        assert!(
            desk.tick(at(secs)).offers.is_empty(),
            "a halted rollout starts no batch"
        );
    }
    let rollout = desk.rollout().expect("rollout");
    assert!(
        matches!(&rollout.phase, Phase::Halted { reason } if reason.contains("5 agent(s) not reached")),
        "{:?}",
        rollout.phase
    );
    assert_eq!(rollout.counts()[&MemberState::Pending], 5);
    assert_eq!(
        rollout.members[&canary].reason.as_deref(),
        Some("the new version exited with status 1")
    );
    assert_eq!(
        desk.control(at(5000), Control::Resume)
            .expect_err("halted")
            .to_string(),
        "rollout 1 is halted: cannot resume it"
    );
    desk.control(at(5000), Control::Abort).expect("abort");
    let rollout = desk.rollout().expect("rollout");
    assert_eq!(rollout.counts()[&MemberState::Skipped], 5);
    // A new rollout may start once the last one is closed.
    assert!(
        desk.start(at(5001), request(strategy(1, 2, 0), false, "1.1.1"))
            .is_ok()
    );
}

#[test]
fn skipped_agents_say_why_and_force_takes_them() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    let (old, same, newer, v1, closed) = (
        agent("a", 1),
        agent("a", 2),
        agent("a", 3),
        agent("a", 4),
        agent("a", 5),
    );
    desk.connected(T0, candidate(&old, "1.0.0", 1));
    desk.connected(T0, candidate(&same, "1.1.0", 2));
    desk.connected(T0, candidate(&newer, "1.2.0", 3));
    desk.connected(
        T0,
        Candidate {
            protocol_version: 1,
            ..candidate(&v1, "1.0.0", 4)
        },
    );
    desk.connected(
        T0,
        Candidate {
            takes_upgrades: false,
            ..candidate(&closed, "1.0.0", 5)
        },
    );
    desk.start(T0, request(strategy(1, 2, 0), false, "1.1.0"))
        .expect("started");
    let reason = |a: &AgentId| {
        desk.rollout().expect("rollout").members[a]
            .reason
            .clone()
            .unwrap_or_default()
    };
    assert_eq!(reason(&same), "already runs 1.1.0");
    assert_eq!(
        reason(&newer),
        "runs 1.2.0, newer than 1.1.0 (a downgrade needs force)"
    );
    assert!(reason(&v1).contains("protocol v1"));
    assert!(reason(&closed).contains("-agent.upgrade"));
    assert_eq!(
        desk.rollout().expect("rollout").members[&old].state,
        MemberState::Downloading
    );
    desk.control(at(1), Control::Abort).expect("abort");
    desk.start(at(2), request(strategy(5, 5, 0), true, "1.1.0"))
        .expect("forced");
    let rollout = desk.rollout().expect("rollout");
    for a in [&old, &same, &newer] {
        assert_eq!(
            rollout.members[a].state,
            MemberState::Downloading,
            "{a} forced"
        );
    }
    assert_eq!(
        rollout.members[&v1].state,
        MemberState::Skipped,
        "force does not reach v1"
    );
}

#[test]
fn start_refusals_change_nothing() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    let a = agent("eu", 1);
    desk.connected(T0, candidate(&a, "1.0.0", 1));
    let mut only_us = request(Strategy::default(), false, "1.1.0");
    only_us.regions = Some(RegionMatcher::new("=", "us").expect("matcher"));
    assert_eq!(
        desk.start(T0, only_us),
        Err(StartError::NoAgents {
            selector: "region = \"us\"".into()
        })
        .map(|_: ()| unreachable!())
    );
    assert!(desk.rollout().is_none());
    desk.start(T0, request(Strategy::default(), false, "1.1.0"))
        .expect("started");
    assert!(matches!(
        desk.start(T0, request(Strategy::default(), false, "1.2.0")),
        Err(StartError::Busy {
            id: 1,
            phase: "running"
        })
    ));
    desk.control(at(1), Control::Pause).expect("pause");
    assert!(matches!(
        desk.start(T0, request(Strategy::default(), false, "1.2.0")),
        Err(StartError::Busy {
            id: 1,
            phase: "paused"
        })
    ));
}

#[test]
fn a_cut_download_is_offered_again_and_timeouts_fail_an_agent() {
    let mut desk = UpgradeDesk::new(RolloutSettings {
        progress_timeout: Duration::from_secs(120),
        restart_timeout: Duration::from_secs(300),
        max_bytes_per_second: None,
    });
    let (a, b) = (agent("eu", 1), agent("eu", 2));
    desk.connected(T0, candidate(&a, "1.0.0", 1));
    desk.connected(T0, candidate(&b, "1.0.0", 2));
    desk.start(T0, request(strategy(0, 2, 5), false, "1.1.0"))
        .expect("started");
    assert_eq!(desk.chunk(at(1), &a, 1, 262_144), Some((262_144, 262_144)));
    assert_eq!(desk.chunk(at(1), &a, 1, 600_000), None, "past the end");
    assert_eq!(desk.chunk(at(1), &a, 2, 0), None, "another offer");
    desk.disconnected(&a, 1);
    let again = desk.connected(at(2), candidate(&a, "1.0.0", 1));
    assert_eq!(
        offered(&again),
        BTreeSet::from([a.clone()]),
        "offered again after a reconnect"
    );
    desk.reported(at(3), &b, 1, UpgradeState::Applied);
    assert!(desk.tick(at(122)).offers.is_empty());
    let rollout = desk.rollout().expect("rollout");
    assert_eq!(
        rollout.members[&a].state,
        MemberState::Downloading,
        "progress at 2 s"
    );
    desk.tick(at(123));
    assert_eq!(
        desk.rollout().expect("rollout").members[&a].state,
        MemberState::Failed
    );
    desk.tick(at(304));
    let rollout = desk.rollout().expect("rollout");
    assert_eq!(rollout.members[&b].state, MemberState::Failed);
    assert!(
        rollout.members[&b]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("not committed")
    );
    assert_eq!(
        rollout.phase,
        Phase::Completed,
        "2 failures are within max_failures 5"
    );
}

#[test]
fn a_restarted_server_resumes_the_rollout() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    let agents = six_agents(&mut desk);
    let changes = desk
        .start(T0, request(strategy(1, 2, 0), false, "1.1.0"))
        .expect("started");
    let canary = offered(&changes).into_iter().next().expect("canary");
    let instance = agents.iter().position(|x| *x == canary).expect("known") as u64 + 1;
    commit(&mut desk, at(1), &canary, 1, "1.1.0", instance);
    let record = desk.to_record();
    let mut resumed =
        UpgradeDesk::from_record(RolloutSettings::default(), &record).expect("decodes");
    assert_eq!(resumed.to_record(), record, "the record round-trips");
    // The agents reconnect to the new server; the soak ends; the next batch is offered.
    let mut next = BTreeSet::new();
    for (i, a) in agents.iter().enumerate() {
        let version = if *a == canary { "1.1.0" } else { "1.0.0" };
        next.extend(offered(
            &resumed.connected(at(10), candidate(a, version, i as u64 + 200)),
        ));
    }
    assert!(next.is_empty(), "still soaking");
    let next = offered(&resumed.tick(at(31)));
    assert_eq!(next.len(), 2);
    assert!(!next.contains(&canary));
    assert!(UpgradeDesk::from_record(RolloutSettings::default(), b"PMUPGRD\0\x00\x02").is_err());
    assert!(
        UpgradeDesk::from_record(RolloutSettings::default(), &record[..record.len() / 2]).is_err()
    );
}

#[test]
fn batch_sizes_parse_and_round_up() {
    assert_eq!("25%".parse::<BatchSize>(), Ok(BatchSize::Percent(25)));
    assert_eq!("3".parse::<BatchSize>(), Ok(BatchSize::Agents(3)));
    assert!("0".parse::<BatchSize>().is_err());
    assert!("101%".parse::<BatchSize>().is_err());
    assert_eq!(BatchSize::Percent(25).of(6), 2);
    assert_eq!(BatchSize::Percent(1).of(3), 1);
    assert_eq!(BatchSize::Percent(100).of(7), 7);
}

proptest! {
    /// Whatever the agents report and whenever time passes: a batch starts only when every
    /// agent offered before it is final, no agent is offered in two batches, a halted or
    /// aborted rollout offers nothing new, and failures never exceed max_failures + one batch.
    #[test]
    fn batches_never_overlap_and_a_halt_stops_new_offers(
        events in proptest::collection::vec((0usize..6, 0u8..8, 0u64..60), 1..80),
        max_failures in 0u32..3,
    ) {
        let mut desk = UpgradeDesk::new(RolloutSettings { progress_timeout: Duration::from_secs(100), restart_timeout: Duration::from_secs(200), max_bytes_per_second: None });
        let agents = six_agents(&mut desk);
        let first = desk.start(T0, request(strategy(1, 2, max_failures), false, "1.1.0")).expect("started");
        let mut batches: Vec<BTreeSet<AgentId>> = vec![offered(&first)];
        let mut now = 0u64;
        for (who, what, wait) in events {
            now += wait;
            let a = &agents[who];
            let before_final: bool = desk.rollout().expect("r").members.values().filter(|m| m.batch.is_some()).all(|m| m.state.is_final());
            let phase_before = desk.rollout().expect("r").phase.clone();
            let changes = match what {
                0 => desk.reported(at(now), a, 1, UpgradeState::Downloading { received_bytes: 10 }),
                1 => desk.reported(at(now), a, 1, UpgradeState::Applied),
                2 => desk.reported(at(now), a, 1, UpgradeState::Committed),
                3 => desk.reported(at(now), a, 1, UpgradeState::RolledBack { reason: "x".into() }),
                4 => desk.reported(at(now), a, 1, UpgradeState::Failed { reason: "y".into() }),
                5 => { desk.disconnected(a, who as u64 + 1); desk.connected(at(now), candidate(a, "1.0.0", who as u64 + 1)) }
                6 => desk.connected(at(now), candidate(a, "1.1.0", who as u64 + 50)),
                _ => desk.tick(at(now)),
            };
            let new: BTreeSet<AgentId> = offered(&changes).into_iter().filter(|x| !batches.iter().any(|b| b.contains(x))).collect();
            if !new.is_empty() {
                prop_assert!(before_final, "a batch started while one was under way");
                prop_assert!(matches!(phase_before, Phase::Running), "offers after {phase_before:?}");
                batches.push(new);
            }
            let rollout = desk.rollout().expect("r");
            prop_assert!(rollout.failures() <= max_failures as usize + 2);
            if let Phase::Halted { .. } = rollout.phase {
                prop_assert!(rollout.failures() > max_failures as usize);
            }
        }
        for (i, a) in batches.iter().enumerate() {
            for b in &batches[i + 1..] {
                prop_assert!(a.is_disjoint(b));
            }
        }
    }
}

// ---- the bandwidth cap ----

/// A desk capped at `rate` bytes/s, with a rollout of a `size_bytes` release whose first
/// batch (no canary) offers all six agents; the agents and the offer id.
fn capped_rollout(rate: u64, size_bytes: u64) -> (UpgradeDesk, Vec<AgentId>, u64) {
    let mut desk = UpgradeDesk::new(RolloutSettings {
        max_bytes_per_second: Some(rate),
        // Longer than any test here: no agent fails for want of progress.
        progress_timeout: Duration::from_secs(3600),
        ..RolloutSettings::default()
    });
    let agents = six_agents(&mut desk);
    let mut posted = request(strategy(0, 6, 0), false, "1.1.0");
    posted.release.size_bytes = size_bytes;
    let changes = desk.start(T0, posted).expect("started");
    assert_eq!(changes.offers.len(), 6);
    let id = desk.rollout().expect("rollout").id;
    (desk, agents, id)
}

#[test]
fn the_bandwidth_cap_holds_asks_back_and_grants_them_in_order() {
    // Two chunks a second, a burst of two chunks.
    let (mut desk, agents, id) = capped_rollout(2 * CHUNK_LEN, 10 * CHUNK_LEN);
    assert_eq!(desk.chunk(T0, &agents[0], id, 0), Some((0, CHUNK_LEN)));
    assert_eq!(desk.chunk(T0, &agents[1], id, 0), Some((0, CHUNK_LEN)));
    assert_eq!(desk.chunk(T0, &agents[2], id, 0), None, "past the burst");
    assert_eq!(desk.chunk(T0, &agents[3], id, 0), None);
    // A newer ask of agent 2 replaces its older one and keeps its place.
    assert_eq!(desk.chunk(T0, &agents[2], id, CHUNK_LEN), None);
    assert_eq!(desk.chunks_waiting(), 2);
    assert!(desk.tick(T0).chunks.is_empty());
    let due = desk
        .next_timeout()
        .expect("a tick is due for the waiting asks");
    assert_eq!(due, T0.saturating_add(Duration::from_millis(500)));
    let grants = desk.tick(due).chunks;
    assert_eq!(
        grants,
        [ChunkGrant {
            agent: agents[2].clone(),
            instance: 3,
            offer_id: id,
            offset: CHUNK_LEN,
            len: CHUNK_LEN,
        }]
    );
    let due = desk.next_timeout().expect("agent 3 still waits");
    let grants = desk.tick(due).chunks;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].agent, agents[3]);
    assert_eq!(desk.chunks_waiting(), 0);
    assert_eq!(desk.sent_bytes(), 4 * CHUNK_LEN);
    // A held-back ask of a process that was replaced is not granted to the new process (it
    // asks again itself).
    assert_eq!(desk.chunk(due, &agents[5], id, 0), None);
    desk.disconnected(&agents[5], 6);
    desk.connected(due, candidate(&agents[5], "1.0.0", 60));
    let later = due.saturating_add(Duration::from_secs(5));
    assert!(
        desk.tick(later).chunks.iter().all(|g| g.agent != agents[5]),
        "not to the new process"
    );
    let due = later;
    // The bucket is full again after 5 s: its burst of two chunks goes first.
    assert!(desk.chunk(due, &agents[0], id, CHUNK_LEN).is_some());
    assert!(desk.chunk(due, &agents[1], id, CHUNK_LEN).is_some());
    // A held-back agent that leaves is dropped from the queue, not granted.
    assert_eq!(desk.chunk(due, &agents[4], id, 0), None);
    desk.disconnected(&agents[4], 5);
    let later = due.saturating_add(Duration::from_secs(5));
    assert!(desk.tick(later).chunks.is_empty());
    assert_eq!(desk.chunks_waiting(), 0);
}

#[test]
fn without_a_cap_every_ask_is_granted_at_once() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    let agents = six_agents(&mut desk);
    desk.start(T0, request(strategy(0, 6, 0), false, "1.1.0"))
        .expect("started");
    let id = desk.rollout().expect("rollout").id;
    for a in &agents {
        assert_eq!(desk.chunk(T0, a, id, 0), Some((0, CHUNK_LEN)));
    }
    assert_eq!(desk.sent_bytes(), 6 * CHUNK_LEN);
    assert_eq!(desk.chunks_waiting(), 0);
}

proptest! {
    /// Whatever agents ask and whenever: the bytes granted (at once or by a tick) over any
    /// span are at most one second of the rate (or one chunk) plus the rate times the span;
    /// and every ask held back is granted once time passes (no ask starves).
    #[test]
    fn the_cap_bounds_bytes_per_second_and_starves_no_ask(
        rate in (CHUNK_LEN / 4)..(4 * CHUNK_LEN),
        asks in proptest::collection::vec((0usize..6, 0u64..20, 0u64..1_500, any::<bool>()), 1..120),
    ) {
        let size = 20 * CHUNK_LEN;
        let (mut desk, agents, id) = capped_rollout(rate, size);
        let burst = rate.max(CHUNK_LEN);
        let mut now = T0;
        let mut grants: Vec<(u64, u64)> = Vec::new();
        let mut asked: BTreeSet<usize> = BTreeSet::new();
        for (who, chunk, wait_ms, tick) in asks {
            now = now.saturating_add(Duration::from_millis(wait_ms));
            if tick {
                for g in desk.tick(now).chunks {
                    grants.push((now.as_millis(), g.len));
                    asked.remove(&agents.iter().position(|a| *a == g.agent).expect("known"));
                }
            } else if let Some((_, len)) = desk.chunk(now, &agents[who], id, chunk * CHUNK_LEN) {
                grants.push((now.as_millis(), len));
                asked.remove(&who);
            } else {
                asked.insert(who);
            }
        }
        // Liveness: ticking when due grants every held-back ask.
        let mut steps = 0;
        while desk.chunks_waiting() > 0 {
            steps += 1;
            prop_assert!(steps <= 6, "an ask starved");
            // Due may be past: the bucket refills only when used.
            now = desk.next_timeout().expect("due").max(now);
            for g in desk.tick(now).chunks {
                grants.push((now.as_millis(), g.len));
                asked.remove(&agents.iter().position(|a| *a == g.agent).expect("known"));
            }
        }
        prop_assert!(asked.is_empty(), "asks neither granted nor waiting: {asked:?}");
        let granted: u64 = grants.iter().map(|(_, len)| len).sum();
        prop_assert_eq!(granted, desk.sent_bytes());
        for (i, (start, _)) in grants.iter().enumerate() {
            let mut sum = 0u128;
            for (at_ms, len) in &grants[i..] {
                sum += u128::from(*len);
                let allowed = u128::from(burst) + u128::from(rate) * u128::from(at_ms - start) / 1000 + 1;
                prop_assert!(sum <= allowed, "{sum} bytes over {} ms at {rate} B/s", at_ms - start);
            }
        }
    }
}

// ---- the agent's side ----

fn plan(version: &str, size_bytes: u64, force: bool) -> UpgradePlan {
    UpgradePlan {
        version: version.into(),
        size_bytes,
        sha256: [1; 32],
        signature: None,
        force,
    }
}

fn upgrades() -> AgentUpgrades {
    AgentUpgrades::new(UpgradeSetup {
        policy: Some(UpgradePolicy::new("1.0.0".parse().expect("v"))),
        ..UpgradeSetup::default()
    })
}

fn failed_reason(steps: &[UpgradeStep]) -> Option<String> {
    steps.iter().find_map(|s| match s {
        UpgradeStep::Send(FromAgent::UpgradeStatus {
            state: UpgradeState::Failed { reason },
            ..
        }) => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn an_agent_refuses_what_it_should_not_install() {
    let mut off = AgentUpgrades::new(UpgradeSetup::default());
    assert!(
        failed_reason(&off.offered(T0, 1, plan("1.1.0", 10, false)))
            .unwrap_or_default()
            .contains("-agent.upgrade")
    );
    let mut on = upgrades();
    assert_eq!(
        failed_reason(&on.offered(T0, 1, plan("0.9.0", 10, false))).as_deref(),
        Some(
            "offered 0.9.0 is not newer than the running 1.0.0 (a downgrade or a reinstall needs force)"
        )
    );
    assert!(
        failed_reason(&on.offered(T0, 2, plan("1.0.0", 10, false))).is_some(),
        "a reinstall needs force"
    );
    assert!(
        failed_reason(&on.offered(T0, 3, plan("one", 10, false)))
            .unwrap_or_default()
            .contains("not a semantic version")
    );
    assert!(
        failed_reason(&on.offered(T0, 4, plan("2.0.0", 0, false))).is_some(),
        "empty binary"
    );
    assert_eq!(
        on.offered(T0, 5, plan("0.9.0", 10, true)),
        vec![UpgradeStep::Stage {
            offer_id: 5,
            plan: plan("0.9.0", 10, true)
        }],
        "force downgrades"
    );
}

#[test]
fn an_agent_downloads_in_chunks_resumes_and_hands_over() {
    let mut u = upgrades();
    let p = plan("1.1.0", 10, false);
    assert_eq!(
        u.offered(T0, 7, p.clone()),
        vec![UpgradeStep::Stage {
            offer_id: 7,
            plan: p.clone()
        }]
    );
    let steps = u.staged(T0, 7, 4);
    assert!(
        steps.contains(&UpgradeStep::Send(FromAgent::ChunkRequest {
            offer_id: 7,
            offset: 4
        })),
        "resumes at 4: {steps:?}"
    );
    assert!(
        u.chunk(7, 0, Arc::from(vec![0u8; 4])).is_empty(),
        "a stale chunk is dropped"
    );
    assert!(
        u.chunk(7, 4, Arc::from(vec![0u8; 7])).is_empty(),
        "past the end is dropped"
    );
    assert!(matches!(
        u.chunk(7, 4, Arc::from(vec![0u8; 3])).as_slice(),
        [UpgradeStep::Write { offset: 4, .. }]
    ));
    assert_eq!(
        u.written(T0, 7, 7),
        vec![UpgradeStep::Send(FromAgent::ChunkRequest {
            offer_id: 7,
            offset: 7
        })]
    );
    // Cut off: the offer comes again at the reconnect, the request repeats from 7.
    assert_eq!(
        u.offered(at(1), 7, p.clone()),
        vec![UpgradeStep::Send(FromAgent::ChunkRequest {
            offer_id: 7,
            offset: 7
        })]
    );
    assert!(matches!(
        u.chunk(7, 7, Arc::from(vec![0u8; 3])).as_slice(),
        [UpgradeStep::Write { offset: 7, .. }]
    ));
    let steps = u.written(at(1), 7, 10);
    assert_eq!(
        steps.last(),
        Some(&UpgradeStep::Install {
            offer_id: 7,
            plan: p.clone()
        })
    );
    let steps = u.installed(7);
    assert_eq!(
        steps.last(),
        Some(&UpgradeStep::HandOver {
            offer_id: 7,
            plan: p
        })
    );
}

#[test]
fn an_unanswered_chunk_is_asked_again_then_given_up() {
    let mut u = upgrades();
    u.offered(T0, 1, plan("1.1.0", 10, false));
    u.staged(T0, 1, 0);
    for _ in 0..super::agent::MAX_CHUNK_RETRIES {
        let now = u.next_timeout().expect("a timeout");
        assert_eq!(
            u.tick(now),
            vec![UpgradeStep::Send(FromAgent::ChunkRequest {
                offer_id: 1,
                offset: 0
            })]
        );
    }
    let now = u.next_timeout().expect("a timeout");
    assert!(
        failed_reason(&u.tick(now))
            .unwrap_or_default()
            .contains("sent no bytes")
    );
    assert_eq!(u.next_timeout(), None);
}

#[test]
fn a_trial_commits_after_its_rounds_are_acknowledged() {
    let mut u = AgentUpgrades::new(UpgradeSetup {
        policy: Some(UpgradePolicy::new("1.1.0".parse().expect("v"))),
        probation: Some(Probation {
            offer_id: 3,
            version: "1.1.0".into(),
            rounds_needed: 2,
        }),
        report: None,
    });
    assert!(u.round_ended().is_empty(), "nothing acknowledged yet");
    u.acknowledged(5);
    assert!(u.round_ended().is_empty(), "one round");
    assert!(
        u.round_ended().is_empty(),
        "no new acknowledgement in this round"
    );
    u.acknowledged(9);
    let steps = u.round_ended();
    // No status: the process the previous one restarts into reports the outcome.
    assert_eq!(steps, vec![UpgradeStep::Commit { offer_id: 3 }]);
    assert!(!u.in_probation());
    assert!(u.round_ended().is_empty(), "committed once");
}

#[test]
fn the_previous_process_report_goes_out_at_each_connection() {
    let report = super::agent::UpgradeReport {
        offer_id: 4,
        version: "1.1.0".into(),
        state: UpgradeState::RolledBack {
            reason: "exited".into(),
        },
    };
    let mut u = AgentUpgrades::new(UpgradeSetup {
        report: Some(report),
        ..UpgradeSetup::default()
    });
    let expected = UpgradeStep::Send(FromAgent::UpgradeStatus {
        offer_id: 4,
        version: "1.1.0".into(),
        state: UpgradeState::RolledBack {
            reason: "exited".into(),
        },
    });
    assert_eq!(u.welcomed(T0), vec![expected.clone()]);
    assert_eq!(u.welcomed(at(9)), vec![expected]);
}

#[test]
fn an_offer_is_a_v2_upgrade_offer_with_force() {
    let mut desk = UpgradeDesk::new(RolloutSettings::default());
    let a = agent("eu", 1);
    desk.connected(T0, candidate(&a, "1.0.0", 1));
    let changes = desk
        .start(T0, request(strategy(1, 1, 0), true, "1.1.0"))
        .expect("started");
    let Some((_, 1, ToAgent::UpgradeOffer { offer_id: 1, plan })) = changes.offers.first() else {
        panic!("{changes:?}")
    };
    assert!(plan.force);
    assert_eq!(plan.version, "1.1.0");
}
