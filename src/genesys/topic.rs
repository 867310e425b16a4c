//! Genesys topic names → the resource they are about. The resource id is the
//! Kafka key, so every event of one user (or conversation, or queue) lands on
//! one partition, in order. Rules follow the table in the API notes: user
//! topics key by user, conversation topics by conversation (the same
//! conversation reaches every agent's and queue's topic), queue topics by queue,
//! and anything else by the first UUID in its name.

use serde::Deserialize;

/// What an event is about, taken from its topic name (and body where the
/// topic names a user or queue but the event is about a conversation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource<'a> {
    /// The Kafka key; `None` when the topic names no resource at all.
    pub id: Option<&'a str>,
    /// The queue a queue-conversation event came through (a header for consumers).
    pub queue_id: Option<&'a str>,
}

/// Finds the resource of one notification.
pub fn resource<'a>(topic: &'a str, body: &'a str) -> Resource<'a> {
    let mut parts = topic.split('.');
    let _v2 = parts.next();
    let family = parts.next().unwrap_or_default();
    let p2 = parts.next();
    let p3 = parts.next();
    let p4 = parts.next();
    let none = Resource {
        id: None,
        queue_id: None,
    };
    match (family, p2, p3, p4) {
        ("users", Some(user), Some(kind), _) if is_conversations(kind) => Resource {
            id: body_id(body).or(Some(user)),
            ..none
        },
        ("users", Some(user), Some(_), _) => Resource {
            id: Some(user),
            ..none
        },
        ("routing", Some("queues"), Some(queue), Some(kind)) if is_conversations(kind) => {
            Resource {
                id: body_id(body).or(Some(queue)),
                queue_id: Some(queue),
            }
        }
        ("routing", Some("queues"), Some(queue), Some(_)) => Resource {
            id: Some(queue),
            ..none
        },
        ("detail", Some("events"), Some("conversation"), Some(conversation)) => Resource {
            id: Some(conversation),
            ..none
        },
        ("analytics", Some("queues" | "conversation" | "users"), Some(id), Some(_)) => Resource {
            id: Some(id),
            ..none
        },
        _ => Resource {
            id: topic.split('.').find(|s| is_uuid(s)),
            ..none
        },
    }
}

/// `conversations`, or one of its sub-kinds (`calls`, `chats`, ...), which
/// Genesys names as `conversations` or as their own segment.
fn is_conversations(kind: &str) -> bool {
    matches!(
        kind,
        "conversations"
            | "calls"
            | "callbacks"
            | "chats"
            | "emails"
            | "messages"
            | "socialexpressions"
            | "videos"
            | "cobrowsesessions"
            | "screenshares"
    )
}

#[derive(Deserialize)]
struct BodyId<'a> {
    #[serde(borrow, default)]
    id: Option<&'a str>,
}

/// The `id` field of an event body, when it is a plain string.
fn body_id(body: &str) -> Option<&str> {
    // Genesys' event schemas list `id` first; a body that starts with it has
    // it read without parsing the rest (the body is valid JSON: the frame
    // parser checked it). Any other body is parsed.
    if let Some(rest) = body.strip_prefix(r#"{"id":""#) {
        if let Some(end) = rest.find(['"', '\\']) {
            if rest.as_bytes()[end] == b'"' {
                return Some(&rest[..end]).filter(|id| !id.is_empty());
            }
        }
    }
    serde_json::from_str::<BodyId<'_>>(body)
        .ok()
        .and_then(|b| b.id)
        .filter(|id| !id.is_empty())
}

/// Whether a topic segment is a UUID in its canonical 8-4-4-4-12 hex form.
pub fn is_uuid(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The kind of directory entity a topic template names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    User,
    Queue,
}

impl Entity {
    pub const ALL: [Entity; 2] = [Entity::User, Entity::Queue];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::Queue => "queue",
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Entity::User => "{user}",
            Entity::Queue => "{queue}",
        }
    }

    /// Where the catalogue puts this entity's id: the prefixes before it.
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            Entity::User => &["v2.users."],
            Entity::Queue => &["v2.routing.queues.", "v2.analytics.queues."],
        }
    }
}

/// A topic with one entity placeholder, such as `v2.users.{user}.presence`:
/// one topic per entity the directory selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    entity: Entity,
    /// The text before and after the placeholder.
    before: String,
    after: String,
}

impl Template {
    /// Parses a configured topic: `Ok(None)` for a literal topic (no `{`),
    /// `Ok(Some(..))` for a template, `Err` saying what is wrong otherwise.
    pub fn parse(text: &str) -> Result<Option<Template>, String> {
        let Some(open) = text.find('{') else {
            return Ok(None);
        };
        let entity = Entity::ALL
            .into_iter()
            .find(|e| text[open..].starts_with(e.placeholder()))
            .ok_or_else(|| {
                let end = text[open..].find('}').map_or(text.len(), |i| open + i + 1);
                format!(
                    "{:?} in {text:?} is not a placeholder (use {{user}} or {{queue}})",
                    &text[open..end]
                )
            })?;
        let (before, after) = (&text[..open], &text[open + entity.placeholder().len()..]);
        if after.contains(['{', '}']) || before.contains('}') {
            return Err(format!("{text:?} has more than one placeholder"));
        }
        if !entity.prefixes().contains(&before) {
            let shapes = entity
                .prefixes()
                .iter()
                .map(|p| format!("{p}{}.<kind>", entity.placeholder()))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(format!(
                "{text:?} does not match the topic catalogue: {} stands for an id in {shapes}",
                entity.placeholder()
            ));
        }
        let kinds_ok = match after.strip_prefix('?') {
            // The combined form: `v2.users.{user}?presence&routingStatus`.
            Some(kinds) => {
                entity == Entity::User
                    && kinds
                        .split('&')
                        .all(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()))
            }
            None => after.strip_prefix('.').is_some_and(|kind| {
                kind.split('.')
                    .all(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()))
            }),
        };
        if !kinds_ok {
            return Err(format!(
                "{text:?} does not match the topic catalogue: after the id comes .<kind> \
                 (e.g. .presence, .conversations.calls) or, for users, ?<kind>&<kind>"
            ));
        }
        Ok(Some(Template {
            entity,
            before: before.to_owned(),
            after: after.to_owned(),
        }))
    }

    pub fn entity(&self) -> Entity {
        self.entity
    }

    /// The topic of one entity.
    pub fn expand(&self, id: &str) -> String {
        let mut topic = String::with_capacity(self.before.len() + id.len() + self.after.len());
        topic.push_str(&self.before);
        topic.push_str(id);
        topic.push_str(&self.after);
        topic
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.before,
            self.entity.placeholder(),
            self.after
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U: &str = "7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d";
    const Q: &str = "1f2e3d4c-5b6a-4789-8abc-def012345678";
    const C: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

    fn id(topic: &str, body: &str) -> Option<String> {
        resource(topic, body).id.map(str::to_owned)
    }

    #[test]
    fn keys_follow_the_table() {
        let conv_body = format!(r#"{{"id":"{C}","participants":[]}}"#);
        let cases = [
            (format!("v2.users.{U}.presence"), "{}".to_owned(), U),
            (
                format!("v2.users.{U}.routingStatus"),
                format!(r#"{{"id":"{U}"}}"#),
                U,
            ),
            (format!("v2.users.{U}.activity"), "{}".to_owned(), U),
            (format!("v2.users.{U}.conversations"), conv_body.clone(), C),
            (
                format!("v2.users.{U}.conversations.calls"),
                conv_body.clone(),
                C,
            ),
            (format!("v2.users.{U}.chats"), conv_body.clone(), C),
            (
                format!("v2.routing.queues.{Q}.conversations"),
                conv_body.clone(),
                C,
            ),
            (
                format!("v2.routing.queues.{Q}.conversations.emails"),
                conv_body.clone(),
                C,
            ),
            (format!("v2.routing.queues.{Q}.users"), "{}".to_owned(), Q),
            (
                format!("v2.detail.events.conversation.{C}.acd.start"),
                "{}".to_owned(),
                C,
            ),
            (
                format!("v2.analytics.queues.{Q}.observations"),
                "{}".to_owned(),
                Q,
            ),
            (
                format!("v2.analytics.conversation.{C}.metrics"),
                "{}".to_owned(),
                C,
            ),
            (format!("v2.flows.{U}.outcomes"), "{}".to_owned(), U),
        ];
        for (topic, body, want) in cases {
            assert_eq!(id(&topic, &body).as_deref(), Some(want), "{topic}");
        }
        assert_eq!(
            resource(&format!("v2.routing.queues.{Q}.conversations"), &conv_body).queue_id,
            Some(Q)
        );
    }

    #[test]
    fn conversation_topic_without_body_id_falls_back_to_topic_id() {
        assert_eq!(
            id(&format!("v2.users.{U}.conversations"), "[]").as_deref(),
            Some(U)
        );
    }

    #[test]
    fn no_resource_means_no_key() {
        assert_eq!(id("v2.system.thing", "{}"), None);
    }

    #[test]
    fn uuid_check() {
        assert!(is_uuid(U));
        assert!(!is_uuid("presence"));
        assert!(!is_uuid("7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1"));
        assert!(!is_uuid("7b8e4a6cx2f0d-4b8e-9d1a-0c3e5f7a9b1d"));
    }

    /// The full parse, which the leading-`id` shortcut must agree with.
    fn body_id_parsed(body: &str) -> Option<&str> {
        serde_json::from_str::<BodyId<'_>>(body)
            .ok()
            .and_then(|b| b.id)
            .filter(|id| !id.is_empty())
    }

    #[test]
    fn leading_id_shortcut_agrees_with_the_parse() {
        for body in [
            format!(r#"{{"id":"{C}","participants":[{{"id":"p1"}}]}}"#),
            r#"{"id":"","x":1}"#.to_owned(),
            r#"{"id":"a\"b","x":1}"#.to_owned(),
            r#"{"id":"caf\u00e9"}"#.to_owned(),
            r#"{"id":12,"x":1}"#.to_owned(),
            r#"{"x":{"id":"inner"},"id":"outer"}"#.to_owned(),
            r#"{ "id" : "spaced" }"#.to_owned(),
            r#"["id"]"#.to_owned(),
        ] {
            assert_eq!(body_id(&body), body_id_parsed(&body), "{body}");
        }
    }

    proptest! {
        #[test]
        fn leading_id_shortcut_agrees_on_any_id(id in "[ -~]{0,40}", rest in "(,\"n\":[1-9][0-9]{0,4}){0,3}") {
            let body = format!(r#"{{"id":{}{rest}}}"#, serde_json::to_string(&id).unwrap());
            prop_assert_eq!(body_id(&body), body_id_parsed(&body));
        }

        #[test]
        fn never_panics(topic in ".{0,120}", body in ".{0,120}") {
            let r = resource(&topic, &body);
            if let Some(id) = r.id {
                // The key is always a slice of the topic or of the body.
                prop_assert!(topic.contains(id) || body.contains(id));
            }
        }
    }

    #[test]
    fn templates_name_an_entity_where_the_catalogue_has_its_id() {
        for (text, entity) in [
            ("v2.users.{user}.presence", Entity::User),
            ("v2.users.{user}?presence&routingStatus", Entity::User),
            ("v2.users.{user}.conversations.calls", Entity::User),
            ("v2.routing.queues.{queue}.conversations", Entity::Queue),
            ("v2.analytics.queues.{queue}.observations", Entity::Queue),
        ] {
            let t = Template::parse(text).expect(text).expect(text);
            assert_eq!(t.entity(), entity);
            assert_eq!(t.to_string(), text);
            assert_eq!(t.expand(U), text.replace("{user}", U).replace("{queue}", U));
        }
        assert_eq!(Template::parse(&format!("v2.users.{U}.presence")), Ok(None));
        for bad in [
            "v2.users.{agent}.presence",
            "v2.users.{user.presence",
            "v2.users.{queue}.presence",
            "v2.routing.queues.{user}.conversations",
            "v2.users.{user}",
            "v2.users.{user}.",
            "v2.users.{user}..presence",
            "v2.users.{user}.{user}.presence",
            "v2.routing.queues.{queue}?conversations&users",
            "v2.detail.events.conversation.{user}.acd.start",
            "v2.users.x{user}.presence",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
