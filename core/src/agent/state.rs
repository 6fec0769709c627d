//! The agent's state machine, sans-IO: everything an agent decides between events, in the
//! shape of quinn-proto's connection. Its driver feeds it what happens (`handle_event` for the
//! link, `handle_result` for a finished probe, `handle_timeout` when [`AgentState::poll_timeout`]
//! is due, each with `now`) and carries out what it asks ([`AgentState::poll_action`]); it
//! never reads a clock or touches a socket, so it runs in tests without either.
//!
//! What it decides:
//! - **Rounds**: at each round start it plans the round over its latest pool
//!   ([`super::plan_rest_of_round`]) and asks for each probe when its start comes; a new pool
//!   that arrives mid-round is used from the next round (the first one at once, for the rest
//!   of the round). It keeps probing its last pool while the server is away (decision 11).
//! - **Heartbeats** (`prober_agent_is_alive`): one at every connection, then every
//!   heartbeat interval while connected.
//! - **Pool requests**: one at every connection, then every sync interval while connected
//!   (pushes cover changes; asking again covers a push lost with a connection).
//! - **Refused pools**: each refused revision is reported once (`PoolRefused`), so a server
//!   too old to know the message, which closes the connection, is not sent it again at every
//!   reconnection.
//! - **Identity**: in the public-IP mode (decision 12) the agent is who the server sees; when
//!   a `Welcome` shows another address, it asks to be re-identified.
//! - **Stopping**: after [`AgentState::stop`] no probe starts; those in flight finish.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::plan::{PlannedProbe, plan_rest_of_round, round_start};
use crate::link::{FromAgent, FromServer, ToAgent};
use crate::model::time::duration_millis;
use crate::model::{AgentId, ProbeResult, UnixMillis};
use crate::ports::ReceivedPool;

/// Refused revisions remembered; beyond this the memory starts afresh.
const MAX_REMEMBERED_REFUSALS: usize = 1_024;

/// How an agent runs.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct AgentConfig {
    /// Who the agent is (its region and reported address).
    pub me: AgentId,
    /// The round period (`-agent.probe.interval`).
    pub probe_interval: Duration,
    /// How often the pool is asked for while connected (`-agent.sync.interval`).
    pub sync_interval: Duration,
    /// How often a heartbeat is sent while connected.
    pub heartbeat_interval: Duration,
    /// Whether the agent is the address the server sees it connect from (the public-IP mode
    /// without `-agent.ip`).
    pub follow_observed_ip: bool,
}

/// What the agent asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentAction {
    /// Start this probe now and hand its result to [`AgentState::handle_result`].
    Probe(PlannedProbe),
    /// Send this control message (lost if the link is down: each is repeated or moot).
    Send(FromAgent),
    /// Hand these results to the link, which delivers them reliably.
    Deliver(Vec<ProbeResult>),
    /// The server sees this agent at another address: restart the link under this identity.
    Reidentify(AgentId),
    /// Something worth a log line.
    Notice(AgentNotice),
}

/// What an agent has to say about itself, for its driver's log.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentNotice {
    /// A connection passed the handshake.
    Connected {
        /// The server's version.
        server_version: String,
        /// The address the server sees.
        observed_addr: SocketAddr,
    },
    /// A new pool is in use from the next round.
    PoolAccepted {
        /// Its revision.
        revision: u64,
        /// Its blocks.
        blocks: usize,
    },
    /// The server sent a pool this agent cannot accept; it keeps its previous one.
    PoolRefused {
        /// The refused revision.
        revision: u64,
        /// Where in the pool.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A message this version does not act on yet.
    Unhandled {
        /// Its kind.
        kind: &'static str,
    },
}

/// The agent between events.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    pool: Option<ReceivedPool>,
    connected: bool,
    observed_addr: Option<SocketAddr>,
    /// When the next round starts.
    next_round: UnixMillis,
    /// This round's probes still to start, in start order.
    upcoming: VecDeque<PlannedProbe>,
    next_heartbeat: UnixMillis,
    next_sync: UnixMillis,
    reported_refusals: HashSet<u64>,
    stopping: bool,
    in_flight: usize,
    produced: u64,
    actions: VecDeque<AgentAction>,
}

impl AgentState {
    /// An agent starting at `now`, with no pool yet: its first pool is probed at once for the
    /// rest of the round under way, later ones from the next round.
    #[must_use]
    pub fn new(config: AgentConfig, now: UnixMillis) -> Self {
        let interval = config.probe_interval.max(Duration::from_millis(1));
        let config = AgentConfig {
            probe_interval: interval,
            ..config
        };
        Self {
            next_round: after(round_start(now, interval), interval),
            config,
            pool: None,
            connected: false,
            observed_addr: None,
            upcoming: VecDeque::new(),
            next_heartbeat: now,
            next_sync: now,
            reported_refusals: HashSet::new(),
            stopping: false,
            in_flight: 0,
            produced: 0,
            actions: VecDeque::new(),
        }
    }

    /// Who the agent is now.
    #[must_use]
    pub fn me(&self) -> &AgentId {
        &self.config.me
    }

    /// The pool in use (kept while the server is away).
    #[must_use]
    pub fn pool(&self) -> Option<&ReceivedPool> {
        self.pool.as_ref()
    }

    /// The address the server last saw this agent connect from.
    #[must_use]
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        self.observed_addr
    }

    /// Probes started and not finished.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Results produced since the start.
    #[must_use]
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] is due next.
    #[must_use]
    pub fn poll_timeout(&self) -> UnixMillis {
        let mut due = self.next_round;
        if let Some(probe) = self.upcoming.front() {
            due = due.min(probe.start_at);
        }
        if self.connected {
            due = due.min(self.next_heartbeat).min(self.next_sync);
        }
        due
    }

    /// Advances to `now`: starts the round, the probes, the heartbeat and the pool request
    /// that are due.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        if now >= self.next_round {
            let interval = self.config.probe_interval;
            self.upcoming = match (&self.pool, self.stopping) {
                (Some(pool), false) => {
                    plan_rest_of_round(&pool.configs, &self.config.me, now, interval).into()
                }
                _ => VecDeque::new(),
            };
            self.next_round = after(round_start(now, interval), interval);
        }
        while self.upcoming.front().is_some_and(|p| p.start_at <= now) {
            if let Some(probe) = self.upcoming.pop_front() {
                self.in_flight += 1;
                self.actions.push_back(AgentAction::Probe(probe));
            }
        }
        if self.connected && now >= self.next_heartbeat {
            self.heartbeat(now);
        }
        if self.connected && now >= self.next_sync {
            self.request_pool(now);
        }
    }

    /// What the link reported at `now`.
    pub fn handle_event(&mut self, now: UnixMillis, event: FromServer) {
        match event {
            FromServer::Welcomed {
                server_version,
                observed_addr,
                ..
            } => {
                self.connected = true;
                self.observed_addr = Some(observed_addr);
                self.notice(AgentNotice::Connected {
                    server_version,
                    observed_addr,
                });
                if self.config.follow_observed_ip && observed_addr.ip() != self.config.me.ip {
                    self.config.me.ip = observed_addr.ip();
                    self.actions
                        .push_back(AgentAction::Reidentify(self.config.me.clone()));
                }
                self.heartbeat(now);
                self.request_pool(now);
            }
            FromServer::Message(ToAgent::Pool { revision, configs }) => {
                self.notice(AgentNotice::PoolAccepted {
                    revision,
                    blocks: configs.len(),
                });
                if self.pool.is_none() && !self.stopping {
                    // The first pool: no need to wait for the next round.
                    let interval = self.config.probe_interval;
                    self.upcoming =
                        plan_rest_of_round(&configs, &self.config.me, now, interval).into();
                }
                self.pool = Some(ReceivedPool { revision, configs });
            }
            FromServer::Message(ToAgent::Ack { .. }) => {}
            // Tasks, upgrades and traces arrive with their issues.
            FromServer::Message(
                other @ (ToAgent::Task(_)
                | ToAgent::UpgradeOffer { .. }
                | ToAgent::BinaryChunk { .. }
                | ToAgent::Trace(_)),
            ) => {
                self.notice(AgentNotice::Unhandled { kind: other.kind() });
            }
            FromServer::InvalidPool {
                revision,
                field,
                reason,
            } => {
                self.notice(AgentNotice::PoolRefused {
                    revision,
                    field: field.clone(),
                    reason: reason.clone(),
                });
                if self.reported_refusals.len() >= MAX_REMEMBERED_REFUSALS {
                    self.reported_refusals.clear();
                }
                if self.reported_refusals.insert(revision) {
                    self.actions
                        .push_back(AgentAction::Send(FromAgent::PoolRefused {
                            revision,
                            field,
                            reason,
                        }));
                }
            }
        }
    }

    /// The link lost its connection (or an attempt failed); it reconnects by itself.
    pub fn handle_disconnect(&mut self) {
        self.connected = false;
    }

    /// A probe finished: its result goes to the link.
    pub fn handle_result(&mut self, result: ProbeResult) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.produced += 1;
        self.actions.push_back(AgentAction::Deliver(vec![result]));
    }

    /// Starts no more probes (a graceful stop); those in flight finish.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.upcoming.clear();
    }

    fn heartbeat(&mut self, now: UnixMillis) {
        self.actions
            .push_back(AgentAction::Send(FromAgent::Heartbeat { sent_at: now }));
        self.next_heartbeat = after(now, self.config.heartbeat_interval);
    }

    fn request_pool(&mut self, now: UnixMillis) {
        let known_revision = self.pool.as_ref().map_or(0, |pool| pool.revision);
        self.actions
            .push_back(AgentAction::Send(FromAgent::PoolRequest { known_revision }));
        self.next_sync = after(now, self.config.sync_interval);
    }

    fn notice(&mut self, notice: AgentNotice) {
        self.actions.push_back(AgentAction::Notice(notice));
    }
}

/// `at` plus `duration`, at least a millisecond later (a zero interval must not spin).
fn after(at: UnixMillis, duration: Duration) -> UnixMillis {
    UnixMillis(
        at.as_millis()
            .saturating_add(duration_millis(duration).max(1)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{IcmpModule, ProbeConfig, ProbeKind, ProbeModule, Region, Target};

    const T0: u64 = 1_800_000_000_000;
    const SECOND: u64 = 1_000;

    fn me() -> AgentId {
        AgentId::new(Region::new("eu").unwrap(), "198.18.0.11".parse().unwrap())
    }

    fn config() -> AgentConfig {
        AgentConfig {
            me: me(),
            probe_interval: Duration::from_secs(15),
            sync_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(15),
            follow_observed_ip: false,
        }
    }

    fn pool(revision: u64, targets: usize) -> FromServer {
        FromServer::Message(ToAgent::Pool {
            revision,
            configs: Arc::new(vec![ProbeConfig {
                region: Region::new("us").unwrap(),
                targets: (1..=targets)
                    .map(|i| Target::parse(ProbeKind::Icmp, &format!("198.18.2.{i}")).unwrap())
                    .collect(),
                module: ProbeModule::Icmp(IcmpModule::default()),
            }]),
        })
    }

    fn welcome(ip: &str) -> FromServer {
        FromServer::Welcomed {
            server_version: "0.1.0".into(),
            capabilities: crate::link::Capabilities::v1(),
            observed_addr: SocketAddr::new(ip.parse().unwrap(), 40_000),
        }
    }

    fn drain(state: &mut AgentState) -> Vec<AgentAction> {
        std::iter::from_fn(|| state.poll_action()).collect()
    }

    fn sends(actions: &[AgentAction]) -> Vec<&FromAgent> {
        actions
            .iter()
            .filter_map(|a| match a {
                AgentAction::Send(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn probes(actions: &[AgentAction]) -> Vec<&PlannedProbe> {
        actions
            .iter()
            .filter_map(|a| match a {
                AgentAction::Probe(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Runs the state's timers from `from` to `to`, as a driver does, collecting actions.
    fn run_until(state: &mut AgentState, to: u64) -> Vec<AgentAction> {
        let mut actions = drain(state);
        while state.poll_timeout().as_millis() <= to {
            let due = state.poll_timeout();
            state.handle_timeout(due);
            actions.extend(drain(state));
        }
        actions
    }

    #[test]
    fn a_connection_brings_a_heartbeat_and_a_pool_request_and_then_at_their_intervals() {
        let mut state = AgentState::new(config(), UnixMillis(T0));
        state.handle_event(UnixMillis(T0 + 5), welcome("198.18.0.11"));
        let actions = drain(&mut state);
        assert_eq!(
            sends(&actions),
            [
                &FromAgent::Heartbeat {
                    sent_at: UnixMillis(T0 + 5)
                },
                &FromAgent::PoolRequest { known_revision: 0 }
            ]
        );
        // Two minutes on: eight more heartbeats, two more pool requests, no probe (no pool).
        let later = run_until(&mut state, T0 + 5 + 120 * SECOND);
        let heartbeats = sends(&later)
            .iter()
            .filter(|m| matches!(m, FromAgent::Heartbeat { .. }))
            .count();
        let requests = sends(&later)
            .iter()
            .filter(|m| matches!(m, FromAgent::PoolRequest { .. }))
            .count();
        assert_eq!((heartbeats, requests), (8, 2));
        assert!(probes(&later).is_empty());
        // Disconnected: nothing is sent, until the next welcome.
        state.handle_disconnect();
        let quiet = run_until(&mut state, T0 + 300 * SECOND);
        assert!(sends(&quiet).is_empty(), "{quiet:?}");
    }

    #[test]
    fn a_pool_is_probed_at_once_then_every_round_and_kept_while_disconnected() {
        let mut state = AgentState::new(config(), UnixMillis(T0 + 3 * SECOND));
        state.handle_event(UnixMillis(T0 + 3 * SECOND), welcome("198.18.0.11"));
        state.handle_event(UnixMillis(T0 + 3 * SECOND + 10), pool(7, 20));
        drain(&mut state);
        // The first pool is probed at once, for what is left of the round under way.
        let first = run_until(&mut state, T0 + 15 * SECOND - 1);
        assert!(!probes(&first).is_empty() && probes(&first).len() < 20);
        assert!(
            probes(&first)
                .iter()
                .all(|p| p.round_start == UnixMillis(T0)
                    && p.start_at >= UnixMillis(T0 + 3 * SECOND + 10))
        );
        let round = run_until(&mut state, T0 + 30 * SECOND - 1);
        let started = probes(&round);
        assert_eq!(started.len(), 20);
        assert!(
            started
                .iter()
                .all(|p| p.round_start == UnixMillis(T0 + 15 * SECOND))
        );
        assert_eq!(state.in_flight(), 20 + probes(&first).len());
        // Each probe was asked for at its own planned start, in order.
        assert!(started.windows(2).all(|w| w[0].start_at <= w[1].start_at));
        // The server goes away: the pool stays in use.
        state.handle_disconnect();
        let away = run_until(&mut state, T0 + 45 * SECOND - 1);
        assert_eq!(probes(&away).len(), 20);
        assert_eq!(state.pool().map(|p| p.revision), Some(7));
        // Results go to the link as they come.
        let result = ProbeResult {
            source: me(),
            target_region: Region::new("us").unwrap(),
            target: "198.18.2.1".into(),
            round_start: UnixMillis(T0 + 15 * SECOND),
            outcome: crate::model::ProbeOutcome::Icmp(crate::model::IcmpResult::measured(
                Duration::ZERO,
                1,
                &[Duration::from_millis(1)],
            )),
        };
        let in_flight = state.in_flight();
        state.handle_result(result.clone());
        assert_eq!(drain(&mut state), [AgentAction::Deliver(vec![result])]);
        assert_eq!((state.in_flight(), state.produced()), (in_flight - 1, 1));
    }

    #[test]
    fn a_stopping_agent_starts_no_probe() {
        let mut state = AgentState::new(config(), UnixMillis(T0));
        state.handle_event(UnixMillis(T0), pool(1, 50));
        run_until(&mut state, T0 + 15 * SECOND);
        state.stop();
        let after_stop = run_until(&mut state, T0 + 60 * SECOND);
        assert!(probes(&after_stop).is_empty());
    }

    #[test]
    fn a_refused_revision_is_reported_once() {
        let mut state = AgentState::new(config(), UnixMillis(T0));
        let invalid = |revision| FromServer::InvalidPool {
            revision,
            field: "configs[0].icmp.interval".into(),
            reason: "the time between echoes must be more than 0".into(),
        };
        state.handle_event(UnixMillis(T0), invalid(8));
        assert_eq!(sends(&drain(&mut state)).len(), 1);
        // Pushed again (after a reconnect to a server that closed on the report): not again.
        state.handle_event(UnixMillis(T0 + 1), invalid(8));
        let again = drain(&mut state);
        assert!(sends(&again).is_empty());
        assert!(matches!(
            again[..],
            [AgentAction::Notice(AgentNotice::PoolRefused { .. })]
        ));
        state.handle_event(UnixMillis(T0 + 2), invalid(9));
        assert_eq!(
            sends(&drain(&mut state)),
            [&FromAgent::PoolRefused {
                revision: 9,
                field: "configs[0].icmp.interval".into(),
                reason: "the time between echoes must be more than 0".into(),
            }]
        );
    }

    #[test]
    fn in_the_public_ip_mode_the_agent_becomes_who_the_server_sees() {
        let mut state = AgentState::new(
            AgentConfig {
                follow_observed_ip: true,
                ..config()
            },
            UnixMillis(T0),
        );
        state.handle_event(UnixMillis(T0), welcome("203.0.113.9"));
        let actions = drain(&mut state);
        let reidentified = AgentId::new(Region::new("eu").unwrap(), "203.0.113.9".parse().unwrap());
        assert!(actions.contains(&AgentAction::Reidentify(reidentified.clone())));
        assert_eq!(state.me(), &reidentified);
        // The same address again: nothing to do.
        state.handle_event(UnixMillis(T0 + 1), welcome("203.0.113.9"));
        assert!(
            !drain(&mut state)
                .iter()
                .any(|a| matches!(a, AgentAction::Reidentify(_)))
        );
        // Without the mode, the agent keeps its own address.
        let mut fixed = AgentState::new(config(), UnixMillis(T0));
        fixed.handle_event(UnixMillis(T0), welcome("203.0.113.9"));
        assert!(
            !drain(&mut fixed)
                .iter()
                .any(|a| matches!(a, AgentAction::Reidentify(_)))
        );
        assert_eq!(fixed.me(), &me());
    }
}
