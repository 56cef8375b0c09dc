//! The read cache on Redis, shared by the replicas of a service.
//!
//! Redis is an accelerator, never a source of truth: when it is unreachable a read is a miss
//! (served from the service's state) and a write still succeeds. An invalidation that could not
//! reach Redis leaves it suspect, so before the cache is used again every key under its prefix is
//! deleted: a value cached before a write can never be served after it.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use libertum_store::{Cache, StoreError};
use redis::{AsyncCommands, aio::ConnectionManager};
use tokio::sync::Mutex;

use crate::redact;

/// Metric: cache operations that failed because Redis was unreachable.
pub const REDIS_ERRORS: &str = "libertum_redis_errors_total";

pub struct RedisCache {
    client: redis::Client,
    url: String,
    prefix: String,
    ttl: Duration,
    connection: Mutex<Option<ConnectionManager>>,
    last_attempt: Throttle,
    /// An invalidation was lost: the whole prefix must be cleared before the next use.
    suspect: AtomicBool,
}

impl RedisCache {
    /// A cache under `prefix` on the Redis at `url`. It connects on first use, so the service
    /// starts even when Redis does not answer yet.
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, StoreError> {
        // Every series from zero, so that an alert on their increase sees the first error.
        for op in ["connect", "clear", "ratelimit", "get", "put", "invalidate"] {
            metrics::counter!(REDIS_ERRORS, "op" => op).increment(0);
        }
        Ok(RedisCache {
            client: redis::Client::open(url).map_err(StoreError::backend)?,
            url: redact(url),
            prefix: format!("{prefix}:"),
            ttl,
            connection: Mutex::new(None),
            last_attempt: Default::default(),
            // Entries from before this process started may predate writes it did not see.
            suspect: AtomicBool::new(true),
        })
    }

    pub fn describe(&self) -> String {
        format!("redis:{}", self.url)
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        if !self.last_attempt.due(Duration::from_secs(1)) {
            return None;
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500))
            .set_number_of_retries(1);
        match ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(c) => {
                *slot = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                self.failed("connect", &e);
                None
            }
        }
    }

    fn failed(&self, op: &'static str, e: &redis::RedisError) {
        tracing::warn!(op, error = %e, redis = %self.url, "redis unavailable; serving without the cache");
        metrics::counter!(REDIS_ERRORS, "op" => op).increment(1);
    }

    /// A usable connection: connected, and nothing stale left behind by a lost invalidation.
    async fn ready(&self) -> Option<ConnectionManager> {
        let mut c = self.connection().await?;
        if self.suspect.load(Ordering::Acquire) {
            match self.clear(&mut c).await {
                Ok(()) => self.suspect.store(false, Ordering::Release),
                Err(e) => {
                    self.failed("clear", &e);
                    return None;
                }
            }
        }
        Some(c)
    }

    async fn clear(&self, c: &mut ConnectionManager) -> redis::RedisResult<()> {
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(c)
                .await?;
            if !keys.is_empty() {
                let _: () = c.del(keys).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Whether Redis answers a PING now, for readiness.
    pub async fn ping(&self) -> Result<(), String> {
        let Some(mut c) = self.connection().await else {
            return Err(format!("{} does not answer", self.url));
        };
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Rate-limit counters in Redis, shared by a service's replicas: one key per scope, subject and
/// minute, expiring after two minutes.
#[async_trait]
impl libertum_platform::limit::RateLimiter for RedisCache {
    async fn hit(&self, key: &str, window: u64) -> Option<u64> {
        let mut c = self.connection().await?;
        let key = format!(
            "{}:ratelimit:{key}:{window}",
            self.prefix.trim_end_matches(':')
        );
        match redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .expire(&key, 120)
            .ignore()
            .query_async::<(u64,)>(&mut c)
            .await
        {
            Ok((count,)) => Some(count),
            Err(e) => {
                self.failed("ratelimit", &e);
                None
            }
        }
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Option<Bytes> {
        let mut c = self.ready().await?;
        match c
            .get::<_, Option<Vec<u8>>>(format!("{}{key}", self.prefix))
            .await
        {
            Ok(v) => v.map(Bytes::from),
            Err(e) => {
                self.failed("get", &e);
                None
            }
        }
    }

    async fn put(&self, key: &str, value: Bytes) {
        let Some(mut c) = self.ready().await else {
            return;
        };
        let ttl = self.ttl.as_secs().max(1);
        if let Err(e) = c
            .set_ex::<_, _, ()>(format!("{}{key}", self.prefix), value.as_ref(), ttl)
            .await
        {
            self.failed("put", &e);
        }
    }

    async fn invalidate(&self, key: &str) {
        let deleted = match self.connection().await {
            Some(mut c) => c
                .del::<_, ()>(format!("{}{key}", self.prefix))
                .await
                .map_err(|e| self.failed("invalidate", &e))
                .is_ok(),
            None => false,
        };
        if !deleted {
            self.suspect.store(true, Ordering::Release);
        }
    }
}

/// Rate-limits reconnection attempts.
#[derive(Default)]
struct Throttle(std::sync::Mutex<Option<Instant>>);

impl Throttle {
    fn due(&self, every: Duration) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
