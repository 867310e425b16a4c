//! The pipeline stage: takes what the connection manager received, drops
//! duplicates, and turns each event and gap into an output record. It ends
//! when its input ends, after handing on everything it took, so shutdown
//! drains instead of dropping.

pub mod dedup;
pub mod route;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::event::Inbound;
use crate::sink::Record;
use crate::telemetry::events;
use dedup::Dedup;
use route::Router;

pub async fn run(
    mut input: mpsc::Receiver<Inbound>,
    output: mpsc::Sender<Record>,
    mut dedup: Dedup,
    mut router: Router,
) {
    while let Some(item) = input.recv().await {
        let record = match item {
            Inbound::Event(notification) => {
                let parts = notification.parts();
                let fingerprint = Dedup::fingerprint(parts.topic, parts.body);
                if !dedup.first_seen(fingerprint, Instant::now()) {
                    events::duplicate_dropped();
                    continue;
                }
                router.event(&notification)
            }
            Inbound::Gap(gap) => router.gap(&gap),
        };
        if output.send(record).await.is_err() {
            tracing::error!("Output stage ended early; pipeline stopping.");
            return;
        }
    }
}
