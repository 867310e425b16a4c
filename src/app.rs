//! Builds the stages and owns shutdown. Data flows one way:
//! connection manager → pipeline → sink, through bounded channels. Shutdown
//! is one token: the connection manager stops taking frames and closes its
//! sockets; the pipeline and the sink end when their inputs end, so what was
//! received is drained and flushed, within `shutdown_grace`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint;
use crate::config::{Settings, SinkKind};
use crate::connection;
use crate::directory::{Directory, Entities};
use crate::pipeline::{self, dedup::Dedup, route};
use crate::resync::Resync;
use crate::sink;

/// The Kafka topics the configured Genesys topics (and templates, whose
/// topics all map alike) map to, plus the gap topic.
pub fn kafka_topics(settings: &Settings) -> Vec<String> {
    let mut router = route::Router::new(
        &settings.kafka.topic_prefix,
        settings.kafka.topic_map.clone(),
    );
    let mut names: BTreeSet<String> = settings
        .genesys
        .topics
        .iter()
        .cloned()
        .chain(
            settings
                .genesys
                .templates
                .iter()
                .map(|t| t.expand("00000000-0000-0000-0000-000000000000")),
        )
        .flat_map(|t| route::expand_combined(&t))
        .map(|t| router.kafka_topic(&t).to_string())
        .collect();
    names.insert(router.gaps_topic().to_string());
    names.into_iter().collect()
}

/// Runs the bridge until `shutdown` is cancelled, then drains and returns.
/// An admin listener, if any, is passed in already bound.
pub async fn run(
    settings: Settings,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Every task the bridge starts, so that none outlives `run`.
    let tasks = TaskTracker::new();
    let admin_cancel = CancellationToken::new();
    if let Some(listener) = admin {
        tasks.spawn(crate::admin::serve(listener, admin_cancel.clone()));
    }

    let capacity = settings.pipeline.channel_capacity;
    let (inbound_tx, inbound_rx) = mpsc::channel(capacity);
    let (records_tx, records_rx) = mpsc::channel(capacity);
    let sink_deadline = CancellationToken::new();

    // The topics consumers read, and the bridge's own state record.
    let mut topics = kafka_topics(&settings);
    topics.push(checkpoint::topic(&settings.kafka.topic_prefix));
    let sink = match sink::open(&settings, &topics).await {
        Ok(sink) => tasks.spawn(sink.run(records_rx, sink_deadline.clone())),
        Err(e) => {
            admin_cancel.cancel();
            tasks.close();
            tasks.wait().await;
            return Err(e);
        }
    };

    let pipeline = tasks.spawn(pipeline::run(
        inbound_rx,
        records_tx,
        Dedup::new(settings.dedup.window, settings.dedup.capacity),
        route::Router::new(
            &settings.kafka.topic_prefix,
            settings.kafka.topic_map.clone(),
        ),
    ));

    // The topic set: the literal topics, and the templates' topics once
    // the directory is listed (and every time it changes).
    let api = connection::api(&settings);
    let directory = Directory::new(&settings);
    let (topics_tx, topics) = watch::channel(Arc::from(directory.expand(&Entities::default())));
    if directory.needed() {
        tasks.spawn(directory.run(api.clone(), topics_tx, shutdown.clone()));
    }
    // Resyncs: their records join the pipeline's input like notifications.
    let r = &settings.resync;
    let resync = (r.enabled || r.on_start).then(|| {
        let (jobs, jobs_rx) = mpsc::channel(1024);
        let stage = Resync::new(api.clone(), inbound_tx.clone(), r.clone());
        tasks.spawn(stage.run(jobs_rx, shutdown.clone()));
        connection::ResyncRequests {
            jobs,
            after_gaps: r.enabled,
            on_start: r.on_start,
            lookback: r.conversations_lookback,
        }
    });
    // With Kafka, the bridge's own downtime is a gap too: read what the
    // previous process left (see `checkpoint`).
    let checkpoints = match settings.pipeline.sink {
        SinkKind::Kafka => {
            let key = checkpoint::key(&settings);
            let topic = checkpoint::topic(&settings.kafka.topic_prefix);
            let previous =
                checkpoint::read(&settings.kafka, &topic, &key, Duration::from_secs(10)).await;
            if let Some(previous) = &previous {
                tracing::info!(
                    shards = previous.len(),
                    "Found the previous process's record: its downtime is a gap."
                );
            }
            Some(connection::Checkpoints { key, previous })
        }
        SinkKind::Stdout => None,
    };
    let supervisor = tasks.spawn({
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        async move {
            connection::run(
                &settings,
                api,
                topics,
                inbound_tx,
                resync,
                checkpoints,
                shutdown,
            )
            .await
        }
    });
    let g = &settings.genesys;
    tracing::info!(
        topics = g.topics.len(),
        templates = g.templates.len(),
        redundancy = g.redundancy,
        sink = ?settings.pipeline.sink,
        "Bridge started."
    );

    let (mut supervisor, mut pipeline, mut sink) = (supervisor, pipeline, sink);
    // A stage that ends on its own (stdout closed, a panic) would leave the
    // bridge taking frames it can no longer publish: stop the whole process
    // instead, so that the orchestrator restarts it and the gap is visible.
    let failed = tokio::select! {
        // Shutdown first: once it is asked for, stages ending is the plan.
        biased;
        () = shutdown.cancelled() => None,
        _ = &mut pipeline => Some("pipeline"),
        _ = &mut sink => Some("sink"),
        _ = &mut supervisor => Some("connection manager"),
    };
    if let Some(stage) = failed {
        tracing::error!(stage, "A stage stopped on its own; shutting down.");
        shutdown.cancel();
    }
    tracing::info!(
        grace_secs = settings.shutdown_grace.as_secs_f64(),
        "Shutting down: closing sockets, draining, flushing."
    );
    let grace = settings.shutdown_grace;
    let started = tokio::time::Instant::now();
    let drain = async {
        if !supervisor.is_finished() {
            let _ = (&mut supervisor).await;
        }
        if !pipeline.is_finished() {
            let _ = (&mut pipeline).await;
        }
    };
    if tokio::time::timeout(grace.mul_f64(0.5), drain)
        .await
        .is_err()
    {
        tracing::warn!("Intake did not stop in time; flushing what reached the sink.");
    }
    let left = grace.saturating_sub(started.elapsed());
    let mut result = Ok(());
    if !sink.is_finished()
        && tokio::time::timeout(left.saturating_sub(grace.mul_f64(0.15)), &mut sink)
            .await
            .is_err()
    {
        // The sink flushes what it can and counts the rest; wait for that.
        sink_deadline.cancel();
        let _ = tokio::time::timeout(grace.mul_f64(0.1), &mut sink).await;
        result = Err(anyhow::anyhow!(
            "shutdown grace ran out with events not acknowledged by Kafka"
        ));
    } else if failed.is_none() {
        tracing::info!("Shutdown complete: everything received was published.");
    }
    if let Some(stage) = failed {
        result = Err(anyhow::anyhow!("the {stage} stopped on its own"));
    }
    admin_cancel.cancel();
    tasks.close();
    tasks.wait().await;
    result
}
