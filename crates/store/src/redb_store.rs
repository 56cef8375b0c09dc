//! The embedded event store: one redb database file per service.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

use crate::ports::{Commit, EventStore, IdempotencyRecord, Lease, StoreError};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");
/// The service's index rows (see `Commit::index`).
const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index_rows");
/// The latest snapshot, keyed by its position (one row).
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
/// The lease of the log's writes (one row, `log`, the [`Lease`] as JSON).
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// Replica -> until when it is alive (milliseconds since the epoch).
const MEMBERS: TableDefinition<&str, i64> = TableDefinition::new("members");
const LOG_LEASE: &str = "log";

/// A durable log in a redb file; every commit is fsynced before it returns.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    name: String,
    head: Arc<watch::Sender<u64>>,
}

/// The page cache of one store unless configured (`LIBERTUM_STORE_CACHE_MIB`): redb's own
/// default (1 GiB) would let a long history fill memory with pages read once.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl RedbStore {
    /// Opens (or creates) `dir/{name}.redb` with the default page cache. A directory it creates
    /// is its owner's only (0700), and the file is readable and writable by its owner only
    /// (0600).
    pub fn open(dir: &Path, name: &str) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, name, DEFAULT_CACHE_BYTES)
    }

    /// [`RedbStore::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, name: &str, cache_bytes: usize) -> Result<Self, StoreError> {
        crate::private_dir(dir).map_err(StoreError::backend)?;
        let path = dir.join(format!("{name}.redb"));
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(StoreError::backend)?;
        #[cfg(unix)]
        {
            // A file made before this rule (0644) is narrowed too.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(StoreError::backend)?;
        }
        drop(file);
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(StoreError::backend)?;
        let tx = db.begin_write().map_err(StoreError::backend)?;
        {
            tx.open_table(EVENTS).map_err(StoreError::backend)?;
            tx.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
            tx.open_table(CHECKPOINTS).map_err(StoreError::backend)?;
            tx.open_table(SNAPSHOTS).map_err(StoreError::backend)?;
            tx.open_table(INDEX).map_err(StoreError::backend)?;
            tx.open_table(LEASES).map_err(StoreError::backend)?;
        }
        tx.commit().map_err(StoreError::backend)?;
        let head = last_position(&db)?;
        Ok(RedbStore {
            db: Arc::new(db),
            name: format!("redb:{}", path.display()),
            head: Arc::new(watch::channel(head).0),
        })
    }

    fn commit_blocking(db: &Database, commit: &Commit) -> Result<u64, StoreError> {
        let mut tx = db.begin_write().map_err(StoreError::backend)?;
        tx.set_durability(Durability::Immediate);
        let mut head;
        {
            if let Some(epoch) = commit.fence {
                let leases = tx.open_table(LEASES).map_err(StoreError::backend)?;
                if read_lease(&leases)?.is_none_or(|lease| lease.epoch != epoch) {
                    return Err(StoreError::Fenced { epoch });
                }
            }
            let mut events = tx.open_table(EVENTS).map_err(StoreError::backend)?;
            head = events
                .last()
                .map_err(StoreError::backend)?
                .map_or(0, |(k, _)| k.value());
            if head != commit.expected_head {
                return Err(StoreError::Conflict {
                    expected: commit.expected_head,
                    actual: head,
                });
            }
            for bytes in &commit.events {
                head += 1;
                events
                    .insert(head, bytes.as_slice())
                    .map_err(StoreError::backend)?;
            }
            let mut idem = tx.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
            for (key, record) in &commit.idempotency {
                let bytes = serde_json::to_vec(record).map_err(StoreError::backend)?;
                idem.insert(key.as_str(), bytes.as_slice())
                    .map_err(StoreError::backend)?;
            }
            let mut checkpoints = tx.open_table(CHECKPOINTS).map_err(StoreError::backend)?;
            for (name, position) in &commit.checkpoints {
                checkpoints
                    .insert(name.as_str(), *position)
                    .map_err(StoreError::backend)?;
            }
            let mut index = tx.open_table(INDEX).map_err(StoreError::backend)?;
            // In key order: each leaf is reached once, while its path is hot, instead of the
            // rows of hundreds of accounts landing all over the tree in the order they came.
            // (Keys are unique within a commit: each names its entry or version.)
            let mut rows: Vec<&(String, Vec<u8>)> = commit.index.iter().collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in rows {
                index
                    .insert(key.as_str(), value.as_slice())
                    .map_err(StoreError::backend)?;
            }
        }
        tx.commit().map_err(StoreError::backend)?;
        Ok(head)
    }
}

fn read_lease(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Lease>, StoreError> {
    match table.get(LOG_LEASE).map_err(StoreError::backend)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(StoreError::backend),
        None => Ok(None),
    }
}

fn last_position(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_read().map_err(StoreError::backend)?;
    let events = tx.open_table(EVENTS).map_err(StoreError::backend)?;
    Ok(events
        .last()
        .map_err(StoreError::backend)?
        .map_or(0, |(k, _)| k.value()))
}

#[async_trait]
impl EventStore for RedbStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let db = self.db.clone();
        let head = tokio::task::spawn_blocking(move || Self::commit_blocking(&db, &commit))
            .await
            .map_err(StoreError::backend)??;
        self.head.send_replace(head);
        Ok(())
    }

    async fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(StoreError::backend)?;
            let events = tx.open_table(EVENTS).map_err(StoreError::backend)?;
            let mut out = Vec::with_capacity(max.min(4096));
            for row in events
                .range(after.saturating_add(1)..)
                .map_err(StoreError::backend)?
                .take(max)
            {
                let (k, v) = row.map_err(StoreError::backend)?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(*self.head.borrow())
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        // A point read of a B-tree in the page cache takes microseconds: not worth a thread hop.
        let tx = self.db.begin_read().map_err(StoreError::backend)?;
        let table = tx.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
        match table.get(key).map_err(StoreError::backend)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(StoreError::backend),
            None => Ok(None),
        }
    }

    async fn idempotency_many(
        &self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, IdempotencyRecord>, StoreError> {
        // One read transaction for the whole group.
        let tx = self.db.begin_read().map_err(StoreError::backend)?;
        let table = tx.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
        let mut found = std::collections::HashMap::new();
        for key in keys {
            if let Some(v) = table.get(*key).map_err(StoreError::backend)? {
                let record = serde_json::from_slice(v.value()).map_err(StoreError::backend)?;
                found.insert((*key).to_owned(), record);
            }
        }
        Ok(found)
    }

    async fn prune_idempotency(&self, before: i64) -> Result<u64, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(StoreError::backend)?;
            let removed = {
                let mut table = tx.open_table(IDEMPOTENCY).map_err(StoreError::backend)?;
                let before_len = table.len().map_err(StoreError::backend)?;
                table
                    .retain(|_, v| {
                        serde_json::from_slice::<IdempotencyRecord>(v)
                            .is_ok_and(|r| r.created_at >= before)
                    })
                    .map_err(StoreError::backend)?;
                before_len - table.len().map_err(StoreError::backend)?
            };
            tx.commit().map_err(StoreError::backend)?;
            Ok(removed)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::backend)?;
        let table = tx.open_table(CHECKPOINTS).map_err(StoreError::backend)?;
        Ok(table
            .get(name)
            .map_err(StoreError::backend)?
            .map(|v| v.value()))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        let db = self.db.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(StoreError::backend)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut table = tx.open_table(CHECKPOINTS).map_err(StoreError::backend)?;
                let stored = table
                    .get(name.as_str())
                    .map_err(StoreError::backend)?
                    .map_or(0, |v| v.value());
                table
                    .insert(name.as_str(), position.max(stored))
                    .map_err(StoreError::backend)?;
            }
            tx.commit().map_err(StoreError::backend)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::backend)?;
        read_lease(&tx.open_table(LEASES).map_err(StoreError::backend)?)
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        epoch: Option<u64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let db = self.db.clone();
        let (holder, address) = (holder.to_owned(), address.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(StoreError::backend)?;
            tx.set_durability(Durability::Immediate);
            let taken = {
                let mut table = tx.open_table(LEASES).map_err(StoreError::backend)?;
                let current = read_lease(&table)?;
                let next = match (current, epoch) {
                    // A renewal: only of the lease this holder has, at its epoch.
                    (Some(c), Some(e)) if c.holder == holder && c.epoch == e => Some(c.epoch),
                    (_, Some(_)) => None,
                    (None, None) => Some(1),
                    (Some(c), None) if c.expires_at_ms <= now_ms => Some(c.epoch + 1),
                    (Some(_), None) => None,
                };
                match next {
                    Some(epoch) => {
                        let lease = Lease {
                            holder,
                            address,
                            epoch,
                            expires_at_ms: now_ms + ttl_ms,
                        };
                        let bytes = serde_json::to_vec(&lease).map_err(StoreError::backend)?;
                        table
                            .insert(LOG_LEASE, bytes.as_slice())
                            .map_err(StoreError::backend)?;
                        Some(lease)
                    }
                    None => None,
                }
            };
            tx.commit().map_err(StoreError::backend)?;
            Ok(taken)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn members(&self, replica: &str, now_ms: i64, ttl_ms: i64) -> Result<usize, StoreError> {
        let db = self.db.clone();
        let replica = replica.to_owned();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(StoreError::backend)?;
            let alive = {
                let mut table = tx.open_table(MEMBERS).map_err(StoreError::backend)?;
                if ttl_ms > 0 {
                    table
                        .insert(replica.as_str(), now_ms + ttl_ms)
                        .map_err(StoreError::backend)?;
                } else {
                    table
                        .remove(replica.as_str())
                        .map_err(StoreError::backend)?;
                }
                // Those gone for an hour are forgotten.
                table
                    .retain(|_, until| until > now_ms - 3_600_000)
                    .map_err(StoreError::backend)?;
                let mut alive = 0;
                for row in table.iter().map_err(StoreError::backend)? {
                    let (_, until) = row.map_err(StoreError::backend)?;
                    if until.value() > now_ms {
                        alive += 1;
                    }
                }
                alive
            };
            tx.commit().map_err(StoreError::backend)?;
            Ok(alive)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn release_lease(&self, holder: &str, epoch: u64) -> Result<(), StoreError> {
        let db = self.db.clone();
        let holder = holder.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(StoreError::backend)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut table = tx.open_table(LEASES).map_err(StoreError::backend)?;
                if let Some(mut lease) = read_lease(&table)?
                    && lease.holder == holder
                    && lease.epoch == epoch
                {
                    lease.expires_at_ms = i64::MIN;
                    let bytes = serde_json::to_vec(&lease).map_err(StoreError::backend)?;
                    table
                        .insert(LOG_LEASE, bytes.as_slice())
                        .map_err(StoreError::backend)?;
                }
            }
            tx.commit().map_err(StoreError::backend)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn put_index(&self, rows: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(StoreError::backend)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut index = tx.open_table(INDEX).map_err(StoreError::backend)?;
                for (key, value) in &rows {
                    index
                        .insert(key.as_str(), value.as_slice())
                        .map_err(StoreError::backend)?;
                }
            }
            tx.commit().map_err(StoreError::backend)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn index_last(
        &self,
        low: &str,
        high: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        // A B-tree seek in the page cache: not worth a thread hop.
        let tx = self.db.begin_read().map_err(StoreError::backend)?;
        let table = tx.open_table(INDEX).map_err(StoreError::backend)?;
        let last = table
            .range(low..=high)
            .map_err(StoreError::backend)?
            .next_back()
            .transpose()
            .map_err(StoreError::backend)?;
        Ok(last.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
    }

    async fn index_range(
        &self,
        low: &str,
        high: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(StoreError::backend)?;
        let table = tx.open_table(INDEX).map_err(StoreError::backend)?;
        table
            .range(low..=high)
            .map_err(StoreError::backend)?
            .take(limit)
            .map(|row| {
                let (k, v) = row.map_err(StoreError::backend)?;
                Ok((k.value().to_owned(), v.value().to_vec()))
            })
            .collect()
    }

    async fn save_snapshot(&self, position: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(StoreError::backend)?;
            tx.set_durability(Durability::Immediate);
            {
                let mut table = tx.open_table(SNAPSHOTS).map_err(StoreError::backend)?;
                table.retain(|_, _| false).map_err(StoreError::backend)?;
                table
                    .insert(position, bytes.as_slice())
                    .map_err(StoreError::backend)?;
            }
            tx.commit().map_err(StoreError::backend)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(StoreError::backend)?;
            let table = tx.open_table(SNAPSHOTS).map_err(StoreError::backend)?;
            Ok(table
                .last()
                .map_err(StoreError::backend)?
                .map(|(k, v)| (k.value(), v.value().to_vec())))
        })
        .await
        .map_err(StoreError::backend)?
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn honours_the_event_store_contract() {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        crate::contract::event_store(Box::new(move || {
            let dir = dir.clone();
            Box::pin(async move {
                Arc::new(RedbStore::open(dir.path(), "contract").expect("open"))
                    as Arc<dyn EventStore>
            })
        }))
        .await;
    }

    #[tokio::test]
    async fn honours_the_lease_contract() {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        crate::contract::leases(Box::new(move || {
            let dir = dir.clone();
            Box::pin(async move {
                Arc::new(RedbStore::open(dir.path(), "leases").expect("open"))
                    as Arc<dyn EventStore>
            })
        }))
        .await;
    }

    #[tokio::test]
    async fn honours_the_members_contract() {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        crate::contract::members(Box::new(move || {
            let dir = dir.clone();
            Box::pin(async move {
                Arc::new(RedbStore::open(dir.path(), "members").expect("open"))
                    as Arc<dyn EventStore>
            })
        }))
        .await;
    }

    #[tokio::test]
    async fn the_in_process_bus_honours_the_event_bus_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn EventStore> =
            Arc::new(RedbStore::open(dir.path(), "bus").expect("open"));
        let bus = crate::InProcessBus::new();
        bus.attach("contract.events", store.clone());
        crate::contract::event_bus(store, Arc::new(bus), "contract.events").await;
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_and_files_are_their_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        drop(RedbStore::open(&dir, "made").expect("open"));
        assert_eq!(mode(&dir), 0o700, "a new data directory");
        assert_eq!(mode(&dir.join("made.redb")), 0o600, "a new store file");
        let old = dir.join("old.redb");
        std::fs::write(&old, b"").expect("write");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(RedbStore::open(&dir, "old").expect("open an existing file"));
        assert_eq!(mode(&old), 0o600, "an older, wider file is narrowed");
    }

    #[tokio::test]
    async fn the_memory_cache_honours_the_cache_contract() {
        crate::contract::cache(Arc::new(crate::MemoryCache::new(100))).await;
    }

    fn commit(expected_head: u64, events: &[&str]) -> Commit {
        Commit {
            expected_head,
            events: events.iter().map(|e| e.as_bytes().to_vec()).collect(),
            ..Commit::default()
        }
    }

    #[tokio::test]
    async fn committed_events_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RedbStore::open(dir.path(), "t").expect("open");
            store.commit(commit(0, &["a", "b"])).await.expect("commit");
            store.commit(commit(2, &["c"])).await.expect("commit");
        }
        let store = RedbStore::open(dir.path(), "t").expect("reopen");
        assert_eq!(store.head().await.expect("head"), 3);
        let read = store.read(1, 10).await.expect("read");
        assert_eq!(read, vec![(2, b"b".to_vec()), (3, b"c".to_vec())]);
    }

    #[tokio::test]
    async fn a_stale_head_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path(), "t").expect("open");
        store.commit(commit(0, &["a"])).await.expect("commit");
        let err = store.commit(commit(0, &["b"])).await.expect_err("stale");
        assert!(matches!(
            err,
            StoreError::Conflict {
                expected: 0,
                actual: 1
            }
        ));
        assert_eq!(store.read(0, 10).await.expect("read").len(), 1);
    }

    #[tokio::test]
    async fn idempotency_records_and_checkpoints_commit_with_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path(), "t").expect("open");
        let record = IdempotencyRecord {
            fingerprint: "f".into(),
            status: 201,
            body: "{}".into(),
            created_at: 10,
        };
        let mut c = commit(0, &["a"]);
        c.idempotency.push(("k".into(), record.clone()));
        c.checkpoints.push(("assets".into(), 42));
        store.commit(c).await.expect("commit");
        assert_eq!(store.idempotency("k").await.expect("read"), Some(record));
        assert_eq!(store.checkpoint("assets").await.expect("read"), Some(42));
        assert_eq!(store.prune_idempotency(11).await.expect("prune"), 1);
        assert_eq!(store.idempotency("k").await.expect("read"), None);
    }
}
