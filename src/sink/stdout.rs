//! NDJSON on stdout, one line per record: `{"topic","key","headers","value"}`
//! with the value embedded as JSON. For the demo and for debugging.

use std::io::Write;
use std::time::SystemTime;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::Record;
use crate::telemetry::events;

/// NDJSON on stdout.
pub struct StdoutSink;

impl super::Sink for StdoutSink {
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        _deadline: tokio_util::sync::CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(run(input))
    }
}

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

#[derive(serde::Serialize)]
struct Line<'a> {
    topic: &'a str,
    key: Option<String>,
    headers: serde_json::Map<String, serde_json::Value>,
    value: Box<RawValue>,
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
    // The value is embedded as it came, byte for byte, when it is JSON.
    let text = String::from_utf8_lossy(&record.value);
    let value = RawValue::from_string(text.clone().into_owned()).unwrap_or_else(|_| {
        RawValue::from_string(serde_json::Value::from(text).to_string())
            .expect("a JSON string is JSON")
    });
    let line = Line {
        topic: &record.topic,
        key: record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        value,
    };
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn value_is_embedded_byte_for_byte() {
        let value = r#"{"topicName":"v2.users.x.presence","eventBody":{"z":1,"a":2}}"#;
        let record = Record {
            topic: Arc::from("genesys.users.presence"),
            key: Some(Bytes::from_static(b"x")),
            value: Bytes::from_static(value.as_bytes()),
            headers: vec![("genesys-topic", Bytes::from_static(b"v2.users.x.presence"))],
            received_at: None,
        };
        let mut out = Vec::new();
        line(&record, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.ends_with('\n'));
        assert!(text.contains(value), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("one JSON line");
        assert_eq!(parsed["key"], "x");
        assert_eq!(parsed["headers"]["genesys-topic"], "v2.users.x.presence");
    }
}
