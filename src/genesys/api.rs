//! Typed Notification API calls and their errors. A 401 triggers one
//! single-flight token refresh and one retry; everything else is returned as
//! an [`ApiError`] the caller can branch on (429 with its Retry-After, 404,
//! 5xx, ...). Error texts carry status codes and Genesys error codes, never a
//! token, a secret or a `connectUri`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};

use super::auth::{Auth, AuthError, Token};
use super::retry_after;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("no token: {0}")]
    Auth(#[from] AuthError),
    #[error("unauthorized even with a fresh token")]
    Unauthorized,
    #[error("rate-limited (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("forbidden ({code})")]
    Forbidden { code: String },
    #[error("not found")]
    NotFound,
    #[error("request refused (HTTP {status}: {code})")]
    Refused { status: u16, code: String },
    #[error("server error (HTTP {0})")]
    Server(u16),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("unexpected reply: {0}")]
    Decode(String),
}

impl ApiError {
    /// The least time to wait before calling again, where the server said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } => *retry_after,
            ApiError::Auth(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// A channel's socket address. It is a credential: `Debug` hides it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ConnectUri(String);

impl ConnectUri {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectUri(***)")
    }
}

/// A channel id. It is a capability: the socket URL is the API host plus
/// `/channels/<id>`, opening it needs no token, and Genesys then closes the
/// socket already there (one socket per channel). So `Display` and `Debug`
/// show only its [tag](ChannelId::tag); the id itself is read with
/// [`expose`](ChannelId::expose), for the REST paths that need it.
#[derive(Clone)]
pub struct ChannelId {
    id: Arc<str>,
    tag: Arc<str>,
}

impl ChannelId {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            tag: channel_tag(id).into(),
        }
    }

    pub fn expose(&self) -> &str {
        &self.id
    }

    /// 12 hex digits of a keyed hash of the id, with a key drawn at random
    /// once per process: it tells this process's channels apart in records
    /// and logs, and cannot be turned back into the id (nor linked to one
    /// without the key, which never leaves the process).
    pub fn tag(&self) -> &Arc<str> {
        &self.tag
    }
}

impl PartialEq for ChannelId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ChannelId {}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", self.tag)
    }
}

fn channel_tag(id: &str) -> String {
    use std::hash::BuildHasher;
    // SipHash-1-3 under a random 128-bit key: a keyed pseudo-random function.
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let hash = KEY.get_or_init(Default::default).hash_one(id);
    format!("{:012x}", hash >> 16)
}

/// A notification channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub id: ChannelId,
    pub connect_uri: ConnectUri,
    /// When Genesys will remove it unless subscribed again.
    pub expires: Option<SystemTime>,
    /// The token generation that created it: the channel dies with that token.
    pub token_generation: u64,
    /// When that token expires.
    pub token_expires_at: tokio::time::Instant,
    /// The topics this process last subscribed it to: a session that
    /// reconnects to it brings them in step with the shard's list.
    pub subscribed: Arc<[String]>,
}

#[derive(Deserialize)]
struct ChannelReply {
    id: String,
    #[serde(rename = "connectUri")]
    connect_uri: ConnectUri,
    #[serde(default)]
    expires: Option<String>,
}

/// One topic of a subscription reply.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelTopic {
    pub id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(rename = "rejectionReason", default)]
    pub rejection_reason: Option<String>,
}

impl ChannelTopic {
    pub fn rejected(&self) -> bool {
        self.state.as_deref() == Some("Rejected")
    }
}

#[derive(Deserialize)]
struct Entities<T> {
    #[serde(default = "Vec::new")]
    entities: Vec<T>,
}

#[derive(Serialize)]
struct TopicId<'a> {
    id: &'a str,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
}

/// The Notification API of one org, through one token source.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    auth: Auth,
    /// No call before this instant: a 429's Retry-After holds for every
    /// shard, not only the one that got it.
    not_before: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Api {
    pub fn new(http: reqwest::Client, api_base_url: &str, auth: Auth) -> Self {
        Self {
            http,
            base: api_base_url.trim_end_matches('/').into(),
            auth,
            not_before: Arc::default(),
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// `POST /api/v2/notifications/channels`.
    pub async fn create_channel(&self) -> Result<Channel, ApiError> {
        let url = format!("{}/api/v2/notifications/channels", self.base);
        let (response, token) = self.send(|| self.http.request(Method::POST, &url)).await?;
        let reply: ChannelReply = response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.without_url().to_string()))?;
        Ok(Channel {
            id: ChannelId::new(&reply.id),
            connect_uri: reply.connect_uri,
            expires: reply.expires.as_deref().and_then(parse_time),
            token_generation: token.generation,
            token_expires_at: token.expires_at,
            subscribed: Arc::from(Vec::new()),
        })
    }

    /// `HEAD /api/v2/notifications/channels/{id}`: whether it still exists.
    pub async fn channel_exists(&self, id: &ChannelId) -> Result<bool, ApiError> {
        let url = format!(
            "{}/api/v2/notifications/channels/{}",
            self.base,
            id.expose()
        );
        match self.send(|| self.http.request(Method::HEAD, &url)).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT .../subscriptions?ignoreErrors=true`: replaces the channel's topics;
    /// topics Genesys refuses come back `Rejected` instead of failing the call.
    pub async fn put_subscriptions(
        &self,
        channel: &ChannelId,
        topics: &[String],
    ) -> Result<Vec<ChannelTopic>, ApiError> {
        self.subscriptions(Method::PUT, channel, topics).await
    }

    /// `POST .../subscriptions?ignoreErrors=true`: adds topics, leaving the
    /// channel's others untouched; the reply lists all of them.
    pub async fn add_subscriptions(
        &self,
        channel: &ChannelId,
        topics: &[String],
    ) -> Result<Vec<ChannelTopic>, ApiError> {
        self.subscriptions(Method::POST, channel, topics).await
    }

    async fn subscriptions(
        &self,
        method: Method,
        channel: &ChannelId,
        topics: &[String],
    ) -> Result<Vec<ChannelTopic>, ApiError> {
        let url = format!(
            "{}/api/v2/notifications/channels/{}/subscriptions?ignoreErrors=true",
            self.base,
            channel.expose()
        );
        let body: Vec<TopicId<'_>> = topics.iter().map(|t| TopicId { id: t }).collect();
        let (response, _) = self
            .send(|| self.http.request(method.clone(), &url).json(&body))
            .await?;
        let reply: Entities<ChannelTopic> = response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.without_url().to_string()))?;
        Ok(reply.entities)
    }

    /// `POST {path}` with a JSON `body`, its JSON reply decoded.
    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let (response, _) = self
            .send(|| self.http.request(Method::POST, &url).json(body))
            .await?;
        response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.without_url().to_string()))
    }

    /// `GET {path}` with `query`, its JSON reply decoded.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let (response, _) = self
            .send(|| self.http.request(Method::GET, &url).query(query))
            .await?;
        response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.without_url().to_string()))
    }

    /// `GET /api/v2/notifications/availabletopics`: the topic catalogue ids.
    pub async fn available_topics(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        let url = format!(
            "{}/api/v2/notifications/availabletopics?expand=description,requiresPermissions",
            self.base
        );
        let (response, _) = self.send(|| self.http.request(Method::GET, &url)).await?;
        let reply: Entities<serde_json::Value> = response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.without_url().to_string()))?;
        Ok(reply.entities)
    }

    /// Sends with a bearer token; on 401 refreshes once and retries once.
    async fn send(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<(reqwest::Response, Arc<Token>), ApiError> {
        let mut token = self.auth.token().await?;
        let mut refreshed = false;
        loop {
            let wait = self.not_before.lock().ok().and_then(|t| *t);
            if let Some(at) = wait {
                tokio::time::sleep_until(at).await;
            }
            let response = build()
                .header(reqwest::header::AUTHORIZATION, token.bearer())
                .send()
                .await
                .map_err(|e| ApiError::Transport(e.without_url().to_string()))?;
            let status = response.status();
            if status.is_success() {
                return Ok((response, token));
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                token = self.auth.refresh(&token).await?;
                continue;
            }
            let retry_after = retry_after(response.headers());
            if status == StatusCode::TOO_MANY_REQUESTS {
                let until =
                    tokio::time::Instant::now() + retry_after.unwrap_or(Duration::from_secs(1));
                if let Ok(mut not_before) = self.not_before.lock() {
                    *not_before = Some(not_before.map_or(until, |t| t.max(until)));
                }
            }
            let code = response
                .json::<ErrorBody>()
                .await
                .unwrap_or_default()
                .code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(80)
                .collect::<String>();
            return Err(match status.as_u16() {
                401 => ApiError::Unauthorized,
                403 => ApiError::Forbidden { code },
                404 => ApiError::NotFound,
                429 => ApiError::RateLimited { retry_after },
                s if s >= 500 => ApiError::Server(s),
                s => ApiError::Refused { status: s, code },
            });
        }
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_genesys_expiry_times() {
        let t = parse_time("2026-11-28T10:00:00.000Z").expect("parses");
        let d = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs();
        assert_eq!(d, 1_795_860_000);
        assert!(parse_time("2026-11-28T10:00:00Z").is_some());
        assert!(parse_time("tomorrow").is_none());
    }

    #[test]
    fn a_channel_id_shows_only_its_tag() {
        let id = ChannelId::new("streaming-0-fmtdmf8cdis7jh14udg5p89t6z");
        let tag = id.tag().to_string();
        assert_eq!(tag.len(), 12);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()));
        for shown in [format!("{id}"), format!("{id:?}")] {
            assert!(shown.contains(&tag), "{shown}");
            assert!(!shown.contains("fmtdmf8"), "{shown}");
        }
        // Stable within the process, distinct between channels.
        assert_eq!(ChannelId::new(id.expose()).tag(), id.tag());
        assert_ne!(ChannelId::new("streaming-0-other").tag(), id.tag());
        assert_eq!(id.expose(), "streaming-0-fmtdmf8cdis7jh14udg5p89t6z");
    }

    #[test]
    fn connect_uri_debug_is_masked() {
        let uri: ConnectUri = serde_json::from_str("\"wss://x/channels/secret\"").expect("json");
        assert!(!format!("{uri:?}").contains("secret"));
    }
}
