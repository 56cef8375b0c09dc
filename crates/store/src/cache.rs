//! The embedded cache: bounded, in memory.

use async_trait::async_trait;
use bytes::Bytes;

use crate::ports::Cache;

pub struct MemoryCache {
    inner: quick_cache::sync::Cache<String, Bytes>,
}

impl MemoryCache {
    /// A cache of at most `capacity` entries, evicting the least useful first.
    pub fn new(capacity: usize) -> Self {
        MemoryCache {
            inner: quick_cache::sync::Cache::new(capacity),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Option<Bytes> {
        self.inner.get(key)
    }

    async fn put(&self, key: &str, value: Bytes) {
        self.inner.insert(key.to_owned(), value);
    }

    async fn invalidate(&self, key: &str) {
        self.inner.remove(key);
    }
}
