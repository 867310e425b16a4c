//! Configuration: defaults < file (TOML, or JSON) < environment, read with figment and
//! validated once into [`Settings`], the domain types the rest of the bridge
//! uses. Every mistake is reported as a [`ConfigError`] that names the key and
//! the fix; the binary exits with code 64 on it before binding anything.
//!
//! Environment: every key as `GENESYS_BRIDGE_<SECTION>__<KEY>` (for example
//! `GENESYS_BRIDGE_KAFKA__BROKERS`), a librdkafka property as
//! `GENESYS_BRIDGE_KAFKA__PROPERTIES__<NAME>` with `_` for `.` (for example
//! `..._SASL_PASSWORD` for `sasl.password`), plus the short forms
//! `GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET` and `GENESYS_REGION`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Json, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::backoff::Policy;
use crate::genesys::region;
use crate::genesys::topic::Template;
use crate::genesys::{MAX_CHANNELS, MAX_TOPICS_PER_CHANNEL};
pub use crate::secret::Secret;

/// The file format, one struct per `[section]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub genesys: GenesysSection,
    pub reconnect: ReconnectSection,
    pub kafka: KafkaSection,
    pub dedup: DedupSection,
    pub pipeline: PipelineSection,
    pub admin: AdminSection,
    pub log: LogSection,
    /// Where `{user}` and `{queue}` topic templates take their ids from.
    pub directory: DirectorySection,
    /// State fetched from the REST API after every gap and at start.
    pub resync: ResyncSection,
    /// How long shutdown may take to drain and flush (keep it below the pod's
    /// `terminationGracePeriodSeconds`).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenesysSection {
    /// Region key (`eu_west_1`) or domain (`mypurecloud.ie`).
    pub region: String,
    /// Overrides the API base URL derived from the region (tests, proxies).
    pub api_base_url: Option<String>,
    /// Overrides the login base URL derived from the region.
    pub login_base_url: Option<String>,
    /// OAuth client id (client-credentials grant).
    pub client_id: String,
    /// OAuth client secret; prefer `client_secret_file` or the environment.
    pub client_secret: Secret,
    /// A file holding the client secret (e.g. a mounted Kubernetes Secret).
    pub client_secret_file: Option<PathBuf>,
    /// Topics to subscribe, e.g. `v2.users.<id>.presence`, or templates
    /// such as `v2.users.{user}.presence` expanded from `[directory]`.
    pub topics: Vec<String>,
    /// A file with more topics, one per line (`#` starts a comment).
    pub topics_file: Option<PathBuf>,
    /// How often to send `{"message":"ping"}` on each socket.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Silence longer than this (no heartbeat, pong or event) means the socket is dead.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Channels per shard of topics: 2 keeps a second socket receiving the same topics.
    pub redundancy: usize,
    /// A larger frame recycles the socket (counted); protects memory.
    pub max_frame_bytes: usize,
}

impl Default for GenesysSection {
    fn default() -> Self {
        Self {
            region: "us_east_1".into(),
            api_base_url: None,
            login_base_url: None,
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            topics: Vec::new(),
            topics_file: None,
            ping_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(70),
            redundancy: 1,
            max_frame_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSection {
    /// The first retry waits up to this long (full jitter).
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// No retry waits longer than this (besides a server's Retry-After).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// A connection up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
}

impl Default for ReconnectSection {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Every Kafka topic name starts with this and a dot.
    pub topic_prefix: String,
    /// Create missing topics through the admin API at start.
    pub create_topics: bool,
    /// Partitions for topics the bridge creates.
    pub partitions: i32,
    /// Replication factor for topics the bridge creates (-1: the broker's default).
    pub replication_factor: i32,
    /// Events waiting for a delivery report at most; past it, back-pressure.
    pub buffer: usize,
    /// `block` (back-pressure, the default) or `drop_newest` (counted, logged).
    pub overflow: OverflowPolicy,
    /// How long the first record of a batch waits for others before the
    /// batch goes to librdkafka (whose own `linger.ms` is then 0).
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Overrides of the Genesys topic → Kafka topic mapping: pattern → Kafka
    /// topic. A pattern is a topic name with `{id}` where an id stands.
    pub topic_map: BTreeMap<String, String>,
    /// Any librdkafka property (SASL, TLS, linger.ms, ...). Values of keys
    /// that look secret (`*password*`, `*secret*`, ...) print as `***`.
    #[serde(serialize_with = "masked_properties")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "genesys".into(),
            create_topics: false,
            partitions: 6,
            replication_factor: -1,
            buffer: 100_000,
            overflow: OverflowPolicy::Block,
            batch_wait: Duration::from_millis(5),
            topic_map: BTreeMap::new(),
            properties: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KafkaSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_key(k) { "***" } else { v.as_str() },
                )
            })
            .collect();
        f.debug_struct("KafkaSection")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("buffer", &self.buffer)
            .field("overflow", &self.overflow)
            .field("batch_wait", &self.batch_wait)
            .field("topic_map", &self.topic_map)
            .field("properties", &properties)
            .finish()
    }
}

/// A librdkafka property's shape: dot-separated words of lowercase
/// letters, digits and `_` (librdkafka itself says whether it knows it).
fn is_property_name(name: &str) -> bool {
    name.split('.').all(|word| {
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// librdkafka keys whose values are credentials.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key.pem", "private"]
        .iter()
        .any(|word| key.contains(word))
}

fn masked_properties<S: serde::Serializer>(
    properties: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(properties.len()))?;
    for (k, v) in properties {
        map.serialize_entry(k, if is_secret_key(k) { "***" } else { v })?;
    }
    map.end()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    Block,
    DropNewest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSection {
    /// How long an event's fingerprint is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How many fingerprints are remembered at most.
    pub capacity: usize,
}

impl Default for DedupSection {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// `kafka` or `stdout` (NDJSON, for debugging).
    pub sink: SinkKind,
    /// Capacity of the bounded channels between stages.
    pub channel_capacity: usize,
}

impl Default for PipelineSection {
    fn default() -> Self {
        Self {
            sink: SinkKind::Kafka,
            channel_capacity: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Kafka,
    Stdout,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the admin server (`/metrics`, `/livez`, `/readyz`); empty disables it.
    pub listen: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorySection {
    /// Users of this state: `active`, `inactive`, `deleted` or `any`.
    pub users_state: String,
    /// `all` (every user of that state) or `queue_members` (the members of
    /// the selected queues).
    pub users_from: UsersFrom,
    /// Queues whose name matches (Genesys' `name` filter: `*` at either end).
    pub queue_name: String,
    /// Queues of these divisions only (empty: every division).
    pub queue_division_ids: Vec<String>,
    /// How often the directory is listed again.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Entities per page of a listing (Genesys allows up to 500; queue
    /// members are listed 100 a page, their maximum).
    pub page_size: u32,
}

impl Default for DirectorySection {
    fn default() -> Self {
        Self {
            users_state: "active".into(),
            users_from: UsersFrom::All,
            queue_name: String::new(),
            queue_division_ids: Vec::new(),
            refresh: Duration::from_secs(300),
            page_size: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResyncSection {
    /// After every gap, publish the current state of its topics' resources.
    pub enabled: bool,
    /// The same for every resource when a shard first subscribes.
    pub on_start: bool,
    /// REST requests a minute the resync may make (Genesys allows about
    /// 300 for a client-credentials token, shared with everything else).
    pub max_requests_per_minute: u32,
    /// Resources waiting to be fetched, at most; beyond, a resync is partial.
    pub max_pending_resources: usize,
    /// How far back the start-up snapshot looks for conversations.
    #[serde(with = "humantime_serde")]
    pub conversations_lookback: Duration,
}

impl Default for ResyncSection {
    fn default() -> Self {
        Self {
            enabled: true,
            on_start: true,
            max_requests_per_minute: 120,
            max_pending_resources: 100_000,
            conversations_lookback: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsersFrom {
    All,
    QueueMembers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `json` for production, `pretty` for a terminal. The level comes from `RUST_LOG`.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            genesys: GenesysSection::default(),
            reconnect: ReconnectSection::default(),
            kafka: KafkaSection::default(),
            dedup: DedupSection::default(),
            pipeline: PipelineSection::default(),
            admin: AdminSection::default(),
            log: LogSection::default(),
            directory: DirectorySection::default(),
            resync: ResyncSection::default(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// A configuration mistake: which key, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}; {fix}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    fn new(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub genesys: GenesysSettings,
    /// `[reconnect]`, checked: the backoff of every retry.
    pub reconnect: Policy,
    pub kafka: KafkaSection,
    pub dedup: DedupSection,
    pub pipeline: PipelineSection,
    pub admin_listen: Option<SocketAddr>,
    pub resync: ResyncSection,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
}

/// The topics to subscribe: literal ones, and templates expanded from the
/// directory.
#[derive(Debug, Clone)]
pub struct GenesysSettings {
    pub api_base_url: String,
    pub login_base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Literal topics.
    pub topics: Vec<String>,
    /// `{user}` and `{queue}` templates: with none, no directory is listed.
    pub templates: Vec<Template>,
    pub directory: DirectorySection,
    pub ping_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub redundancy: usize,
    pub max_frame_bytes: usize,
}

/// Reads defaults < `file` (if given) < environment. The file is JSON if
/// its name ends in `.json` (the Helm chart renders it with Helm's own
/// `toPrettyJson`), else TOML.
pub fn figment(file: Option<&Path>) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(FileConfig::default()));
    if let Some(file) = file {
        let json = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        figment = if json {
            figment.merge(Json::file_exact(file))
        } else {
            figment.merge(Toml::file_exact(file))
        };
    }
    figment
        .merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(&["config"])
                .filter(|key| kafka_property_name(key.as_str()).is_none())
                .split("__"),
        )
        .merge(kafka_properties_env())
        .merge(short_env())
}

/// The prefix of every environment variable of the bridge's keys.
const ENV_PREFIX: &str = "GENESYS_BRIDGE_";

/// `text` without its leading `prefix`, matched in any case (as figment
/// matches [`ENV_PREFIX`]).
fn strip_prefix_any_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The librdkafka property a variable (its name after [`ENV_PREFIX`]) sets,
/// if it is `KAFKA__PROPERTIES__<NAME>`: `<name>` lowercased, `.` for `_`.
fn kafka_property_name(key: &str) -> Option<String> {
    let name = strip_prefix_any_case(key, "KAFKA__PROPERTIES__")?;
    Some(name.to_ascii_lowercase().replace('_', "."))
}

/// Every `GENESYS_BRIDGE_KAFKA__PROPERTIES__<NAME>` variable: its name, the
/// property it sets, and its value, `None` if that is not UTF-8.
fn kafka_property_vars() -> Vec<(String, String, Option<String>)> {
    std::env::vars_os()
        .filter_map(|(var, value)| {
            let var = var.into_string().ok()?;
            let property = kafka_property_name(strip_prefix_any_case(&var, ENV_PREFIX)?)?;
            Some((var, property, value.into_string().ok()))
        })
        .collect()
}

/// The librdkafka properties set in the environment. librdkafka's names
/// have dots, which a variable's name cannot have in a shell, and the
/// generic provider's split would nest at one; so `_` stands for `.` (the
/// few names with an underscore, such as `log_level`, are for the file).
/// Values stay strings, so a SASL password can come from a Kubernetes
/// Secret as an environment variable, never through the ConfigMap.
fn kafka_properties_env() -> Figment {
    let properties: BTreeMap<String, String> = kafka_property_vars()
        .into_iter()
        .filter_map(|(_, property, value)| Some((property, value?)))
        .collect();
    if properties.is_empty() {
        return Figment::new();
    }
    Figment::from(Serialized::default("kafka.properties", properties))
}

/// `GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET` and `GENESYS_REGION`, taken
/// as plain strings (an all-digit secret stays a string).
fn short_env() -> Figment {
    let mut figment = Figment::new();
    for (var, key) in [
        ("GENESYS_CLIENT_ID", "genesys.client_id"),
        ("GENESYS_CLIENT_SECRET", "genesys.client_secret"),
        ("GENESYS_REGION", "genesys.region"),
    ] {
        if let Ok(value) = std::env::var(var) {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    figment
}

/// Reads and validates the configuration.
pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
    if let Some((var, _, _)) = kafka_property_vars().into_iter().find(|v| v.2.is_none()) {
        return Err(ConfigError::new(
            &var,
            "its value is not valid UTF-8",
            "set it to the property's value as UTF-8 text",
        ));
    }
    let raw: FileConfig = figment(file).extract().map_err(from_figment)?;
    validate(raw)
}

fn from_figment(error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut key = error.path.join(".");
    let fix = match &error.kind {
        Kind::UnknownField(field, _) => {
            if error.path.last() != Some(field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            "remove it or fix its spelling (see README, Configuration)".to_owned()
        }
        Kind::InvalidType(..) | Kind::InvalidValue(..) => {
            "durations look like \"30s\" or \"5m\"; see README, Configuration".to_owned()
        }
        _ => "see README, Configuration".to_owned(),
    };
    let problem = match &error.kind {
        Kind::UnknownField(..) => "unknown key".to_owned(),
        // Never echo the value: it may be a secret.
        Kind::InvalidType(_, expected) => format!("wrong type, expected {expected}"),
        Kind::InvalidValue(_, expected) => format!("invalid value, expected {expected}"),
        Kind::Message(m) if m.contains("No such file") || m.contains("not found") => {
            key = "--config".into();
            m.clone()
        }
        // A parse error quotes the offending line, which may hold a secret:
        // keep only where it is and what is wrong.
        Kind::Message(m) if m.starts_with("TOML parse error") => {
            let lines: Vec<&str> = m.lines().map(str::trim).collect();
            let reason = lines
                .iter()
                .rev()
                .find(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "))
                .copied()
                .unwrap_or_default();
            format!("{}: {reason}", lines.first().copied().unwrap_or_default())
        }
        other => other.to_string(),
    };
    if key.is_empty() {
        key = match error.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(source) => source.to_string(),
            None => "(file)".into(),
        };
    }
    ConfigError::new(&key, problem, fix)
}

/// Turns the file format into domain settings, naming the key of every mistake.
pub fn validate(raw: FileConfig) -> Result<Settings, ConfigError> {
    let g = raw.genesys;
    let (api_base_url, login_base_url) = base_urls(&g)?;
    if g.client_id.trim().is_empty() {
        return Err(ConfigError::new(
            "genesys.client_id",
            "missing",
            "set it in the config file or in GENESYS_CLIENT_ID",
        ));
    }
    let client_secret = match (&g.client_secret_file, g.client_secret.is_empty()) {
        (Some(path), true) => Secret::new(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError::new(
                        "genesys.client_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                        "point it at a readable file holding only the secret",
                    )
                })?
                .trim(),
        ),
        (Some(_), false) => {
            return Err(ConfigError::new(
                "genesys.client_secret",
                "set together with genesys.client_secret_file",
                "keep only one of the two",
            ))
        }
        (None, _) => g.client_secret.clone(),
    };
    if client_secret.is_empty() {
        return Err(ConfigError::new(
            "genesys.client_secret",
            "missing",
            "set GENESYS_CLIENT_SECRET or genesys.client_secret_file",
        ));
    }
    let (topics, templates) = topics(&g)?;
    let directory = directory(raw.directory)?;
    if g.redundancy == 0 || g.redundancy > 2 {
        return Err(ConfigError::new(
            "genesys.redundancy",
            format!("{} is not allowed", g.redundancy),
            "use 1 (one channel per shard) or 2 (two channels per shard)",
        ));
    }
    let shards = topics.len().div_ceil(MAX_TOPICS_PER_CHANNEL);
    let channels = shards * g.redundancy;
    if channels + 1 > MAX_CHANNELS {
        return Err(ConfigError::new(
            "genesys.topics",
            format!(
                "{} topics need {channels} channels (shards of {MAX_TOPICS_PER_CHANNEL} x redundancy {}), \
                 but Genesys allows {MAX_CHANNELS} and rotation needs one spare",
                topics.len(),
                g.redundancy
            ),
            "subscribe fewer topics, use combined topics (v2.users.<id>?presence&routingStatus), \
             or lower genesys.redundancy",
        ));
    }
    positive("genesys.ping_interval", g.ping_interval)?;
    positive("genesys.heartbeat_timeout", g.heartbeat_timeout)?;
    if g.heartbeat_timeout <= g.ping_interval {
        return Err(ConfigError::new(
            "genesys.heartbeat_timeout",
            "must be longer than genesys.ping_interval",
            "keep it at least twice the ping interval (defaults: 20s and 70s)",
        ));
    }
    if g.max_frame_bytes < 64 * 1024 {
        return Err(ConfigError::new(
            "genesys.max_frame_bytes",
            "below 65536",
            "conversation events can be tens of KB; keep it at 1 MiB or more",
        ));
    }
    let r = raw.reconnect;
    positive("reconnect.initial_delay", r.initial_delay)?;
    positive("reconnect.stable_after", r.stable_after)?;
    if r.max_delay < r.initial_delay {
        return Err(ConfigError::new(
            "reconnect.max_delay",
            "shorter than reconnect.initial_delay",
            "make it at least as long as the initial delay",
        ));
    }
    let k = raw.kafka;
    if raw.pipeline.sink == SinkKind::Kafka && k.brokers.trim().is_empty() {
        return Err(ConfigError::new(
            "kafka.brokers",
            "empty",
            "name the bootstrap servers, e.g. \"kafka-0:9092,kafka-1:9092\"",
        ));
    }
    if !is_kafka_name(&k.topic_prefix) {
        return Err(ConfigError::new(
            "kafka.topic_prefix",
            format!("{:?} is not a valid Kafka topic prefix", k.topic_prefix),
            "use letters, digits, '.', '_' and '-' only",
        ));
    }
    for (pattern, topic) in &k.topic_map {
        if !is_kafka_name(topic) {
            return Err(ConfigError::new(
                &format!("kafka.topic_map.{pattern}"),
                format!("{topic:?} is not a valid Kafka topic name"),
                "use letters, digits, '.', '_' and '-' only",
            ));
        }
    }
    if let Some(name) = k.properties.keys().find(|n| !is_property_name(n)) {
        return Err(ConfigError::new(
            "kafka.properties",
            format!("{name:?} is not a librdkafka property name"),
            "use a name from librdkafka's CONFIGURATION.md, such as \"sasl.password\" (in the environment: GENESYS_BRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD)",
        ));
    }
    if k.partitions < 1 {
        return Err(ConfigError::new(
            "kafka.partitions",
            "below 1",
            "use 1 or more",
        ));
    }
    if k.buffer == 0 {
        return Err(ConfigError::new("kafka.buffer", "zero", "use 1000 or more"));
    }
    if k.batch_wait > Duration::from_secs(1) {
        return Err(ConfigError::new(
            "kafka.batch_wait",
            "over 1s",
            "use the default \"5ms\", or \"0s\" to hand each record over at once; it adds to every event's latency",
        ));
    }
    if raw.dedup.capacity == 0 {
        return Err(ConfigError::new(
            "dedup.capacity",
            "zero",
            "use the default 100000 or another positive number",
        ));
    }
    positive("dedup.window", raw.dedup.window)?;
    if raw.pipeline.channel_capacity == 0 {
        return Err(ConfigError::new(
            "pipeline.channel_capacity",
            "zero",
            "use the default 4096 or another positive number",
        ));
    }
    let admin_listen = match raw.admin.listen.trim() {
        "" => None,
        listen => Some(listen.parse().map_err(|_| {
            ConfigError::new(
                "admin.listen",
                format!("{listen:?} is not an address"),
                "use host:port, e.g. 0.0.0.0:9464, or \"\" to disable",
            )
        })?),
    };
    positive("shutdown_grace", raw.shutdown_grace)?;
    Ok(Settings {
        genesys: GenesysSettings {
            api_base_url,
            login_base_url,
            client_id: g.client_id.trim().to_owned(),
            client_secret,
            topics,
            templates,
            directory,
            ping_interval: g.ping_interval,
            heartbeat_timeout: g.heartbeat_timeout,
            redundancy: g.redundancy,
            max_frame_bytes: g.max_frame_bytes,
        },
        reconnect: Policy {
            initial: r.initial_delay,
            max: r.max_delay,
            stable_after: r.stable_after,
        },
        kafka: k,
        dedup: raw.dedup,
        pipeline: raw.pipeline,
        admin_listen,
        resync: resync(raw.resync)?,
        log_format: raw.log.format,
        shutdown_grace: raw.shutdown_grace,
    })
}

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(
            key,
            "zero",
            "use a positive duration such as \"30s\"",
        ))
    } else {
        Ok(())
    }
}

fn base_urls(g: &GenesysSection) -> Result<(String, String), ConfigError> {
    let set = |u: &Option<String>| u.as_deref().is_some_and(|u| !u.trim().is_empty());
    match (set(&g.api_base_url), set(&g.login_base_url)) {
        (true, false) => {
            return Err(ConfigError::new(
                "genesys.login_base_url",
                "missing while genesys.api_base_url is set",
                "set both base URLs, or neither and use genesys.region",
            ))
        }
        (false, true) => {
            return Err(ConfigError::new(
                "genesys.api_base_url",
                "missing while genesys.login_base_url is set",
                "set both base URLs, or neither and use genesys.region",
            ))
        }
        _ => {}
    }
    let derived = region::domain(&g.region).map(region::base_urls);
    let pick = |key: &str, explicit: &Option<String>, derived: Option<String>| match explicit
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(url.trim_end_matches('/').to_owned())
        }
        Some(url) => Err(ConfigError::new(
            key,
            format!("{url:?} is not an http(s) URL"),
            "use e.g. https://api.mypurecloud.ie, or leave it out and set genesys.region",
        )),
        None => derived.ok_or_else(|| {
            ConfigError::new(
                "genesys.region",
                format!("unknown region {:?}", g.region),
                "use a region key such as eu_west_1 or a domain such as mypurecloud.ie",
            )
        }),
    };
    Ok((
        pick(
            "genesys.api_base_url",
            &g.api_base_url,
            derived.clone().map(|d| d.0),
        )?,
        pick(
            "genesys.login_base_url",
            &g.login_base_url,
            derived.map(|d| d.1),
        )?,
    ))
}

/// The configured topics, split into literal topics and templates.
fn topics(g: &GenesysSection) -> Result<(Vec<String>, Vec<Template>), ConfigError> {
    let mut all: Vec<(String, &str)> = g
        .topics
        .iter()
        .map(|t| (t.trim().to_owned(), "genesys.topics"))
        .collect();
    if let Some(path) = &g.topics_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "genesys.topics_file",
                format!("cannot read {}: {e}", path.display()),
                "point it at a readable file with one topic per line",
            )
        })?;
        all.extend(
            text.lines()
                .map(|line| line.split('#').next().unwrap_or_default().trim())
                .filter(|line| !line.is_empty())
                .map(|line| (line.to_owned(), "genesys.topics_file")),
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut topics = Vec::with_capacity(all.len());
    let mut templates = Vec::new();
    for (topic, key) in all {
        if !topic.starts_with("v2.")
            || topic.len() >= 200
            || topic.contains('}') && !topic.contains('{')
            || topic.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                key,
                format!("{topic:?} is not a notification topic"),
                "topics look like v2.users.<id>.presence (under 200 characters)",
            ));
        }
        let template = Template::parse(&topic).map_err(|problem| {
            ConfigError::new(
                key,
                problem,
                "templates look like v2.users.{user}.presence, \
                 v2.users.{user}?presence&routingStatus or v2.routing.queues.{queue}.conversations",
            )
        })?;
        if !seen.insert(topic.clone()) {
            continue;
        }
        match template {
            Some(template) => templates.push(template),
            None => topics.push(topic),
        }
    }
    if topics.is_empty() && templates.is_empty() {
        return Err(ConfigError::new(
            "genesys.topics",
            "no topics",
            "list topics in genesys.topics or genesys.topics_file",
        ));
    }
    Ok((topics, templates))
}

fn resync(r: ResyncSection) -> Result<ResyncSection, ConfigError> {
    if !(1..=10_000).contains(&r.max_requests_per_minute) {
        return Err(ConfigError::new(
            "resync.max_requests_per_minute",
            format!("{} is out of range", r.max_requests_per_minute),
            "use 1 to 10000; keep it well under the org's REST limit (about 300 a minute unless raised), default 120",
        ));
    }
    if r.max_pending_resources == 0 {
        return Err(ConfigError::new(
            "resync.max_pending_resources",
            "zero",
            "use the default 100000 or another positive number",
        ));
    }
    Ok(r)
}

fn directory(d: DirectorySection) -> Result<DirectorySection, ConfigError> {
    if !matches!(
        d.users_state.as_str(),
        "active" | "inactive" | "deleted" | "any"
    ) {
        return Err(ConfigError::new(
            "directory.users_state",
            format!("{:?} is not a user state", d.users_state),
            "use active (the default), inactive, deleted or any",
        ));
    }
    if d.refresh < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "directory.refresh",
            "shorter than 1s",
            "list the directory every few minutes (default 5m); Genesys rate-limits REST calls",
        ));
    }
    if !(1..=500).contains(&d.page_size) {
        return Err(ConfigError::new(
            "directory.page_size",
            format!("{} is out of range", d.page_size),
            "use 1 to 500 (Genesys' largest page; the default is 500)",
        ));
    }
    if d.queue_division_ids
        .iter()
        .any(|id| id.trim().is_empty() || id.contains([',', '&', '?', '#', '/']))
    {
        return Err(ConfigError::new(
            "directory.queue_division_ids",
            "an id is empty or holds a URL delimiter",
            "list division ids as Genesys shows them (UUIDs)",
        ));
    }
    Ok(d)
}

fn is_kafka_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
// figment::Jail's closures return figment::Error, which is large by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const GOOD: &str = r#"
        [genesys]
        region = "eu_west_1"
        client_id = "id-1"
        client_secret = "s3cret-value"
        topics = ["v2.users.7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d.presence"]
        ping_interval = "10s"
        [reconnect]
        initial_delay = "250ms"
    "#;

    fn load_in_jail(jail: &mut Jail, toml: &str) -> Result<Settings, ConfigError> {
        jail.create_file("bridge.toml", toml).expect("jail file");
        load(Some(Path::new("bridge.toml")))
    }

    #[test]
    fn a_json_file_as_the_chart_renders_it() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "bridge.json",
                r#"{
                  "genesys": {
                    "region": "eu-west-1",
                    "client_id": "abc",
                    "client_secret": "s3cret-value",
                    "topics": ["v2.users.7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d.presence"],
                    "max_frame_bytes": 16777216
                  },
                  "kafka": {"brokers": "k:9092", "partitions": 12},
                  "shutdown_grace": "1m30s"
                }"#,
            )?;
            let s = load(Some(Path::new("bridge.json"))).expect("valid");
            assert_eq!(s.genesys.api_base_url, "https://api.mypurecloud.ie");
            assert_eq!(s.genesys.max_frame_bytes, 16_777_216);
            assert_eq!(s.kafka.partitions, 12);
            assert_eq!(s.shutdown_grace, Duration::from_secs(90));
            // A JSON syntax error names the file's place, not its text.
            jail.create_file(
                "broken.json",
                r#"{"genesys": {"client_secret": "s3cret-value",}}"#,
            )?;
            let err = load(Some(Path::new("broken.json"))).expect_err("invalid JSON");
            assert!(!err.to_string().contains("s3cret-value"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn file_and_env_layers() {
        Jail::expect_with(|jail| {
            jail.set_env("GENESYS_BRIDGE_KAFKA__BROKERS", "k1:9092,k2:9092");
            jail.set_env("GENESYS_BRIDGE_GENESYS__REDUNDANCY", "2");
            jail.set_env("GENESYS_CLIENT_ID", "from-env");
            let s = load_in_jail(jail, GOOD).expect("valid");
            assert_eq!(s.genesys.api_base_url, "https://api.mypurecloud.ie");
            assert_eq!(s.genesys.login_base_url, "https://login.mypurecloud.ie");
            assert_eq!(s.genesys.client_id, "from-env");
            assert_eq!(s.genesys.redundancy, 2);
            assert_eq!(s.genesys.ping_interval, Duration::from_secs(10));
            assert_eq!(s.genesys.heartbeat_timeout, Duration::from_secs(70));
            assert_eq!(s.reconnect.initial, Duration::from_millis(250));
            assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
            assert_eq!(s.shutdown_grace, Duration::from_secs(20));
            Ok(())
        });
    }

    #[test]
    fn kafka_properties_from_env_keep_their_dots_and_stay_strings() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "GENESYS_BRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD",
                "0123456789",
            );
            jail.set_env("GENESYS_BRIDGE_KAFKA__PROPERTIES__LINGER_MS", "7");
            jail.set_env(
                "genesys_bridge_kafka__properties__sasl_oauthbearer_client_id",
                "bridge",
            );
            let toml = format!(
                "{GOOD}\n[kafka.properties]\n\"linger.ms\" = \"5\"\n\"security.protocol\" = \"SASL_SSL\"\n"
            );
            let s = load_in_jail(jail, &toml).expect("valid");
            let p = &s.kafka.properties;
            assert_eq!(p["sasl.password"], "0123456789");
            assert_eq!(p["linger.ms"], "7", "the environment wins over the file");
            assert_eq!(p["security.protocol"], "SASL_SSL", "the file's others stay");
            assert_eq!(p["sasl.oauthbearer.client.id"], "bridge");
            assert_eq!(p.len(), 4, "{:?}", p.keys());
            assert!(!format!("{:?}", s.kafka).contains("0123456789"));
            Ok(())
        });
    }

    #[test]
    fn a_kafka_property_variable_without_a_name_is_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("GENESYS_BRIDGE_KAFKA__PROPERTIES__", "x");
            let e = load_in_jail(jail, GOOD).expect_err("refused");
            assert_eq!(e.key, "kafka.properties");
            Ok(())
        });
    }

    #[test]
    fn a_kafka_property_value_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        Jail::expect_with(|jail| {
            let var = "GENESYS_BRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD";
            std::env::set_var(var, std::ffi::OsStr::from_bytes(b"s3cr\xfft"));
            let result = load_in_jail(jail, GOOD);
            std::env::remove_var(var);
            let e = result.expect_err("refused");
            assert_eq!(e.key, var);
            assert!(!e.to_string().contains("s3cr"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        Jail::expect_with(|jail| {
            let s = load_in_jail(jail, GOOD).expect("valid");
            let debug = format!("{s:?}");
            assert!(!debug.contains("s3cret-value"), "{debug}");
            assert!(debug.contains("***"));
            let mut raw: FileConfig = figment(Some(Path::new("bridge.toml"))).extract()?;
            raw.genesys.client_secret = Secret::new("s3cret-value");
            let toml = serde_json::to_string(&raw).expect("serializes");
            assert!(!toml.contains("s3cret-value"));
            Ok(())
        });
    }

    #[test]
    fn every_mistake_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("[genesys]\nregion = \"mars\"\n", "genesys.region"),
            ("[genesys]\nclient_id = \"\"\n", "genesys.client_id"),
            ("[genesys]\nclient_secret = \"\"\n", "genesys.client_secret"),
            ("[genesys]\ntopics = []\n", "genesys.topics"),
            ("[genesys]\ntopics = [\"users.x\"]\n", "genesys.topics"),
            ("[genesys]\nredundancy = 3\n", "genesys.redundancy"),
            (
                "[genesys]\nping_interval = \"soon\"\n",
                "genesys.ping_interval",
            ),
            (
                "[genesys]\nheartbeat_timeout = \"5s\"\n",
                "genesys.heartbeat_timeout",
            ),
            (
                "[genesys]\napi_base_url = \"ftp://x\"\nlogin_base_url = \"http://x\"\n",
                "genesys.api_base_url",
            ),
            (
                "[genesys]\nclient_secret_file = \"/nonexistent/s\"\n",
                "genesys.client_secret",
            ),
            (
                "[genesys]\ntopics_file = \"/nonexistent/t\"\n",
                "genesys.topics_file",
            ),
            ("[genesys]\ncolour = \"blue\"\n", "genesys.colour"),
            ("[reconnect]\nmax_delay = \"1ms\"\n", "reconnect.max_delay"),
            ("[kafka]\ntopic_prefix = \"a b\"\n", "kafka.topic_prefix"),
            ("[kafka]\npartitions = 0\n", "kafka.partitions"),
            ("[kafka]\nbatch_wait = \"2s\"\n", "kafka.batch_wait"),
            (
                "[kafka.properties]\n\"sasl..password\" = \"x\"\n",
                "kafka.properties",
            ),
            ("[admin]\nlisten = \"nowhere\"\n", "admin.listen"),
            ("[dedup]\ncapacity = 0\n", "dedup.capacity"),
            ("shutdown_grace = \"0s\"\n", "shutdown_grace"),
            (
                "[reconnect]\nstable_after = \"0s\"\n",
                "reconnect.stable_after",
            ),
            (
                "[genesys]\napi_base_url = \"http://x\"\n",
                "genesys.login_base_url",
            ),
            ("[nonsense]\n", "nonsense"),
        ];
        for (patch, key) in cases {
            Jail::expect_with(|jail| {
                // Later keys in a TOML table cannot repeat earlier ones, so the
                // patch goes into a second file layered over the good one.
                jail.create_file("bridge.toml", GOOD)?;
                jail.create_file("patch.toml", patch)?;
                let raw = figment(Some(Path::new("bridge.toml")))
                    .merge(Toml::file_exact("patch.toml"))
                    .extract::<FileConfig>()
                    .map_err(from_figment)
                    .and_then(validate);
                let err = raw.expect_err(patch);
                assert_eq!(&err.key, key, "{patch}: {err}");
                assert!(!err.to_string().contains("s3cret-value"));
                Ok(())
            });
        }
    }

    #[test]
    fn an_all_digit_secret_from_the_environment_stays_a_string() {
        Jail::expect_with(|jail| {
            jail.set_env("GENESYS_CLIENT_SECRET", "0123456789");
            let s = load_in_jail(jail, &GOOD.replace("client_secret = \"s3cret-value\"", ""))
                .expect("valid");
            assert_eq!(s.genesys.client_secret.expose(), "0123456789");
            Ok(())
        });
    }

    #[test]
    fn kafka_credentials_are_masked() {
        let mut k = KafkaSection::default();
        k.properties
            .insert("sasl.password".into(), "hunter2".into());
        k.properties.insert("linger.ms".into(), "5".into());
        let debug = format!("{k:?}");
        let json = serde_json::to_string(&k).expect("serializes");
        for text in [debug, json] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("linger.ms"));
        }
    }

    #[test]
    fn too_many_topics_for_twenty_channels() {
        Jail::expect_with(|jail| {
            let topics: Vec<String> = (0..19_001)
                .map(|i| format!("\"v2.users.u{i}.presence\""))
                .collect();
            let toml = GOOD.replace(
                "topics = [\"v2.users.7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d.presence\"]",
                &format!("topics = [{}]", topics.join(",")),
            );
            let err = load_in_jail(jail, &toml).expect_err("too many");
            assert_eq!(err.key, "genesys.topics");
            let ok = GOOD.replace(
                "topics = [\"v2.users.7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d.presence\"]",
                &format!("topics = [{}]", topics[..19_000].join(",")),
            );
            assert_eq!(
                load_in_jail(jail, &ok).expect("fits").genesys.topics.len(),
                19_000
            );
            Ok(())
        });
    }
}
