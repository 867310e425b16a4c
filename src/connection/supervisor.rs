//! Executes the [`Machine`]'s decisions: starts and stops sessions, hands
//! gap records to the pipeline, keeps the health record and the logs. It
//! decides nothing itself: every input (a session's report, a new token,
//! a timer) goes to the machine, and whatever the machine answers is done.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::machine::{Action, Coverage, Input, Machine, Now, Report, SessionEvent, SessionId};
use super::plan::{replan, Plan};
use super::session::{self, SessionContext, SessionSpec};
use crate::backoff::Policy;
use crate::event::{Inbound, ResyncJob};
use crate::genesys::{MAX_CHANNELS, MAX_TOPICS_PER_CHANNEL};
use crate::telemetry::{events, metrics};
use crate::timer::sleep_until_opt;

/// How long a stopped session may take to close at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the supervisor does besides keeping shards covered.
pub struct Extras {
    pub resync: Option<super::ResyncRequests>,
    pub checkpoints: Option<super::Checkpoints>,
}

/// The most shards `redundancy` allows: every slot holds a channel, and
/// one channel stays spare for make-before-break moves.
pub fn max_shards(redundancy: usize) -> usize {
    (MAX_CHANNELS - 1) / redundancy.max(1)
}

/// Keeps every shard of the topic set covered until `cancel`, following
/// every change of `topics` (a topic never moves between shards); returns
/// when all sockets are closed.
pub async fn run(
    ctx: SessionContext,
    mut topics: watch::Receiver<Arc<[String]>>,
    redundancy: usize,
    backoff: &Policy,
    extras: Extras,
    cancel: CancellationToken,
) {
    let desired = topics.borrow_and_update().clone();
    let plan = replan(
        &[],
        &desired,
        MAX_TOPICS_PER_CHANNEL,
        max_shards(redundancy),
    );
    events::topics_over_budget(
        plan.unserved.len(),
        max_shards(redundancy) * MAX_TOPICS_PER_CHANNEL,
    );
    let mut machine = Machine::with_policy(plan.shards.clone(), redundancy, MAX_CHANNELS, backoff);
    let Extras {
        resync,
        checkpoints,
    } = extras;
    // The previous process's downtime: a gap per shard from its last
    // receiving moment (a shard it did not have: its earliest), whose
    // resync is this shard's start-up snapshot.
    let mut snapshotted = HashSet::new();
    let previous = checkpoints.as_ref().and_then(|c| c.previous.as_ref());
    if let Some(previous) = previous {
        let earliest = previous.iter().flatten().min().copied();
        for shard in 0..machine.shard_count() {
            if let Some(since) = previous.get(shard).copied().flatten().or(earliest) {
                machine.down_since(shard, since);
                metrics().health.gap_opened(shard, since);
                events::gap_opened(shard, crate::event::Reason::ProcessDown, since);
                if resync.as_ref().is_some_and(|r| r.after_gaps) {
                    snapshotted.insert(shard);
                }
            }
        }
    }
    metrics()
        .health
        .shards_total
        .store(machine.shard_count() as i64, Ordering::Relaxed);
    let (events_tx, events) = mpsc::unbounded_channel();
    Supervisor {
        ctx,
        shards: plan
            .shards
            .into_iter()
            .map(|t| watch::channel(t).0)
            .collect(),
        unserved: plan.unserved.len(),
        redundancy,
        topics,
        resync,
        snapshotted,
        checkpoint_key: checkpoints.map(|c| c.key),
        machine,
        sessions: HashMap::new(),
        events_tx,
        reported: HashSet::new(),
        published: [0; 4],
    }
    .run(events, cancel)
    .await;
}

struct Supervisor {
    ctx: SessionContext,
    /// Each shard's topics, as its sessions follow them.
    shards: Vec<watch::Sender<Arc<[String]>>>,
    /// Topics of the set that fit in no shard.
    unserved: usize,
    redundancy: usize,
    /// The whole topic set (the directory keeps it current).
    topics: watch::Receiver<Arc<[String]>>,
    resync: Option<super::ResyncRequests>,
    /// Shards whose start-up snapshot was asked for.
    snapshotted: HashSet<usize>,
    checkpoint_key: Option<Arc<str>>,
    machine: Machine,
    /// Every session task still running.
    sessions: HashMap<SessionId, (CancellationToken, JoinHandle<()>)>,
    events_tx: mpsc::UnboundedSender<(SessionId, SessionEvent)>,
    /// Rejected topics already logged: each is said once, not per move.
    reported: HashSet<String>,
    /// What this supervisor last added to the process-wide gauges (shards
    /// receiving, shards rejected, topics accepted, topics rejected): they
    /// move by the difference, so several bridges in one test process add up.
    published: [i64; 4],
}

impl Supervisor {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<(SessionId, SessionEvent)>,
        cancel: CancellationToken,
    ) {
        let mut tokens = self.ctx.api.auth().subscribe();
        let actions = self.machine.start();
        self.execute(actions).await;
        let mut checkpoint = tokio::time::interval(crate::checkpoint::INTERVAL);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = tokio::select! {
                () = cancel.cancelled() => break,
                Some((id, event)) = events.recv() => {
                    if matches!(event, SessionEvent::Ended(_) | SessionEvent::Closed { .. }) {
                        self.sessions.remove(&id);
                    }
                    Input::Session { id, event }
                }
                Ok(()) = tokens.changed() => {
                    let generation = tokens.borrow_and_update().as_ref().map(|t| t.generation);
                    match generation {
                        Some(generation) => Input::Token { generation },
                        None => continue,
                    }
                }
                () = sleep_until_opt(self.machine.next_deadline()) => Input::Tick,
                _ = checkpoint.tick(), if self.checkpoint_key.is_some() => {
                    if let Some(record) = self.checkpoint() {
                        // Never wait on a full pipeline: the next tick will do.
                        let _ = self.ctx.out.try_send(record);
                    }
                    continue;
                }
                Ok(()) = self.topics.changed() => match self.reshard() {
                    Some(shards) => Input::Shards(shards),
                    None => continue,
                },
            };
            let actions = self.machine.step(input, Now::current());
            self.execute(actions).await;
        }
        self.shut_down(events).await;
        // The last word: when each shard stopped receiving.
        if let Some(record) = self.checkpoint() {
            let _ = tokio::time::timeout(STOP_TIMEOUT, self.ctx.out.send(record)).await;
        }
    }

    /// The checkpoint record: each shard's last receiving moment.
    fn checkpoint(&self) -> Option<Inbound> {
        let key = self.checkpoint_key.clone()?;
        let now = std::time::SystemTime::now();
        let shards: Vec<Option<std::time::SystemTime>> = (0..self.machine.shard_count())
            .map(|shard| self.machine.last_receiving(shard, now))
            .collect();
        Some(Inbound::Checkpoint {
            key,
            value: crate::checkpoint::value(&shards, now),
        })
    }

    /// Stops every session and keeps reading what they report until they
    /// are done (within [`STOP_TIMEOUT`]): a socket replaced just before
    /// the stop may still reveal, at its close, a blind interval the
    /// machine must report. Nothing new is started.
    async fn shut_down(&mut self, mut events: mpsc::UnboundedReceiver<(SessionId, SessionEvent)>) {
        for (cancel, _) in self.sessions.values() {
            cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while !self.sessions.is_empty() {
            let Ok(Some((id, event))) = tokio::time::timeout_at(deadline, events.recv()).await
            else {
                break;
            };
            if matches!(event, SessionEvent::Ended(_) | SessionEvent::Closed { .. }) {
                self.sessions.remove(&id);
            }
            let actions = self
                .machine
                .step(Input::Session { id, event }, Now::current())
                .into_iter()
                .filter(|a| !matches!(a, Action::Open { .. } | Action::Stop { .. }))
                .collect();
            self.execute(actions).await;
        }
        for (_, (_, handle)) in self.sessions.drain() {
            handle.abort();
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Open {
                    session,
                    shard,
                    via,
                    delay,
                } => {
                    let cancel = CancellationToken::new();
                    let spec = SessionSpec {
                        id: session,
                        shard,
                        topics: self.shards[shard].subscribe(),
                        via,
                        delay,
                    };
                    let handle = tokio::spawn(session::run(
                        self.ctx.clone(),
                        spec,
                        cancel.clone(),
                        self.events_tx.clone(),
                    ));
                    self.sessions.insert(session, (cancel, handle));
                }
                Action::Stop { session } => {
                    if let Some((cancel, _)) = self.sessions.get(&session) {
                        cancel.cancel();
                    }
                }
                Action::GapOpened {
                    shard,
                    since,
                    reason,
                } => {
                    metrics().health.gap_opened(shard, since);
                    events::gap_opened(shard, reason, since);
                }
                Action::GapClosed { shard, gap } => {
                    if self.machine.open_gap(shard).is_none() {
                        metrics().health.gap_closed(shard);
                    }
                    events::gap_closed(shard, &gap);
                    if self.resync.as_ref().is_some_and(|r| r.after_gaps) {
                        self.ask_resync(
                            shard,
                            ResyncJob {
                                resync_of: gap.id.clone(),
                                topics: gap.topics.clone(),
                                since: gap.started_at,
                                until: gap.ended_at,
                                only_active: false,
                                opened: tokio::time::Instant::now(),
                            },
                        );
                    }
                    // The pipeline turns it into a marker record; if it is
                    // gone we are shutting down and the log line is what remains.
                    let _ = self.ctx.out.send(Inbound::Gap(gap)).await;
                }
                Action::Report(report) => self.report(report),
            }
        }
        self.publish_health();
    }

    /// Places a new topic set: the shards' lists change (their sessions
    /// follow), new shards get channels. `None` when nothing changed.
    fn reshard(&mut self) -> Option<Vec<Arc<[String]>>> {
        let desired = self.topics.borrow_and_update().clone();
        let current: Vec<Arc<[String]>> = self.shards.iter().map(|s| s.borrow().clone()).collect();
        let max_shards = max_shards(self.redundancy);
        let Plan {
            shards,
            changed,
            added,
            removed,
            unserved,
        } = replan(&current, &desired, MAX_TOPICS_PER_CHANNEL, max_shards);
        if unserved.len() != self.unserved {
            self.unserved = unserved.len();
            events::topics_over_budget(self.unserved, max_shards * MAX_TOPICS_PER_CHANNEL);
        }
        if changed.is_empty() {
            return None;
        }
        events::topics_changed(
            desired.len() - unserved.len(),
            added,
            removed,
            changed.len(),
        );
        for index in changed {
            match self.shards.get(index) {
                Some(sender) => {
                    sender.send_replace(shards[index].clone());
                }
                None => self.shards.push(watch::channel(shards[index].clone()).0),
            }
        }
        metrics()
            .health
            .shards_total
            .store(shards.len() as i64, Ordering::Relaxed);
        Some(shards)
    }

    /// Hands a resync to the resync stage; never waits (a full queue is
    /// said, and that resync skipped).
    fn ask_resync(&self, shard: usize, job: ResyncJob) {
        let Some(r) = &self.resync else { return };
        if r.jobs.try_send(job).is_err() {
            tracing::warn!(shard, "Resync queue full; a resync is skipped.");
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Subscribed {
                shard,
                accepted,
                rejected,
            } => {
                let lookback = self
                    .resync
                    .as_ref()
                    .filter(|r| r.on_start)
                    .map(|r| r.lookback);
                if let Some(lookback) = lookback {
                    if self.snapshotted.insert(shard) {
                        let now = std::time::SystemTime::now();
                        self.ask_resync(
                            shard,
                            ResyncJob {
                                resync_of: "startup".into(),
                                topics: self.machine.topics(shard).clone(),
                                since: now - lookback,
                                until: now,
                                only_active: true,
                                opened: tokio::time::Instant::now(),
                            },
                        );
                    }
                }
                let new: Vec<(String, String)> = rejected
                    .into_iter()
                    .filter(|(topic, _)| self.reported.insert(topic.clone()))
                    .collect();
                events::topics_subscribed(shard, accepted, &new);
            }
            Report::AllTopicsRejected { shard } => events::all_topics_rejected(shard),
            Report::Moving {
                shard,
                channel,
                reason,
                detail,
            } => events::reconnect(shard, channel.as_deref().unwrap_or("-"), reason, &detail),
            Report::SetupFailed {
                shard,
                channel,
                detail,
                retry_in,
            } => {
                events::connect_failed(shard, channel.as_deref().unwrap_or("-"), &detail, retry_in)
            }
            Report::StandbyFailed {
                shard,
                detail,
                retry_in,
            } => events::standby_failed(shard, &detail, retry_in),
            Report::SingleHolder { shard } => events::single_holder_detected(shard),
            Report::BlindSocketReplaced {
                shard,
                since,
                reason,
            } => events::blind_socket_replaced(shard, since, reason),
        }
    }

    /// The shard states and topic counts, as `/readyz` and the gauges read them.
    fn publish_health(&mut self) {
        let (mut receiving, mut rejected_shards) = (0, 0);
        let (mut accepted, mut rejected) = (0, 0);
        for shard in 0..self.machine.shard_count() {
            match self.machine.coverage(shard) {
                Coverage::Receiving => receiving += 1,
                Coverage::Rejected => rejected_shards += 1,
                Coverage::Blind => {}
            }
            let (a, r) = self.machine.topic_counts(shard);
            accepted += a;
            rejected += r;
        }
        let now = [receiving, rejected_shards, accepted as i64, rejected as i64];
        let [d_receiving, d_refused, d_accepted, d_rejected] =
            std::array::from_fn(|i| now[i] - self.published[i]);
        self.published = now;
        let m = metrics();
        m.health
            .shards_covered
            .fetch_add(d_receiving, Ordering::Relaxed);
        m.health
            .shards_rejected
            .fetch_add(d_refused, Ordering::Relaxed);
        m.topics_subscribed.add(d_accepted);
        m.topics_rejected.add(d_rejected);
    }
}
