//! What every service's HTTP side shares: problem+json errors, strict JSON and query extractors,
//! idempotency keys and ETags, request metrics, health endpoints, configuration, logs, shutdown.

pub mod auth;
pub mod config;
mod error;
pub mod extract;
pub mod health;
pub mod http_metrics;
pub mod limit;
pub mod openapi;
pub mod replica;
mod reply;
pub mod server;
pub mod telemetry;

pub use error::{ApiError, Problem};
pub use reply::{into_response, json_reply};

/// How a binary ends: success, or its error on one line (`name: what went wrong: why`), never
/// a backtrace, so that a configuration mistake reads as one clear sentence.
pub fn exit(name: &str, result: Result<(), impl std::fmt::Display>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
