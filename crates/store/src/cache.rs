//! The embedded cache: bounded, in memory.

use async_trait::async_trait;
use bytes::Bytes;

use crate::ports::Cache;

/// A value, or the mark an invalidation leaves (`None`), with its subject's version.
type Entry = (u64, Option<Bytes>);

pub struct MemoryCache {
    inner: quick_cache::sync::Cache<String, Entry>,
    /// Makes each compare-and-set atomic.
    writes: parking_lot::Mutex<()>,
}

impl MemoryCache {
    /// A cache of at most `capacity` entries, evicting the least useful first.
    pub fn new(capacity: usize) -> Self {
        MemoryCache {
            inner: quick_cache::sync::Cache::new(capacity),
            writes: parking_lot::Mutex::new(()),
        }
    }

    /// Stores `entry` unless the key holds one at least as new (a mark of version `v` is
    /// older than a value of the same version, which was read after the change).
    fn set_if_newer(&self, key: &str, entry: Entry) {
        let _write = self.writes.lock();
        let rank = |e: &Entry| (e.0, e.1.is_some());
        if self
            .inner
            .get(key)
            .is_some_and(|held| rank(&held) >= rank(&entry))
        {
            return;
        }
        self.inner.insert(key.to_owned(), entry);
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Option<Bytes> {
        self.inner.get(key).and_then(|(_, value)| value)
    }

    async fn put(&self, key: &str, version: u64, value: Bytes) {
        self.set_if_newer(key, (version, Some(value)));
    }

    async fn invalidate(&self, key: &str, version: u64) {
        self.set_if_newer(key, (version, None));
    }
}
