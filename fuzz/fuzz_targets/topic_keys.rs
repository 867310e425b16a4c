//! Any topic name with any body (split at the first NUL): the resource key,
//! the Kafka topic template and the expansion of combined topics. Must never
//! panic, and the key must come from the topic or the body.
#![no_main]

use genesys_kafka_bridge::genesys::topic::{is_uuid, resource};
use genesys_kafka_bridge::pipeline::route::{expand_combined, template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (topic, body) = text.split_once('\0').unwrap_or((text, ""));
    let r = resource(topic, body);
    if let Some(id) = r.id {
        assert!(topic.contains(id) || body.contains(id));
    }
    if let Some(queue) = r.queue_id {
        assert!(topic.contains(queue) || body.contains(queue));
    }
    let _ = is_uuid(topic);
    let t = template(topic);
    assert!(t.len() <= topic.len());
    for single in expand_combined(topic) {
        assert!(single.len() <= topic.len());
    }
});
