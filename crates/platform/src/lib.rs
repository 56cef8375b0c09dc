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
mod reply;
pub mod server;
pub mod telemetry;

pub use error::{ApiError, Problem};
pub use reply::{into_response, json_reply};
