//! The HTTP side of the emulated service: `POST /oauth/token`, the
//! notification REST API under `/api/v2`, the directory listings (users,
//! queues, queue members), the current state (presences, routing status,
//! the conversation details query), the socket route, and the middleware
//! that records every request, applies the org REST rate limit and injects
//! planned failures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::analytics;
use crate::api_error::{oauth_error, ApiError};
use crate::bodies::{self, Pools};
use crate::control;
use crate::directory::list_param;
use crate::faults::{Failure, RequestKind};
use crate::records::RequestRecord;
use crate::socket;
use crate::state::{channel_json, lock, topic_json, Shared, SubOp};
use crate::topics::{available_topic, schema_of, CATALOGUE};
use crate::truth::{routing_status_json, uc_user_presence_json, user_presence_json};

/// Ids one bulk presence request may ask for (the SDK: "Limit 50").
pub(crate) const BULK_PRESENCE_MAX: usize = 50;

/// The whole router: service, socket and control API.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route(
            "/api/v2/notifications/channels",
            post(create_channel).get(list_channels),
        )
        .route("/api/v2/notifications/channels/{id}", head(head_channel))
        .route(
            "/api/v2/notifications/channels/{id}/subscriptions",
            get(get_subscriptions)
                .post(post_subscriptions)
                .put(put_subscriptions)
                .delete(delete_subscriptions),
        )
        .route(
            "/api/v2/notifications/availabletopics",
            get(available_topics),
        )
        .route("/api/v2/users", get(list_users))
        .route("/api/v2/routing/queues", get(list_queues))
        .route("/api/v2/routing/queues/{id}/members", get(list_members))
        .route(
            "/api/v2/users/presences/purecloud/bulk",
            get(bulk_presences),
        )
        .route("/api/v2/users/{id}/presences/purecloud", get(user_presence))
        .route("/api/v2/users/{id}/routingstatus", get(routing_status))
        .route(
            "/api/v2/analytics/conversations/details/query",
            post(conversation_details),
        )
        .route("/channels/{id}", get(socket::upgrade))
        .nest("/_emulator", control::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_and_inject,
        ))
        .with_state(shared)
}

/// Records the request (method, path without query, kind, status) and
/// answers with a 429 instead when the org REST rate limit is reached, or
/// with a planned failure when one is due. A request the limit refuses
/// does not count against it; one answered by a planned failure does.
async fn record_and_inject(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let at = SystemTime::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let kind = RequestKind::classify(&method, &path);
    let limited = match &shared.rest_limit {
        Some(window) if path.starts_with("/api/v2/") => lock(window)
            .admit(tokio::time::Instant::now())
            .err()
            .map(|retry_after_secs| Failure::TooManyRequests { retry_after_secs }),
        _ => None,
    };
    let planned = limited.or_else(|| lock(&shared.faults).take(kind));
    let resp = match planned {
        Some(Failure::SlowReply { delay_ms }) => {
            tracing::info!(?kind, delay_ms, "Holding a reply.");
            let resp = next.run(req).await;
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            resp
        }
        Some(f) => {
            tracing::info!(?kind, failure = ?f, "Injecting a failure.");
            ApiError::Injected(f).into_response()
        }
        None => next.run(req).await,
    };
    lock(&shared.requests).push(RequestRecord {
        at,
        method,
        path,
        kind,
        status: resp.status().as_u16(),
    });
    resp
}

async fn not_found() -> ApiError {
    ApiError::NotFound("The requested resource was not found.".to_owned())
}

/// A request that carried a valid bearer token.
pub(crate) struct Authed {
    token_id: u64,
    token_expires_at: tokio::time::Instant,
}

impl FromRequestParts<Arc<Shared>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::AuthRequired)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::AuthRequired)?;
        let (token_id, token_expires_at) = lock(&shared.state).check_token(token)?;
        Ok(Authed {
            token_id,
            token_expires_at,
        })
    }
}

/// Minimal `application/x-www-form-urlencoded` parsing.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// `POST /oauth/token` (client credentials only).
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    match form.get("grant_type").map(String::as_str) {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant_type.",
            );
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Only the client_credentials grant is supported.",
            );
        }
    }
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((id, secret)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication (HTTP Basic) is required.",
        );
    };
    let cfg = &shared.config;
    if id != cfg.client_id || secret != cfg.client_secret {
        tracing::info!("Token request with bad client credentials.");
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client not found",
        );
    }
    let token = lock(&shared.state).issue_token(cfg.token_lifetime);
    tracing::info!("Token issued.");
    Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": cfg.token_lifetime.as_secs(),
    }))
    .into_response()
}

async fn create_channel(State(shared): State<Arc<Shared>>, auth: Authed) -> Json<Value> {
    let view = lock(&shared.state).create_channel(
        &shared.config,
        &shared.ws_base,
        auth.token_id,
        auth.token_expires_at,
    );
    Json(channel_json(&view))
}

async fn list_channels(
    State(shared): State<Arc<Shared>>,
    auth: Authed,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let all = match q.get("includechannels").map(|s| s.to_ascii_lowercase()) {
        None => false,
        Some(s) if s == "token" => false,
        Some(s) if s == "oauthclient" => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "includechannels must be token or oauthclient, got {other}"
            )))
        }
    };
    let views = lock(&shared.state).list_channels(&shared.ws_base, auth.token_id, all);
    Ok(Json(
        json!({ "entities": views.iter().map(channel_json).collect::<Vec<_>>() }),
    ))
}

async fn head_channel(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
) -> StatusCode {
    match lock(&shared.state).live_channel(&id) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::NOT_FOUND,
    }
}

fn listing(channel_id: &str, topics: &[crate::state::TopicState]) -> Json<Value> {
    Json(json!({
        "entities": topics.iter().map(|t| topic_json(channel_id, t)).collect::<Vec<_>>()
    }))
}

async fn get_subscriptions(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut st = lock(&shared.state);
    let num = st.live_channel(&id)?;
    Ok(listing(&id, &st.topic_states(num)))
}

/// Body of POST/PUT subscriptions: `[{"id": "..."}]` (other fields ignored).
fn topic_ids(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("The request body is not valid JSON: {e}")))?;
    let arr = v.as_array().ok_or_else(|| {
        ApiError::BadRequest("The request body must be an array of topics.".into())
    })?;
    arr.iter()
        .map(|t| {
            t.get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ApiError::BadRequest("Each topic needs a string id.".into()))
        })
        .collect()
}

async fn change_subscriptions(
    shared: &Shared,
    id: &str,
    q: &HashMap<String, String>,
    body: &[u8],
    op: SubOp,
) -> Result<Json<Value>, ApiError> {
    let ids = topic_ids(body)?;
    let ignore_errors = q
        .get("ignoreErrors")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut st = lock(&shared.state);
    let num = st.live_channel(id)?;
    let topics = st.subscribe(&shared.config, num, &ids, op, ignore_errors)?;
    Ok(listing(id, &topics))
}

async fn post_subscriptions(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    change_subscriptions(&shared, &id, &q, &body, SubOp::Add).await
}

async fn put_subscriptions(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    change_subscriptions(&shared, &id, &q, &body, SubOp::Replace).await
}

async fn delete_subscriptions(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut st = lock(&shared.state);
    let num = st.live_channel(&id)?;
    st.unsubscribe_all(num);
    Ok(StatusCode::NO_CONTENT)
}

async fn available_topics(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Query(q): Query<Vec<(String, String)>>,
) -> Json<Value> {
    // `expand` may come as one comma list or as repeated parameters.
    let expand: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "expand")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .collect();
    let cfg = &shared.config;
    let pools = Pools {
        org_id: &cfg.org_id,
        user_ids: &cfg.user_ids,
        queue_ids: &cfg.queue_ids,
    };
    let entities: Vec<Value> = CATALOGUE
        .iter()
        .map(|t| {
            available_topic(t, &expand, || {
                let sample = bodies::build(&mut rand::rng(), &pools, t.kind, "sample-id");
                schema_of(t, &sample)
            })
        })
        .collect();
    Json(json!({ "entities": entities }))
}

async fn list_users(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(lock(&shared.state).directory.users_page(&q)?))
}

async fn list_queues(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(lock(&shared.state).directory.queues_page(&q)?))
}

async fn list_members(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(lock(&shared.state).directory.members_page(&id, &q)?))
}

/// `GET /api/v2/users/presences/purecloud/bulk?id=a,b`: a JSON array of
/// `UcUserPresence`, in the order asked, each user once; ids that name no
/// user are left out.
async fn bulk_presences(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let mut ids = list_param(&q, "id");
    if ids.is_empty() {
        return Err(ApiError::BadRequest("At least one id is required.".into()));
    }
    if ids.len() > BULK_PRESENCE_MAX {
        return Err(ApiError::BadRequest(format!(
            "At most {BULK_PRESENCE_MAX} ids may be requested, got {}.",
            ids.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let st = lock(&shared.state);
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| st.truth.user(id))
        .map(|u| uc_user_presence_json(&u.presence))
        .collect();
    Ok(Json(Value::Array(found)))
}

fn no_user(id: &str) -> ApiError {
    ApiError::NotFound(format!("User with id {id} was not found."))
}

/// `GET /api/v2/users/{userId}/presences/purecloud`: a `UserPresence`.
async fn user_presence(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let st = lock(&shared.state);
    let user = st.truth.user(&id).ok_or_else(|| no_user(&id))?;
    Ok(Json(user_presence_json(&user.presence)))
}

/// `GET /api/v2/users/{userId}/routingstatus`: a `RoutingStatus`.
async fn routing_status(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let st = lock(&shared.state);
    let user = st.truth.user(&id).ok_or_else(|| no_user(&id))?;
    Ok(Json(routing_status_json(&user.routing_status)))
}

/// `POST /api/v2/analytics/conversations/details/query`.
async fn conversation_details(
    State(shared): State<Arc<Shared>>,
    _auth: Authed,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let query = analytics::Query::parse(&body)?;
    let st = lock(&shared.state);
    Ok(Json(query.run(&st.truth)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_parsing() {
        let f = parse_form(b"grant_type=client_credentials&a=b%20c+d&empty");
        assert_eq!(
            f.get("grant_type").map(String::as_str),
            Some("client_credentials")
        );
        assert_eq!(f.get("a").map(String::as_str), Some("b c d"));
        assert_eq!(f.get("empty").map(String::as_str), Some(""));
        let f = parse_form(b"x=%");
        assert_eq!(f.get("x").map(String::as_str), Some("%"));
    }
}
