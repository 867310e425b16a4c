//! The HTTP control API under `/_emulator/...` (JSON in, JSON out): the
//! same operations as the library API, for the binary and for tools that
//! are not written in Rust (the SDK fidelity check, demos).
//!
//! A fault body names one channel with `{"channel": "<id>"}`; without it the
//! fault hits every socket (or every live channel). Replies say how many
//! were hit: `{"affected": n}`.
//!
//! Directory changes answer `{"id"}` (adds), `{"ids"}` (bulk add) or 204;
//! an unknown user or queue is a 404, a taken id a 409, anything else
//! wrong a 400, each with `{"message"}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::RecordMode;
use crate::directory::{DirectoryError, NewQueue, NewUser, UserState};
use crate::emulator::Emulator;
use crate::faults::{Failure, Malformed, RequestKind, Target};
use crate::state::Shared;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/state", get(state))
        .route("/state/users", get(user_states))
        .route("/state/users/{id}", get(user_state))
        .route("/state/conversations", get(conversations))
        .route("/channels", get(channels))
        .route("/events", get(events).delete(clear_events))
        .route("/events/stats", get(stats))
        .route("/events/mode", put(mode))
        .route("/deliverable", get(deliverable))
        .route("/requests", get(requests).delete(clear_requests))
        .route("/coverage", get(coverage))
        .route("/publish", post(publish))
        .route("/rate", get(get_rate).put(set_rate))
        .route("/ids", get(ids))
        .route("/sample-topics", get(sample_topics))
        .route("/sample-body", get(sample_body))
        .route("/settle", post(settle))
        .route("/faults/drop", post(drop_sockets))
        .route("/faults/stall", post(stall))
        .route("/faults/socket-closing", post(socket_closing))
        .route("/faults/expire-channel", post(expire))
        .route("/faults/revoke-tokens", post(revoke))
        .route("/faults/fail-next", post(fail_next).delete(clear_failures))
        .route("/faults/malformed", post(malformed))
        .route("/directory", get(directory))
        .route("/directory/users", post(add_user))
        .route("/directory/users/bulk", post(add_users))
        .route("/directory/users/{id}", delete(remove_user))
        .route("/directory/users/{id}/state", put(set_user_state))
        .route("/directory/queues", post(add_queue))
        .route("/directory/queues/{id}", delete(remove_queue))
        .route("/directory/queues/{id}/members", put(set_queue_members))
}

fn emu(shared: Arc<Shared>) -> Emulator {
    Emulator::from_shared(shared)
}

fn bad(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "message": msg.into() })),
    )
        .into_response()
}

/// Body of a fault request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultBody {
    /// One channel; absent = all.
    channel: Option<String>,
    /// socket-closing only: grace in milliseconds.
    grace_ms: Option<u64>,
}

impl FaultBody {
    fn target(&self) -> Target {
        match &self.channel {
            Some(id) => Target::Channel(id.clone()),
            None => Target::All,
        }
    }
}

/// Fault bodies may be empty.
fn fault_body(body: &str) -> Result<FaultBody, String> {
    if body.trim().is_empty() {
        return Ok(FaultBody::default());
    }
    serde_json::from_str(body).map_err(|e| format!("bad fault body: {e}"))
}

async fn state(State(s): State<Arc<Shared>>) -> Json<Value> {
    let e = emu(s);
    let channels = e.channels();
    Json(json!({
        "baseUrl": e.base_url(),
        "openSockets": e.open_sockets(),
        "rate": e.rate(),
        "events": e.event_stats(),
        "liveChannels": channels.iter().filter(|c| c.alive).count(),
        "channels": channels.len(),
    }))
}

/// Every directory user's presence and routing status now, by user id.
async fn user_states(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(emu(s).current_user_states()))
}

async fn user_state(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match emu(s).current_user_state(&id) {
        Some(u) => Json(json!(u)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": format!("no user with id {id}") })),
        )
            .into_response(),
    }
}

/// Kept conversations: `?queueId=` or `?userId=` narrows them; `?id=` gives
/// one (an array of at most one).
async fn conversations(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let e = emu(s);
    let list = if let Some(id) = q.get("id") {
        e.conversation(id).into_iter().collect()
    } else if let Some(queue) = q.get("queueId") {
        e.conversations_of_queue(queue)
    } else if let Some(user) = q.get("userId") {
        e.conversations_of_user(user)
    } else {
        e.all_conversations()
    };
    Json(json!(list))
}

async fn channels(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(emu(s).channels()))
}

async fn events(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let since = q.get("since").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Json(json!(emu(s).events_since(since, limit)))
}

async fn clear_events(State(s): State<Arc<Shared>>) -> StatusCode {
    emu(s).clear_events();
    StatusCode::NO_CONTENT
}

async fn stats(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(emu(s).event_stats()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModeBody {
    mode: RecordMode,
    max_records: Option<usize>,
}

async fn mode(State(s): State<Arc<Shared>>, body: String) -> Response {
    match serde_json::from_str::<ModeBody>(&body) {
        Ok(m) => {
            emu(s).set_record_mode(m.mode, m.max_records);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad(format!("bad mode body: {e}")),
    }
}

async fn deliverable(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(emu(s).deliverable()))
}

async fn requests(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(emu(s).requests()))
}

async fn clear_requests(State(s): State<Arc<Shared>>) -> StatusCode {
    emu(s).clear_requests();
    StatusCode::NO_CONTENT
}

async fn coverage(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(topic) = q.get("topic") else {
        return bad("topic is required");
    };
    let e = emu(s);
    Json(json!({
        "topic": topic,
        "covered": e.covered(topic),
        "gaps": e.coverage_gaps(topic),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    body: Option<Value>,
}

async fn publish(State(s): State<Arc<Shared>>, body: String) -> Response {
    let p: PublishBody = match serde_json::from_str(&body) {
        Ok(p) => p,
        Err(e) => return bad(format!("bad publish body: {e}")),
    };
    let e = emu(s);
    let seq = match p.body {
        Some(b) => e.publish_body(&p.topic, b),
        None => e.publish(&p.topic),
    };
    Json(json!({ "seq": seq })).into_response()
}

async fn get_rate(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "rate": emu(s).rate() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    rate: f64,
}

async fn set_rate(State(s): State<Arc<Shared>>, body: String) -> Response {
    match serde_json::from_str::<RateBody>(&body) {
        Ok(r) if r.rate.is_finite() && r.rate >= 0.0 => {
            let e = emu(s);
            e.set_rate(r.rate);
            Json(json!({ "rate": e.rate() })).into_response()
        }
        Ok(_) => bad("rate must be a finite number >= 0"),
        Err(e) => bad(format!("bad rate body: {e}")),
    }
}

async fn ids(State(s): State<Arc<Shared>>) -> Json<Value> {
    let e = emu(s);
    Json(json!({ "orgId": e.org_id(), "userIds": e.user_ids(), "queueIds": e.queue_ids() }))
}

async fn sample_topics(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let n = q
        .get("n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10usize)
        .min(100_000);
    Json(json!(emu(s).sample_topics(n)))
}

async fn sample_body(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(topic) = q.get("topic") else {
        return bad("topic is required");
    };
    Json(json!({ "topic": topic, "body": emu(s).sample_body(topic) })).into_response()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettleBody {
    timeout_ms: Option<u64>,
}

async fn settle(State(s): State<Arc<Shared>>, body: String) -> Response {
    let b: SettleBody = if body.trim().is_empty() {
        SettleBody::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(b) => b,
            Err(e) => return bad(format!("bad settle body: {e}")),
        }
    };
    let t = Duration::from_millis(b.timeout_ms.unwrap_or(5_000));
    Json(json!({ "settled": emu(s).settle(t).await })).into_response()
}

fn affected(n: usize) -> Response {
    Json(json!({ "affected": n })).into_response()
}

async fn drop_sockets(State(s): State<Arc<Shared>>, body: String) -> Response {
    match fault_body(&body) {
        Ok(b) => affected(emu(s).drop_sockets(b.target())),
        Err(m) => bad(m),
    }
}

async fn stall(State(s): State<Arc<Shared>>, body: String) -> Response {
    match fault_body(&body) {
        Ok(b) => affected(emu(s).stall_sockets(b.target())),
        Err(m) => bad(m),
    }
}

async fn socket_closing(State(s): State<Arc<Shared>>, body: String) -> Response {
    match fault_body(&body) {
        Ok(b) => {
            let e = emu(s);
            let grace = b
                .grace_ms
                .map(Duration::from_millis)
                .unwrap_or(e.config().socket_closing_grace);
            affected(e.socket_closing_with_grace(b.target(), grace))
        }
        Err(m) => bad(m),
    }
}

async fn expire(State(s): State<Arc<Shared>>, body: String) -> Response {
    match fault_body(&body) {
        Ok(b) => affected(emu(s).expire_channel(b.target())),
        Err(m) => bad(m),
    }
}

async fn revoke(State(s): State<Arc<Shared>>, body: String) -> Response {
    match fault_body(&body) {
        Ok(b) => {
            let e = emu(s);
            let n = match &b.channel {
                // Tokens never travel through the control API: a token is
                // named by a channel it created.
                Some(id) => usize::from(e.revoke_channel_token(id)),
                None => e.revoke_tokens(),
            };
            affected(n)
        }
        Err(m) => bad(m),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailBody {
    kind: RequestKind,
    count: u32,
    /// 429 (with `retryAfter`) or a 5xx.
    status: u16,
    retry_after: Option<u64>,
    /// Matching requests that pass before the failures start.
    skip: Option<u32>,
}

async fn fail_next(State(s): State<Arc<Shared>>, body: String) -> Response {
    let b: FailBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return bad(format!("bad fail-next body: {e}")),
    };
    let failure = match b.status {
        429 => Failure::TooManyRequests {
            retry_after_secs: b.retry_after.unwrap_or(1),
        },
        500..=599 => Failure::Status { status: b.status },
        other => return bad(format!("status must be 429 or 5xx, got {other}")),
    };
    emu(s).fail_after(b.kind, b.skip.unwrap_or(0), b.count, failure);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_failures(State(s): State<Arc<Shared>>) -> StatusCode {
    emu(s).clear_failures();
    StatusCode::NO_CONTENT
}

// `deny_unknown_fields` does not work with `flatten`.
#[derive(Deserialize)]
struct MalformedBody {
    channel: Option<String>,
    #[serde(flatten)]
    malformed: Malformed,
}

async fn malformed(State(s): State<Arc<Shared>>, body: String) -> Response {
    let b: MalformedBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return bad(format!("bad malformed body: {e}")),
    };
    let target = match b.channel {
        Some(id) => Target::Channel(id),
        None => Target::All,
    };
    affected(emu(s).send_malformed(target, b.malformed))
}

/// A directory change's refusal: 404 for an unknown user or queue, 409 for
/// a taken id, 400 otherwise.
fn refused(e: DirectoryError) -> Response {
    let status = match e {
        DirectoryError::UnknownUser(_) | DirectoryError::UnknownQueue(_) => StatusCode::NOT_FOUND,
        DirectoryError::DuplicateId(_) => StatusCode::CONFLICT,
        DirectoryError::UnknownDivision(_) | DirectoryError::BadId(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({ "message": e.to_string() }))).into_response()
}

/// Parses a JSON body; an empty body is the type's default.
fn body_or_default<T: for<'de> Deserialize<'de> + Default>(
    body: &str,
    what: &str,
) -> Result<T, String> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(body).map_err(|e| format!("bad {what} body: {e}"))
}

fn done(r: Result<(), DirectoryError>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

async fn directory(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(emu(s).directory()))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UserBody {
    id: Option<String>,
    name: Option<String>,
    email: Option<String>,
    division_id: Option<String>,
    state: Option<UserState>,
    #[serde(default)]
    queues: Vec<String>,
}

async fn add_user(State(s): State<Arc<Shared>>, body: String) -> Response {
    let b: UserBody = match body_or_default(&body, "user") {
        Ok(b) => b,
        Err(m) => return bad(m),
    };
    let new = NewUser {
        id: b.id,
        name: b.name,
        email: b.email,
        division_id: b.division_id,
        state: b.state.unwrap_or_default(),
        queues: b.queues,
    };
    match emu(s).add_user(new) {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    count: usize,
}

/// At most this many users per bulk request.
const MAX_BULK: usize = 100_000;

async fn add_users(State(s): State<Arc<Shared>>, body: String) -> Response {
    match serde_json::from_str::<BulkBody>(&body) {
        Ok(b) if b.count <= MAX_BULK => {
            Json(json!({ "ids": emu(s).add_users(b.count) })).into_response()
        }
        Ok(_) => bad(format!("count must be at most {MAX_BULK}")),
        Err(e) => bad(format!("bad bulk body: {e}")),
    }
}

async fn remove_user(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    done(emu(s).remove_user(&id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: UserState,
}

async fn set_user_state(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    match serde_json::from_str::<StateBody>(&body) {
        Ok(b) => done(emu(s).set_user_state(&id, b.state)),
        Err(e) => bad(format!("bad state body: {e}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QueueBody {
    id: Option<String>,
    name: Option<String>,
    division_id: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

async fn add_queue(State(s): State<Arc<Shared>>, body: String) -> Response {
    let b: QueueBody = match body_or_default(&body, "queue") {
        Ok(b) => b,
        Err(m) => return bad(m),
    };
    let new = NewQueue {
        id: b.id,
        name: b.name,
        division_id: b.division_id,
        members: b.members,
    };
    match emu(s).add_queue(new) {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err(e) => refused(e),
    }
}

async fn remove_queue(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    done(emu(s).remove_queue(&id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersBody {
    members: Vec<String>,
}

async fn set_queue_members(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    match serde_json::from_str::<MembersBody>(&body) {
        Ok(b) => done(emu(s).set_queue_members(&id, &b.members)),
        Err(e) => bad(format!("bad members body: {e}")),
    }
}
