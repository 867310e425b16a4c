//! Any socket frame: classify it as the socket loop does, then derive what
//! the pipeline derives from a notification (resource key, Kafka topic,
//! dedup fingerprint). Must never panic; libFuzzer's -malloc_limit_mb
//! catches unbounded allocation.
#![no_main]

use genesys_kafka_bridge::genesys::frame::{classify, Frame};
use genesys_kafka_bridge::genesys::topic::resource;
use genesys_kafka_bridge::pipeline::dedup::Dedup;
use genesys_kafka_bridge::pipeline::route::{expand_combined, template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Binary and non-UTF-8 frames are refused before parsing, as in the bridge.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Frame::Notification(n) = classify(text) {
        let r = resource(n.topic, n.body);
        if let Some(id) = r.id {
            assert!(n.topic.contains(id) || n.body.contains(id));
        }
        let _ = template(n.topic);
        let _ = expand_combined(n.topic);
        let _ = Dedup::fingerprint(n.topic, n.body);
    }
});
