//! NDJSON on stdout, one line per record: `{"topic","key","headers","value"}`
//! with the value embedded as JSON. For the demo and for debugging.

use std::io::Write;
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::Record;
use crate::telemetry::events;

pub async fn run(mut input: mpsc::Receiver<Record>) {
    let mut batch = Vec::with_capacity(256);
    while input.recv_many(&mut batch, 256).await > 0 {
        let mut out = Vec::with_capacity(batch.len() * 512);
        for record in &batch {
            line(record, &mut out);
        }
        let written = tokio::task::spawn_blocking(move || {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&out).and_then(|()| stdout.flush())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                let now = SystemTime::now();
                for record in batch.drain(..) {
                    if let Some(at) = record.received_at {
                        events::published(1, now.duration_since(at).ok());
                    }
                }
            }
            Ok(Err(e)) => {
                // Nowhere to write (closed pipe): nothing more can be published.
                tracing::error!(error = %e, "stdout closed; stopping the stdout sink.");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "stdout writer failed.");
                return;
            }
        }
    }
}

/// One NDJSON line for a record.
pub fn line(record: &Record, out: &mut Vec<u8>) {
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                String::from_utf8_lossy(v).into_owned().into(),
            )
        })
        .collect();
    let value: serde_json::Value = serde_json::from_slice(&record.value)
        .unwrap_or_else(|_| String::from_utf8_lossy(&record.value).into_owned().into());
    let line = serde_json::json!({
        "topic": &*record.topic,
        "key": record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers,
        "value": value,
    });
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}
