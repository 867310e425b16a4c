//! The topic catalogue (`GET /api/v2/notifications/availabletopics`) and the
//! rules for topic strings: matching a name against the templates (`{id}`
//! stands for one dot-free segment), expanding the combined form
//! `v2.users.<id>?presence&routingStatus`, and the forbidden-topic globs.
//!
//! Body shapes live in `bodies`; this module only says which kind of body a
//! template gets.

use serde_json::{json, Map, Value};

/// Media sub-kind of a conversation topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Media {
    /// `...conversations`: any media.
    Any,
    Calls,
    Callbacks,
    Chats,
    Emails,
    Messages,
}

/// Detail event kinds (`v2.detail.events.conversation.{id}.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    AcdStart,
    AcdEnd,
    Acw,
    Attributes,
    CustomerStart,
    CustomerEnd,
    FlowStart,
    FlowEnd,
    Outbound,
    UserStart,
    UserEnd,
    VoicemailStart,
    VoicemailEnd,
}

/// Which body a topic carries; `bodies` builds one per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Presence,
    RoutingStatus,
    Activity,
    UserConversation(Media),
    QueueConversation(Media),
    QueueMember,
    Detail(Detail),
    QueueObservations,
    ConversationMetrics,
    /// System topics: sent by the server, never subscribed.
    System,
}

/// One catalogue entry.
#[derive(Debug)]
pub(crate) struct Template {
    pub id: &'static str,
    pub kind: BodyKind,
    pub description: &'static str,
    pub permissions: &'static [&'static str],
    pub transports: &'static [&'static str],
    /// SDK model the body deserializes into (documentation and schema id).
    pub model: &'static str,
}

const ALL: &[&str] = &["All"];
const WS_EB: &[&str] = &["Websocket", "EventBridge"];
const WS: &[&str] = &["Websocket"];

macro_rules! t {
    ($id:expr, $kind:expr, $desc:expr, $perms:expr, $tr:expr, $model:expr) => {
        Template {
            id: $id,
            kind: $kind,
            description: $desc,
            permissions: $perms,
            transports: $tr,
            model: $model,
        }
    };
}

use BodyKind as K;
use Detail as D;
use Media as M;

const CONV_PERM: &[&str] = &["conversation:communication:view"];
const QCONV_PERM: &[&str] = &["routing:queue:view", "conversation:communication:view"];
const DETAIL_PERM: &[&str] = &["analytics:conversationDetail:view"];
const USER_CONV: &str = "ConversationEventTopicConversation";
const QUEUE_CONV: &str = "QueueConversationEventTopicConversation";

/// The catalogue. Order is the order of the availabletopics reply.
pub(crate) static CATALOGUE: &[Template] = &[
    t!(
        "v2.users.{id}.presence",
        K::Presence,
        "Presence changes of a user.",
        &[],
        ALL,
        "PresenceEventUserPresence"
    ),
    t!(
        "v2.users.{id}.routingStatus",
        K::RoutingStatus,
        "Routing status changes of a user.",
        &[],
        ALL,
        "UserRoutingStatusUserRoutingStatus"
    ),
    t!(
        "v2.users.{id}.activity",
        K::Activity,
        "Presence, routing status and queue activity of a user.",
        &["routing:queue:view"],
        ALL,
        "AgentActivityChangedTopicAgentActivity"
    ),
    t!(
        "v2.users.{id}.conversations",
        K::UserConversation(M::Any),
        "Conversations of a user, all media.",
        CONV_PERM,
        ALL,
        USER_CONV
    ),
    t!(
        "v2.users.{id}.conversations.calls",
        K::UserConversation(M::Calls),
        "Call conversations of a user.",
        CONV_PERM,
        ALL,
        USER_CONV
    ),
    t!(
        "v2.users.{id}.conversations.callbacks",
        K::UserConversation(M::Callbacks),
        "Callback conversations of a user.",
        CONV_PERM,
        ALL,
        USER_CONV
    ),
    t!(
        "v2.users.{id}.conversations.chats",
        K::UserConversation(M::Chats),
        "Chat conversations of a user.",
        CONV_PERM,
        ALL,
        USER_CONV
    ),
    t!(
        "v2.users.{id}.conversations.emails",
        K::UserConversation(M::Emails),
        "Email conversations of a user.",
        CONV_PERM,
        ALL,
        USER_CONV
    ),
    t!(
        "v2.users.{id}.conversations.messages",
        K::UserConversation(M::Messages),
        "Message conversations of a user.",
        CONV_PERM,
        ALL,
        USER_CONV
    ),
    t!(
        "v2.routing.queues.{id}.conversations",
        K::QueueConversation(M::Any),
        "Conversations in a queue, all media.",
        QCONV_PERM,
        ALL,
        QUEUE_CONV
    ),
    t!(
        "v2.routing.queues.{id}.conversations.calls",
        K::QueueConversation(M::Calls),
        "Call conversations in a queue.",
        QCONV_PERM,
        ALL,
        QUEUE_CONV
    ),
    t!(
        "v2.routing.queues.{id}.conversations.callbacks",
        K::QueueConversation(M::Callbacks),
        "Callback conversations in a queue.",
        QCONV_PERM,
        ALL,
        QUEUE_CONV
    ),
    t!(
        "v2.routing.queues.{id}.conversations.chats",
        K::QueueConversation(M::Chats),
        "Chat conversations in a queue.",
        QCONV_PERM,
        ALL,
        QUEUE_CONV
    ),
    t!(
        "v2.routing.queues.{id}.conversations.emails",
        K::QueueConversation(M::Emails),
        "Email conversations in a queue.",
        QCONV_PERM,
        ALL,
        QUEUE_CONV
    ),
    t!(
        "v2.routing.queues.{id}.conversations.messages",
        K::QueueConversation(M::Messages),
        "Message conversations in a queue.",
        QCONV_PERM,
        ALL,
        QUEUE_CONV
    ),
    t!(
        "v2.routing.queues.{id}.users",
        K::QueueMember,
        "Members joining or leaving a queue.",
        &["routing:queueMember:view"],
        ALL,
        "QueueUserEventTopicQueueMember"
    ),
    t!(
        "v2.detail.events.conversation.{id}.acd.start",
        K::Detail(D::AcdStart),
        "A conversation entered ACD.",
        DETAIL_PERM,
        WS_EB,
        "AcdStartDetailEventTopicAcdStartEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.acd.end",
        K::Detail(D::AcdEnd),
        "A conversation left ACD.",
        DETAIL_PERM,
        WS_EB,
        "AcdEndDetailEventTopicAcdEndEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.acw",
        K::Detail(D::Acw),
        "After-call work ended.",
        DETAIL_PERM,
        WS_EB,
        "AcwDetailEventTopicAfterCallWorkEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.attributes",
        K::Detail(D::Attributes),
        "Participant attributes changed.",
        DETAIL_PERM,
        WS_EB,
        "AttributeDetailEventTopicAttributeUpdateEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.customer.start",
        K::Detail(D::CustomerStart),
        "A customer joined a conversation.",
        DETAIL_PERM,
        WS_EB,
        "CustomerStartDetailEventTopicCustomerStartEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.customer.end",
        K::Detail(D::CustomerEnd),
        "A customer left a conversation.",
        DETAIL_PERM,
        WS_EB,
        "CustomerEndDetailEventTopicCustomerEndEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.flow.start",
        K::Detail(D::FlowStart),
        "A flow started.",
        DETAIL_PERM,
        WS_EB,
        "FlowStartDetailEventTopicFlowStartEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.flow.end",
        K::Detail(D::FlowEnd),
        "A flow ended.",
        DETAIL_PERM,
        WS_EB,
        "FlowEndDetailEventTopicFlowEndEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.outbound",
        K::Detail(D::Outbound),
        "An outbound conversation started.",
        DETAIL_PERM,
        WS_EB,
        "OutboundDetailEventTopicOutboundInitEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.user.start",
        K::Detail(D::UserStart),
        "A user joined a conversation.",
        DETAIL_PERM,
        WS_EB,
        "UserStartDetailEventTopicUserStartEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.user.end",
        K::Detail(D::UserEnd),
        "A user left a conversation.",
        DETAIL_PERM,
        WS_EB,
        "UserEndDetailEventTopicUserEndEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.voicemail.start",
        K::Detail(D::VoicemailStart),
        "A voicemail started.",
        DETAIL_PERM,
        WS_EB,
        "VoicemailStartDetailEventTopicVoicemailStartEvent"
    ),
    t!(
        "v2.detail.events.conversation.{id}.voicemail.end",
        K::Detail(D::VoicemailEnd),
        "A voicemail ended.",
        DETAIL_PERM,
        WS_EB,
        "VoicemailEndDetailEventTopicVoicemailEndEvent"
    ),
    t!(
        "v2.analytics.queues.{id}.observations",
        K::QueueObservations,
        "Real-time observations of a queue.",
        &["analytics:queueObservation:view"],
        ALL,
        "QueueObservationDataContainer"
    ),
    t!(
        "v2.analytics.conversation.{id}.metrics",
        K::ConversationMetrics,
        "Metrics of a conversation as they are computed.",
        &["analytics:conversationAggregate:view"],
        ALL,
        "ConversationMetricsTopicConversationMetricRecord"
    ),
    t!(
        "v2.system.socket_closing",
        K::System,
        "The server will close this socket in about a minute.",
        &[],
        WS,
        "SystemMessageSystemMessage"
    ),
    t!(
        "v2.system.no_longer_subscribed.{id}",
        K::System,
        "Topics of this channel moved to another channel.",
        &[],
        WS,
        "SystemMessageSystemMessage"
    ),
    t!(
        "v2.system.token_revoked.{id}",
        K::System,
        "The token of this channel was revoked.",
        &[],
        WS,
        "SystemMessageSystemMessage"
    ),
];

/// Number of `{id}` parameters in a template id.
fn params(template: &str) -> usize {
    template.matches("{id}").count()
}

/// A segment that can stand for `{id}`.
fn valid_id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ':' || c == '@')
}

/// The template a single topic name matches, and the ids it carries.
pub(crate) fn match_topic(topic: &str) -> Option<(&'static Template, Vec<String>)> {
    // Called for every generated event: compare segments in place and
    // allocate only for the match.
    let n = topic.split('.').count();
    'templates: for t in CATALOGUE {
        if t.id.split('.').count() != n {
            continue;
        }
        for (tp, p) in t.id.split('.').zip(topic.split('.')) {
            let fits = if tp == "{id}" {
                valid_id_segment(p)
            } else {
                tp == p
            };
            if !fits {
                continue 'templates;
            }
        }
        let ids =
            t.id.split('.')
                .zip(topic.split('.'))
                .filter(|(tp, _)| *tp == "{id}")
                .map(|(_, p)| p.to_owned())
                .collect();
        return Some((t, ids));
    }
    None
}

/// A subscribable single topic: matches a template that is not a system one.
pub(crate) fn is_subscribable(topic: &str) -> bool {
    matches!(match_topic(topic), Some((t, _)) if t.kind != BodyKind::System)
}

/// Expands a topic string: a plain one to itself, a combined one
/// (`prefix?a&b`) to `prefix.a`, `prefix.b`. `None` when the form is broken.
pub(crate) fn expand(topic: &str) -> Option<Vec<String>> {
    match topic.split_once('?') {
        None => Some(vec![topic.to_owned()]),
        Some((prefix, rest)) => {
            if prefix.is_empty() || rest.is_empty() || rest.contains('?') {
                return None;
            }
            let mut out = Vec::new();
            for part in rest.split('&') {
                if part.is_empty() {
                    return None;
                }
                let full = format!("{prefix}.{part}");
                if !out.contains(&full) {
                    out.push(full);
                }
            }
            Some(out)
        }
    }
}

/// Glob match where `*` matches any run of characters.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// One entry of the availabletopics reply, with only the expanded fields.
pub(crate) fn available_topic(
    t: &Template,
    expand: &[String],
    schema: impl Fn() -> Value,
) -> Value {
    let has = |f: &str| expand.iter().any(|e| e.eq_ignore_ascii_case(f));
    let mut m = Map::new();
    m.insert("id".into(), json!(t.id));
    if has("description") {
        m.insert("description".into(), json!(t.description));
    }
    if has("requiresPermissions") {
        m.insert("requiresPermissions".into(), json!(t.permissions));
        let details = if t.permissions.is_empty() {
            json!([])
        } else {
            json!([{
                "type": "requiresPermissions",
                "permissions": t.permissions,
                "allowsCurrentUser": false,
                "enforced": true,
            }])
        };
        m.insert("permissionDetails".into(), details);
        m.insert("requiresDivisionPermissions".into(), json!(false));
        m.insert("requiresAnyValidator".into(), json!(false));
        m.insert("enforced".into(), json!(!t.permissions.is_empty()));
        m.insert(
            "requiresCurrentUser".into(),
            json!(t.id.starts_with("v2.users.") && t.permissions.is_empty()),
        );
        m.insert("requiresCurrentUserOrPermission".into(), json!(false));
    }
    if has("schema") {
        m.insert("schema".into(), schema());
    }
    if has("transports") {
        m.insert("transports".into(), json!(t.transports));
    }
    if has("topicParameters") {
        m.insert("topicParameters".into(), json!(vec!["id"; params(t.id)]));
    }
    if has("publicApiTemplateUriPaths") {
        m.insert("publicApiTemplateUriPaths".into(), json!([]));
    }
    m.insert("visibility".into(), json!("Public"));
    Value::Object(m)
}

/// A small JSON schema listing the top-level fields of a sample body.
pub(crate) fn schema_of(t: &Template, sample: &Value) -> Value {
    let mut props = Map::new();
    if let Value::Object(o) = sample {
        for (k, v) in o {
            let ty = match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_f64() => "number",
                Value::Number(_) => "integer",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            props.insert(k.clone(), json!({ "type": ty }));
        }
    }
    json!({
        "id": format!("urn:jsonschema:com:inin:emulator:{}", t.model),
        "type": "object",
        "title": t.model,
        "properties": props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_templates_and_extracts_ids() {
        let (t, ids) = match_topic("v2.users.abc-1.presence").expect("presence");
        assert_eq!(t.id, "v2.users.{id}.presence");
        assert_eq!(ids, vec!["abc-1".to_string()]);
        let (t, _) = match_topic("v2.detail.events.conversation.c1.acd.start").expect("detail");
        assert_eq!(t.kind, BodyKind::Detail(Detail::AcdStart));
        assert!(match_topic("v2.users.abc.nothing").is_none());
        assert!(match_topic("v2.users..presence").is_none());
        assert!(!is_subscribable("v2.system.socket_closing"));
        assert!(is_subscribable("v2.routing.queues.q.conversations.calls"));
    }

    #[test]
    fn expands_combined_topics() {
        assert_eq!(
            expand("v2.users.u?presence&routingStatus"),
            Some(vec![
                "v2.users.u.presence".to_string(),
                "v2.users.u.routingStatus".to_string()
            ])
        );
        assert_eq!(expand("v2.users.u.presence").map(|v| v.len()), Some(1));
        assert_eq!(expand("v2.users.u?"), None);
        assert_eq!(expand("v2.users.u?a&&b"), None);
    }

    #[test]
    fn glob_matches() {
        assert!(glob("v2.*.forbidden-*", "v2.users.forbidden-1.presence"));
        assert!(!glob("v2.*.forbidden-*", "v2.users.u1.presence"));
        assert!(glob("*", "x"));
        assert!(glob("v2.users.u.presence", "v2.users.u.presence"));
        assert!(!glob("v2.users.u", "v2.users.u.presence"));
    }

    #[test]
    fn catalogue_ids_are_unique() {
        let mut ids: Vec<_> = CATALOGUE.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CATALOGUE.len());
    }
}
