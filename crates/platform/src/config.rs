//! Settings: defaults, overridden by `LIBERTUM_*` environment variables, validated before
//! anything starts. An unknown `LIBERTUM_*` variable is an error, so a typo never goes unnoticed.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

/// How the ledger delivers webhooks to outside subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Tries of one delivery before its event goes to the dead letters.
    pub max_attempts: u32,
    /// Whether loopback, private and link-local targets are allowed (development only).
    pub private_targets: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            max_attempts: 8,
            private_targets: false,
        }
    }
}

/// Every variable, its default and what it does (printed by `libertum --help` and in the README).
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "LIBERTUM_HTTP_ADDR",
        "127.0.0.1:8080",
        "address the HTTP server listens on",
    ),
    (
        "LIBERTUM_DATA_DIR",
        "./data",
        "directory of the embedded store (one redb file per service)",
    ),
    (
        "LIBERTUM_LOG",
        "info",
        "log filter, in tracing-subscriber's EnvFilter syntax",
    ),
    ("LIBERTUM_LOG_FORMAT", "json", "json or text"),
    (
        "LIBERTUM_TOKENS_URL",
        "http://{LIBERTUM_HTTP_ADDR}",
        "base URL of the tokens service, for the ledger's reconciliation",
    ),
    (
        "LIBERTUM_IDEMPOTENCY_RETENTION_HOURS",
        "24",
        "how long a response is kept for retries with the same Idempotency-Key",
    ),
    (
        "LIBERTUM_LEDGER_VERIFY_INTERVAL_SECONDS",
        "3600",
        "how often the ledger re-verifies its whole hash chain as stored, for the libertum_ledger_chain_valid metric; 0 never",
    ),
    (
        "LIBERTUM_WEBHOOK_MAX_ATTEMPTS",
        "8",
        "how many times a webhook delivery is tried (1 s, 2 s, 4 s... apart) before the event goes to the subscription's dead letters",
    ),
    (
        "LIBERTUM_WEBHOOK_PRIVATE_TARGETS",
        "false",
        "true lets webhooks reach loopback, private and link-local addresses: for a development setup only, never in a deployment (a subscriber could reach internal services)",
    ),
    (
        "LIBERTUM_STORE_CACHE_MIB",
        "32",
        "page cache of each service's embedded store (redb), in MiB: what of the data files stays in memory",
    ),
    (
        "LIBERTUM_SNAPSHOT_EVERY_EVENTS",
        "50000",
        "each service writes a snapshot of its state after this many events, so that a start reads the snapshot and only the events after it; 0 not on a count",
    ),
    (
        "LIBERTUM_SNAPSHOT_INTERVAL_SECONDS",
        "300",
        "each service also writes a snapshot this long after the last one if any event came since; 0 not on time",
    ),
    (
        "LIBERTUM_CACHE_ENTRIES",
        "100000",
        "capacity of the in-memory read cache",
    ),
    (
        "LIBERTUM_MONGODB_URI",
        "(none: the embedded store)",
        "MongoDB URI; each service keeps its log in its own database",
    ),
    (
        "LIBERTUM_MONGODB_DATABASE_PREFIX",
        "libertum",
        "databases are named {prefix}_{service}",
    ),
    (
        "LIBERTUM_MONGODB_WRITE_CONCERN",
        "majority",
        "write concern of every commit: majority or a number of nodes",
    ),
    (
        "LIBERTUM_MONGODB_READ_CONCERN",
        "majority",
        "read concern: majority or local",
    ),
    (
        "LIBERTUM_KAFKA_BROKERS",
        "(none: the in-process bus)",
        "Kafka bootstrap servers, host:port[,host:port]",
    ),
    (
        "LIBERTUM_KAFKA_TOPIC_PARTITIONS",
        "3",
        "partitions of the topics created when missing",
    ),
    (
        "LIBERTUM_KAFKA_TOPIC_REPLICATION",
        "1",
        "replication factor of the topics created when missing",
    ),
    (
        "LIBERTUM_KAFKA_ASSETS_TOPIC",
        libertum_events::ASSETS_TOPIC,
        "the topic of the assets service's events",
    ),
    (
        "LIBERTUM_KAFKA_TOKENS_TOPIC",
        libertum_events::TOKENS_TOPIC,
        "the topic of the tokens service's events",
    ),
    (
        "LIBERTUM_AUTH_JWKS_URL",
        "(none: the development signer)",
        "the identity provider's JWKS URL (Entra ID: https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys)",
    ),
    (
        "LIBERTUM_AUTH_ISSUER",
        crate::auth::DEV_ISSUER,
        "the tokens' required iss (Entra ID: https://login.microsoftonline.com/{tenant}/v2.0)",
    ),
    (
        "LIBERTUM_AUTH_AUDIENCE",
        crate::auth::DEV_AUDIENCE,
        "the tokens' required aud (Entra ID: the API's application id)",
    ),
    (
        "LIBERTUM_AUTH_DEV_SECRET",
        "(none: {LIBERTUM_DATA_DIR}/development-signing.key, made on first use)",
        "the development signer's secret, at least 32 characters; ignored with a JWKS URL",
    ),
    (
        "LIBERTUM_AUTH_INSECURE_DEV_SIGNER",
        "false",
        "true lets the development signer run with production backends or on a non-loopback address: anyone with its secret is every role; never for a deployment",
    ),
    (
        "LIBERTUM_HTTP_HEADER_TIMEOUT_SECONDS",
        "10",
        "a request's head must arrive within this; also how long an idle connection is kept",
    ),
    (
        "LIBERTUM_HTTP_BODY_TIMEOUT_SECONDS",
        "30",
        "a request's body must arrive within this (408 beyond)",
    ),
    (
        "LIBERTUM_HTTP_MAX_CONNECTIONS",
        "1024",
        "connections served at once; beyond, new ones are closed at once",
    ),
    (
        "LIBERTUM_METRICS_ADDR",
        "(none: /metrics on LIBERTUM_HTTP_ADDR)",
        "serve /metrics on this address instead, e.g. 0.0.0.0:9090 for the monitoring network only",
    ),
    (
        "LIBERTUM_OTLP_ENDPOINT",
        "(none: no spans exported)",
        "OTLP/HTTP (protobuf) URL spans are sent to, e.g. http://otlp.monitoring.svc.cluster.local:4318/v1/traces (a collector that forwards to Tempo or Azure Monitor); a request's trace then goes on through the events and Kafka to the ledger entry",
    ),
    (
        "LIBERTUM_TRACE_SAMPLE_RATIO",
        "1",
        "share of the traces that start here which are exported, from 0 to 1; a request that comes with a traceparent follows its caller's decision",
    ),
    (
        "LIBERTUM_RATE_LIMIT_PER_PRINCIPAL",
        "1200",
        "requests per minute one principal may send each service (0: no limit); 429 beyond",
    ),
    (
        "LIBERTUM_RATE_LIMIT_PER_ADDRESS",
        "2400",
        "requests per minute one client address may send each service (0: no limit); 429 beyond",
    ),
    (
        "LIBERTUM_CLIENT_ADDRESS_HEADER",
        "(none: the TCP peer)",
        "the header whose last entry is the client address, set by a trusted proxy (e.g. x-forwarded-for)",
    ),
    (
        "LIBERTUM_LEASE_TTL_MILLIS",
        "6000",
        "with MongoDB, a service runs as replicas: the one holding the lease owns the writes; a lease not renewed for this long is taken by another replica (the failover time)",
    ),
    (
        "LIBERTUM_SHUTDOWN_DELAY_MILLIS",
        "1000",
        "on SIGTERM a service binary says unready and keeps serving this long (handing its writes over meanwhile) before it stops accepting, so a front that checks /readyz sends nothing more to it",
    ),
    (
        "LIBERTUM_ADVERTISE_ADDR",
        "(LIBERTUM_HTTP_ADDR, 127.0.0.1 for an unspecified address)",
        "host:port where the other replicas send this replica the writes it owns (Kubernetes: the pod's IP and port)",
    ),
    (
        "LIBERTUM_REDIS_URL",
        "(none: the in-memory cache)",
        "Redis URL of the read cache shared by a service's replicas",
    ),
    (
        "LIBERTUM_CACHE_TTL_SECONDS",
        "300",
        "how long a read stays in Redis at most",
    ),
];

/// Where the production backends are; `None` means the embedded default.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    pub mongodb_uri: Option<String>,
    pub mongodb_database_prefix: String,
    pub mongodb_write_concern: String,
    pub mongodb_read_concern: String,
    pub kafka_brokers: Option<String>,
    pub kafka_partitions: i32,
    pub kafka_replication: i32,
    pub topics: libertum_events::Topics,
    /// How long a lease of a service's writes lasts without renewal.
    pub lease_ttl: std::time::Duration,
    /// Where the other replicas reach this one.
    pub advertise_addr: String,
    pub redis_url: Option<String>,
    pub cache_ttl_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub tokens_url: String,
    pub idempotency_retention_hours: u64,
    /// Seconds between the ledger's verifications of its chain; 0: never.
    pub ledger_verify_interval_seconds: u64,
    pub webhooks: WebhookSettings,
    /// Page cache of each embedded store, in MiB.
    pub store_cache_mib: u64,
    /// Events after which, and seconds after which, a service snapshots its state; 0: never.
    pub snapshot_every_events: u64,
    pub snapshot_interval_seconds: u64,
    pub cache_entries: usize,
    pub backends: Backends,
    pub auth: crate::auth::AuthSettings,
    /// Requests per minute per principal and per client address; 0 is no limit.
    pub rate_limit_per_principal: u64,
    pub rate_limit_per_address: u64,
    pub client_address_header: Option<axum::http::HeaderName>,
    /// Where `/metrics` is served apart from the API; `None`: on `http_addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// Timeouts and the connection cap of the HTTP server.
    pub connection_limits: crate::server::ConnectionLimits,
    /// How long a service binary keeps serving, unready, after SIGTERM.
    pub shutdown_delay: std::time::Duration,
    /// Where spans are exported (OTLP over HTTP); `None`: nowhere.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces exported, from 0 to 1.
    pub trace_sample_ratio: f64,
}

/// What is wrong with the configuration: every problem at once.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads settings from `vars` (only those starting with `LIBERTUM_` are looked at).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("LIBERTUM_"))
            .collect();
        let mut problems = Vec::new();
        for key in vars.keys() {
            if !VARIABLES.iter().any(|(name, _, _)| name == key) {
                problems.push(format!(
                    "{key} is not a known setting (`libertum --help` lists them)"
                ));
            }
        }
        let get = |key: &str| -> String {
            vars.get(key).cloned().unwrap_or_else(|| {
                VARIABLES
                    .iter()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, d, _)| d.to_string())
                    .unwrap_or_default()
            })
        };
        let http_addr = get("LIBERTUM_HTTP_ADDR")
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| {
                problems.push(format!(
                    "LIBERTUM_HTTP_ADDR must be host:port with an IP address ({e})"
                ));
                SocketAddr::from(([127, 0, 0, 1], 8080))
            });
        let data_dir = PathBuf::from(get("LIBERTUM_DATA_DIR"));
        if data_dir.as_os_str().is_empty() {
            problems.push("LIBERTUM_DATA_DIR must not be empty".into());
        }
        let log_format = match get("LIBERTUM_LOG_FORMAT").as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                problems.push(format!(
                    "LIBERTUM_LOG_FORMAT must be json or text, not {other:?}"
                ));
                LogFormat::Json
            }
        };
        let log_filter = get("LIBERTUM_LOG");
        if tracing_subscriber::EnvFilter::try_new(&log_filter).is_err() {
            problems.push(format!(
                "LIBERTUM_LOG is not a valid filter: {log_filter:?}"
            ));
        }
        let tokens_url = vars
            .get("LIBERTUM_TOKENS_URL")
            .cloned()
            .unwrap_or_else(|| format!("http://{http_addr}"));
        if !(tokens_url.starts_with("http://") || tokens_url.starts_with("https://")) {
            problems.push("LIBERTUM_TOKENS_URL must start with http:// or https://".into());
        }
        let mut number = |key: &str, min: u64, max: u64| -> u64 {
            match get(key).parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    problems.push(format!("{key} must be a whole number from {min} to {max}"));
                    min
                }
            }
        };
        let idempotency_retention_hours =
            number("LIBERTUM_IDEMPOTENCY_RETENTION_HOURS", 1, 24 * 365);
        let ledger_verify_interval_seconds =
            number("LIBERTUM_LEDGER_VERIFY_INTERVAL_SECONDS", 0, 7 * 24 * 3600);
        let store_cache_mib = number("LIBERTUM_STORE_CACHE_MIB", 1, 1 << 20);
        let webhook_max_attempts = number("LIBERTUM_WEBHOOK_MAX_ATTEMPTS", 1, 30) as u32;

        let snapshot_every_events = number("LIBERTUM_SNAPSHOT_EVERY_EVENTS", 0, 1_000_000_000);
        let snapshot_interval_seconds =
            number("LIBERTUM_SNAPSHOT_INTERVAL_SECONDS", 0, 7 * 24 * 3600);
        let cache_entries = number("LIBERTUM_CACHE_ENTRIES", 1, 100_000_000) as usize;
        let kafka_partitions = number("LIBERTUM_KAFKA_TOPIC_PARTITIONS", 1, 10_000) as i32;
        let kafka_replication = number("LIBERTUM_KAFKA_TOPIC_REPLICATION", 1, 100) as i32;
        let cache_ttl_seconds = number("LIBERTUM_CACHE_TTL_SECONDS", 1, 7 * 24 * 3600);
        let lease_ttl =
            std::time::Duration::from_millis(number("LIBERTUM_LEASE_TTL_MILLIS", 300, 600_000));
        let shutdown_delay =
            std::time::Duration::from_millis(number("LIBERTUM_SHUTDOWN_DELAY_MILLIS", 0, 60_000));
        let rate_limit_per_principal = number("LIBERTUM_RATE_LIMIT_PER_PRINCIPAL", 0, 10_000_000);
        let rate_limit_per_address = number("LIBERTUM_RATE_LIMIT_PER_ADDRESS", 0, 10_000_000);
        let connection_limits = crate::server::ConnectionLimits {
            header_timeout: std::time::Duration::from_secs(number(
                "LIBERTUM_HTTP_HEADER_TIMEOUT_SECONDS",
                1,
                3600,
            )),
            body_timeout: std::time::Duration::from_secs(number(
                "LIBERTUM_HTTP_BODY_TIMEOUT_SECONDS",
                1,
                3600,
            )),
            max_connections: number("LIBERTUM_HTTP_MAX_CONNECTIONS", 1, 1_000_000) as usize,
        };
        let set = |key: &str| vars.get(key).filter(|v| !v.is_empty()).cloned();
        let mongodb_uri = set("LIBERTUM_MONGODB_URI");
        if let Some(uri) = &mongodb_uri
            && !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://"))
        {
            problems
                .push("LIBERTUM_MONGODB_URI must start with mongodb:// or mongodb+srv://".into());
        }
        let redis_url = set("LIBERTUM_REDIS_URL");
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            problems.push("LIBERTUM_REDIS_URL must start with redis:// or rediss://".into());
        }
        let topics = libertum_events::Topics {
            assets: get("LIBERTUM_KAFKA_ASSETS_TOPIC"),
            tokens: get("LIBERTUM_KAFKA_TOKENS_TOPIC"),
        };
        for (key, topic) in [
            ("LIBERTUM_KAFKA_ASSETS_TOPIC", &topics.assets),
            ("LIBERTUM_KAFKA_TOKENS_TOPIC", &topics.tokens),
        ] {
            // Kafka's rule for topic names, less the room the `.dlq` suffix takes.
            if topic.is_empty()
                || topic.len() > 245
                || topic == "."
                || topic == ".."
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                problems.push(format!(
                    "{key} must be 1 to 245 characters of letters, digits, '.', '_' and '-'"
                ));
            }
        }
        if topics.assets == topics.tokens {
            problems.push(
                "LIBERTUM_KAFKA_ASSETS_TOPIC and LIBERTUM_KAFKA_TOKENS_TOPIC must differ".into(),
            );
        }
        let kafka_brokers = set("LIBERTUM_KAFKA_BROKERS");
        if let Some(brokers) = &kafka_brokers
            && brokers.split(',').any(|b| !b.trim().contains(':'))
        {
            problems.push("LIBERTUM_KAFKA_BROKERS must be host:port[,host:port...]".into());
        }
        let mongodb_write_concern = get("LIBERTUM_MONGODB_WRITE_CONCERN");
        if mongodb_write_concern != "majority" && mongodb_write_concern.parse::<u32>().is_err() {
            problems.push(
                "LIBERTUM_MONGODB_WRITE_CONCERN must be majority or a number of nodes".into(),
            );
        }
        let mongodb_read_concern = get("LIBERTUM_MONGODB_READ_CONCERN");
        if !["majority", "local"].contains(&mongodb_read_concern.as_str()) {
            problems.push("LIBERTUM_MONGODB_READ_CONCERN must be majority or local".into());
        }
        let mongodb_database_prefix = get("LIBERTUM_MONGODB_DATABASE_PREFIX");
        if mongodb_database_prefix.is_empty()
            || !mongodb_database_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems
                .push("LIBERTUM_MONGODB_DATABASE_PREFIX must be letters, digits, _ or -".into());
        }
        let client_address_header = match set("LIBERTUM_CLIENT_ADDRESS_HEADER") {
            None => None,
            Some(name) => match axum::http::HeaderName::try_from(name.to_ascii_lowercase()) {
                Ok(name) => Some(name),
                Err(_) => {
                    problems.push("LIBERTUM_CLIENT_ADDRESS_HEADER is not a header name".into());
                    None
                }
            },
        };
        let metrics_addr = match set("LIBERTUM_METRICS_ADDR") {
            None => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!("LIBERTUM_METRICS_ADDR is not host:port: {a:?}"));
                    None
                }
            },
        };
        let otlp_endpoint = set("LIBERTUM_OTLP_ENDPOINT");
        if let Some(url) = &otlp_endpoint
            && !reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http" && u.has_host())
        {
            problems.push(format!(
                "LIBERTUM_OTLP_ENDPOINT must be an http:// URL (a collector in the cluster), not {url:?}"
            ));
        }
        let trace_sample_ratio = match get("LIBERTUM_TRACE_SAMPLE_RATIO").parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                problems.push("LIBERTUM_TRACE_SAMPLE_RATIO must be a number from 0 to 1".into());
                1.0
            }
        };
        let jwks_url = set("LIBERTUM_AUTH_JWKS_URL");
        if let Some(url) = &jwks_url {
            let secure = match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "https" => u.host().is_some(),
                Ok(u) if u.scheme() == "http" => u.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }),
                _ => false,
            };
            if !secure {
                problems.push(
                    "LIBERTUM_AUTH_JWKS_URL must be an https:// URL (http:// only on loopback)"
                        .into(),
                );
            }
            for key in ["LIBERTUM_AUTH_ISSUER", "LIBERTUM_AUTH_AUDIENCE"] {
                if !vars.contains_key(key) {
                    problems.push(format!(
                        "{key} must be set with LIBERTUM_AUTH_JWKS_URL: the identity provider's, not the development default"
                    ));
                }
            }
        }
        let dev_secret = set("LIBERTUM_AUTH_DEV_SECRET");
        if dev_secret.as_ref().is_some_and(|s| s.len() < 32) {
            problems.push("LIBERTUM_AUTH_DEV_SECRET must be at least 32 characters".into());
        }
        if jwks_url.is_none()
            && dev_secret.is_none()
            && (mongodb_uri.is_some() || kafka_brokers.is_some())
        {
            // Services on shared backends must share their signer, and a deployment must not
            // fall back to a development one unawares.
            problems.push(
                "with LIBERTUM_MONGODB_URI or LIBERTUM_KAFKA_BROKERS set, set LIBERTUM_AUTH_JWKS_URL (the identity provider) or, for a development setup, LIBERTUM_AUTH_DEV_SECRET".into(),
            );
        }
        let webhook_private_targets = match get("LIBERTUM_WEBHOOK_PRIVATE_TARGETS").as_str() {
            "true" => true,
            "false" => false,
            _ => {
                problems.push("LIBERTUM_WEBHOOK_PRIVATE_TARGETS must be true or false".into());
                false
            }
        };
        let insecure_dev_signer = match get("LIBERTUM_AUTH_INSECURE_DEV_SIGNER").as_str() {
            "true" => true,
            "false" => false,
            _ => {
                problems.push("LIBERTUM_AUTH_INSECURE_DEV_SIGNER must be true or false".into());
                false
            }
        };
        let exposed = mongodb_uri.is_some()
            || kafka_brokers.is_some()
            || redis_url.is_some()
            || !http_addr.ip().is_loopback();
        if jwks_url.is_none() && exposed && !insecure_dev_signer {
            // Whoever holds the development secret (a file, a compose file, an environment
            // variable) is every role: that may not reach a network or shared data unawares.
            problems.push(format!(
                "the development signer (no LIBERTUM_AUTH_JWKS_URL) is refused with production backends or a non-loopback LIBERTUM_HTTP_ADDR ({http_addr}): set LIBERTUM_AUTH_JWKS_URL for a deployment, or LIBERTUM_AUTH_INSECURE_DEV_SIGNER=true for a development setup"
            ));
        }
        let auth = crate::auth::AuthSettings {
            jwks_url,
            issuer: get("LIBERTUM_AUTH_ISSUER"),
            audience: get("LIBERTUM_AUTH_AUDIENCE"),
            dev_secret,
        };
        for (key, value) in [
            ("LIBERTUM_AUTH_ISSUER", &auth.issuer),
            ("LIBERTUM_AUTH_AUDIENCE", &auth.audience),
        ] {
            if value.is_empty() {
                problems.push(format!("{key} must not be empty"));
            }
        }
        let backends = Backends {
            mongodb_uri,
            mongodb_database_prefix,
            mongodb_write_concern,
            mongodb_read_concern,
            kafka_brokers,
            kafka_partitions,
            kafka_replication,
            topics,
            lease_ttl,
            advertise_addr: set("LIBERTUM_ADVERTISE_ADDR").unwrap_or_else(|| {
                let ip = if http_addr.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    http_addr.ip()
                };
                SocketAddr::new(ip, http_addr.port()).to_string()
            }),
            redis_url,
            cache_ttl_seconds,
        };
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Settings {
            http_addr,
            data_dir,
            log_filter,
            log_format,
            tokens_url: tokens_url.trim_end_matches('/').to_owned(),
            idempotency_retention_hours,
            ledger_verify_interval_seconds,
            webhooks: WebhookSettings {
                max_attempts: webhook_max_attempts,
                private_targets: webhook_private_targets,
            },
            store_cache_mib,
            snapshot_every_events,
            snapshot_interval_seconds,
            cache_entries,
            backends,
            auth,
            rate_limit_per_principal,
            rate_limit_per_address,
            client_address_header,
            metrics_addr,
            connection_limits,
            shutdown_delay,
            otlp_endpoint,
            trace_sample_ratio,
        })
    }

    /// Settings for a test: port 0 on loopback, data under `dir`.
    pub fn for_test(dir: &std::path::Path) -> Self {
        Settings {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.to_owned(),
            log_filter: "warn".into(),
            log_format: LogFormat::Text,
            tokens_url: String::new(),
            idempotency_retention_hours: 24,
            ledger_verify_interval_seconds: 0,
            webhooks: WebhookSettings {
                max_attempts: 8,
                private_targets: true,
            },
            store_cache_mib: 32,
            snapshot_every_events: 50_000,
            snapshot_interval_seconds: 300,
            cache_entries: 10_000,
            backends: Backends::default(),
            auth: crate::auth::AuthSettings {
                dev_secret: Some(crate::auth::TEST_SECRET.to_owned()),
                ..crate::auth::AuthSettings::default()
            },
            rate_limit_per_principal: 0,
            rate_limit_per_address: 0,
            client_address_header: None,
            metrics_addr: None,
            connection_limits: crate::server::ConnectionLimits::default(),
            shutdown_delay: std::time::Duration::ZERO,
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::from_vars(vars(&[("PATH", "/bin")])).expect("valid");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.tokens_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn production_backends_are_chosen_by_their_variables() {
        let s = Settings::from_vars(vars(&[])).expect("valid");
        assert!(
            s.backends.mongodb_uri.is_none()
                && s.backends.kafka_brokers.is_none()
                && s.backends.redis_url.is_none()
        );
        let s = Settings::from_vars(vars(&[
            ("LIBERTUM_MONGODB_URI", "mongodb://db:27017/?replicaSet=rs0"),
            ("LIBERTUM_KAFKA_BROKERS", "k1:9092,k2:9092"),
            ("LIBERTUM_REDIS_URL", "redis://cache:6379"),
            (
                "LIBERTUM_AUTH_DEV_SECRET",
                "a-development-secret-of-32-bytes!!",
            ),
            ("LIBERTUM_AUTH_INSECURE_DEV_SIGNER", "true"),
        ]))
        .expect("valid");
        assert_eq!(s.backends.mongodb_write_concern, "majority");
        assert_eq!(s.backends.kafka_brokers.as_deref(), Some("k1:9092,k2:9092"));
        let err = Settings::from_vars(vars(&[
            ("LIBERTUM_MONGODB_URI", "postgres://x"),
            ("LIBERTUM_KAFKA_BROKERS", "k1"),
            ("LIBERTUM_REDIS_URL", "http://x"),
            ("LIBERTUM_MONGODB_WRITE_CONCERN", "most"),
            (
                "LIBERTUM_AUTH_DEV_SECRET",
                "a-development-secret-of-32-bytes!!",
            ),
            ("LIBERTUM_AUTH_INSECURE_DEV_SIGNER", "true"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn trace_settings_are_checked() {
        let dev = [
            (
                "LIBERTUM_AUTH_DEV_SECRET",
                "a-development-secret-of-32-bytes!!",
            ),
            ("LIBERTUM_AUTH_INSECURE_DEV_SIGNER", "true"),
        ];
        let s = Settings::from_vars(vars(&dev)).expect("valid");
        assert_eq!((s.otlp_endpoint, s.trace_sample_ratio), (None, 1.0));
        let mut traced = dev.to_vec();
        traced.push((
            "LIBERTUM_OTLP_ENDPOINT",
            "http://alloy.monitoring:4318/v1/traces",
        ));
        traced.push(("LIBERTUM_TRACE_SAMPLE_RATIO", "0.05"));
        let s = Settings::from_vars(vars(&traced)).expect("valid");
        assert_eq!(
            s.otlp_endpoint.as_deref(),
            Some("http://alloy.monitoring:4318/v1/traces")
        );
        assert_eq!(s.trace_sample_ratio, 0.05);
        for (endpoint, ratio) in [
            ("alloy:4318", "0.5"),
            ("https://collector.example/v1/traces", "0.5"),
            ("http://alloy:4318/v1/traces", "1.5"),
            ("http://alloy:4318/v1/traces", "-0.1"),
            ("http://alloy:4318/v1/traces", "half"),
        ] {
            let mut bad = dev.to_vec();
            bad.push(("LIBERTUM_OTLP_ENDPOINT", endpoint));
            bad.push(("LIBERTUM_TRACE_SAMPLE_RATIO", ratio));
            let err = Settings::from_vars(vars(&bad)).expect_err("invalid");
            assert_eq!(err.0.len(), 1, "{endpoint} {ratio}: {err}");
        }
    }

    #[test]
    fn authentication_settings_are_checked() {
        let entra = [
            (
                "LIBERTUM_AUTH_JWKS_URL",
                "https://login.microsoftonline.com/t/discovery/v2.0/keys",
            ),
            (
                "LIBERTUM_AUTH_ISSUER",
                "https://login.microsoftonline.com/t/v2.0",
            ),
            ("LIBERTUM_AUTH_AUDIENCE", "api://libertum"),
            ("LIBERTUM_MONGODB_URI", "mongodb://db:27017/"),
        ];
        let s = Settings::from_vars(vars(&entra)).expect("valid");
        assert_eq!(s.auth.audience, "api://libertum");
        for (url, ok) in [
            ("http://127.0.0.1:9000/keys", true),
            ("http://[::1]:9000/keys", true),
            ("http://localhost/keys", true),
            ("http://idp.example/keys", false),
            ("http://127.0.0.1.evil.example/keys", false),
            ("http://localhost@evil.example/keys", false),
            ("ftp://idp.example/keys", false),
        ] {
            let mut v = entra.to_vec();
            v[0].1 = url;
            assert_eq!(Settings::from_vars(vars(&v)).is_ok(), ok, "{url}");
        }
        let err = Settings::from_vars(vars(&entra[..1])).expect_err("issuer and audience");
        assert_eq!(err.0.len(), 2, "{err}");
        let err = Settings::from_vars(vars(&[("LIBERTUM_KAFKA_BROKERS", "k:9092")]))
            .expect_err("shared backends need a shared signer");
        assert!(err.0[0].contains("LIBERTUM_AUTH_JWKS_URL"), "{err}");
        let err = Settings::from_vars(vars(&[("LIBERTUM_AUTH_DEV_SECRET", "short")]))
            .expect_err("too short");
        assert!(err.0[0].contains("32"), "{err}");
    }

    #[test]
    fn the_development_signer_needs_an_explicit_opt_in_beyond_one_machine() {
        let secret = (
            "LIBERTUM_AUTH_DEV_SECRET",
            "a-development-secret-of-32-bytes!!",
        );
        assert!(
            Settings::from_vars(vars(&[secret])).is_ok(),
            "loopback alone"
        );
        for exposed in [
            ("LIBERTUM_HTTP_ADDR", "0.0.0.0:8080"),
            ("LIBERTUM_HTTP_ADDR", "[::]:8080"),
            ("LIBERTUM_MONGODB_URI", "mongodb://db:27017/"),
            ("LIBERTUM_KAFKA_BROKERS", "k:9092"),
            ("LIBERTUM_REDIS_URL", "redis://cache:6379"),
        ] {
            let err = Settings::from_vars(vars(&[secret, exposed])).expect_err("refused");
            assert!(
                err.to_string()
                    .contains("LIBERTUM_AUTH_INSECURE_DEV_SIGNER=true"),
                "{exposed:?}: {err}"
            );
            Settings::from_vars(vars(&[
                secret,
                exposed,
                ("LIBERTUM_AUTH_INSECURE_DEV_SIGNER", "true"),
            ]))
            .expect("the opt-in allows it");
        }
        let err = Settings::from_vars(vars(&[("LIBERTUM_AUTH_INSECURE_DEV_SIGNER", "yes")]))
            .expect_err("true or false only");
        assert!(err.0[0].contains("true or false"), "{err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }

    #[test]
    fn topic_names_are_configurable_and_checked() {
        let s = Settings::from_vars(vars(&[])).expect("valid");
        assert_eq!(s.backends.topics, libertum_events::Topics::default());
        let s = Settings::from_vars(vars(&[
            ("LIBERTUM_KAFKA_ASSETS_TOPIC", "prod.assets-v2"),
            ("LIBERTUM_KAFKA_TOKENS_TOPIC", "prod.tokens_v2"),
        ]))
        .expect("valid");
        assert_eq!(
            s.backends.topics.all(),
            ["prod.assets-v2", "prod.tokens_v2"]
        );
        let err = Settings::from_vars(vars(&[
            ("LIBERTUM_KAFKA_ASSETS_TOPIC", "has space"),
            ("LIBERTUM_KAFKA_TOKENS_TOPIC", ""),
        ]))
        .expect_err("invalid");
        assert!(
            err.0.len() == 2
                && err.0[0].contains("LIBERTUM_KAFKA_ASSETS_TOPIC")
                && err.0[1].contains("LIBERTUM_KAFKA_TOKENS_TOPIC"),
            "{err}"
        );
        let err = Settings::from_vars(vars(&[
            ("LIBERTUM_KAFKA_ASSETS_TOPIC", "same"),
            ("LIBERTUM_KAFKA_TOKENS_TOPIC", "same"),
        ]))
        .expect_err("invalid");
        assert!(err.0[0].contains("must differ"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Settings::from_vars(vars(&[
            ("LIBERTUM_HTTP_ADDR", "localhost"),
            ("LIBERTUM_LOG_FORMAT", "xml"),
            ("LIBERTUM_HTTP_ADRR", "1"),
        ]))
        .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(
            err.to_string()
                .contains("LIBERTUM_HTTP_ADRR is not a known setting")
        );
    }
}
