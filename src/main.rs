//! The command line: thin on purpose; everything lives in the library.

// One `unsafe` call, allowed where it is made: glibc's `mallopt` (below).
#![deny(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use genesys_kafka_bridge::{app, config, telemetry};

/// Exit code for a configuration mistake (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "Genesys Cloud notifications to Kafka, with no loss across reconnects."
)]
struct Cli {
    /// TOML config file (keys also settable as GENESYS_BRIDGE_<SECTION>__<KEY>).
    #[arg(long, short, env = "GENESYS_BRIDGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Run,
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
    /// List the notification topics the org offers (the API's catalogue),
    /// or, with --expand, the topics this configuration subscribes.
    Topics {
        /// Print the configured topics with every template expanded from the
        /// live directory, one a line, and exit.
        #[arg(long)]
        expand: bool,
    },
    /// Run the bridge against an embedded Genesys emulator (no credentials
    /// needed), injecting a socket_closing, an abrupt drop and a token
    /// expiry, and print what was lost (nothing, we hope).
    #[cfg(feature = "demo")]
    Demo {
        /// Publish to this Kafka instead of printing NDJSON to stdout.
        #[arg(long)]
        kafka_brokers: Option<String>,
        /// How long to stream events.
        #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Events per second the emulator generates.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Users in the emulator's directory at start (each subscribed
        /// through v2.users.{user}?presence&routingStatus).
        #[arg(long, default_value_t = 30)]
        users: usize,
        /// Queues in the directory (each through
        /// v2.routing.queues.{queue}.conversations).
        #[arg(long, default_value_t = 5)]
        queues: usize,
    },
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    #[cfg(feature = "demo")]
    if let Some(Command::Demo {
        kafka_brokers,
        duration,
        rate,
        users,
        queues,
    }) = cli.command
    {
        return runtime().block_on(demo(genesys_kafka_bridge::demo::DemoOptions {
            kafka_brokers,
            duration,
            rate,
            users,
            queues,
        }));
    }
    let settings = match config::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            let raw: config::FileConfig = config::figment(cli.config.as_deref())
                .extract()
                .expect("validated just above");
            println!("# configuration is valid");
            println!(
                "# {} topics, {} Kafka topics",
                settings.genesys.topics.len(),
                app::kafka_topics(&settings).len()
            );
            match toml_string(&raw) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            }
            ExitCode::SUCCESS
        }
        Command::Topics { expand: false } => runtime().block_on(topics(settings)),
        Command::Topics { expand: true } => runtime().block_on(expanded_topics(settings)),
        Command::Run => runtime().block_on(run(settings)),
        #[cfg(feature = "demo")]
        Command::Demo { .. } => unreachable!("handled before the config is read"),
    }
}

fn toml_string(raw: &config::FileConfig) -> Result<String, String> {
    // The Secret wrapper serializes itself as "***".
    toml::to_string_pretty(raw).map_err(|e| e.to_string())
}

/// Two malloc arenas unless `MALLOC_ARENA_MAX` says otherwise. glibc gives
/// threads that allocate at once arenas of their own (up to 8 per core), and
/// the free memory each keeps stays resident; librdkafka's threads, tokio's
/// worker and its blocking pool all allocate. Measured by `scripts/bench.sh`
/// (10,000 topics, 5,000 events/s): peak RSS 31.1-32.1 MiB in three runs
/// with the default, 28.6 MiB with two arenas, CPU per event unchanged.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: the first thing `main` does, while the process has one
        // thread; mallopt only sets a tunable of glibc's allocator.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// One worker thread unless `TOKIO_WORKER_THREADS` says otherwise: the
/// stages hand every event on to each other, and on one thread that is a
/// queue push instead of waking another thread. Measured by
/// `scripts/bench.sh` (README, Performance): p99 publish latency at 1,000
/// events/s 9.6 and 11.3 ms against 16.5 ms with a worker per core; CPU
/// and memory within the runs' noise.
fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    builder
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

async fn run(settings: config::Settings) -> ExitCode {
    telemetry::init_logging(settings.log_format, "info");
    let admin = match settings.admin_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::error!(%addr, error = %e, "Cannot bind the admin server (admin.listen).");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    match app::run(settings, admin, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Bridge failed.");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "demo")]
async fn demo(options: genesys_kafka_bridge::demo::DemoOptions) -> ExitCode {
    // Quiet logs: the demo's own status lines tell the story.
    telemetry::init_logging(config::LogFormat::Pretty, "warn");
    match genesys_kafka_bridge::demo::run(options).await {
        Ok(summary) if summary.lost == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn topics(settings: config::Settings) -> ExitCode {
    telemetry::init_logging(settings.log_format, "info");
    let g = &settings.genesys;
    let http = genesys_kafka_bridge::genesys::http_client();
    let auth = genesys_kafka_bridge::connection::token_source(&settings, http.clone());
    let api = genesys_kafka_bridge::genesys::api::Api::new(http, &g.api_base_url, auth);
    match api.available_topics().await {
        Ok(topics) => {
            for topic in topics {
                let id = topic.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                let description = topic
                    .get("description")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                println!("{id}\t{description}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configured topics, templates expanded from the live directory.
async fn expanded_topics(settings: config::Settings) -> ExitCode {
    telemetry::init_logging(settings.log_format, "warn");
    let api = genesys_kafka_bridge::connection::api(&settings);
    let directory = genesys_kafka_bridge::directory::Directory::new(&settings);
    let entities = if directory.needed() {
        match directory.list(&api).await {
            Ok((entities, _)) => entities,
            Err(e) => {
                eprintln!("error: listing the directory: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Default::default()
    };
    let topics = directory.expand(&entities);
    let mut out = std::io::stdout().lock();
    for topic in &topics {
        if writeln!(out, "{topic}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "{} topics ({} users, {} queues)",
        topics.len(),
        entities.users.len(),
        entities.queues.len()
    );
    ExitCode::SUCCESS
}

/// SIGTERM (Kubernetes) or Ctrl-C starts the graceful shutdown.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("Signal received.");
    shutdown.cancel();
}
