//! Helpers shared by the emulator's integration tests: start an emulator on
//! port 0, talk to it with real HTTP (reqwest) and real WebSockets
//! (tokio-tungstenite).

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use genesys_emulator::{Config, Emulator};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A config with short, test-friendly intervals.
pub fn fast_config() -> Config {
    Config {
        heartbeat_interval: Duration::from_secs(3600),
        socket_closing_grace: Duration::from_millis(300),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Emulator {
    Emulator::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .expect("emulator starts")
}

/// A logged-in API client.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

pub async fn token(base: &str, id: &str, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request")
}

impl Api {
    pub async fn login(emu: &Emulator) -> Api {
        let base = emu.base_url();
        let resp = token(&base, "emulator-client", "emulator-secret").await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("token json");
        Api {
            http: reqwest::Client::new(),
            base,
            token: v["access_token"].as_str().expect("access_token").to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_channel(&self) -> (String, String) {
        let resp = self
            .http
            .post(self.url("/api/v2/notifications/channels"))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("create channel");
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("channel json");
        (
            v["id"].as_str().expect("id").to_owned(),
            v["connectUri"].as_str().expect("connectUri").to_owned(),
        )
    }

    pub async fn subs(
        &self,
        method: reqwest::Method,
        channel: &str,
        topics: &[&str],
        ignore_errors: bool,
    ) -> reqwest::Response {
        let body: Vec<Value> = topics.iter().map(|t| json!({ "id": t })).collect();
        let mut url = self.url(&format!(
            "/api/v2/notifications/channels/{channel}/subscriptions"
        ));
        if ignore_errors {
            url.push_str("?ignoreErrors=true");
        }
        self.http
            .request(method, url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("subscriptions request")
    }

    /// PUT the topics and assert success.
    pub async fn put(&self, channel: &str, topics: &[&str]) -> Value {
        let resp = self
            .subs(reqwest::Method::PUT, channel, topics, false)
            .await;
        assert_eq!(resp.status(), 200, "PUT subscriptions");
        resp.json().await.expect("listing json")
    }

    pub async fn head(&self, channel: &str) -> u16 {
        self.http
            .head(self.url(&format!("/api/v2/notifications/channels/{channel}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("head")
            .status()
            .as_u16()
    }

    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(&format!("/_emulator{path}")))
            .json(&body)
            .send()
            .await
            .expect("control request")
    }
}

pub async fn connect(uri: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(uri)
        .await
        .expect("websocket connects");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next message of any kind, or `None` on timeout.
pub async fn next_msg(ws: &mut Ws, wait: Duration) -> Option<Message> {
    match tokio::time::timeout(wait, ws.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        _ => None,
    }
}

/// The next text frame as JSON (heartbeats included), or `None`.
pub async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_msg(ws, left).await? {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// The next notification (skips `channel.metadata` frames), or `None`.
pub async fn next_event(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = next_json(ws, left).await?;
        if v["topicName"] != "channel.metadata" {
            return Some(v);
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string()))
        .await
        .expect("send to socket");
}

/// Waits until `f` is true, polling; panics with `what` on timeout.
pub async fn eventually(what: &str, wait: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub const SEC: Duration = Duration::from_secs(1);
pub const SHORT: Duration = Duration::from_millis(300);
