//! `genesys-emulator`: runs the emulator as a server for demos and manual
//! testing. Everything it does lives in the library; this file only turns
//! flags into a [`Config`], prints how to reach the server, and waits for
//! Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use genesys_emulator::{Config, Emulator, RecordMode};
use tracing_subscriber::EnvFilter;

/// A local Genesys Cloud: OAuth client credentials, the Notification API
/// (channels, subscriptions, available topics, WebSocket) and fault
/// injection under /_emulator/. One base URL serves both the API and the
/// login.
#[derive(Debug, Parser)]
#[command(name = "genesys-emulator", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// OAuth client id accepted by POST /oauth/token.
    #[arg(long, env = "EMULATOR_CLIENT_ID", default_value = "emulator-client")]
    client_id: String,

    /// OAuth client secret accepted by POST /oauth/token (never logged).
    #[arg(
        long,
        env = "EMULATOR_CLIENT_SECRET",
        default_value = "emulator-secret",
        hide_default_value = true
    )]
    client_secret: String,

    /// Access token lifetime (e.g. 24h, 90s); reported in whole seconds.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,

    /// Channel lifetime from creation or last subscription.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    channel_lifetime: Duration,

    /// Interval of the "WebSocket Heartbeat" frame (sub-second values work).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,

    /// Time between the v2.system.socket_closing frame and the close.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    socket_closing_grace: Duration,

    /// Live channels per OAuth client; one more evicts the least recently used.
    #[arg(long, default_value_t = 20)]
    max_channels: usize,

    /// Topics per channel (a combined topic counts once).
    #[arg(long, default_value_t = 1000)]
    max_topics: usize,

    /// Forbidden topic glob (`*` matches anything); repeat for more. Replaces
    /// the default `v2.*.forbidden-*`.
    #[arg(long = "forbid", value_name = "GLOB")]
    forbidden_topics: Vec<String>,

    /// Move a topic to the newest channel that subscribes to it; older
    /// channels get v2.system.no_longer_subscribed.<channelId>.
    #[arg(long)]
    exclusive_subscriptions: bool,

    /// Send v2.system.token_revoked.<channelId> before a revoked token's
    /// channels die.
    #[arg(long)]
    send_token_revoked: bool,

    /// Generator rate in events per second (0 = off; change it at run time
    /// with PUT /_emulator/rate).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,

    /// Topic the generator publishes to; repeat for more. Default: every
    /// topic subscribed at that moment.
    #[arg(long = "generator-topic", value_name = "TOPIC")]
    generator_topics: Vec<String>,

    /// Events that share one generated body on a topic (each keeps its own
    /// emulatorSequence); more than 1 makes the generator cheaper.
    #[arg(long, default_value_t = 1)]
    body_reuse: u32,

    /// Number of generated user ids.
    #[arg(long, default_value_t = genesys_emulator::config::DEFAULT_USERS)]
    users: usize,

    /// Number of generated queue ids.
    #[arg(long, default_value_t = genesys_emulator::config::DEFAULT_QUEUES)]
    queues: usize,

    /// Frames that may wait for one socket before it is dropped as slow.
    #[arg(long, default_value_t = 65_536)]
    socket_queue: usize,

    /// Keep one bit per event instead of a full record (for long benchmarks).
    #[arg(long)]
    compact_records: bool,

    /// Keep at most this many event records (oldest go first).
    #[arg(long)]
    max_records: Option<usize>,

    /// Base URL to advertise (e.g. when listening on 0.0.0.0).
    #[arg(long)]
    public_url: Option<String>,

    /// Conversations kept for the analytics details query (the first to
    /// end goes first past this many).
    #[arg(long, default_value_t = genesys_emulator::truth::DEFAULT_MAX_CONVERSATIONS)]
    max_conversations: usize,

    /// Org REST rate limit: /api/v2 requests per sliding minute; over it,
    /// 429 with Retry-After. Default: no limit.
    #[arg(long)]
    rest_requests_per_minute: Option<u32>,

    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

impl Args {
    fn into_config(self) -> Config {
        let defaults = Config::default();
        Config {
            client_id: self.client_id,
            client_secret: self.client_secret,
            token_lifetime: self.token_lifetime,
            channel_lifetime: self.channel_lifetime,
            heartbeat_interval: self.heartbeat_interval,
            socket_closing_grace: self.socket_closing_grace,
            max_channels: self.max_channels,
            max_topics_per_channel: self.max_topics,
            forbidden_topics: if self.forbidden_topics.is_empty() {
                defaults.forbidden_topics
            } else {
                self.forbidden_topics
            },
            exclusive_subscriptions: self.exclusive_subscriptions,
            send_token_revoked: self.send_token_revoked,
            rate: self.rate,
            generator_topics: self.generator_topics,
            body_reuse: self.body_reuse,
            org_id: defaults.org_id,
            user_ids: genesys_emulator::config::generated_ids(self.users),
            queue_ids: genesys_emulator::config::generated_ids(self.queues),
            divisions: defaults.divisions,
            socket_queue_capacity: self.socket_queue,
            record_mode: if self.compact_records {
                RecordMode::Compact
            } else {
                RecordMode::Full
            },
            max_records: self.max_records,
            max_request_records: defaults.max_request_records,
            public_url: self.public_url,
            max_conversations: self.max_conversations,
            rest_requests_per_minute: self.rest_requests_per_minute,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let listen = args.listen;
    let config = args.into_config();
    if let Err(e) = config.validate() {
        eprintln!("genesys-emulator: invalid configuration: {e}");
        return ExitCode::from(64);
    }
    let emu = match Emulator::start(config, listen).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("genesys-emulator: cannot start on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    print_banner(&emu);
    wait_for_signal().await;
    tracing::info!("Shutting down.");
    emu.shutdown().await;
    ExitCode::SUCCESS
}

fn print_banner(emu: &Emulator) {
    let c = emu.config();
    let base = emu.base_url();
    let user = emu.user_ids().into_iter().next().unwrap_or_default();
    // The secret is printed on purpose: it is the demo credential the user
    // chose or the default, and they need it to log in. Logs never get it.
    println!(
        "genesys-emulator listening on {base}
  API base URL:   {base}
  Login base URL: {base}
  client id:      {id}
  client secret:  {secret}
  token lifetime {tl}, channel lifetime {cl}, heartbeat {hb}, socket_closing grace {gr}
  max channels {mc}, max topics per channel {mt}, forbidden {fb:?}, exclusive subscriptions {ex}
  generator rate {rate}/s, {users} users, {queues} queues

Try:
  TOKEN=$(curl -s -u '{id}:{secret}' -d grant_type=client_credentials {base}/oauth/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')
  curl -s -X POST -H \"Authorization: Bearer $TOKEN\" {base}/api/v2/notifications/channels
  curl -s -X PUT -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\
       -d '[{{\"id\":\"v2.users.{user}.presence\"}}]' {base}/api/v2/notifications/channels/<channelId>/subscriptions
  curl -s -X PUT -d '{{\"rate\":10}}' {base}/_emulator/rate
  curl -s -X POST -d '{{}}' {base}/_emulator/faults/drop
  curl -s {base}/_emulator/state",
        id = c.client_id,
        secret = c.client_secret,
        tl = humantime::format_duration(c.token_lifetime),
        cl = humantime::format_duration(c.channel_lifetime),
        hb = humantime::format_duration(c.heartbeat_interval),
        gr = humantime::format_duration(c.socket_closing_grace),
        mc = c.max_channels,
        mt = c.max_topics_per_channel,
        fb = c.forbidden_topics,
        ex = c.exclusive_subscriptions,
        rate = c.rate,
        users = c.user_ids.len(),
        queues = c.queue_ids.len(),
    );
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
