//! The notification socket at `GET /channels/{id}`: the WebSocket upgrade,
//! then one task per socket that writes queued frames, heartbeats and
//! replies, reads the client's messages, and carries out socket faults.
//!
//! The upgrade is done by hand (not with axum's `ws`) so that the raw
//! connection can be wrapped in [`GateIo`]: a stalled socket must send
//! nothing at all, not even the pongs tungstenite answers on its own, while
//! still reading so that it notices when the client goes away. A dropped
//! socket ends TCP with a FIN after whatever was already flushed (no close
//! frame, no RST).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::faults::Malformed;
use crate::records::DisconnectReason;
use crate::state::{lock, system_frame, Attach, Control, Out, Prepared, Shared, SocketParts};

const HEARTBEAT: &str =
    r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
const PONG: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;
const NOT_FOUND: &str = r#"{"result":"404","message":"Channel not found"}"#;
/// How long a closing socket waits for the client's side of the goodbye.
const LINGER: Duration = Duration::from_secs(2);
/// The same on shutdown, which should not wait on slow clients.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(100);
/// Frames written per flush.
const BATCH: usize = 512;

/// A connection whose writes can be switched into a black hole.
pub(crate) struct GateIo<T> {
    inner: T,
    stalled: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for GateIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GateIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stalled.load(Ordering::Relaxed) {
            // Pretend it went out: nothing may reach a stalled client.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stalled.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Ws = WebSocketStream<GateIo<TokioIo<hyper::upgrade::Upgraded>>>;

/// `GET /channels/{id}`: accepts the upgrade for any channel id; unknown and
/// dead channels get a socket that answers 404 to every message.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    let Some(key) = handshake_key(headers) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "connection cannot be upgraded",
        )
            .into_response();
    };
    let attach = lock(&shared.state).attach(&shared.config, &id);
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket upgrade failed.");
                end(
                    &task_shared,
                    &attach_ids(&attach),
                    DisconnectReason::ConnectionLost,
                );
                return;
            }
        };
        run(task_shared, attach, upgraded).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

fn handshake_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
                .unwrap_or(false)
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}

/// (channel number, socket id) of an attached socket, for bookkeeping.
fn attach_ids(a: &Attach) -> (Option<u32>, u64) {
    match a {
        Attach::Live(p) => (Some(p.num), p.socket_id),
        Attach::Dead { num, socket_id } => (*num, *socket_id),
    }
}

fn end(shared: &Shared, ids: &(Option<u32>, u64), reason: DisconnectReason) {
    if let (Some(num), socket_id) = *ids {
        lock(&shared.state).socket_ended(num, socket_id, reason);
    }
}

async fn run(shared: Arc<Shared>, attach: Attach, upgraded: hyper::upgrade::Upgraded) {
    let ids = attach_ids(&attach);
    let stalled = match &attach {
        Attach::Live(p) => p.stalled.clone(),
        Attach::Dead { .. } => Arc::new(AtomicBool::new(false)),
    };
    let io = GateIo {
        inner: TokioIo::new(upgraded),
        stalled,
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    shared.open_sockets.fetch_add(1, Ordering::Relaxed);
    let reason = match attach {
        Attach::Live(parts) => live(&shared, ws, parts).await,
        Attach::Dead { .. } => dead(&shared, ws).await,
    };
    shared.open_sockets.fetch_sub(1, Ordering::Relaxed);
    end(&shared, &ids, reason);
    tracing::debug!(socket = ids.1, ?reason, "Socket ended.");
}

/// A socket on an unknown or dead channel: accepted, silent, and every
/// message answered with a 404 frame.
async fn dead(shared: &Shared, mut ws: Ws) -> DisconnectReason {
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => {
                close(&mut ws, CloseCode::Away, "server shutdown", SHUTDOWN_LINGER).await;
                return DisconnectReason::Shutdown;
            }
            msg = ws.next() => match msg {
                None => return DisconnectReason::ConnectionLost,
                Some(Err(_)) => return DisconnectReason::ConnectionLost,
                Some(Ok(Message::Close(_))) => {
                    let _ = ws.flush().await;
                    return DisconnectReason::ClientClosed;
                }
                Some(Ok(Message::Text(_))) | Some(Ok(Message::Binary(_))) => {
                    if ws.send(Message::text(NOT_FOUND)).await.is_err() {
                        return DisconnectReason::ConnectionLost;
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

async fn live(shared: &Shared, mut ws: Ws, parts: SocketParts) -> DisconnectReason {
    let SocketParts {
        num,
        socket_id,
        channel_id,
        mut out_rx,
        mut control_rx,
        stalled,
        dead,
    } = parts;
    tracing::info!(channel = %channel_id, socket = socket_id, "Socket connected.");
    let period = shared.config.heartbeat_interval;
    let mut heartbeat = interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch: Vec<Out> = Vec::with_capacity(BATCH);
    let mut seqs: Vec<u64> = Vec::with_capacity(BATCH);
    let mut closing_at: Option<Instant> = None;
    let mut control_open = true;
    let mut out_open = true;
    let reason = loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => {
                close(&mut ws, CloseCode::Away, "server shutdown", SHUTDOWN_LINGER).await;
                break DisconnectReason::Shutdown;
            }
            cmd = control_rx.recv(), if control_open => match cmd {
                None => control_open = false,
                Some(Control::Drop) => {
                    discard(shared, &mut out_rx);
                    abrupt(&mut ws).await;
                    break DisconnectReason::Dropped;
                }
                Some(Control::SlowConsumer) => {
                    tracing::warn!(channel = %channel_id, "Socket queue overflowed; dropping the slow socket.");
                    discard(shared, &mut out_rx);
                    abrupt(&mut ws).await;
                    break DisconnectReason::SlowConsumer;
                }
                Some(Control::Kick) => {
                    discard(shared, &mut out_rx);
                    close(&mut ws, CloseCode::Normal, "Another connection was opened for this channel", LINGER).await;
                    break DisconnectReason::Replaced;
                }
                Some(Control::Closing { grace, frame }) => {
                    if closing_at.is_none() {
                        tracing::info!(channel = %channel_id, grace = ?grace, "Sending socket_closing.");
                        if ws.send(Message::Text(frame)).await.is_err() {
                            break DisconnectReason::ConnectionLost;
                        }
                        closing_at = Some(Instant::now() + grace);
                    }
                }
                Some(Control::Malformed(m)) => {
                    let topic = lock(&shared.state).some_topic_of(num);
                    if ws.send(malformed(m, topic.as_deref())).await.is_err() {
                        break DisconnectReason::ConnectionLost;
                    }
                }
            },
            _ = sleep_until(closing_at.unwrap_or_else(Instant::now)), if closing_at.is_some() => {
                close(&mut ws, CloseCode::Away, "socket closing", LINGER).await;
                break DisconnectReason::SocketClosing;
            }
            n = out_rx.recv_many(&mut batch, BATCH), if out_open => {
                if n == 0 {
                    out_open = false;
                    continue;
                }
                // Only events count as in flight (system frames do not).
                let events = batch.iter().filter(|o| matches!(o, Out::Event { .. })).count();
                let result = write_batch(&mut ws, &mut batch, &mut seqs, &stalled, &dead).await;
                shared.in_flight.fetch_sub(events as u64, Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        // Only a healthy socket counts: a stall or death that
                        // came while writing means the bytes went nowhere.
                        if !stalled.load(Ordering::Relaxed) && !dead.load(Ordering::Relaxed) {
                            shared.mark_delivered(num, &seqs);
                        }
                    }
                    Err(_) => break DisconnectReason::ConnectionLost,
                }
            }
            _ = heartbeat.tick() => {
                if !dead.load(Ordering::Relaxed)
                    && !stalled.load(Ordering::Relaxed)
                    && ws.send(Message::text(HEARTBEAT)).await.is_err()
                {
                    break DisconnectReason::ConnectionLost;
                }
            }
            msg = ws.next() => match msg {
                None | Some(Err(_)) => break DisconnectReason::ConnectionLost,
                Some(Ok(Message::Close(_))) => {
                    let _ = ws.flush().await;
                    break DisconnectReason::ClientClosed;
                }
                Some(Ok(Message::Text(text))) => {
                    if stalled.load(Ordering::Relaxed) {
                        continue;
                    }
                    let reply = client_message(shared, num, &dead, text.as_str());
                    if let Some(reply) = reply {
                        if ws.send(Message::text(reply)).await.is_err() {
                            break DisconnectReason::ConnectionLost;
                        }
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    };
    discard(shared, &mut out_rx);
    tracing::info!(channel = %channel_id, socket = socket_id, ?reason, "Socket closed.");
    reason
}

/// Closes the queue and forgets what is in it: it will never be written.
fn discard(shared: &Shared, out_rx: &mut tokio::sync::mpsc::Receiver<Out>) {
    out_rx.close();
    let mut left = 0u64;
    while let Ok(out) = out_rx.try_recv() {
        if matches!(out, Out::Event { .. }) {
            left += 1;
        }
    }
    shared.in_flight.fetch_sub(left, Ordering::Relaxed);
}

/// Writes one batch and flushes it; `seqs` gets the events written.
async fn write_batch(
    ws: &mut Ws,
    batch: &mut Vec<Out>,
    seqs: &mut Vec<u64>,
    stalled: &AtomicBool,
    dead: &AtomicBool,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    seqs.clear();
    if stalled.load(Ordering::Relaxed) {
        batch.clear();
        return Ok(());
    }
    // A dead channel gets no more events, but a system frame queued as its
    // last word (token_revoked) still goes out.
    let dead = dead.load(Ordering::Relaxed);
    for out in batch.drain(..) {
        match out {
            Out::Event { .. } if dead => {}
            Out::Event { seq, text } => {
                ws.feed(Message::Text(text)).await?;
                seqs.push(seq);
            }
            Out::System(text) => ws.feed(Message::Text(text)).await?,
        }
    }
    ws.flush().await
}

/// The reply to one client text message, if any.
fn client_message(shared: &Shared, num: u32, dead: &AtomicBool, text: &str) -> Option<String> {
    if dead.load(Ordering::Relaxed) {
        return Some(NOT_FOUND.to_owned());
    }
    let v: Value = serde_json::from_str(text).ok()?;
    let correlation = v.get("correlationId").cloned().unwrap_or(Value::Null);
    match v.get("message").and_then(Value::as_str) {
        Some("ping") => Some(PONG.to_owned()),
        Some(op @ ("subscribe" | "unsubscribe")) => {
            let topics: Option<Vec<String>> = v.get("topics").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            });
            let topics = match topics {
                Some(t) if !t.is_empty() => t,
                _ => {
                    return Some(
                        json!({
                            "result": "400",
                            "status": "error",
                            "message": "Required data missing from subscribe request.",
                            "topics": [],
                            "correlationId": correlation,
                        })
                        .to_string(),
                    )
                }
            };
            let result = {
                let mut st = lock(&shared.state);
                if op == "subscribe" {
                    st.socket_subscribe(&shared.config, num, &topics)
                } else {
                    st.socket_unsubscribe(num, &topics);
                    Ok(())
                }
            };
            Some(
                match result {
                    Ok(()) => json!({
                        "result": "200",
                        "status": if op == "subscribe" { "subscribed" } else { "unsubscribed" },
                        "topics": topics,
                        "correlationId": correlation,
                    }),
                    Err(message) => json!({
                        "result": "400",
                        "status": "error",
                        "message": message,
                        "topics": [],
                        "correlationId": correlation,
                    }),
                }
                .to_string(),
            )
        }
        _ => {
            tracing::debug!("Ignoring an unknown client message.");
            None
        }
    }
}

/// Sends a close frame, then waits briefly for the client's close so that
/// the TCP connection ends cleanly.
async fn close(ws: &mut Ws, code: CloseCode, reason: &str, linger: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    if ws.close(Some(frame)).await.is_ok() {
        let _ = timeout(linger, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }
}

/// Ends the connection without a close frame: FIN after what was already
/// flushed, then reads (and discards) until the client hangs up, so the
/// kernel has no unread data that would turn the FIN into an RST.
async fn abrupt(ws: &mut Ws) {
    let io = ws.get_mut();
    let _ = io.inner.shutdown().await;
    let mut sink = [0u8; 8192];
    let _ = timeout(LINGER, async {
        loop {
            match io.inner.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The broken frame for `m`. `topic` is a topic of the channel, used where
/// the frame should otherwise look like a normal notification.
fn malformed(m: Malformed, topic: Option<&str>) -> Message {
    let topic = topic.unwrap_or("v2.users.00000000-0000-0000-0000-000000000000.presence");
    let sample = |body: &str| {
        // Not an event: it gets no place in the sequence.
        Prepared::new(topic, body).assemble(0)
    };
    match m {
        Malformed::InvalidJson => Message::text("{\"topicName\": this is not json"),
        Malformed::Binary => Message::Binary(Bytes::from(sample("{\"malformed\":\"binary\"}"))),
        Malformed::Huge { bytes } => {
            let base = sample("{\"malformed\":\"huge\",\"padding\":\"\"}");
            let pad = bytes.saturating_sub(base.len());
            let body = format!(
                "{{\"malformed\":\"huge\",\"padding\":\"{}\"}}",
                "x".repeat(pad)
            );
            Message::text(sample(&body))
        }
        Malformed::UnknownTopic => {
            let frame = system_frame(
                &format!("v2.emulator.unknown.{}", crate::state::fast_uuid()),
                json!({ "malformed": "unknown_topic" }),
            );
            Message::Text(frame)
        }
        Malformed::InvalidUtf8 => Message::Binary(Bytes::from_static(
            b"{\"topicName\":\"\xff\xfe\xfd\",\"eventBody\":{}}",
        )),
        Malformed::TruncatedJson => {
            let full = sample("{\"malformed\":\"truncated\",\"more\":\"data that never arrives\"}");
            let mut cut = full.len() / 2;
            while !full.is_char_boundary(cut) {
                cut -= 1;
            }
            Message::text(full[..cut].to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_frames_are_what_they_claim() {
        let text = |m: Message| match m {
            Message::Text(t) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        };
        assert!(
            serde_json::from_str::<Value>(&text(malformed(Malformed::InvalidJson, None))).is_err()
        );
        assert!(
            serde_json::from_str::<Value>(&text(malformed(Malformed::TruncatedJson, None)))
                .is_err()
        );
        let huge = text(malformed(
            Malformed::Huge { bytes: 100_000 },
            Some("v2.users.u.presence"),
        ));
        assert!((100_000..100_100).contains(&huge.len()), "{}", huge.len());
        let v: Value = serde_json::from_str(&huge).expect("huge is valid JSON");
        assert_eq!(v["topicName"], "v2.users.u.presence");
        match malformed(Malformed::InvalidUtf8, None) {
            Message::Binary(b) => assert!(std::str::from_utf8(&b).is_err()),
            other => panic!("expected binary, got {other:?}"),
        }
        let unknown = text(malformed(Malformed::UnknownTopic, None));
        assert!(unknown.contains("v2.emulator.unknown."));
    }
}
