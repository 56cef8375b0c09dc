//! Settings: defaults, overridden by `LIBERTUM_*` environment variables, validated before
//! anything starts. An unknown `LIBERTUM_*` variable is an error, so a typo never goes unnoticed.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

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
        "LIBERTUM_CACHE_ENTRIES",
        "100000",
        "capacity of the in-memory read cache",
    ),
];

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
    pub cache_entries: usize,
}

/// What is wrong with the configuration: every problem at once.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
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
                problems.push(format!("{key} is not a known setting (known: {})", known()));
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
        let cache_entries = number("LIBERTUM_CACHE_ENTRIES", 1, 100_000_000) as usize;
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
            cache_entries,
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
            cache_entries: 10_000,
        }
    }
}

fn known() -> String {
    VARIABLES
        .iter()
        .map(|(k, _, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
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
