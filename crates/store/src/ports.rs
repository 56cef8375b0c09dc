//! The ports: what the services need from storage, the event bus and the cache.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Why a storage or bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended first: the caller's view is stale (optimistic concurrency).
    #[error("the log head is {actual}, not the expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    #[error("storage failed: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The first response to a request with an `Idempotency-Key`, kept so a retry gets it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 of the method, path and body of the first request, hex.
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    /// Unix seconds; records older than the retention are pruned.
    pub created_at: i64,
}

/// What one commit writes, atomically: new events appended at consecutive positions after
/// `expected_head`, idempotency records and consumer checkpoints.
#[derive(Debug, Default)]
pub struct Commit {
    pub expected_head: u64,
    pub events: Vec<Vec<u8>>,
    pub idempotency: Vec<(String, IdempotencyRecord)>,
    pub checkpoints: Vec<(String, u64)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.idempotency.is_empty() && self.checkpoints.is_empty()
    }
}

/// A service's durable log: its events (which are also its outbox), idempotency records and
/// the checkpoints of the streams it consumes. One writer per log; `commit` refuses a stale head.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Writes `commit` durably (fsync or majority write concern) before returning.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    /// Up to `max` events after position `after`, in order, as `(position, bytes)`.
    async fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The position of the last event, 0 when empty.
    async fn head(&self) -> Result<u64, StoreError>;
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Deletes idempotency records created before `before` (Unix seconds); returns how many.
    async fn prune_idempotency(&self, before: i64) -> Result<u64, StoreError>;
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError>;
    /// The head after each commit, for readers that wait for new events.
    fn watch_head(&self) -> watch::Receiver<u64>;
    /// A short name for readiness reports.
    fn describe(&self) -> String;
}

/// One event as the bus delivers it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// A topic-based event bus with at-least-once delivery, in order per partition.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Subscribes `group` to `topic`, resuming after `resume_after` when the consumer keeps its
    /// own position (stored with the effects), otherwise from the group's committed offset.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        resume_after: Option<u64>,
    ) -> Result<Box<dyn Subscription>, StoreError>;
    /// The offset of the last event of `topic`, for lag.
    async fn end_offset(&self, topic: &str) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for at least one event, then returns up to `max`.
    async fn next(&mut self, max: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Marks everything up to and including `delivery` as done for the group.
    async fn commit(&mut self, delivery: &Delivery) -> Result<(), StoreError>;
}

/// A cache of serialised read models. Entries are invalidated by the events that change them.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Option<Bytes>;
    async fn put(&self, key: &str, value: Bytes);
    async fn invalidate(&self, key: &str);
}
