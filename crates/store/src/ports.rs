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
    /// The commit's lease epoch is no longer the log's: another replica owns the log now, and
    /// nothing of the commit was written.
    #[error("this replica's lease (epoch {epoch}) was taken over; it may not write")]
    Fenced { epoch: u64 },
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

/// Who owns a log's writes: the replica that holds its lease (see `ownership.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's replica id (unique per process start).
    pub holder: String,
    /// Where the holder takes forwarded requests (`host:port`).
    pub address: String,
    /// Grows by one at every change of holder; commits carry it (fencing).
    pub epoch: u64,
    /// Unix milliseconds, on the holder's clock, after which another replica may take it.
    pub expires_at_ms: i64,
}

/// What one commit writes, atomically: new events appended at consecutive positions after
/// `expected_head`, idempotency records, consumer checkpoints and index rows.
#[derive(Debug, Default)]
pub struct Commit {
    pub expected_head: u64,
    /// The writer's lease epoch, checked in the same transaction as the write: a commit whose
    /// epoch is not the lease's current one writes nothing (`StoreError::Fenced`). `None` for a
    /// sole writer that holds no lease (the embedded one-process mode).
    pub fence: Option<u64>,
    pub events: Vec<Vec<u8>>,
    pub idempotency: Vec<(String, IdempotencyRecord)>,
    /// At most one per name.
    pub checkpoints: Vec<(String, u64)>,
    /// Rows of the service's index: history that is read by key rather than held in memory
    /// (a balance after each entry, say). Keys are unique and never rewritten.
    pub index: Vec<(String, Vec<u8>)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.idempotency.is_empty()
            && self.checkpoints.is_empty()
            && self.index.is_empty()
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
    /// The records of those of `keys` that have one, in one read where the store allows it: the
    /// writer looks up a whole group's keys at once rather than one round trip per request.
    async fn idempotency_many(
        &self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, IdempotencyRecord>, StoreError> {
        let mut found = std::collections::HashMap::new();
        for key in keys {
            if let Some(record) = self.idempotency(key).await? {
                found.insert((*key).to_owned(), record);
            }
        }
        Ok(found)
    }
    /// Deletes idempotency records created before `before` (Unix seconds); returns how many.
    async fn prune_idempotency(&self, before: i64) -> Result<u64, StoreError>;
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError>;
    /// Stores a checkpoint outside the log, for a reader that is not the log's writer (the
    /// relay that publishes the log to Kafka). It does not move the head, and it never moves
    /// back: a former owner's relay that wakes late cannot undo its successor's progress.
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError>;
    /// Writes index rows outside a commit, replacing any with the same key: how a start that
    /// read the whole log writes again the rows it derived (they are the same as the commits
    /// wrote, or missing if the log predates them). Idempotent.
    async fn put_index(&self, rows: Vec<(String, Vec<u8>)>) -> Result<(), StoreError>;
    /// The index row with the greatest key in `low..=high` (keys compare as byte strings).
    async fn index_last(
        &self,
        low: &str,
        high: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError>;
    /// The index rows with keys in `low..=high`, in key order, at most `limit` of them.
    async fn index_range(
        &self,
        low: &str,
        high: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Stores `bytes`, the state as of the event at `position`, as the latest snapshot, in one
    /// atomic write; the snapshot it replaces is deleted. An interrupted save leaves the previous
    /// snapshot the latest.
    async fn save_snapshot(&self, position: u64, bytes: Vec<u8>) -> Result<(), StoreError>;
    /// The latest snapshot saved, as `(position, bytes)`.
    async fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// The lease of the log's writes, if any replica ever took it.
    async fn lease(&self) -> Result<Option<Lease>, StoreError>;
    /// Takes the lease for `holder`, or renews it if `holder` has it at `epoch`: it is taken
    /// when nobody holds it or the holder's time ran out at `now_ms`, and then its epoch grows
    /// by one and no commit of an earlier epoch can be written any more. Returns the lease as
    /// it now stands when `holder` has it, `None` when another replica does.
    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        epoch: Option<u64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError>;
    /// Gives the lease up at once if `holder` has it at `epoch`: another replica may take it
    /// without waiting for it to expire. Its epoch stays, so the next holder's is greater.
    async fn release_lease(&self, holder: &str, epoch: u64) -> Result<(), StoreError>;
    /// Says that replica `replica` is alive until `now_ms + ttl_ms` (a `ttl_ms` of 0: it
    /// leaves now) and returns how many replicas are alive at `now_ms`, itself included if it
    /// stays: what each replica's fair share of the partitions is counted from.
    async fn members(&self, replica: &str, now_ms: i64, ttl_ms: i64) -> Result<usize, StoreError>;
    /// The head after each commit, for readers that wait for new events.
    fn watch_head(&self) -> watch::Receiver<u64>;
    /// A short name for readiness reports.
    fn describe(&self) -> String;
    /// Closes the connections to a server once the writer has stopped, so that none of its
    /// background tasks outlives the runtime.
    async fn shutdown(&self) {}
}

/// One event as the bus delivers it. `offset` is its position in its partition.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: u64,
    pub payload: Vec<u8>,
    /// The W3C trace context the transport carried with it (a Kafka header), if any.
    pub traceparent: Option<String>,
}

/// A topic-based event bus with at-least-once delivery, in order per partition.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// The partitions of `topic`.
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, StoreError>;
    /// Reads every partition of `topic` for `group`, each from just after the position in
    /// `resume` (the consumer stores them with its effects, so they say exactly what was
    /// applied); a partition without one starts from the group's committed offset, else from
    /// the beginning. No group membership is involved: which process consumes is decided by the
    /// lease of its service's writes, not by the broker.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        resume: &std::collections::BTreeMap<i32, u64>,
    ) -> Result<Box<dyn Subscription>, StoreError>;
    /// The name under which a consumer stores its position in `partition`, from `base`.
    fn checkpoint_name(&self, base: &str, partition: i32) -> String {
        let _ = partition;
        base.to_owned()
    }
    /// A short name for readiness reports.
    fn describe(&self) -> String;
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for at least one event, then returns up to `max`.
    async fn next(&mut self, max: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Marks `batch` as done for the group, once its effects are stored.
    async fn commit(&mut self, batch: &[Delivery]) -> Result<(), StoreError>;
    /// Sets aside an event that can never be applied (malformed, forged, refused by a rule),
    /// with the reason, so that it is not lost and does not block the partition.
    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<(), StoreError>;
    /// Events of the subscribed partitions not yet delivered, as last measured.
    async fn lag(&mut self) -> Result<u64, StoreError>;
}

/// A cache of serialised read models, shared by a service's replicas. Entries are invalidated
/// by the events that change them.
///
/// Every entry carries the version of its subject it was read at, and an invalidation leaves
/// the version that made it stale: a `put` is kept only if its version is newer than what the
/// cache holds for the key (a value or an invalidation). So a replica whose state lags behind
/// can never put back a value that an invalidation already removed.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Option<Bytes>;
    /// Caches `value`, read at `version` of its subject, unless the cache knows a version at
    /// least as new.
    async fn put(&self, key: &str, version: u64, value: Bytes);
    /// Marks `key` stale as of `version`: values read before it are gone and cannot come back.
    async fn invalidate(&self, key: &str, version: u64);
}
