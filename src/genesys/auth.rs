//! Client-credentials tokens: fetched once, cached, refreshed ahead of expiry
//! (at 75 % of `expires_in`), and refreshed single-flight when a REST call
//! meets a 401. Every token request goes through one lock that also holds the
//! time before which no new request may be made, so however many shards ask,
//! the login server sees at most one request per backoff step. Rejected
//! credentials are not transient: they are said once and retried only at the
//! backoff cap.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::retry_after;
use crate::backoff::{Backoff, Policy};
use crate::secret::Secret;

/// What the token source tells whoever watches it (logs, metrics): the
/// API layer reports, and knows nothing of how it is reported.
#[derive(Debug)]
pub enum AuthEvent<'a> {
    Obtained {
        expires_in_secs: u64,
    },
    /// `first`: the first rejection in a row (say it once, not every minute).
    Rejected {
        error: &'a AuthError,
        first: bool,
    },
    Failed {
        error: &'a AuthError,
    },
}

/// Receives [`AuthEvent`]s.
pub type Observer = Arc<dyn Fn(AuthEvent<'_>) + Send + Sync>;

/// An access token. `Debug` never shows it.
pub struct Token {
    value: Secret,
    /// Increases with every new token; tells a stale token from the current one.
    pub generation: u64,
    pub issued_at: Instant,
    pub expires_at: Instant,
}

impl Token {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value.expose())
    }
    /// The value, for tests that look for it in logs.
    pub fn expose(&self) -> &str {
        self.value.expose()
    }
    /// When a refresh is due: 75 % of the lifetime.
    pub fn refresh_at(&self) -> Instant {
        self.issued_at + (self.expires_at - self.issued_at).mul_f64(0.75)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The login server refused the credentials: retrying soon will not help.
    #[error("credentials rejected (HTTP {status}: {code})")]
    Rejected { status: u16, code: String },
    #[error("token requests rate-limited")]
    RateLimited { retry_after: Option<Duration> },
    #[error("login server error (HTTP {0})")]
    Server(u16),
    #[error("login request failed: {0}")]
    Transport(String),
    #[error("unexpected token reply: {0}")]
    Decode(String),
}

impl AuthError {
    /// The earliest sensible retry the server asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
}

struct State {
    current: Option<Arc<Token>>,
    /// No token request before this instant (backoff, Retry-After).
    not_before: Option<Instant>,
    last_error: Option<AuthError>,
    backoff: Backoff,
    generation: u64,
    rejected_said: bool,
}

struct Inner {
    http: reqwest::Client,
    token_url: String,
    basic: Secret,
    state: Mutex<State>,
    updates: watch::Sender<Option<Arc<Token>>>,
    observer: Observer,
}

/// The token source shared by every REST call; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl Auth {
    pub fn new(
        http: reqwest::Client,
        login_base_url: &str,
        client_id: &str,
        client_secret: &Secret,
        retry: &Policy,
        observer: Observer,
    ) -> Self {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{client_id}:{}", client_secret.expose()));
        let (updates, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                http,
                token_url: format!("{}/oauth/token", login_base_url.trim_end_matches('/')),
                basic: Secret::new(format!("Basic {basic}")),
                state: Mutex::new(State {
                    current: None,
                    not_before: None,
                    last_error: None,
                    backoff: Backoff::new(retry),
                    generation: 0,
                    rejected_said: false,
                }),
                updates,
                observer,
            }),
        }
    }

    /// Every new token, as it is obtained.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Token>>> {
        self.inner.updates.subscribe()
    }

    /// A valid token: the cached one, or a new one.
    pub async fn token(&self) -> Result<Arc<Token>, AuthError> {
        let mut state = self.inner.state.lock().await;
        if let Some(token) = &state.current {
            if token.expires_at > Instant::now() + Duration::from_secs(1) {
                return Ok(token.clone());
            }
        }
        self.fetch(&mut state).await
    }

    /// A token other than `stale` (after a 401): single-flight, so a burst of
    /// 401s costs one token request.
    pub async fn refresh(&self, stale: &Token) -> Result<Arc<Token>, AuthError> {
        let mut state = self.inner.state.lock().await;
        if let Some(token) = &state.current {
            // Someone else already replaced it: a burst of 401s costs one
            // request. (A fresh token is not trusted over a 401: a revoked
            // token is fresh too. Callers retry at their backoff's pace.)
            if token.generation != stale.generation {
                return Ok(token.clone());
            }
        }
        self.fetch(&mut state).await
    }

    /// The time before which a token request would be refused by our own backoff.
    pub async fn not_before(&self) -> Option<Instant> {
        self.inner.state.lock().await.not_before
    }

    async fn fetch(&self, state: &mut State) -> Result<Arc<Token>, AuthError> {
        if let (Some(not_before), Some(error)) = (state.not_before, &state.last_error) {
            if Instant::now() < not_before {
                return Err(error.clone());
            }
        }
        match self.request().await {
            Ok(reply) => {
                state.generation += 1;
                let issued_at = Instant::now();
                let token = Arc::new(Token {
                    value: Secret::new(reply.access_token),
                    generation: state.generation,
                    issued_at,
                    // Clamped: a nonsense lifetime must not overflow the clock.
                    expires_at: issued_at
                        + Duration::from_secs(reply.expires_in.clamp(1, 7 * 86_400)),
                });
                state.current = Some(token.clone());
                state.not_before = None;
                state.last_error = None;
                state.backoff.reset();
                state.rejected_said = false;
                (self.inner.observer)(AuthEvent::Obtained {
                    expires_in_secs: reply.expires_in,
                });
                self.inner.updates.send_replace(Some(token.clone()));
                Ok(token)
            }
            Err(error) => {
                let delay = match &error {
                    AuthError::Rejected { .. } => {
                        (self.inner.observer)(AuthEvent::Rejected {
                            error: &error,
                            first: !state.rejected_said,
                        });
                        state.rejected_said = true;
                        state.backoff.next_delay(None).max(state.backoff.cap())
                    }
                    other => {
                        (self.inner.observer)(AuthEvent::Failed { error: other });
                        state.backoff.next_delay(other.retry_after())
                    }
                };
                state.not_before = Some(Instant::now() + delay);
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn request(&self) -> Result<TokenReply, AuthError> {
        let response = self
            .inner
            .http
            .post(&self.inner.token_url)
            .header(reqwest::header::AUTHORIZATION, self.inner.basic.expose())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body("grant_type=client_credentials")
            .send()
            .await
            .map_err(|e| AuthError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<TokenReply>()
                .await
                .map_err(|e| AuthError::Decode(e.without_url().to_string()));
        }
        let retry_after = retry_after(response.headers());
        let body: OAuthError = response.json().await.unwrap_or_default();
        Err(match status.as_u16() {
            429 => AuthError::RateLimited { retry_after },
            code @ (400 | 401 | 403) => AuthError::Rejected {
                status: code,
                code: sanitize(&body.error),
            },
            code => AuthError::Server(code),
        })
    }

    /// Keeps a fresh token: refreshes at 75 % of each token's lifetime and
    /// retries failures at the backoff's pace, until cancelled.
    pub async fn run_refresher(self, cancel: CancellationToken) {
        loop {
            let wake = {
                let state = self.inner.state.lock().await;
                let due = state
                    .current
                    .as_ref()
                    .map_or_else(Instant::now, |t| t.refresh_at());
                due.max(state.not_before.unwrap_or(due))
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
            let mut state = self.inner.state.lock().await;
            let due = state
                .current
                .as_ref()
                .is_none_or(|t| t.refresh_at() <= Instant::now());
            if due {
                // Errors are recorded in the state (and logged); the loop
                // sleeps until `not_before` and tries again.
                let _ = self.fetch(&mut state).await;
            }
        }
    }
}

/// An OAuth error code is short and from a known set; keep only safe characters.
fn sanitize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .take(64)
        .collect()
}
