//! The read cache on Redis, shared by the replicas of a service.
//!
//! Redis is an accelerator, never a source of truth: when it is unreachable a read is a miss
//! (served from the service's state) and a write still succeeds. An invalidation that could not
//! reach Redis leaves it suspect, so before the cache is used again every key under its prefix is
//! deleted: a value cached before a write can never be served after it.
//!
//! Each key holds its subject's version (20 digits), a tag (`v` a value, `t` the mark an
//! invalidation leaves) and the value. One script sets a key only if what it holds sorts below
//! the new version and tag, so a replica that read an older state cannot put back what an
//! invalidation removed, whatever the order the two reach Redis in. Marks expire with the TTL.

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

/// Sets `KEYS[1]` to `ARGV[1] .. ARGV[2]` for `ARGV[3]` seconds unless its version and tag
/// (the first 21 bytes) are at least `ARGV[1]`.
const SET_IF_NEWER: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 21) >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'EX', ARGV[3])
return 1
";

/// Deletes the keys in `KEYS` that hold a value, keeping invalidation marks.
const DROP_VALUES: &str = r"
for _, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if held and string.sub(held, 21, 21) == 'v' then redis.call('DEL', key) end
end
return 0
";

/// The version and tag that lead a stored entry.
fn stamp(version: u64, tag: char) -> String {
    format!("{version:020}{tag}")
}

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
                // Values only: the marks still stop a late put of what they invalidated.
                let drop_values = redis::Script::new(DROP_VALUES);
                let mut script = drop_values.prepare_invoke();
                for key in &keys {
                    script.key(key);
                }
                let _: i64 = script.invoke_async(c).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn set_if_newer(
        &self,
        c: &mut ConnectionManager,
        key: &str,
        stamp: &str,
        value: &[u8],
    ) -> redis::RedisResult<()> {
        let _: i64 = redis::Script::new(SET_IF_NEWER)
            .key(format!("{}{key}", self.prefix))
            .arg(stamp)
            .arg(value)
            .arg(self.ttl.as_secs().max(1))
            .invoke_async(c)
            .await?;
        Ok(())
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
            Ok(Some(held)) if held.len() > 20 && held[20] == b'v' => {
                Some(Bytes::from(held).slice(21..))
            }
            Ok(_) => None,
            Err(e) => {
                self.failed("get", &e);
                None
            }
        }
    }

    async fn put(&self, key: &str, version: u64, value: Bytes) {
        let Some(mut c) = self.ready().await else {
            return;
        };
        if let Err(e) = self
            .set_if_newer(&mut c, key, &stamp(version, 'v'), value.as_ref())
            .await
        {
            self.failed("put", &e);
        }
    }

    async fn invalidate(&self, key: &str, version: u64) {
        let marked = match self.connection().await {
            Some(mut c) => self
                .set_if_newer(&mut c, key, &stamp(version, 't'), b"")
                .await
                .map_err(|e| self.failed("invalidate", &e))
                .is_ok(),
            None => false,
        };
        if !marked {
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
