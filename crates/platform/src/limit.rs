//! Rate limits per client address and per principal, in fixed one-minute windows counted in
//! Redis (shared by a service's replicas) or in memory (one process). Over the limit: 429 with
//! `Retry-After`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{ApiError, auth::Principal};

/// The window every limit counts in.
pub const WINDOW: Duration = Duration::from_secs(60);
pub const RATE_LIMITED: &str = "libertum_http_rate_limited_total";

/// Counts hits per key and window.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Adds one hit to `key` in window `window` (its index since the epoch) and returns the
    /// window's count so far, or `None` if the counter cannot be reached.
    async fn hit(&self, key: &str, window: u64) -> Option<u64>;
}

/// Counters in this process's memory, at most a fixed number of keys: past it, the keys seen
/// least (one-off addresses, say) are forgotten one by one, while the busy ones (a client over
/// its limit) keep their counts.
pub struct MemoryLimiter {
    counts: parking_lot::Mutex<quick_cache::unsync::Cache<String, (u64, u64)>>,
}

impl MemoryLimiter {
    /// A limiter that remembers up to `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        MemoryLimiter {
            counts: parking_lot::Mutex::new(quick_cache::unsync::Cache::new(keys)),
        }
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter::with_capacity(100_000)
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn hit(&self, key: &str, window: u64) -> Option<u64> {
        let mut counts = self.counts.lock();
        if let Some(mut entry) = counts.get_mut(key) {
            if entry.0 != window {
                *entry = (window, 0);
            }
            entry.1 += 1;
            return Some(entry.1);
        }
        counts.insert(key.to_owned(), (window, 1));
        Some(1)
    }
}

/// The limits a service applies; a limit of 0 is off.
#[derive(Clone)]
pub struct RateLimits {
    pub limiter: Arc<dyn RateLimiter>,
    /// Requests per minute from one principal (the token's subject).
    pub per_principal: u64,
    /// Requests per minute from one client address.
    pub per_address: u64,
    /// Where the client address is when a proxy stands in front (its last entry, the one the
    /// trusted ingress appended); `None`: the TCP peer.
    pub address_header: Option<HeaderName>,
}

impl RateLimits {
    /// No limits.
    pub fn off() -> Self {
        RateLimits {
            limiter: Arc::new(MemoryLimiter::default()),
            per_principal: 0,
            per_address: 0,
            address_header: None,
        }
    }

    fn address(&self, request: &Request) -> String {
        let from_proxy = self.address_header.as_ref().and_then(|name| {
            request
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .rfind(|v| !v.is_empty())
                // Only an address counts: anything else is the peer's, not a key of its choice.
                .and_then(|v| v.parse::<IpAddr>().ok())
        });
        let ip = from_proxy.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
        match ip {
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                // One IPv6 host usually holds a whole /64: it counts as one address.
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
            Some(ip) => ip.to_string(),
            None => "unknown".to_owned(),
        }
    }

    /// `None` if under `limit`, else the wait until the next window.
    async fn check(&self, scope: &'static str, key: &str, limit: u64) -> Option<Duration> {
        if limit == 0 {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let window = now.as_secs() / WINDOW.as_secs();
        // Unreachable counters let requests through: the limit guards capacity, and a Redis
        // outage must not take the service down with it (readiness says degraded).
        let count = self.limiter.hit(&format!("{scope}:{key}"), window).await?;
        if count <= limit {
            return None;
        }
        metrics::counter!(RATE_LIMITED, "scope" => scope).increment(1);
        let next = Duration::from_secs((window + 1) * WINDOW.as_secs());
        Some(next.saturating_sub(now).max(Duration::from_secs(1)))
    }
}

fn too_many(scope: &str, wait: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this {scope}; retry after the Retry-After seconds"),
    )
    .into_response();
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Before authentication: limits each client address, so that guessing tokens is limited too.
/// The refusal, if any.
pub fn per_address(
    limits: &RateLimits,
    request: &Request,
) -> impl Future<Output = Option<Response>> + Send + 'static {
    let address = limits.address(request);
    let limits = limits.clone();
    async move { address_refusal(&limits, address).await }
}

async fn address_refusal(limits: &RateLimits, address: String) -> Option<Response> {
    let wait = limits
        .check("address", &address, limits.per_address)
        .await?;
    Some(too_many("address", wait))
}

/// After authentication: limits each principal, wherever it calls from. The refusal, if any.
pub fn per_principal(
    limits: &RateLimits,
    request: &Request,
) -> impl Future<Output = Option<Response>> + Send + 'static {
    let subject = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.subject.clone());
    let limits = limits.clone();
    async move {
        let wait = limits
            .check("principal", &subject?, limits.per_principal)
            .await?;
        Some(too_many("principal", wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_new_keys_does_not_reset_a_busy_clients_count() {
        let limiter = MemoryLimiter::with_capacity(1_000);
        let mut expected = 0;
        for i in 0..20_000u64 {
            if i % 10 == 0 {
                expected += 1;
                assert_eq!(
                    limiter.hit("address:203.0.113.7", 1).await,
                    Some(expected),
                    "after {i} other keys"
                );
            }
            limiter.hit(&format!("address:one-off-{i}"), 1).await;
        }
        assert_eq!(expected, 2_000);
        assert!(limiter.counts.lock().len() <= 1_000, "bounded");
        // A new window starts the count again.
        assert_eq!(limiter.hit("address:203.0.113.7", 2).await, Some(1));
    }
}
