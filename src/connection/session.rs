//! One socket of one channel, from its set-up to its end. A session gets (or
//! checks, or creates) its channel, opens the socket *before* subscribing (so
//! a subscription that moves to it lands on a socket already listening),
//! subscribes, confirms with a ping that it is receiving, and then forwards
//! notifications until the socket ends or it is told to stop. It reports what
//! happens to its slot ([`SessionEvent`]) and never decides policy itself.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::machine::{Cause, Ended, Notice, SessionEvent, SessionId, Subscription, Via};
use crate::event::{Inbound, Notification, Reason, Spans};
use crate::genesys::api::{Api, ApiError, Channel, ChannelId, ChannelTopic};
use crate::genesys::frame::{self, Frame};
use crate::telemetry::{events, metrics};
use crate::timer::sleep_until_opt;

const PING: &str = r#"{"message":"ping"}"#;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a closing socket may take to deliver what the server already sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings every session shares.
#[derive(Clone)]
pub struct SessionContext {
    pub api: Api,
    pub out: mpsc::Sender<Inbound>,
    pub ping_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub max_frame_bytes: usize,
}

/// One session to run: what the machine's `Open` asked for.
pub struct SessionSpec {
    pub id: SessionId,
    pub shard: usize,
    /// The shard's topics, kept current by the supervisor: a receiving
    /// session brings its channel in step with every change.
    pub topics: watch::Receiver<Arc<[String]>>,
    pub via: Via,
    /// Wait this long first (backoff).
    pub delay: Duration,
}

/// Where a session reports, tagged with its id.
pub type Reports = mpsc::UnboundedSender<(SessionId, SessionEvent)>;

/// Runs one session to its end. Everything it sees is reported on
/// `reports`, and its last report is always `Ended` (it ended on its own)
/// or `Closed` (it was stopped through `cancel`).
pub async fn run(
    ctx: SessionContext,
    spec: SessionSpec,
    cancel: CancellationToken,
    reports: Reports,
) {
    let id = spec.id;
    let last = run_to_end(&ctx, spec, &cancel, &reports).await;
    let _ = reports.send((id, last));
}

async fn run_to_end(
    ctx: &SessionContext,
    spec: SessionSpec,
    cancel: &CancellationToken,
    reports: &Reports,
) -> SessionEvent {
    let stopped = SessionEvent::Closed { blind_since: None };
    tokio::select! {
        () = cancel.cancelled() => return stopped,
        () = tokio::time::sleep(spec.delay) => {}
    }
    let obtained = tokio::select! {
        () = cancel.cancelled() => return stopped,
        result = obtain(&ctx.api, spec.via) => result,
    };
    match obtained {
        Ok((channel, reused)) => {
            Session {
                ctx,
                id: spec.id,
                shard: spec.shard,
                topics: spec.topics,
                channel,
                reused,
                reports,
            }
            .connect_and_run(cancel)
            .await
        }
        Err((error, channel)) => SessionEvent::Ended(Ended {
            cause: Cause::Setup(error.to_string()),
            retry_after: error.retry_after(),
            last_frame: SystemTime::now(),
            channel,
            up_for: Duration::ZERO,
        }),
    }
}

/// The channel to connect to, and whether it is an existing one.
async fn obtain(api: &Api, via: Via) -> Result<(Channel, bool), (ApiError, Option<Channel>)> {
    if let Via::Check(channel) = via {
        match api.channel_exists(&channel.id).await {
            Ok(true) => return Ok((channel, true)),
            Ok(false) => {}
            Err(e) => return Err((e, Some(channel))),
        }
    }
    api.create_channel()
        .await
        .map(|c| (c, false))
        .map_err(|e| (e, None))
}

struct Session<'a> {
    ctx: &'a SessionContext,
    id: SessionId,
    shard: usize,
    topics: watch::Receiver<Arc<[String]>>,
    channel: Channel,
    reused: bool,
    reports: &'a Reports,
}

/// How much a socket reads at once. tungstenite's default (128 KiB) zeroes
/// and keeps that much per socket for every read; notifications are a few
/// hundred bytes to a few KB, and a larger frame still grows the buffer to
/// its size.
const READ_BUFFER: usize = 16 * 1024;

impl Session<'_> {
    async fn connect_and_run(self, cancel: &CancellationToken) -> SessionEvent {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(self.ctx.max_frame_bytes))
            .max_frame_size(Some(self.ctx.max_frame_bytes));
        let connect = tokio_tungstenite::connect_async_with_config(
            self.channel.connect_uri.expose(),
            Some(config),
            false,
        );
        let result = tokio::select! {
            () = cancel.cancelled() => return SessionEvent::Closed { blind_since: None },
            result = tokio::time::timeout(CONNECT_TIMEOUT, connect) => result,
        };
        let socket = match result {
            Ok(Ok((socket, _response))) => socket,
            Ok(Err(e)) => {
                // A refused upgrade may say when to come back.
                let retry_after = match &e {
                    WsError::Http(response) => crate::genesys::retry_after(response.headers()),
                    _ => None,
                };
                let mut ended = self.failed(describe(&e));
                ended.retry_after = retry_after;
                return SessionEvent::Ended(ended);
            }
            Err(_) => return SessionEvent::Ended(self.failed("connect timed out".into())),
        };
        self.run(socket, cancel).await
    }

    fn failed(self, detail: String) -> Ended {
        Ended {
            cause: Cause::Setup(detail),
            last_frame: SystemTime::now(),
            retry_after: None,
            channel: Some(self.channel),
            up_for: Duration::ZERO,
        }
    }

    fn report(&self, event: SessionEvent) {
        let _ = self.reports.send((self.id, event));
    }

    /// The socket loop, generic over the socket so it is testable without TCP.
    async fn run<S>(mut self, mut socket: S, cancel: &CancellationToken) -> SessionEvent
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let channel_id = self.channel.id.clone();
        // Logs and records name the channel by its tag, never by its id.
        let tag = channel_id.tag().clone();
        let clock = metrics().heartbeat_clock();
        let mut last_frame = Instant::now();
        let mut last_frame_wall = SystemTime::now();
        let mut receiving_since: Option<(Instant, SystemTime)> = None;
        // A reused channel keeps its subscriptions on the server (brought in
        // step if the shard's list changed meanwhile); a new one is
        // subscribed now, after its socket is open.
        let desired = self.topics.borrow_and_update().clone();
        let in_step = self.reused && self.channel.subscribed == desired;
        let mut subscribe = (!in_step).then(|| {
            let from = if self.reused {
                Some(self.channel.subscribed.clone())
            } else {
                None
            };
            update(
                self.ctx.api.clone(),
                channel_id.clone(),
                from,
                desired.clone(),
            )
        });
        let mut subscribed: Option<(usize, Vec<(String, String)>)> =
            in_step.then(|| (desired.len(), Vec::new()));
        // A change of the shard's list while receiving: the call in flight,
        // and when to try again after one failed.
        let mut change: Option<Update> = None;
        let mut retry_at: Option<Instant> = None;
        let mut retry_wait = Duration::ZERO;
        let mut confirm_sent = false;
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.ctx.ping_interval,
            self.ctx.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        // Why the socket ended, and since when it may have been blind. A
        // lost socket is only known to have delivered up to its last text
        // frame: the server may have stopped sending (another socket took
        // the channel, say) long before its close or the error is read.
        let outcome: (Option<Reason>, String, SystemTime) = loop {
            if subscribed.is_some() && !confirm_sent {
                confirm_sent = true;
                if let Err(e) = socket.send(Message::text(PING)).await {
                    break (None, describe(&e), SystemTime::now());
                }
            }
            let watchdog = last_frame + self.ctx.heartbeat_timeout;
            tokio::select! {
                () = cancel.cancelled() => {
                    let blind = self.close_and_drain(&mut socket, last_frame_wall).await;
                    events::socket_closed(self.shard, &tag, receiving_since.is_some());
                    return SessionEvent::Closed {
                        blind_since: blind.filter(|_| receiving_since.is_some()),
                    };
                }
                result = async { subscribe.as_mut().expect("guarded by the select condition").await },
                        if subscribe.is_some() => {
                    subscribe = None;
                    match result {
                        Ok((topics, reply)) => {
                            self.channel.subscribed = topics;
                            subscribed = Some(counts(&self.channel.subscribed, reply));
                        }
                        Err(e) => {
                            let _ = socket.close().await;
                            return SessionEvent::Ended(Ended {
                                cause: Cause::Setup(format!("subscribe: {e}")),
                                retry_after: e.retry_after(),
                                last_frame: SystemTime::now(),
                                channel: Some(self.channel),
                                up_for: Duration::ZERO,
                            });
                        }
                    }
                }
                message = socket.next() => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(data))) => {
                            events::frame_invalid(&tag, "binary frame", data.len());
                            continue;
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let detail = frame.map(|f| format!("close {}: {}", u16::from(f.code), f.reason)).unwrap_or_else(|| "close".into());
                            break (Some(Reason::ServerClose), detail, last_frame_wall);
                        }
                        Some(Ok(_)) => continue, // protocol ping/pong, raw frames
                        Some(Err(WsError::Capacity(_))) => {
                            events::frame_too_large(&tag);
                            break (Some(Reason::SocketError), "frame too large".into(), last_frame_wall);
                        }
                        Some(Err(e)) => break (Some(Reason::SocketError), describe(&e), last_frame_wall),
                        None => break (Some(Reason::SocketError), "connection ended without a close frame".into(), last_frame_wall),
                    };
                    // Only the server's text frames show the channel alive
                    // (a protocol-level ping may come from a proxy).
                    let previous_frame_wall = last_frame_wall;
                    last_frame = Instant::now();
                    last_frame_wall = SystemTime::now();
                    clock.touch();
                    match frame::classify(text.as_str()) {
                        Frame::Notification(parsed) => {
                            let Some(spans) = Spans::of(text.as_str(), &parsed) else {
                                continue; // cannot happen: the parts are slices of the text
                            };
                            let notification = Notification::new(text, spans, self.channel.id.tag().clone(), last_frame_wall);
                            if !self.forward(notification).await {
                                // The pipeline is gone: the process is shutting down.
                                events::socket_closed(self.shard, &tag, receiving_since.is_some());
                                return SessionEvent::Closed { blind_since: None };
                            }
                            // Waiting on a full pipeline is not silence on the socket.
                            last_frame = Instant::now();
                        }
                        Frame::Pong | Frame::Heartbeat => {
                            if receiving_since.is_none() && confirm_sent {
                                if let Some((accepted, rejected)) = subscribed.take() {
                                    receiving_since = Some((Instant::now(), SystemTime::now()));
                                    events::socket_receiving(self.shard, &tag, self.reused);
                                    self.report(SessionEvent::Receiving(Subscription {
                                        channel: self.channel.clone(),
                                        accepted,
                                        rejected,
                                    }));
                                }
                            }
                        }
                        Frame::SocketClosing => {
                            self.report(SessionEvent::Notice(Notice::SocketClosing));
                        }
                        Frame::NoLongerSubscribed { reason } => {
                            self.report(SessionEvent::Notice(if reason == Some("another_channel_subscribed") {
                                Notice::AnotherChannelSubscribed
                            } else {
                                Notice::NoLongerSubscribed
                            }));
                        }
                        Frame::TokenRevoked => {
                            self.report(SessionEvent::Notice(Notice::TokenRevoked));
                        }
                        // It died at some point since the frame before this answer.
                        Frame::ChannelGone => break (Some(Reason::ChannelGone), "channel not found (404)".into(), previous_frame_wall),
                        Frame::Reply { .. } | Frame::Unknown => {}
                        Frame::Invalid(why) => events::frame_invalid(&tag, why, text.len()),
                    }
                }
                result = async { change.as_mut().expect("guarded by the select condition").await },
                        if change.is_some() => {
                    change = None;
                    match result {
                        Ok((topics, reply)) => {
                            (retry_at, retry_wait) = (None, Duration::ZERO);
                            let (accepted, rejected) = counts(&topics, reply);
                            events::subscription_changed(self.shard, &tag, self.channel.subscribed.len(), topics.len());
                            self.channel.subscribed = topics;
                            self.report(SessionEvent::Resubscribed { accepted, rejected });
                        }
                        Err(e) => {
                            let wait = if retry_wait.is_zero() { CHANGE_RETRY_FIRST } else { (retry_wait * 2).min(CHANGE_RETRY_MAX) };
                            retry_wait = e.retry_after().map_or(wait, |after| after.max(wait));
                            events::subscription_change_failed(self.shard, &tag, &e, retry_wait);
                            retry_at = Some(Instant::now() + retry_wait);
                        }
                    }
                }
                Ok(()) = self.topics.changed(), if change.is_none() && retry_at.is_none() && receiving_since.is_some() => {
                    change = self.change(&channel_id);
                }
                () = sleep_until_opt(retry_at), if change.is_none() => {
                    retry_at = None;
                    change = self.change(&channel_id);
                }
                _ = ping.tick() => {
                    if let Err(e) = socket.send(Message::text(PING)).await {
                        break (Some(Reason::SocketError), describe(&e), last_frame_wall);
                    }
                }
                () = tokio::time::sleep_until(watchdog) => {
                    break (Some(Reason::HeartbeatTimeout), format!("no frame for {:?}", self.ctx.heartbeat_timeout), last_frame_wall);
                }
            }
        };
        let (reason, detail, since) = outcome;
        events::socket_closed(self.shard, &tag, receiving_since.is_some());
        // A socket that never confirmed receiving is a failed set-up, not a lost socket.
        let cause = match receiving_since.and(reason) {
            Some(reason) => Cause::Lost { reason, detail },
            None => Cause::Setup(detail),
        };
        // A dead socket is dropped, not closed politely: that could hang.
        drop(socket);
        SessionEvent::Ended(Ended {
            cause,
            last_frame: since,
            channel: Some(self.channel),
            retry_after: None,
            up_for: receiving_since.map_or(Duration::ZERO, |(at, _)| at.elapsed()),
        })
    }
}

/// A subscription call in flight: the list it sets, and Genesys' reply
/// (`None` when there was nothing to change).
type Update = Pin<
    Box<dyn Future<Output = Result<(Arc<[String]>, Option<Vec<ChannelTopic>>), ApiError>> + Send>,
>;

/// The first wait after a failed change of a receiving channel's list, and the longest.
const CHANGE_RETRY_FIRST: Duration = Duration::from_secs(2);
const CHANGE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Brings a channel from the list `from` (`None`: a new channel) to `to`
/// touching as little as it can: topics only added are added (`POST`), so
/// no subscription that stays is touched; a removal replaces the list
/// (`PUT`) with what remains; no difference, no call.
fn update(api: Api, channel: ChannelId, from: Option<Arc<[String]>>, to: Arc<[String]>) -> Update {
    Box::pin(async move {
        let wanted: HashSet<&str> = to.iter().map(String::as_str).collect();
        let from = match from {
            Some(from) if from.iter().all(|t| wanted.contains(t.as_str())) => from,
            // A new channel, or topics left: the whole list.
            _ => {
                let reply = api.put_subscriptions(&channel, &to).await?;
                return Ok((to, Some(reply)));
            }
        };
        let had: HashSet<&str> = from.iter().map(String::as_str).collect();
        let added: Vec<String> = to
            .iter()
            .filter(|t| !had.contains(t.as_str()))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok((to, None));
        }
        let reply = api.add_subscriptions(&channel, &added).await?;
        Ok((to, Some(reply)))
    })
}

/// Accepted and rejected topics of a subscription reply (no reply: the
/// list as it was, all accepted).
fn counts(topics: &[String], reply: Option<Vec<ChannelTopic>>) -> (usize, Vec<(String, String)>) {
    let Some(reply) = reply else {
        return (topics.len(), Vec::new());
    };
    let rejected: Vec<(String, String)> = reply
        .iter()
        .filter(|t| t.rejected())
        .map(|t| (t.id.clone(), t.rejection_reason.clone().unwrap_or_default()))
        .collect();
    (reply.len() - rejected.len(), rejected)
}

impl Session<'_> {
    /// The call that brings the channel to the shard's current list, if it
    /// differs from what the channel holds.
    fn change(&mut self, channel: &ChannelId) -> Option<Update> {
        let desired = self.topics.borrow_and_update().clone();
        (desired != self.channel.subscribed).then(|| {
            update(
                self.ctx.api.clone(),
                channel.clone(),
                Some(self.channel.subscribed.clone()),
                desired,
            )
        })
    }

    /// Hands one notification to the pipeline; false if the pipeline is gone.
    async fn forward(&self, notification: Notification) -> bool {
        events::event_received();
        self.ctx
            .out
            .send(Inbound::Event(notification))
            .await
            .is_ok()
    }

    /// Closes the socket politely and keeps every notification the server
    /// sent before its close reply: after a make-before-break move, or at
    /// shutdown, those frames are already ours and must not be lost.
    ///
    /// It asks first, with a ping: a live channel answers "pong", a dead one
    /// (its token revoked, say, its socket left open) "channel not found",
    /// and a silent socket nothing. Only then does the close go. Returns
    /// `None` if the channel answered alive, else why the socket was blind
    /// and since when: its last text frame (`last_frame`, or one read here).
    /// Within [`DRAIN_TIMEOUT`] in all.
    async fn close_and_drain<S>(
        &self,
        socket: &mut S,
        mut last_frame: SystemTime,
    ) -> Option<(SystemTime, Reason)>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let pinged = tokio::time::timeout_at(deadline, socket.send(Message::text(PING))).await;
        let heard = match pinged {
            Ok(Ok(())) => self.drain(socket, deadline, true, &mut last_frame).await,
            // A socket that cannot be written to may still hold frames that
            // were read: keep them; its verdict is blind whatever they are.
            _ => {
                self.drain(socket, deadline, false, &mut last_frame).await;
                Heard::Nothing
            }
        };
        if matches!(heard, Heard::Pong | Heard::ChannelGone | Heard::Nothing) {
            let closed = tokio::time::timeout_at(deadline, socket.send(Message::Close(None))).await;
            if matches!(closed, Ok(Ok(()))) {
                self.drain(socket, deadline, false, &mut last_frame).await;
            }
        }
        tracing::debug!(channel = %self.channel.id, ?heard, "Closing socket drained (or gave up at the deadline).");
        match heard {
            Heard::Pong | Heard::PipelineGone => None,
            Heard::ChannelGone => Some((last_frame, Reason::ChannelGone)),
            // A close before the pong says nothing of the channel: count it
            // blind, the safe side.
            Heard::Close | Heard::Nothing => Some((last_frame, Reason::HeartbeatTimeout)),
        }
    }

    /// Reads until the deadline or the server's close, or, with
    /// `until_answer`, the answer to a ping. Hands on every notification;
    /// `last_frame` follows the text frames that show the channel alive.
    async fn drain<S>(
        &self,
        socket: &mut S,
        deadline: Instant,
        until_answer: bool,
        last_frame: &mut SystemTime,
    ) -> Heard
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        // Only the reads are bounded: a frame already read is handed on
        // however long the pipeline takes to take it.
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => return Heard::Close,
                _ => continue,
            };
            let now = SystemTime::now();
            match frame::classify(text.as_str()) {
                Frame::ChannelGone => return Heard::ChannelGone,
                Frame::Notification(parsed) => {
                    *last_frame = now;
                    let Some(spans) = Spans::of(text.as_str(), &parsed) else {
                        continue; // cannot happen: the parts are slices of the text
                    };
                    let notification =
                        Notification::new(text, spans, self.channel.id.tag().clone(), now);
                    if !self.forward(notification).await {
                        return Heard::PipelineGone;
                    }
                }
                Frame::Pong if until_answer => {
                    *last_frame = now;
                    return Heard::Pong;
                }
                _ => *last_frame = now,
            }
        }
        Heard::Nothing
    }
}

/// What a closing socket's drain heard.
#[derive(Debug, Clone, Copy)]
enum Heard {
    /// The answer to the ping: the channel is alive.
    Pong,
    /// The answer to the ping: the channel no longer exists.
    ChannelGone,
    /// The server's close.
    Close,
    /// Nothing that ends the drain, before the deadline.
    Nothing,
    /// The pipeline is gone (the process is stopping): no verdict needed.
    PipelineGone,
}

/// A socket error as text without the URL (which is a credential).
fn describe(error: &WsError) -> String {
    match error {
        WsError::Http(response) => format!("HTTP {}", response.status()),
        WsError::Url(_) => "invalid connectUri".into(),
        WsError::Io(e) => format!("io: {}", e.kind()),
        other => {
            let text = other.to_string();
            if text.contains("://") {
                "websocket error".into()
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The socket loop over an in-memory socket, with tokio's clock paused:
    //! pings, the heartbeat watchdog and frame handling, deterministically.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::backoff::Policy;
    use crate::genesys::api::ChannelId;
    use crate::genesys::auth::Auth;
    use crate::secret::Secret;

    /// A socket whose incoming frames the test sends and whose outgoing
    /// frames the test reads.
    struct FakeSocket {
        incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
        outgoing: mpsc::UnboundedSender<(Instant, Message)>,
    }

    impl Stream for FakeSocket {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx)
        }
    }

    impl Sink<Message> for FakeSocket {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            let _ = self.outgoing.send((Instant::now(), item));
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Rig {
        to_socket: mpsc::UnboundedSender<Result<Message, WsError>>,
        from_socket: mpsc::UnboundedReceiver<(Instant, Message)>,
        events: mpsc::UnboundedReceiver<(SessionId, SessionEvent)>,
        out: mpsc::Receiver<Inbound>,
        ended: tokio::task::JoinHandle<SessionEvent>,
        cancel: CancellationToken,
    }

    impl Rig {
        async fn event(&mut self) -> Option<SessionEvent> {
            self.events.recv().await.map(|(_, e)| e)
        }

        /// How the session ended on its own.
        async fn ended(self) -> Ended {
            match self.ended.await.expect("session task") {
                SessionEvent::Ended(ended) => ended,
                other => panic!("not an end: {other:?}"),
            }
        }

        /// What a stopped session reported.
        async fn closed(self) -> Option<(SystemTime, Reason)> {
            match self.ended.await.expect("session task") {
                SessionEvent::Closed { blind_since } => blind_since,
                other => panic!("not a close: {other:?}"),
            }
        }
    }

    const PONG: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;
    const HEARTBEAT: &str =
        r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;

    /// A session on a reused channel (no REST call), pinging every 20 s with
    /// a 70 s watchdog, as the defaults say.
    fn rig() -> Rig {
        let retry = Policy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        };
        let http = reqwest::Client::new();
        let auth = Auth::new(
            http.clone(),
            "http://127.0.0.1:9",
            "id",
            &Secret::new("s"),
            &retry,
            Arc::new(|_| {}),
        );
        let (out_tx, out) = mpsc::channel(16);
        let ctx = SessionContext {
            api: Api::new(http, "http://127.0.0.1:9", auth),
            out: out_tx,
            ping_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(70),
            max_frame_bytes: 1 << 20,
        };
        let channel = Channel {
            id: ChannelId::new("streaming-0-test"),
            connect_uri: serde_json::from_str("\"ws://127.0.0.1:9/channels/streaming-0-test\"")
                .expect("a JSON string"),
            expires: None,
            token_generation: 1,
            token_expires_at: Instant::now() + Duration::from_secs(3600),
            subscribed: Arc::from(vec!["v2.users.u.presence".to_owned()]),
        };
        let (to_socket, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_socket) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let ended = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                let topics: Arc<[String]> = Arc::from(vec!["v2.users.u.presence".to_owned()]);
                let (_keep, topics) = watch::channel(topics);
                let session = Session {
                    ctx: &ctx,
                    id: 7,
                    shard: 0,
                    topics,
                    channel,
                    reused: true,
                    reports: &events_tx,
                };
                session
                    .run(FakeSocket { incoming, outgoing }, &cancel)
                    .await
            }
        });
        Rig {
            to_socket,
            from_socket,
            events,
            out,
            ended,
            cancel,
        }
    }

    fn text(s: &str) -> Result<Message, WsError> {
        Ok(Message::text(s))
    }

    #[tokio::test(start_paused = true)]
    async fn confirms_with_a_ping_then_pings_on_schedule_and_times_out_on_silence() {
        let mut rig = rig();
        let (at, first) = rig.from_socket.recv().await.expect("a ping to confirm");
        assert_eq!(first, Message::text(PING));
        let start = at;
        rig.to_socket.send(text(PONG)).expect("socket open");
        assert!(matches!(
            rig.events.recv().await,
            Some((7, SessionEvent::Receiving(_)))
        ));
        let last_frame = Instant::now();
        // Silence from now on: pings go out every 20 s, and at 70 s the
        // watchdog declares the socket dead, even though "TCP" is open.
        let mut from_socket = std::mem::replace(&mut rig.from_socket, mpsc::unbounded_channel().1);
        let ended = rig.ended().await;
        assert!(matches!(
            ended.cause,
            Cause::Lost {
                reason: Reason::HeartbeatTimeout,
                ..
            }
        ));
        assert_eq!(Instant::now() - last_frame, Duration::from_secs(70));
        let mut pings = Vec::new();
        while let Ok((at, message)) = from_socket.try_recv() {
            assert_eq!(message, Message::text(PING));
            pings.push((at - start).as_secs());
        }
        assert_eq!(pings, [20, 40, 60]);
    }

    /// A socket that ends, with the server's close or without one, was
    /// blind since the last frame read on it: the server stopped sending
    /// (another socket took the channel, say) at some point after it, not
    /// when the end was read.
    #[tokio::test(start_paused = true)]
    async fn a_lost_socket_is_blind_since_its_last_text_frame() {
        let ends: [(Result<Message, WsError>, Reason); 3] = [
            (Ok(Message::Close(None)), Reason::ServerClose),
            (Err(WsError::ConnectionClosed), Reason::SocketError),
            (
                Err(WsError::Io(std::io::ErrorKind::ConnectionReset.into())),
                Reason::SocketError,
            ),
        ];
        for (end, expected) in ends {
            let mut rig = rig();
            rig.from_socket.recv().await.expect("confirm ping");
            rig.to_socket.send(text(PONG)).expect("open");
            let event = r#"{"topicName":"v2.users.u.presence","eventBody":{"a":1}}"#;
            rig.to_socket.send(text(event)).expect("open");
            let Some(Inbound::Event(read)) = rig.out.recv().await else {
                panic!("the event is forwarded");
            };
            // Real time passes (the wall clock does not pause with tokio's).
            std::thread::sleep(Duration::from_millis(20));
            rig.to_socket.send(end).expect("open");
            let ended = rig.ended().await;
            assert!(
                matches!(ended.cause, Cause::Lost { reason, .. } if reason == expected),
                "{:?}",
                ended.cause
            );
            assert_eq!(ended.last_frame, read.received_at, "blind since the event");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_quiet_socket_alive() {
        let mut rig = rig();
        rig.from_socket.recv().await.expect("confirm ping");
        rig.to_socket.send(text(PONG)).expect("open");
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            rig.to_socket.send(text(HEARTBEAT)).expect("open");
        }
        assert!(
            !rig.ended.is_finished(),
            "10 minutes of heartbeats and no event is alive"
        );
        rig.cancel.cancel();
        assert!(
            matches!(rig.ended.await.expect("task"), SessionEvent::Closed { .. }),
            "a stopped session reports its close"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_forwarded_skipped_or_reported() {
        let mut rig = rig();
        rig.from_socket.recv().await.expect("confirm ping");
        rig.to_socket.send(text(PONG)).expect("open");
        let event = r#"{"topicName":"v2.users.u.presence","eventBody":{"a":1},"metadata":{"CorrelationId":"c"}}"#;
        let invalid_before = crate::telemetry::metrics().frames_invalid.get();
        rig.to_socket.send(text("not json")).expect("open");
        rig.to_socket
            .send(Ok(Message::binary(vec![0xff, 0xfe])))
            .expect("open");
        rig.to_socket.send(text(event)).expect("open");
        rig.to_socket
            .send(text(
                r#"{"topicName":"v2.system.socket_closing","eventBody":{}}"#,
            ))
            .expect("open");
        let Some(Inbound::Event(n)) = rig.out.recv().await else {
            panic!("the event is forwarded");
        };
        assert_eq!(&n.raw()[..], event.as_bytes(), "byte for byte");
        assert_eq!(n.channel, *ChannelId::new("streaming-0-test").tag());
        assert!(!n.channel.contains("streaming"), "a tag, not the id");
        let mut notice = None;
        while let Some(e) = rig.event().await {
            if let SessionEvent::Notice(n) = e {
                notice = Some(n);
                break;
            }
        }
        assert_eq!(notice, Some(Notice::SocketClosing));
        assert!(crate::telemetry::metrics().frames_invalid.get() >= invalid_before + 2);
        let before_404 = SystemTime::now();
        rig.to_socket
            .send(text(r#"{"result":"404","message":"Channel not found"}"#))
            .expect("open");
        let ended = rig.ended().await;
        assert!(matches!(
            ended.cause,
            Cause::Lost {
                reason: Reason::ChannelGone,
                ..
            }
        ));
        assert!(
            ended.last_frame < before_404,
            "blind since the frame before the 404"
        );
    }

    /// How the server answers the ping a closing session sends first.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        Text(&'static str),
        Close,
        Silence,
    }

    /// A session stopped for a planned move; returns what its close
    /// reported, given the server's `answer` to its ping.
    async fn stopped_with_the_answer(answer: Answer) -> Option<(SystemTime, Reason)> {
        let mut rig = rig();
        rig.from_socket.recv().await.expect("confirm ping");
        rig.to_socket.send(text(PONG)).expect("open");
        assert!(matches!(
            rig.event().await,
            Some(SessionEvent::Receiving(_))
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before_last_frame = SystemTime::now();
        rig.to_socket.send(text(HEARTBEAT)).expect("open");
        tokio::time::sleep(Duration::from_secs(5)).await;
        rig.cancel.cancel();
        let (_, ping) = rig.from_socket.recv().await.expect("a ping");
        assert_eq!(ping, Message::text(PING));
        match answer {
            Answer::Text(t) => rig.to_socket.send(text(t)).expect("open"),
            Answer::Close => rig.to_socket.send(Ok(Message::Close(None))).expect("open"),
            Answer::Silence => {}
        }
        if answer != Answer::Close {
            // The close goes once the ping is answered, or its wait is over.
            let (_, close) = rig.from_socket.recv().await.expect("then the close");
            assert_eq!(close, Message::Close(None));
            // After silence the drain's time is already up: no one reads this.
            let _ = rig.to_socket.send(Ok(Message::Close(None)));
        }
        let blind = rig.closed().await;
        if let Some((since, _)) = blind {
            assert!(since >= before_last_frame, "blind from the last frame on");
            assert!(
                since <= before_last_frame + Duration::from_secs(1),
                "not from the answer"
            );
        }
        blind
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_tells_a_live_socket_from_a_silent_or_dead_one() {
        let reason = |blind: Option<(SystemTime, Reason)>| blind.map(|(_, r)| r);
        let pong = stopped_with_the_answer(Answer::Text(PONG)).await;
        assert_eq!(reason(pong), None);
        let dead = Answer::Text(r#"{"result":"404","message":"Channel not found"}"#);
        assert_eq!(
            reason(stopped_with_the_answer(dead).await),
            Some(Reason::ChannelGone)
        );
        assert_eq!(
            reason(stopped_with_the_answer(Answer::Silence).await),
            Some(Reason::HeartbeatTimeout)
        );
        // A WebSocket close is no answer to the ping: it says nothing of
        // the channel.
        assert_eq!(
            reason(stopped_with_the_answer(Answer::Close).await),
            Some(Reason::HeartbeatTimeout)
        );
    }
}
