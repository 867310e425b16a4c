//! Where an event goes: the Kafka topic, the key (resource id) and the
//! headers. Topic names: `<prefix>.` + the Genesys topic without its leading
//! `v2.` and without its UUID segments (`v2.users.<id>.presence` →
//! `genesys.users.presence`), unless `kafka.topic_map` maps the topic's
//! template (`v2.users.{id}.presence`) elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::event::{Gap, Notification, ResyncDone, ResyncRecord};
use crate::genesys::topic::{self, is_uuid};
use crate::sink::Record;

/// Gap records list their topics up to this many, then only count them.
const GAP_TOPICS_LISTED: usize = 50;
/// Distinct Genesys topics remembered with their Kafka topic.
const CACHE_LIMIT: usize = 100_000;

pub struct Router {
    prefix: String,
    map: BTreeMap<String, String>,
    cache: HashMap<Box<str>, Arc<str>>,
    gaps_topic: Arc<str>,
    state_topic: Arc<str>,
    /// The last channel tag seen, with its header value.
    channel: Option<(Arc<str>, Bytes)>,
}

impl Router {
    pub fn new(prefix: &str, map: BTreeMap<String, String>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            map,
            cache: HashMap::new(),
            gaps_topic: format!("{prefix}.bridge.gaps").into(),
            state_topic: crate::checkpoint::topic(prefix).into(),
            channel: None,
        }
    }

    pub fn gaps_topic(&self) -> &Arc<str> {
        &self.gaps_topic
    }

    /// The Kafka topic for a Genesys topic name.
    pub fn kafka_topic(&mut self, genesys_topic: &str) -> Arc<str> {
        if let Some(t) = self.cache.get(genesys_topic) {
            return t.clone();
        }
        let name: Arc<str> = match self.map.get(&template(genesys_topic)) {
            Some(mapped) => mapped.as_str().into(),
            None => default_topic(&self.prefix, genesys_topic).into(),
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(genesys_topic.into(), name.clone());
        name
    }

    /// The record for one (deduplicated) notification. Its value and the
    /// headers cut from the frame share the frame's buffer: nothing copied.
    pub fn event(&mut self, notification: &Notification) -> Record {
        let raw = notification.raw();
        let frame = notification.parts();
        let resource = topic::resource(frame.topic, frame.body);
        let cut = |part: &str| slice_of(&raw, part);
        let mut headers = Vec::with_capacity(6);
        headers.push(("genesys-topic", cut(frame.topic)));
        if let Some(c) = frame.correlation_id {
            headers.push(("genesys-correlation-id", cut(c)));
        }
        headers.push(("bridge-channel", self.channel_header(&notification.channel)));
        if let Some(id) = resource.id {
            headers.push(("genesys-resource-id", cut(id)));
        }
        if let Some(q) = resource.queue_id {
            headers.push(("genesys-queue-id", cut(q)));
        }
        headers.push((
            "bridge-received-at",
            Bytes::from(epoch_ms(notification.received_at).to_string()),
        ));
        headers.push(("bridge-source", Bytes::from_static(b"notification")));
        Record {
            topic: self.kafka_topic(frame.topic),
            key: resource.id.map(cut),
            value: raw,
            headers,
            received_at: Some(notification.received_at),
        }
    }

    /// The channel's tag as a header value, made once per channel.
    fn channel_header(&mut self, channel: &Arc<str>) -> Bytes {
        match &self.channel {
            Some((id, bytes)) if Arc::ptr_eq(id, channel) || **id == **channel => bytes.clone(),
            _ => {
                let bytes = Bytes::copy_from_slice(channel.as_bytes());
                self.channel = Some((channel.clone(), bytes.clone()));
                bytes
            }
        }
    }

    /// The marker record for a gap.
    pub fn gap(&self, gap: &Gap) -> Record {
        let duration_ms = gap
            .ended_at
            .duration_since(gap.started_at)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut value = serde_json::json!({
            "type": "gap",
            "gap_id": &*gap.id,
            "started_at": humantime::format_rfc3339_millis(gap.started_at).to_string(),
            "ended_at": humantime::format_rfc3339_millis(gap.ended_at).to_string(),
            "duration_ms": duration_ms,
            "reason": gap.reason.as_str(),
            "topic_count": gap.topics.len(),
        });
        if gap.topics.len() <= GAP_TOPICS_LISTED {
            value["topics"] = serde_json::json!(&*gap.topics);
        }
        self.gaps_record(&value, gap.ended_at)
    }

    /// A record of the gaps topic (markers, and the ends of resyncs).
    fn gaps_record(&self, value: &serde_json::Value, at: SystemTime) -> Record {
        Record {
            topic: self.gaps_topic.clone(),
            key: None,
            value: Bytes::from(value.to_string()),
            headers: vec![("bridge-received-at", Bytes::from(epoch_ms(at).to_string()))],
            received_at: None,
        }
    }
}

impl Router {
    /// The record of a resync: the notification's topic and key, its own
    /// value, and headers saying where it comes from.
    pub fn resync(&mut self, resync: &ResyncRecord) -> Record {
        let mut headers = Vec::with_capacity(6);
        headers.push((
            "genesys-topic",
            Bytes::copy_from_slice(resync.topic.as_bytes()),
        ));
        headers.push((
            "genesys-resource-id",
            Bytes::copy_from_slice(resync.resource.as_bytes()),
        ));
        if let Some(q) = &resync.queue_id {
            headers.push(("genesys-queue-id", Bytes::copy_from_slice(q.as_bytes())));
        }
        headers.push((
            "bridge-received-at",
            Bytes::from(epoch_ms(resync.fetched_at).to_string()),
        ));
        headers.push(("bridge-source", Bytes::from_static(b"resync")));
        headers.push((
            "bridge-resync-of",
            Bytes::copy_from_slice(resync.resync_of.as_bytes()),
        ));
        Record {
            topic: self.kafka_topic(&resync.topic),
            key: Some(Bytes::copy_from_slice(resync.resource.as_bytes())),
            value: resync.value.clone(),
            headers,
            received_at: None,
        }
    }

    /// The checkpoint record (compacted topic, keyed).
    pub fn checkpoint(&self, key: &Arc<str>, value: &Bytes) -> Record {
        Record {
            topic: self.state_topic.clone(),
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: value.clone(),
            headers: Vec::new(),
            received_at: None,
        }
    }

    pub fn state_topic(&self) -> &Arc<str> {
        &self.state_topic
    }

    /// The record that ends a resync, on the gaps topic.
    pub fn resync_done(&self, done: &ResyncDone) -> Record {
        let value = serde_json::json!({
            "type": "resync",
            "gap_id": &*done.resync_of,
            "status": if done.complete { "complete" } else { "partial" },
            "resources": done.resources,
            "finished_at": humantime::format_rfc3339_millis(done.finished_at).to_string(),
        });
        self.gaps_record(&value, done.finished_at)
    }
}

/// `part` of `raw` as a `Bytes` sharing its buffer (a copy if it is not a
/// slice of it).
fn slice_of(raw: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
    if start <= raw.len() && part.len() <= raw.len() - start {
        raw.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part.as_bytes())
    }
}

/// The topic with every UUID segment replaced by `{id}`.
pub fn template(topic: &str) -> String {
    topic
        .split('.')
        .map(|s| if is_uuid(s) { "{id}" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

fn default_topic(prefix: &str, topic: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + topic.len());
    name.push_str(prefix);
    for segment in topic.strip_prefix("v2.").unwrap_or(topic).split('.') {
        if is_uuid(segment) || segment.is_empty() {
            continue;
        }
        name.push('.');
        // Kafka allows [a-zA-Z0-9._-]; anything else becomes '_'.
        name.extend(segment.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        }));
    }
    name.truncate(249);
    name
}

/// The individual topics a combined topic (`v2.users.<id>?presence&routingStatus`) stands for.
pub fn expand_combined(topic: &str) -> Vec<String> {
    match topic.split_once('?') {
        Some((base, kinds)) => kinds
            .split('&')
            .filter(|k| !k.is_empty())
            .map(|k| format!("{base}.{k}"))
            .collect(),
        None => vec![topic.to_owned()],
    }
}

pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d";

    #[test]
    fn default_names_drop_v2_and_ids() {
        let mut r = Router::new("genesys", BTreeMap::new());
        assert_eq!(
            &*r.kafka_topic(&format!("v2.users.{U}.presence")),
            "genesys.users.presence"
        );
        assert_eq!(
            &*r.kafka_topic(&format!("v2.routing.queues.{U}.conversations")),
            "genesys.routing.queues.conversations"
        );
        assert_eq!(
            &*r.kafka_topic(&format!("v2.detail.events.conversation.{U}.acd.start")),
            "genesys.detail.events.conversation.acd.start"
        );
        assert_eq!(&*r.kafka_topic("v2.odd.t$pic"), "genesys.odd.t_pic");
    }

    #[test]
    fn topic_map_overrides_by_template() {
        let map = BTreeMap::from([("v2.users.{id}.presence".to_owned(), "presence".to_owned())]);
        let mut r = Router::new("genesys", map);
        assert_eq!(
            &*r.kafka_topic(&format!("v2.users.{U}.presence")),
            "presence"
        );
        assert_eq!(
            &*r.kafka_topic(&format!("v2.users.{U}.routingStatus")),
            "genesys.users.routingStatus"
        );
    }

    #[test]
    fn combined_topics_expand() {
        assert_eq!(
            expand_combined("v2.users.x?presence&routingStatus"),
            ["v2.users.x.presence", "v2.users.x.routingStatus"]
        );
        assert_eq!(
            expand_combined("v2.users.x.presence"),
            ["v2.users.x.presence"]
        );
    }
}
