//! The pipeline stage: takes what the connection manager received, drops
//! duplicates, and turns each event and gap into an output record. It ends
//! when its input ends, after handing on everything it took, so shutdown
//! drains instead of dropping.

pub mod dedup;
pub mod fresh;
pub mod route;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::event::Inbound;
use crate::sink::Record;
use crate::telemetry::events;
use dedup::Dedup;
use fresh::{Freshness, Verdict};
use route::Router;

/// How long the pipeline remembers when each topic and resource last had
/// a notification (at least; two generations of this are kept).
pub const FRESHNESS_HORIZON: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn run(
    mut input: mpsc::Receiver<Inbound>,
    output: mpsc::Sender<Record>,
    mut dedup: Dedup,
    mut router: Router,
) {
    let mut fresh = Freshness::new(FRESHNESS_HORIZON);
    while let Some(item) = input.recv().await {
        let record = match item {
            Inbound::Event(notification) => {
                let parts = notification.parts();
                let fingerprint = Dedup::fingerprint(parts.topic, parts.body);
                let now = Instant::now();
                if !dedup.first_seen(fingerprint, now) {
                    events::duplicate_dropped();
                    continue;
                }
                let record = router.event(&notification);
                if let Some(key) = &record.key {
                    fresh.saw(parts.topic, key, notification.received_at, now);
                }
                record
            }
            Inbound::Gap(gap) => router.gap(&gap),
            Inbound::Resync(resync) => {
                match fresh.judge(&resync.topic, resync.resource.as_bytes(), resync.fetched_at) {
                    Verdict::Current => {}
                    verdict => {
                        events::resync_record_skipped(verdict == Verdict::Superseded);
                        continue;
                    }
                }
                events::resync_record(resync.kind);
                router.resync(&resync)
            }
            Inbound::ResyncDone(done) => router.resync_done(&done),
            Inbound::Checkpoint { key, value } => router.checkpoint(&key, &value),
        };
        if output.send(record).await.is_err() {
            tracing::error!("Output stage ended early; pipeline stopping.");
            return;
        }
    }
}
