//! Fault vocabulary shared by the library API and the HTTP control API: which
//! sockets a fault hits ([`Target`]), which requests fail and how
//! ([`RequestKind`], [`Failure`], `FailPlan`) and which broken frames can be
//! sent ([`Malformed`]). The faults themselves are carried out by the state
//! and socket modules.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Which sockets or channels a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every open socket (or, for channel faults, every live channel).
    All,
    /// The socket of one channel, or that channel itself.
    Channel(String),
}

impl Target {
    /// Shorthand for `Target::Channel(id.into())`.
    pub fn channel(id: impl Into<String>) -> Self {
        Target::Channel(id.into())
    }

    pub(crate) fn matches(&self, channel_id: &str) -> bool {
        match self {
            Target::All => true,
            Target::Channel(id) => id == channel_id,
        }
    }
}

/// The kinds of request the emulator serves; used by the request log and to
/// aim injected failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `POST /oauth/token`.
    Token,
    /// `POST /api/v2/notifications/channels`.
    CreateChannel,
    /// `GET /api/v2/notifications/channels`.
    ListChannels,
    /// `HEAD /api/v2/notifications/channels/{id}`.
    HeadChannel,
    /// Any method on `/api/v2/notifications/channels/{id}/subscriptions`.
    Subscriptions,
    /// `GET /api/v2/notifications/availabletopics`.
    AvailableTopics,
    /// `GET /channels/{id}` (the WebSocket upgrade).
    WebsocketConnect,
    /// The directory: `GET /api/v2/users`, `GET /api/v2/routing/queues`,
    /// `GET /api/v2/routing/queues/{id}/members`.
    Directory,
    /// The current state a client reads after a gap:
    /// `GET /api/v2/users/presences/purecloud/bulk`,
    /// `GET /api/v2/users/{id}/presences/purecloud`,
    /// `GET /api/v2/users/{id}/routingstatus`,
    /// `POST /api/v2/analytics/conversations/details/query`.
    State,
    /// `/_emulator/...` (never failed on purpose).
    Control,
    /// Anything else.
    Other,
    /// Only for `Emulator::fail_next`: matches every kind but `Control`.
    Any,
}

impl RequestKind {
    /// Classifies a request by method and path (query excluded).
    pub fn classify(method: &str, path: &str) -> RequestKind {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (_, ["", "_emulator", ..]) => RequestKind::Control,
            ("POST", ["", "oauth", "token"]) => RequestKind::Token,
            ("POST", ["", "api", "v2", "notifications", "channels"]) => RequestKind::CreateChannel,
            ("GET", ["", "api", "v2", "notifications", "channels"]) => RequestKind::ListChannels,
            ("HEAD", ["", "api", "v2", "notifications", "channels", _]) => RequestKind::HeadChannel,
            (_, ["", "api", "v2", "notifications", "channels", _, "subscriptions"]) => {
                RequestKind::Subscriptions
            }
            ("GET", ["", "api", "v2", "notifications", "availabletopics"]) => {
                RequestKind::AvailableTopics
            }
            ("GET", ["", "channels", _]) => RequestKind::WebsocketConnect,
            ("GET", ["", "api", "v2", "users"])
            | ("GET", ["", "api", "v2", "routing", "queues"])
            | ("GET", ["", "api", "v2", "routing", "queues", _, "members"]) => {
                RequestKind::Directory
            }
            ("GET", ["", "api", "v2", "users", "presences", "purecloud", "bulk"])
            | ("GET", ["", "api", "v2", "users", _, "presences", "purecloud"])
            | ("GET", ["", "api", "v2", "users", _, "routingstatus"])
            | ("POST", ["", "api", "v2", "analytics", "conversations", "details", "query"]) => {
                RequestKind::State
            }
            _ => RequestKind::Other,
        }
    }
}

/// How an injected failure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// 429 with `Retry-After: <seconds>` and code `too.many.requests`.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// A 5xx status (500, 502, 503 ...).
    Status {
        /// The HTTP status to answer with.
        status: u16,
    },
    /// The request is served as usual, but its reply leaves `delay_ms`
    /// later: it carries the state of its arrival while the state moves on
    /// (a fetch in flight while a newer event is published).
    SlowReply {
        /// How long the reply is held.
        delay_ms: u64,
    },
}

/// One kind's planned failures.
#[derive(Debug, Clone, Copy)]
struct Planned {
    /// Matching requests still to pass before the failures start.
    skip: u32,
    /// Failures still to answer.
    left: u32,
    failure: Failure,
}

/// Pending injected failures: per kind, how many of the next requests pass,
/// how many then fail, and how.
#[derive(Debug, Default)]
pub(crate) struct FailPlan {
    /// Per kind, plans in the order they apply.
    pending: HashMap<RequestKind, VecDeque<Planned>>,
}

impl FailPlan {
    /// Replaces the plan of `kind`; `n = 0` cancels it.
    pub(crate) fn add(&mut self, kind: RequestKind, skip: u32, n: u32, failure: Failure) {
        self.pending.remove(&kind);
        self.then(kind, skip, n, failure);
    }

    /// Appends a plan to `kind`'s: it starts once the earlier ones are done.
    pub(crate) fn then(&mut self, kind: RequestKind, skip: u32, n: u32, failure: Failure) {
        if n > 0 {
            self.pending.entry(kind).or_default().push_back(Planned {
                skip,
                left: n,
                failure,
            });
        }
    }

    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }

    /// Takes one failure for a request of `kind`, the kind's own plan first,
    /// then `Any`. A plan that is still skipping counts the request as one
    /// that passed and lets the next plan judge it.
    pub(crate) fn take(&mut self, kind: RequestKind) -> Option<Failure> {
        if kind == RequestKind::Control {
            return None;
        }
        for key in [kind, RequestKind::Any] {
            let Some(plans) = self.pending.get_mut(&key) else {
                continue;
            };
            let Some(p) = plans.front_mut() else {
                continue;
            };
            if p.skip > 0 {
                p.skip -= 1;
                continue;
            }
            let failure = p.failure;
            p.left -= 1;
            if p.left == 0 {
                plans.pop_front();
                if plans.is_empty() {
                    self.pending.remove(&key);
                }
            }
            return Some(failure);
        }
        None
    }
}

/// Broken frames that can be written to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Malformed {
    /// A text frame that is not JSON.
    InvalidJson,
    /// A binary frame holding a valid notification.
    Binary,
    /// A text frame of about `bytes` bytes: a valid notification padded.
    Huge {
        /// Target frame size in bytes.
        bytes: usize,
    },
    /// A valid notification on a topic no catalogue has.
    UnknownTopic,
    /// A binary frame whose bytes are not UTF-8 (text frames cannot be).
    InvalidUtf8,
    /// The first half of a valid notification, as a text frame.
    TruncatedJson,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_paths() {
        use RequestKind::*;
        assert_eq!(RequestKind::classify("POST", "/oauth/token"), Token);
        assert_eq!(
            RequestKind::classify("POST", "/api/v2/notifications/channels"),
            CreateChannel
        );
        assert_eq!(
            RequestKind::classify("GET", "/api/v2/notifications/channels"),
            ListChannels
        );
        assert_eq!(
            RequestKind::classify("HEAD", "/api/v2/notifications/channels/x"),
            HeadChannel
        );
        assert_eq!(
            RequestKind::classify("PUT", "/api/v2/notifications/channels/x/subscriptions"),
            Subscriptions
        );
        assert_eq!(
            RequestKind::classify("GET", "/api/v2/notifications/availabletopics"),
            AvailableTopics
        );
        assert_eq!(
            RequestKind::classify("GET", "/channels/x"),
            WebsocketConnect
        );
        assert_eq!(RequestKind::classify("POST", "/_emulator/rate"), Control);
        assert_eq!(RequestKind::classify("GET", "/api/v2/users/me"), Other);
        assert_eq!(RequestKind::classify("GET", "/api/v2/users"), Directory);
        assert_eq!(
            RequestKind::classify("GET", "/api/v2/routing/queues/"),
            Directory
        );
        assert_eq!(
            RequestKind::classify("GET", "/api/v2/routing/queues/q/members"),
            Directory
        );
        assert_eq!(RequestKind::classify("POST", "/api/v2/users"), Other);
        for (m, p) in [
            ("GET", "/api/v2/users/presences/purecloud/bulk"),
            ("GET", "/api/v2/users/u1/presences/purecloud"),
            ("GET", "/api/v2/users/u1/routingstatus"),
            ("POST", "/api/v2/analytics/conversations/details/query"),
        ] {
            assert_eq!(RequestKind::classify(m, p), State, "{m} {p}");
        }
    }

    #[test]
    fn fail_plan_counts_down_and_prefers_the_kind() {
        let mut plan = FailPlan::default();
        plan.add(RequestKind::Token, 0, 2, Failure::Status { status: 503 });
        plan.add(
            RequestKind::Any,
            0,
            1,
            Failure::TooManyRequests {
                retry_after_secs: 1,
            },
        );
        assert_eq!(
            plan.take(RequestKind::Token),
            Some(Failure::Status { status: 503 })
        );
        assert_eq!(
            plan.take(RequestKind::Token),
            Some(Failure::Status { status: 503 })
        );
        assert!(matches!(
            plan.take(RequestKind::Token),
            Some(Failure::TooManyRequests { .. })
        ));
        assert_eq!(plan.take(RequestKind::Token), None);
        plan.add(RequestKind::Any, 0, 5, Failure::Status { status: 500 });
        assert_eq!(plan.take(RequestKind::Control), None);
    }

    #[test]
    fn fail_plan_skips_first() {
        let mut plan = FailPlan::default();
        let f = Failure::Status { status: 500 };
        plan.add(RequestKind::Directory, 2, 1, f);
        assert_eq!(plan.take(RequestKind::Directory), None);
        assert_eq!(plan.take(RequestKind::Token), None);
        assert_eq!(plan.take(RequestKind::Directory), None);
        assert_eq!(plan.take(RequestKind::Directory), Some(f));
        assert_eq!(plan.take(RequestKind::Directory), None);
    }
}
