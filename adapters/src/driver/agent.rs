//! The agent's driver: runs `core::agent::AgentState` over a `ServerLink`, the probers and a
//! `Clock`. Probes start when the state asks (each in its own task), their results go to
//! the link, the link's words go to the state; on a re-identification the link is replaced.
//! A stop is graceful: no new probe, those in flight finish (within a bound) and their
//! results are handed to the link, which then gets a bound to have them acknowledged.

use std::sync::Arc;
use std::time::Duration;

use probermesh_core::agent::{AgentAction, AgentNotice, AgentState};
use probermesh_core::model::{AgentId, ProbeResult};
use probermesh_core::ports::{Clock, ServerLink};
use probermesh_core::probe::{self, Probers};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// After a link error, how long before `recv` is asked again (a closed link answers at once).
const RECV_PAUSE_AFTER_ERROR: Duration = Duration::from_millis(100);

/// Starts a new link under an identity (a re-identification); the error says why it could
/// not.
pub type Relink<L> = Box<dyn FnMut(&AgentId) -> Result<Arc<L>, String> + Send>;

/// How a graceful stop is bounded.
#[derive(Clone, Copy, Debug)]
pub struct StopBounds {
    /// How long the probes in flight may take to finish.
    pub in_flight: Duration,
    /// How long the link may take to have the last results acknowledged.
    pub drain: Duration,
}

impl StopBounds {
    /// How much longer than a probe interval a stop waits for the probes in flight (a
    /// probe's timeout is at most its interval; the ICMP engine adds its reply timeout).
    pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(3);
    /// How long a stop waits for the server to acknowledge the last results.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

    /// The bounds of a production agent probing every `probe_interval`.
    #[must_use]
    pub fn for_interval(probe_interval: Duration) -> Self {
        Self {
            in_flight: probe_interval + Self::IN_FLIGHT_GRACE,
            drain: Self::DRAIN_TIMEOUT,
        }
    }
}

/// What an agent's run ended with.
#[derive(Debug)]
pub struct AgentRun<L> {
    /// The state at the end (its counters: results produced, …).
    pub state: AgentState,
    /// The link in use at the end (closed).
    pub link: Arc<L>,
    /// Probes still running when the stop's bound ran out (their results are not sent).
    pub abandoned_probes: usize,
    /// Whether the link had every result acknowledged before it closed.
    pub drained: bool,
}

/// Runs the agent until `stop` turns true, then stops gracefully within `bounds`.
pub async fn run<L: ServerLink + 'static>(
    mut state: AgentState,
    mut link: Arc<L>,
    mut relink: Relink<L>,
    probers: Probers,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
    bounds: StopBounds,
) -> AgentRun<L> {
    let mut probes: JoinSet<ProbeResult> = JoinSet::new();
    let mut recv_paused_until = tokio::time::Instant::now();
    loop {
        link = carry_out(&mut state, link, &mut relink, &probers, &mut probes).await;
        let wait = state
            .poll_timeout()
            .as_millis()
            .saturating_sub(clock.now().as_millis());
        let recv_ready = tokio::time::Instant::now() >= recv_paused_until;
        let timer = tokio::time::sleep(Duration::from_millis(wait).min(if recv_ready {
            Duration::MAX
        } else {
            recv_paused_until - tokio::time::Instant::now()
        }));
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            Some(joined) = probes.join_next(), if !probes.is_empty() => {
                if let Ok(result) = joined {
                    state.handle_result(result);
                }
            }
            received = link.recv(), if recv_ready => match received {
                Ok(event) => state.handle_event(clock.now(), event),
                Err(error) => {
                    tracing::debug!(%error, "link to the server");
                    state.handle_disconnect();
                    recv_paused_until = tokio::time::Instant::now() + RECV_PAUSE_AFTER_ERROR;
                }
            },
            () = timer => state.handle_timeout(clock.now()),
        }
    }
    tracing::warn!(
        in_flight = state.in_flight(),
        "shutting down: finishing the probes in flight and delivering their results"
    );
    state.stop();
    let deadline = tokio::time::Instant::now() + bounds.in_flight;
    loop {
        link = carry_out(&mut state, link, &mut relink, &probers, &mut probes).await;
        if probes.is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, probes.join_next()).await {
            Ok(Some(Ok(result))) => state.handle_result(result),
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    in_flight_bound = ?bounds.in_flight,
                    running = probes.len(),
                    "probes still running at stop; their results are not sent"
                );
                break;
            }
        }
    }
    let abandoned_probes = probes.len();
    probes.abort_all();
    let drained = link.drain(bounds.drain).await;
    link.close().await;
    AgentRun {
        state,
        link,
        abandoned_probes,
        drained,
    }
}

/// Carries out every action the state has, and returns the link to use from now on.
async fn carry_out<L: ServerLink + 'static>(
    state: &mut AgentState,
    mut link: Arc<L>,
    relink: &mut Relink<L>,
    probers: &Probers,
    probes: &mut JoinSet<ProbeResult>,
) -> Arc<L> {
    while let Some(action) = state.poll_action() {
        match action {
            AgentAction::Probe(planned) => {
                let (probers, me) = (probers.clone(), state.me().clone());
                probes.spawn(async move { probe::run(&probers, &me, planned).await });
            }
            AgentAction::Send(message) => {
                // A lost control message is repeated or moot (see AgentState).
                if let Err(error) = link.send(message).await {
                    tracing::debug!(%error, "a control message was not sent");
                }
            }
            AgentAction::Deliver(results) => link.enqueue_results(results),
            AgentAction::Reidentify(me) => match relink(&me) {
                Ok(new_link) => {
                    tracing::warn!(agent = %me, "the server sees this agent at another address; reconnecting as it");
                    link.close().await;
                    link = new_link;
                }
                Err(error) => {
                    tracing::error!(agent = %me, %error, "cannot reconnect under the new identity; keeping the old link");
                }
            },
            AgentAction::Notice(notice) => log(&notice),
        }
    }
    link
}

fn log(notice: &AgentNotice) {
    match notice {
        AgentNotice::Connected {
            server_version,
            observed_addr,
        } => tracing::info!(%server_version, %observed_addr, "connected to the server"),
        AgentNotice::PoolAccepted { revision, blocks } => {
            tracing::info!(revision, blocks, "target pool updated");
        }
        AgentNotice::PoolRefused {
            revision,
            field,
            reason,
        } => tracing::error!(
            revision,
            %field,
            %reason,
            "refused the server's target pool; keeping the previous one and telling the server"
        ),
        AgentNotice::ProbesSkipped {
            kind,
            skipped,
            limit,
        } => tracing::warn!(
            %kind,
            skipped,
            limit,
            "probes of the last round were skipped: this many of its kind were running until too late in the round (raise -agent.probe.{kind}-max-in-flight, or lower the timeout or the targets)"
        ),
        AgentNotice::FilesNotSent { paths } => tracing::error!(
            ?paths,
            "the pool names files whose contents the server did not send (a server older than this agent); this agent does not read files the server names, so the probes that need them fail: upgrade the server"
        ),
        AgentNotice::Unhandled { kind } => {
            tracing::debug!(kind, "server message not handled by this version");
        }
    }
}
