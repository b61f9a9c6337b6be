//! The supervision rules as a pure state machine: `next(&NodeFsm, Event, now) -> (NodeFsm,
//! Vec<Action>)`.
//!
//! Nothing here touches a process, a clock or a file: the runner feeds in [`Event`]s (facts
//! that happened, and requests that arrived) with the current [`Instant`], and performs the
//! [`Action`]s (commands) that come out. The FSM is the only writer of a node's supervision
//! state — phase, process identity, restarts, last exit, readiness, liveness — so restart
//! policy, backoff, the crash-loop rule, liveness restarts and the reset after a healthy
//! stretch are plain unit tests.
//!
//! The rules (defaults in [`RestartRules::default`]):
//! - policy `always` restarts after any exit, `on-failure` after anything but exit code 0
//!   (an adopted node's unknown exit counts as a failure), `never` leaves it stopped;
//! - the first restart happens at once, later ones after a backoff that starts at 100 ms and
//!   doubles up to 30 s;
//! - once a node has been ready for 30 s, the backoff and the exit history are forgotten;
//! - more than 5 exits within 60 s puts the node in a crash loop: restarts wait the full cap
//!   until a `Restart` request (or a healthy stretch) clears it;
//! - `restarts` counts every restart: after an exit, on request, and after a liveness kill;
//! - liveness: `/healthz` failing `liveness.failures` times in a row stops the node's group
//!   (SIGTERM, grace, SIGKILL) and restarts it per policy; failures only count once the node
//!   has answered a probe or [`RestartRules::liveness_start_grace`] has passed since its
//!   start, so a slow start is not a hang. Readiness failures never restart a node.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dwbase_proto::process::ProcessId;
use dwbase_proto::state::Desired;
use dwbase_proto::{ExitCause, ExitKind, LastExit, LivenessSpec, NodeState, RestartPolicy};

/// The tunable numbers of the rules. Tests shrink them; the daemon uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartRules {
    /// Delay before the second restart in a row (the first is immediate).
    pub first_backoff: Duration,
    /// Cap of the doubling backoff, and the delay between restarts in a crash loop.
    pub max_backoff: Duration,
    /// Ready for this long → backoff and exit history reset.
    pub reset_after_ready: Duration,
    /// Window over which exits are counted for the crash-loop rule.
    pub crash_window: Duration,
    /// More exits than this within the window → crash loop.
    pub crash_max_exits: usize,
    /// Liveness failures of a node that has never answered count only after this long.
    pub liveness_start_grace: Duration,
}

impl Default for RestartRules {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            reset_after_ready: Duration::from_secs(30),
            crash_window: Duration::from_secs(60),
            crash_max_exits: 5,
            liveness_start_grace: Duration::from_secs(30),
        }
    }
}

/// What the last readiness probe said about a running node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Never answered 200 since this process started.
    Starting,
    /// `/readyz` answers 200.
    Ready,
    /// Was ready; `/readyz` now answers non-200.
    Degraded,
    /// Was ready; `/readyz` no longer answers at all.
    Unready,
}

/// What follows a stop the supervisor asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay stopped (`stop`, a removal).
    Stay,
    /// Spawn again at once (`restart`, a deploy replacing the node).
    Respawn,
    /// Restart per policy, like a crash (a liveness kill).
    PerPolicy,
}

/// Where a node is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A spawn was ordered and its outcome (Spawned / SpawnFailed) is awaited.
    Spawning,
    /// A process runs.
    Running {
        /// When it started (or was adopted).
        since: Instant,
        /// The last probe's verdict.
        readiness: Readiness,
    },
    /// Exited; a restart is due at `until`.
    Backoff {
        /// When the restart is due.
        until: Instant,
    },
    /// SIGTERM was sent; waiting for the exit.
    Stopping {
        /// What happens after the exit.
        then: AfterStop,
        /// Why it is being stopped (recorded as the exit's cause).
        cause: ExitCause,
    },
    /// No process and none planned.
    Stopped,
}

/// Something that happened to a node, or a request about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Fact: a process was spawned for the node.
    Spawned(ProcessId),
    /// Fact: spawning failed (binary missing, port taken, …).
    SpawnFailed(String),
    /// Fact: a live process of an earlier supervisor was taken over.
    Adopted(ProcessId),
    /// Fact: the process exited. An adopted node, or one found dead at startup, reports
    /// `Some(ExitKind::Unknown)`; `None` (no status at all) is treated the same way.
    Exited {
        /// Code or signal, if known.
        kind: Option<ExitKind>,
        /// When (Unix milliseconds; the runner reads the clock).
        at_unix_ms: i64,
        /// What the process said about it right before it exited (its last words on the
        /// notify socket), e.g. why its store did not open.
        reason: Option<String>,
    },
    /// Fact: `/readyz` answered 200.
    ProbeReady,
    /// Fact: `/readyz` answered something else (the reason names it).
    ProbeNotReady(String),
    /// Fact: `/readyz` did not answer (refused, timed out).
    ProbeFailed(String),
    /// Fact: `/healthz` answered 200.
    LivenessOk,
    /// Fact: `/healthz` did not answer 200 in time (the reason names what it saw).
    LivenessFailed(String),
    /// Fact: the backoff timer ran out.
    BackoffElapsed,
    /// Fact: the SIGTERM grace ran out and the process still runs.
    StopTimedOut,
    /// Request: start a stopped node (deploy).
    StartRequested,
    /// Request: stop the node and keep it stopped.
    StopRequested,
    /// Request: restart the node now; clears a crash loop; counts as a restart.
    RestartRequested,
    /// Request: a deploy replaces the node with a new spec: stop it, then start the new one
    /// as a fresh node (history and restart count start over).
    ReplaceRequested,
}

/// A command for the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn a process now and report `Spawned` or `SpawnFailed`.
    Spawn,
    /// Report `BackoffElapsed` after this delay.
    ScheduleRestart(Duration),
    /// SIGTERM (+SIGCONT) the process group; report `StopTimedOut` when the grace runs out.
    SignalStop,
    /// SIGKILL the process group.
    Kill,
    /// The node just entered a crash loop: tell the operator (log, last log lines).
    EnterCrashLoop,
    /// Liveness failed too often: the node is being stopped to be restarted (tell the
    /// operator; `SignalStop` follows).
    LivenessRestart(String),
    /// Persist state.json.
    SaveState,
}

/// The supervision state of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFsm {
    /// The rules' numbers.
    pub rules: RestartRules,
    /// Restart policy.
    pub policy: RestartPolicy,
    /// Liveness probing.
    pub liveness: LivenessSpec,
    /// Whether the operator wants it running.
    pub desired: Desired,
    /// Life-cycle phase.
    pub phase: Phase,
    /// The running process (set from `Spawned`/`Adopted`, cleared on `Exited`).
    pub process: Option<ProcessId>,
    /// Bumped for every process: facts about an older one (a late exit, a probe) are stale.
    pub generation: u64,
    /// Restarts since deploy (after exits, requests and liveness kills).
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<LastExit>,
    /// Delay of the next restart if the node exits now (zero = immediately).
    pub next_backoff: Duration,
    /// Recent exits, oldest first, within `rules.crash_window`.
    pub exits: VecDeque<Instant>,
    /// In a crash loop.
    pub crash_loop: bool,
    /// Ready without interruption since.
    pub ready_since: Option<Instant>,
    /// Has been ready since the current process started.
    pub was_ready: bool,
    /// Has answered any probe since the current process started (arms liveness).
    pub answered: bool,
    /// Liveness probes failed in a row.
    pub liveness_failures: u32,
    /// Why it is not ready / what went wrong last.
    pub message: Option<String>,
}

impl NodeFsm {
    /// A node that is not running yet.
    pub fn new(policy: RestartPolicy, liveness: LivenessSpec, rules: RestartRules) -> Self {
        Self {
            rules,
            policy,
            liveness,
            desired: Desired::Running,
            phase: Phase::Stopped,
            process: None,
            generation: 0,
            restarts: 0,
            last_exit: None,
            next_backoff: Duration::ZERO,
            exits: VecDeque::new(),
            crash_loop: false,
            ready_since: None,
            was_ready: false,
            answered: false,
            liveness_failures: 0,
            message: None,
        }
    }

    /// Applies `event` in place and returns the actions to perform.
    pub fn apply(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let (next_state, actions) = next(self, event, now);
        *self = next_state;
        actions
    }

    /// What `status` shows.
    pub fn node_state(&self) -> NodeState {
        match self.phase {
            Phase::Running { readiness: Readiness::Ready, .. } => NodeState::Ready,
            _ if self.crash_loop
                && matches!(
                    self.phase,
                    Phase::Running { .. } | Phase::Backoff { .. } | Phase::Spawning
                ) =>
            {
                NodeState::CrashLoop
            }
            Phase::Spawning => NodeState::Starting,
            Phase::Running { readiness, .. } => match readiness {
                Readiness::Starting => NodeState::Starting,
                Readiness::Ready => NodeState::Ready,
                Readiness::Degraded => NodeState::Degraded,
                Readiness::Unready => NodeState::Unready,
            },
            Phase::Backoff { .. } => NodeState::Backoff,
            Phase::Stopping { .. } => NodeState::Stopping,
            Phase::Stopped => NodeState::Stopped,
        }
    }

    /// A process is (believed to be) running.
    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running { .. } | Phase::Stopping { .. })
    }

    /// Since when the current process runs.
    pub fn running_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running { since, .. } => Some(since),
            _ => None,
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.process.map(|p| p.pid)
    }

    fn restart_wanted(&self, kind: Option<ExitKind>) -> bool {
        match self.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => kind != Some(ExitKind::Code(0)),
            RestartPolicy::Never => false,
        }
    }

    fn clear_history(&mut self) {
        self.exits.clear();
        self.next_backoff = Duration::ZERO;
        self.crash_loop = false;
    }

    fn process_gone(
        &mut self,
        kind: Option<ExitKind>,
        at_unix_ms: i64,
        cause: ExitCause,
        reason: Option<String>,
    ) {
        self.process = None;
        self.ready_since = None;
        self.was_ready = false;
        self.answered = false;
        self.liveness_failures = 0;
        let kind = kind.unwrap_or(ExitKind::Unknown);
        if let Some(r) = &reason {
            // Shown with the node's state until its next process starts.
            self.message = Some(format!("{kind}: {r}"));
        }
        self.last_exit = Some(LastExit { kind, at_unix_ms, cause, reason });
    }

    fn on_exit(&mut self, kind: Option<ExitKind>, now: Instant) -> Vec<Action> {
        if self.desired == Desired::Stopped || !self.restart_wanted(kind) {
            self.phase = Phase::Stopped;
            return vec![Action::SaveState];
        }
        self.exits.push_back(now);
        while self.exits.front().is_some_and(|t| now.duration_since(*t) > self.rules.crash_window) {
            self.exits.pop_front();
        }
        let mut actions = vec![Action::SaveState];
        if self.exits.len() > self.rules.crash_max_exits && !self.crash_loop {
            self.crash_loop = true;
            actions.push(Action::EnterCrashLoop);
        }
        let delay = if self.crash_loop { self.rules.max_backoff } else { self.next_backoff };
        self.next_backoff = if self.next_backoff.is_zero() {
            self.rules.first_backoff
        } else {
            (self.next_backoff * 2).min(self.rules.max_backoff)
        };
        if delay.is_zero() {
            self.restarts += 1;
            self.phase = Phase::Spawning;
            actions.push(Action::Spawn);
        } else {
            self.phase = Phase::Backoff { until: now + delay };
            actions.push(Action::ScheduleRestart(delay));
        }
        actions
    }

    fn on_probe(&mut self, readiness: Readiness, message: Option<String>, now: Instant) {
        let Phase::Running { since, .. } = self.phase else { return };
        self.message = message;
        self.phase = Phase::Running { since, readiness };
        if readiness != Readiness::Ready {
            self.ready_since = None;
            return;
        }
        self.was_ready = true;
        let ready_since = *self.ready_since.get_or_insert(now);
        if now.duration_since(ready_since) >= self.rules.reset_after_ready
            && (self.crash_loop || !self.exits.is_empty() || !self.next_backoff.is_zero())
        {
            self.clear_history();
        }
    }

    fn stop_for(&mut self, then: AfterStop, cause: ExitCause) -> Vec<Action> {
        match self.phase {
            Phase::Running { .. } => {
                self.phase = Phase::Stopping { then, cause };
                vec![Action::SaveState, Action::SignalStop]
            }
            Phase::Stopping { .. } => {
                self.phase = Phase::Stopping { then, cause };
                vec![Action::SaveState]
            }
            // A spawn is already on its way: it will see `desired` when it lands.
            Phase::Spawning if then == AfterStop::Respawn => vec![Action::SaveState],
            Phase::Spawning | Phase::Backoff { .. } | Phase::Stopped => {
                if then == AfterStop::Respawn {
                    self.phase = Phase::Spawning;
                    vec![Action::SaveState, Action::Spawn]
                } else {
                    self.phase = Phase::Stopped;
                    vec![Action::SaveState]
                }
            }
        }
    }
}

/// The rules: the state after `event` at `now`, and what the runner must do.
pub fn next(fsm: &NodeFsm, event: Event, now: Instant) -> (NodeFsm, Vec<Action>) {
    let mut s = fsm.clone();
    let actions = match event {
        Event::Spawned(id) | Event::Adopted(id) => {
            s.process = Some(id);
            s.generation += 1;
            s.phase = Phase::Running { since: now, readiness: Readiness::Starting };
            s.ready_since = None;
            s.was_ready = false;
            s.answered = false;
            s.liveness_failures = 0;
            s.message = None;
            if s.desired == Desired::Stopped {
                // A stop arrived while we were spawning or adopting: carry it out.
                s.phase = Phase::Stopping { then: AfterStop::Stay, cause: ExitCause::Requested };
                vec![Action::SaveState, Action::SignalStop]
            } else {
                vec![Action::SaveState]
            }
        }
        Event::SpawnFailed(message) => {
            s.message = Some(message);
            match s.phase {
                Phase::Spawning => s.on_exit(None, now),
                _ => vec![],
            }
        }
        Event::Exited { kind, at_unix_ms, reason } => match s.phase {
            Phase::Stopping { then, cause } => {
                s.process_gone(kind, at_unix_ms, cause, reason);
                match then {
                    AfterStop::Respawn => {
                        s.phase = Phase::Spawning;
                        vec![Action::SaveState, Action::Spawn]
                    }
                    AfterStop::Stay => {
                        s.phase = Phase::Stopped;
                        vec![Action::SaveState]
                    }
                    AfterStop::PerPolicy => {
                        s.phase = Phase::Spawning;
                        s.on_exit(kind, now)
                    }
                }
            }
            Phase::Running { .. } | Phase::Spawning => {
                s.process_gone(kind, at_unix_ms, ExitCause::Unexpected, reason);
                s.on_exit(kind, now)
            }
            Phase::Backoff { .. } | Phase::Stopped => vec![],
        },
        Event::ProbeReady => {
            s.answered = true;
            s.on_probe(Readiness::Ready, None, now);
            vec![]
        }
        Event::ProbeNotReady(reason) => {
            s.answered = true;
            let r = if s.was_ready { Readiness::Degraded } else { Readiness::Starting };
            s.on_probe(r, Some(reason), now);
            vec![]
        }
        Event::ProbeFailed(reason) => {
            let r = if s.was_ready { Readiness::Unready } else { Readiness::Starting };
            s.on_probe(r, Some(reason), now);
            vec![]
        }
        Event::LivenessOk => {
            if s.is_running() {
                s.answered = true;
                s.liveness_failures = 0;
            }
            vec![]
        }
        Event::LivenessFailed(reason) => match s.phase {
            Phase::Running { since, .. } if s.liveness.enabled() => {
                let armed = s.answered || now.duration_since(since) >= s.rules.liveness_start_grace;
                if !armed {
                    vec![]
                } else {
                    s.liveness_failures += 1;
                    if s.liveness_failures >= s.liveness.failures {
                        let why = format!(
                            "liveness: /healthz failed {} times in a row ({reason})",
                            s.liveness_failures
                        );
                        s.message = Some(why.clone());
                        s.phase = Phase::Stopping {
                            then: AfterStop::PerPolicy,
                            cause: ExitCause::Liveness,
                        };
                        vec![Action::SaveState, Action::LivenessRestart(why), Action::SignalStop]
                    } else {
                        vec![]
                    }
                }
            }
            _ => vec![],
        },
        Event::BackoffElapsed => match s.phase {
            Phase::Backoff { until } if now >= until => {
                s.restarts += 1;
                s.phase = Phase::Spawning;
                vec![Action::Spawn]
            }
            _ => vec![],
        },
        Event::StopTimedOut => match s.phase {
            Phase::Stopping { .. } => vec![Action::Kill],
            _ => vec![],
        },
        Event::StartRequested => {
            s.desired = Desired::Running;
            match s.phase {
                Phase::Stopped => {
                    s.clear_history();
                    s.phase = Phase::Spawning;
                    vec![Action::SaveState, Action::Spawn]
                }
                Phase::Stopping { cause, .. } => {
                    s.phase = Phase::Stopping { then: AfterStop::Respawn, cause };
                    vec![Action::SaveState]
                }
                _ => vec![Action::SaveState],
            }
        }
        Event::StopRequested => {
            s.desired = Desired::Stopped;
            s.stop_for(AfterStop::Stay, ExitCause::Requested)
        }
        Event::RestartRequested => {
            s.desired = Desired::Running;
            s.clear_history();
            s.message = None;
            if s.phase == Phase::Spawning {
                vec![]
            } else {
                s.restarts += 1;
                s.stop_for(AfterStop::Respawn, ExitCause::Requested)
            }
        }
        Event::ReplaceRequested => {
            s.desired = Desired::Running;
            s.clear_history();
            s.restarts = 0;
            s.message = None;
            s.stop_for(AfterStop::Respawn, ExitCause::Requested)
        }
    };
    (s, actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pid(n: u32) -> ProcessId {
        ProcessId { pid: n, start_time: Some(u64::from(n) * 7) }
    }

    fn running(policy: RestartPolicy, t0: Instant) -> NodeFsm {
        let mut f = NodeFsm::new(policy, LivenessSpec::DEFAULT, RestartRules::default());
        assert_eq!(f.apply(Event::StartRequested, t0), vec![Action::SaveState, Action::Spawn]);
        assert_eq!(f.apply(Event::Spawned(pid(10)), t0), vec![Action::SaveState]);
        f
    }

    /// Exits the node at `t` and, if a restart is scheduled, lets it elapse and spawns again.
    /// Returns the delay that was used (zero for an immediate restart).
    fn crash_and_restart(f: &mut NodeFsm, t: Instant) -> Option<Duration> {
        let actions = f.apply(
            Event::Exited { kind: Some(ExitKind::Signal(9)), at_unix_ms: 0, reason: None },
            t,
        );
        let delay = if actions.contains(&Action::Spawn) {
            Duration::ZERO
        } else {
            match actions.iter().find_map(|a| match a {
                Action::ScheduleRestart(d) => Some(*d),
                _ => None,
            }) {
                Some(d) => {
                    assert_eq!(f.apply(Event::BackoffElapsed, t + d), vec![Action::Spawn]);
                    d
                }
                None => return None,
            }
        };
        f.apply(Event::Spawned(pid(11)), t + delay);
        Some(delay)
    }

    #[test]
    fn start_spawns_and_spawned_runs() {
        let t0 = Instant::now();
        let f = running(RestartPolicy::Always, t0);
        assert_eq!(f.node_state(), NodeState::Starting);
        assert!(f.is_running());
        assert_eq!(f.running_since(), Some(t0));
    }

    #[test]
    fn first_restart_is_immediate_then_backoff_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        // Spread exits out so the crash-loop rule never triggers.
        let mut delays = vec![];
        let mut t = t0;
        for _ in 0..12 {
            t += Duration::from_secs(61);
            delays.push(crash_and_restart(&mut f, t).unwrap());
        }
        assert_eq!(
            delays,
            vec![
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(12800),
                ms(25600),
                ms(30000),
                ms(30000)
            ]
        );
        assert_eq!(f.restarts, 12);
        assert!(!f.crash_loop);
    }

    #[test]
    fn last_words_stay_with_the_exit_and_show_until_the_next_process() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        let why = "opening the store: No space left on device (os error 28)";
        f.apply(
            Event::Exited {
                kind: Some(ExitKind::Code(1)),
                at_unix_ms: 5,
                reason: Some(why.into()),
            },
            t0,
        );
        let exit = f.last_exit.clone().unwrap();
        assert_eq!((exit.kind, exit.reason.as_deref()), (ExitKind::Code(1), Some(why)));
        assert_eq!(f.message.as_deref(), Some(format!("exit 1: {why}").as_str()));
        f.apply(Event::Spawned(pid(77)), t0);
        assert_eq!(f.message, None, "a new process starts with a clean message");
        assert_eq!(
            f.last_exit.as_ref().unwrap().reason.as_deref(),
            Some(why),
            "the last exit keeps it"
        );
    }

    #[test]
    fn policy_never_stays_stopped() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Never, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(1)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState]);
        assert_eq!(f.node_state(), NodeState::Stopped);
        assert_eq!(f.restarts, 0);
    }

    #[test]
    fn policy_on_failure_restarts_on_failure_only() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::OnFailure, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(0)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState]);
        assert_eq!(f.phase, Phase::Stopped);

        let mut f = running(RestartPolicy::OnFailure, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(3)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);

        let mut f = running(RestartPolicy::OnFailure, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Signal(9)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);

        // Unknown status (adopted node) counts as a failure.
        let mut f = running(RestartPolicy::OnFailure, t0);
        let a = f.apply(Event::Exited { kind: None, at_unix_ms: 0, reason: None }, t0);
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        let mut f = running(RestartPolicy::OnFailure, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Unknown), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
    }

    #[test]
    fn policy_always_restarts_a_clean_exit() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(0)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        assert_eq!(f.restarts, 1);
    }

    #[test]
    fn six_exits_in_a_minute_is_a_crash_loop_at_the_cap() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        let mut t = t0;
        for i in 0..5 {
            let d = crash_and_restart(&mut f, t).unwrap();
            assert!(!f.crash_loop, "exit {i}");
            t += d + ms(10);
        }
        let a = f
            .apply(Event::Exited { kind: Some(ExitKind::Code(3)), at_unix_ms: 0, reason: None }, t);
        assert_eq!(
            a,
            vec![
                Action::SaveState,
                Action::EnterCrashLoop,
                Action::ScheduleRestart(Duration::from_secs(30))
            ]
        );
        assert_eq!(f.node_state(), NodeState::CrashLoop);
        // Restarted at the cap, still reported as crash-loop while not ready.
        assert_eq!(
            f.apply(Event::BackoffElapsed, t + Duration::from_secs(30)),
            vec![Action::Spawn]
        );
        f.apply(Event::Spawned(pid(12)), t + Duration::from_secs(30));
        assert_eq!(f.node_state(), NodeState::CrashLoop);
        // The next exit also waits the cap, and EnterCrashLoop is not repeated.
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(3)), at_unix_ms: 0, reason: None },
            t + Duration::from_secs(31),
        );
        assert_eq!(a, vec![Action::SaveState, Action::ScheduleRestart(Duration::from_secs(30))]);
    }

    #[test]
    fn exits_spread_over_more_than_the_window_are_no_crash_loop() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        let mut t = t0;
        for _ in 0..10 {
            crash_and_restart(&mut f, t).unwrap();
            t += Duration::from_secs(13);
        }
        assert!(!f.crash_loop);
        assert!(f.exits.len() <= 5);
    }

    #[test]
    fn restart_request_clears_a_crash_loop_and_spawns_at_once() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        let mut t = t0;
        for _ in 0..5 {
            t += crash_and_restart(&mut f, t).unwrap();
        }
        f.apply(Event::Exited { kind: Some(ExitKind::Code(3)), at_unix_ms: 0, reason: None }, t);
        assert!(f.crash_loop);
        assert!(matches!(f.phase, Phase::Backoff { .. }));
        let a = f.apply(Event::RestartRequested, t);
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        assert!(!f.crash_loop);
        assert_eq!(f.restarts, 6, "five restarts after exits, plus this one: every restart counts");
        assert_eq!(f.next_backoff, Duration::ZERO);
        // The stale backoff timer is ignored.
        f.apply(Event::Spawned(pid(20)), t);
        assert_eq!(f.apply(Event::BackoffElapsed, t + Duration::from_secs(30)), vec![]);
        assert_eq!(f.node_state(), NodeState::Starting);
    }

    #[test]
    fn restart_request_of_a_running_node_stops_then_spawns() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Never, t0);
        assert_eq!(
            f.apply(Event::RestartRequested, t0),
            vec![Action::SaveState, Action::SignalStop]
        );
        assert_eq!(f.node_state(), NodeState::Stopping);
        assert_eq!(f.apply(Event::StopTimedOut, t0), vec![Action::Kill]);
        // Even with policy never, a requested restart spawns again; it counts as a restart and
        // its exit is recorded as requested.
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Signal(15)), at_unix_ms: 9, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        assert_eq!(f.restarts, 1);
        assert_eq!(
            f.last_exit,
            Some(LastExit {
                kind: ExitKind::Signal(15),
                at_unix_ms: 9,
                cause: ExitCause::Requested,
                reason: None
            })
        );
    }

    #[test]
    fn stop_request_signals_and_the_exit_is_final() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        assert_eq!(f.apply(Event::StopRequested, t0), vec![Action::SaveState, Action::SignalStop]);
        assert_eq!(f.desired, Desired::Stopped);
        assert_eq!(
            f.apply(
                Event::Exited { kind: Some(ExitKind::Code(0)), at_unix_ms: 0, reason: None },
                t0
            ),
            vec![Action::SaveState]
        );
        assert_eq!(f.node_state(), NodeState::Stopped);
        assert_eq!(f.restarts, 0);
        // A late timeout does nothing.
        assert_eq!(f.apply(Event::StopTimedOut, t0), vec![]);
    }

    #[test]
    fn stop_during_backoff_cancels_the_restart() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        crash_and_restart(&mut f, t0).unwrap();
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(1)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::ScheduleRestart(ms(100))]);
        assert_eq!(f.node_state(), NodeState::Backoff);
        assert_eq!(f.apply(Event::StopRequested, t0), vec![Action::SaveState]);
        assert_eq!(f.apply(Event::BackoffElapsed, t0 + ms(100)), vec![]);
        assert_eq!(f.node_state(), NodeState::Stopped);
    }

    #[test]
    fn stop_timeout_kills_only_while_stopping() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        assert_eq!(f.apply(Event::StopTimedOut, t0), vec![]);
        f.apply(Event::StopRequested, t0);
        assert_eq!(f.apply(Event::StopTimedOut, t0), vec![Action::Kill]);
    }

    #[test]
    fn early_backoff_timer_is_ignored() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        crash_and_restart(&mut f, t0).unwrap();
        f.apply(Event::Exited { kind: Some(ExitKind::Code(1)), at_unix_ms: 0, reason: None }, t0);
        assert_eq!(f.apply(Event::BackoffElapsed, t0 + ms(50)), vec![]);
        assert_eq!(f.apply(Event::BackoffElapsed, t0 + ms(100)), vec![Action::Spawn]);
    }

    #[test]
    fn readiness_transitions() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        f.apply(Event::ProbeFailed("refused".into()), t0);
        assert_eq!(f.node_state(), NodeState::Starting, "not answering yet is still starting");
        f.apply(Event::ProbeNotReady("503".into()), t0);
        assert_eq!(f.node_state(), NodeState::Starting);
        f.apply(Event::ProbeReady, t0);
        assert_eq!(f.node_state(), NodeState::Ready);
        assert_eq!(f.message, None);
        f.apply(Event::ProbeNotReady("disk 95%".into()), t0);
        assert_eq!(f.node_state(), NodeState::Degraded);
        assert_eq!(f.message.as_deref(), Some("disk 95%"));
        f.apply(Event::ProbeFailed("timeout".into()), t0);
        assert_eq!(f.node_state(), NodeState::Unready);
        f.apply(Event::ProbeReady, t0);
        assert_eq!(f.node_state(), NodeState::Ready);
    }

    #[test]
    fn probes_of_a_stopped_node_change_nothing() {
        let t0 = Instant::now();
        let mut f =
            NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, RestartRules::default());
        f.apply(Event::ProbeReady, t0);
        assert_eq!(f.node_state(), NodeState::Stopped);
    }

    #[test]
    fn ready_for_the_reset_window_forgets_backoff_and_crash_loop() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        let mut t = t0;
        for _ in 0..5 {
            t += crash_and_restart(&mut f, t).unwrap();
        }
        f.apply(Event::Exited { kind: Some(ExitKind::Code(3)), at_unix_ms: 0, reason: None }, t);
        assert!(f.crash_loop);
        t += Duration::from_secs(30);
        f.apply(Event::BackoffElapsed, t);
        f.apply(Event::Spawned(pid(30)), t);
        f.apply(Event::ProbeReady, t);
        assert_eq!(f.node_state(), NodeState::Ready);
        f.apply(Event::ProbeReady, t + Duration::from_secs(29));
        assert!(f.crash_loop, "not yet");
        // An interruption restarts the window.
        f.apply(Event::ProbeNotReady("x".into()), t + Duration::from_secs(29));
        f.apply(Event::ProbeReady, t + Duration::from_secs(31));
        assert!(f.crash_loop, "window restarted");
        f.apply(Event::ProbeReady, t + Duration::from_secs(61));
        assert!(!f.crash_loop);
        assert!(f.exits.is_empty());
        assert_eq!(f.next_backoff, Duration::ZERO);
        // The next crash restarts at once again.
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Signal(9)), at_unix_ms: 0, reason: None },
            t + Duration::from_secs(62),
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
    }

    #[test]
    fn spawn_failure_counts_as_a_failed_exit() {
        let t0 = Instant::now();
        let mut f =
            NodeFsm::new(RestartPolicy::OnFailure, LivenessSpec::DEFAULT, RestartRules::default());
        f.apply(Event::StartRequested, t0);
        let a = f.apply(Event::SpawnFailed("no such file".into()), t0);
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        assert_eq!(f.message.as_deref(), Some("no such file"));
        let a = f.apply(Event::SpawnFailed("no such file".into()), t0);
        assert_eq!(a, vec![Action::SaveState, Action::ScheduleRestart(ms(100))]);
    }

    #[test]
    fn adopted_node_with_a_pending_stop_is_stopped() {
        let t0 = Instant::now();
        let mut f =
            NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, RestartRules::default());
        f.desired = Desired::Stopped;
        let a = f.apply(Event::Adopted(pid(5)), t0);
        assert_eq!(a, vec![Action::SaveState, Action::SignalStop]);
    }

    #[test]
    fn adopted_node_found_dead_restarts_per_policy() {
        let t0 = Instant::now();
        let mut f =
            NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, RestartRules::default());
        f.phase = Phase::Spawning;
        let a = f.apply(Event::Exited { kind: None, at_unix_ms: 0, reason: None }, t0);
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
    }

    #[test]
    fn start_request_while_stopping_restarts_after_the_exit() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        f.apply(Event::StopRequested, t0);
        f.apply(Event::StartRequested, t0);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(0)), at_unix_ms: 0, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        assert_eq!(f.desired, Desired::Running);
    }

    #[test]
    fn shrunk_rules_are_honoured() {
        let rules = RestartRules {
            first_backoff: ms(10),
            max_backoff: ms(20),
            crash_max_exits: 100,
            ..RestartRules::default()
        };
        let t0 = Instant::now();
        let mut f = NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, rules);
        f.apply(Event::StartRequested, t0);
        f.apply(Event::Spawned(pid(1)), t0);
        let mut t = t0;
        let mut delays = vec![];
        for _ in 0..20 {
            let d = crash_and_restart(&mut f, t).unwrap();
            delays.push(d);
            t += d;
        }
        assert_eq!(f.restarts, 20);
        assert!(!f.crash_loop);
        assert!(delays.iter().all(|d| *d <= ms(20)));
    }

    fn liveness_rules() -> RestartRules {
        RestartRules { liveness_start_grace: Duration::from_secs(30), ..RestartRules::default() }
    }

    #[test]
    fn k_liveness_failures_in_a_row_stop_the_node_and_restart_it_per_policy() {
        let t0 = Instant::now();
        let mut f = NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, liveness_rules());
        f.apply(Event::StartRequested, t0);
        f.apply(Event::Spawned(pid(10)), t0);
        f.apply(Event::ProbeReady, t0);
        assert_eq!(f.apply(Event::LivenessFailed("timed out".into()), t0), vec![]);
        // A success in between starts the count over.
        f.apply(Event::LivenessOk, t0);
        assert_eq!(f.apply(Event::LivenessFailed("timed out".into()), t0), vec![]);
        assert_eq!(f.apply(Event::LivenessFailed("timed out".into()), t0), vec![]);
        assert_eq!(f.liveness_failures, 2);
        assert_eq!(f.node_state(), NodeState::Ready, "liveness failures alone change no state");
        let a = f.apply(Event::LivenessFailed("timed out".into()), t0);
        assert_eq!(a.len(), 3, "{a:?}");
        assert!(matches!(&a[1], Action::LivenessRestart(m) if m.contains("3 times")), "{a:?}");
        assert_eq!(a[2], Action::SignalStop);
        assert_eq!(f.node_state(), NodeState::Stopping);
        // The hung process ignores SIGTERM: the grace runs out, SIGKILL.
        assert_eq!(f.apply(Event::StopTimedOut, t0), vec![Action::Kill]);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Signal(9)), at_unix_ms: 5, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn], "first restart is immediate");
        assert_eq!(f.restarts, 1);
        assert_eq!(f.last_exit.as_ref().unwrap().cause, ExitCause::Liveness);
        assert_eq!(f.desired, Desired::Running);
    }

    #[test]
    fn a_liveness_kill_with_policy_never_stays_stopped() {
        let t0 = Instant::now();
        let mut f = NodeFsm::new(RestartPolicy::Never, LivenessSpec::DEFAULT, liveness_rules());
        f.apply(Event::StartRequested, t0);
        f.apply(Event::Spawned(pid(10)), t0);
        f.apply(Event::ProbeReady, t0);
        for _ in 0..3 {
            f.apply(Event::LivenessFailed("refused".into()), t0);
        }
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Signal(15)), at_unix_ms: 1, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState]);
        assert_eq!(f.node_state(), NodeState::Stopped);
        assert_eq!(f.last_exit.as_ref().unwrap().cause, ExitCause::Liveness);
    }

    #[test]
    fn liveness_waits_for_a_first_answer_or_the_start_grace() {
        let t0 = Instant::now();
        let mut f = NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, liveness_rules());
        f.apply(Event::StartRequested, t0);
        f.apply(Event::Spawned(pid(10)), t0);
        // Still opening its store: failures do not count yet.
        for _ in 0..5 {
            assert_eq!(f.apply(Event::LivenessFailed("refused".into()), t0), vec![]);
        }
        assert_eq!(f.liveness_failures, 0);
        // Past the grace they do, even without an answer (hung before it ever answered).
        let late = t0 + Duration::from_secs(31);
        f.apply(Event::LivenessFailed("refused".into()), late);
        f.apply(Event::LivenessFailed("refused".into()), late);
        let a = f.apply(Event::LivenessFailed("refused".into()), late);
        assert!(a.contains(&Action::SignalStop), "{a:?}");
    }

    #[test]
    fn liveness_off_never_restarts() {
        let t0 = Instant::now();
        let off = LivenessSpec { period_ms: 0, ..LivenessSpec::DEFAULT };
        let mut f = NodeFsm::new(RestartPolicy::Always, off, liveness_rules());
        f.apply(Event::StartRequested, t0);
        f.apply(Event::Spawned(pid(10)), t0);
        f.apply(Event::ProbeReady, t0);
        for _ in 0..10 {
            assert_eq!(f.apply(Event::LivenessFailed("x".into()), t0), vec![]);
        }
    }

    #[test]
    fn a_degraded_node_is_never_restarted_by_readiness() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        f.apply(Event::ProbeReady, t0);
        for _ in 0..100 {
            assert_eq!(f.apply(Event::ProbeNotReady("disk cap".into()), t0), vec![]);
            assert_eq!(f.apply(Event::LivenessOk, t0), vec![]);
        }
        assert_eq!(f.node_state(), NodeState::Degraded);
        assert!(f.is_running());
    }

    #[test]
    fn a_replacement_stops_then_starts_afresh() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        for _ in 0..3 {
            crash_and_restart(&mut f, t0).unwrap();
        }
        assert_eq!(f.restarts, 3);
        let a = f.apply(Event::ReplaceRequested, t0);
        assert_eq!(a, vec![Action::SaveState, Action::SignalStop]);
        let a = f.apply(
            Event::Exited { kind: Some(ExitKind::Code(0)), at_unix_ms: 3, reason: None },
            t0,
        );
        assert_eq!(a, vec![Action::SaveState, Action::Spawn]);
        assert_eq!(f.restarts, 0, "a replaced node is a new node");
        assert!(f.exits.is_empty());
        let g = f.generation;
        f.apply(Event::Spawned(pid(40)), t0);
        assert_eq!(f.generation, g + 1);
        assert_eq!(f.pid(), Some(40));
    }

    #[test]
    fn a_replacement_of_a_stopped_or_crash_looping_node_spawns_at_once() {
        let t0 = Instant::now();
        let mut f =
            NodeFsm::new(RestartPolicy::Always, LivenessSpec::DEFAULT, RestartRules::default());
        assert_eq!(f.apply(Event::ReplaceRequested, t0), vec![Action::SaveState, Action::Spawn]);
        let mut f = running(RestartPolicy::Always, t0);
        let mut t = t0;
        for _ in 0..5 {
            t += crash_and_restart(&mut f, t).unwrap();
        }
        f.apply(Event::Exited { kind: Some(ExitKind::Code(3)), at_unix_ms: 0, reason: None }, t);
        assert_eq!(f.node_state(), NodeState::CrashLoop);
        assert_eq!(f.apply(Event::ReplaceRequested, t), vec![Action::SaveState, Action::Spawn]);
        assert!(!f.crash_loop);
    }

    #[test]
    fn facts_of_an_old_process_do_not_leak_into_a_new_one() {
        let t0 = Instant::now();
        let mut f = running(RestartPolicy::Always, t0);
        f.apply(Event::ProbeReady, t0);
        f.apply(Event::LivenessFailed("x".into()), t0);
        crash_and_restart(&mut f, t0).unwrap();
        assert_eq!(f.liveness_failures, 0);
        assert!(!f.answered);
        assert_eq!(f.node_state(), NodeState::Starting);
        assert_eq!(f.last_exit.as_ref().unwrap().cause, ExitCause::Unexpected);
    }
}
