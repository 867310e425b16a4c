//! Bad input at the edges: malformed frames of every kind, a 2 MB frame and
//! one over `max_frame_bytes`, and a 401 mid-stream (tokens revoked). Each is
//! counted or recovered from, and nothing deliverable is lost.

mod common;

use std::time::Duration;

use genesys_emulator::{Malformed, RequestKind, Target};
use genesys_kafka_bridge::connection;
use genesys_kafka_bridge::event::Inbound;
use genesys_kafka_bridge::telemetry::metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_counted_and_lose_nothing() {
    let emu = emulator(quick_emulator()).await;
    let topics = emu.sample_topics(5);
    let settings = settings(&emu, &topics, |raw| {
        raw.genesys.max_frame_bytes = 4 * 1024 * 1024
    });
    let (tx, rx) = mpsc::channel(10_000);
    let cancel = CancellationToken::new();
    let manager = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            {
                let api = connection::api(&settings);
                let topics = connection::fixed_topics(&settings);
                connection::run(&settings, api, topics, tx, None, None, cancel).await
            }
        }
    });
    let out = Collected::spawn(rx);
    assert!(
        wait_until(Duration::from_secs(15), || topics
            .iter()
            .all(|t| emu.covered(t)))
        .await
    );

    let invalid_before = metrics().frames_invalid.get();
    let stop = CancellationToken::new();
    let publisher = publish_steadily(&emu, topics.clone(), 200, stop.clone());
    for malformed in [
        Malformed::InvalidJson,
        Malformed::Binary,
        Malformed::InvalidUtf8,
        Malformed::TruncatedJson,
        Malformed::UnknownTopic,
        Malformed::Huge {
            bytes: 2 * 1024 * 1024,
        },
    ] {
        assert_eq!(
            emu.send_malformed(Target::All, malformed),
            1,
            "{malformed:?} sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sockets_before = emu
        .channels()
        .iter()
        .map(|c| c.sockets.len())
        .sum::<usize>();
    assert_eq!(sockets_before, 1, "none of those recycled the socket");
    // 20 MB is over max_frame_bytes (4 MiB here): the socket is recycled.
    emu.send_malformed(
        Target::All,
        Malformed::Huge {
            bytes: 20 * 1024 * 1024,
        },
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A 401 mid-stream: every token revoked, the channels die with them.
    emu.revoke_tokens();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    publisher.await.expect("publisher");
    emu.settle(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    manager.await.expect("manager");
    out.ended().await;

    let invalid = metrics().frames_invalid.get() - invalid_before;
    println!("frames_invalid +{invalid}");
    // Invalid JSON, binary, invalid UTF-8 (binary), truncated JSON, and the oversized frame.
    assert!(invalid >= 5, "counted: {invalid}");
    let (lost, _) = lost_and_duplicated(&emu, &out.seqs());
    let stats = emu.event_stats();
    println!(
        "published {} deliverable {} lost {}",
        stats.published,
        stats.deliverable,
        lost.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    // The unknown-topic and 2 MB frames are well-formed notifications: handed on, not dropped.
    let well_formed_odd = out
        .items()
        .iter()
        .filter(|i| matches!(i, Inbound::Event(n) if seq_of(&n.raw()).is_none()))
        .count();
    assert!(well_formed_odd >= 2, "{well_formed_odd}");
    let connects = emu
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::WebsocketConnect)
        .count();
    assert!(
        connects >= 3,
        "recycled after the 20 MB frame and after the revocation: {connects}"
    );
    assert!(emu.covered(&topics[0]) || emu.open_sockets() == 0);
    emu.shutdown().await;
}

/// The binary with a mistaken config: for each mistake, in the file or in
/// the environment, `run` exits 64 before binding its admin port, names the
/// key on stderr, and never prints the secret.
#[test]
fn config_mistakes_exit_64_naming_the_key_before_binding() {
    const SECRET: &str = "n0t-in-any-Output";
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let dir = std::env::temp_dir().join(unique_prefix("config"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = format!(
        "[genesys]\nclient_id = \"id-1\"\nclient_secret = \"{SECRET}\"\n\
         topics = [\"v2.users.7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d.presence\"]\n\
         [admin]\nlisten = \"{admin}\"\n"
    );
    // (file text, environment, the key the error must name)
    type Case = (String, Vec<(&'static str, &'static str)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            good.replace("[genesys]\n", "[genesys]\nregion = \"mars\"\n"),
            vec![],
            "genesys.region",
        ),
        (
            good.replace("client_id = \"id-1\"", "client_id = \"\""),
            vec![],
            "genesys.client_id",
        ),
        (
            good.clone(),
            vec![("GENESYS_BRIDGE_GENESYS__TOPICS", "[]")],
            "genesys.topics",
        ),
        (
            good.replace("[genesys]\n", "[genesys]\nheartbeat_timeout = \"5s\"\n"),
            vec![],
            "genesys.heartbeat_timeout",
        ),
        (
            good.replace("[genesys]\n", "[genesys]\ncolour = \"blue\"\n"),
            vec![],
            "genesys.colour",
        ),
        (
            good.clone(),
            vec![("GENESYS_BRIDGE_KAFKA__PARTITIONS", "0")],
            "kafka.partitions",
        ),
        (
            good.clone(),
            vec![("GENESYS_BRIDGE_RECONNECT__MAX_DELAY", "soon")],
            "reconnect.max_delay",
        ),
        (
            good.clone(),
            vec![("GENESYS_REGION", "atlantis")],
            "genesys.region",
        ),
        (
            good.replace(&format!("listen = \"{admin}\""), "listen = \"nowhere\""),
            vec![],
            "admin.listen",
        ),
        (
            format!("{good}[dedup]\ncapacity = 0\n"),
            vec![],
            "dedup.capacity",
        ),
        ("[genesys\n".to_owned(), vec![], "bridge.toml"),
        // A broken line holding the secret: the error must not quote it.
        (
            good.replace(&format!("\"{SECRET}\""), &format!("\"{SECRET}")),
            vec![],
            "bridge.toml",
        ),
    ];
    for (n, (text, env, key)) in cases.iter().enumerate() {
        let file = dir.join("bridge.toml");
        std::fs::write(&file, text).expect("config file");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_genesys-kafka-bridge"));
        command
            .args(["--config", file.to_str().expect("utf-8 path"), "run"])
            .env_remove("GENESYS_CLIENT_SECRET")
            .env_remove("GENESYS_CLIENT_ID")
            .envs(env.iter().copied());
        let output = command.output().expect("bridge runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "case {n}: {stderr}");
        assert!(
            stderr.contains(key),
            "case {n}: {key} not named in {stderr}"
        );
        assert!(!stderr.contains(SECRET), "case {n}: the secret was printed");
        assert!(
            std::net::TcpListener::bind(admin).is_ok(),
            "case {n}: the admin port was left bound"
        );
    }
}
