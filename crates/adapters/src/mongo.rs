//! The MongoDB event store: one database per service, the event log as its own outbox.
//!
//! Collections:
//! - `events`: `{_id: position, seq: position, event_id, body: the CloudEvent JSON}`, with
//!   unique indexes on `seq` and `event_id`; nothing else of the event is copied out of `body`,
//!   since nothing queries it. Reads sort and filter on
//!   `seq`, not `_id` (the MongoDB-wire test server orders `_id` as text), and the event id is
//!   not called `id` (that server reserves the name). Positions are consecutive, and `_id` is
//!   unique by nature, so two writers appending after the same head collide there (optimistic
//!   concurrency).
//! - `idempotency`: `{_id: key, fingerprint, status, body, created_at}`.
//! - `checkpoints`: `{_id: name, position}`.
//! - `index_rows`: the service's index rows, `{_id: key, v: value}`; keys are strings, which MongoDB
//!   (and the wire-compatible test server) order byte for byte.
//! - `snapshots`: the latest snapshot of the service's state, in chunks of at most
//!   [`SNAPSHOT_CHUNK`] bytes (`{_id, snapshot, i, data}`, a snapshot being larger than a
//!   document may be), and `{_id: "latest", snapshot, position, chunks, bytes}`, written after
//!   every chunk of its snapshot: a save interrupted before it leaves the previous one latest,
//!   and its chunks are deleted by the next save.
//!
//! - `leases`: `{_id: "log", holder, address, epoch, expires_at_ms}`, the lease of the log's
//!   writes, renewed by its holder; and `{_id: "log.fence", epoch}`, the epoch commits must
//!   carry. A replica that takes the lease raises the fence to its new epoch; every commit
//!   updates the fence document filtered on its own epoch inside its transaction, so a former
//!   holder's commit matches nothing (or conflicts with the raise) and writes nothing. Renewals
//!   touch the other document, so they never conflict with a commit.
//!
//! A commit writes its events, idempotency records and checkpoints in one multi-document
//! transaction with the configured write concern (majority by default): all of it or none.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use libertum_store::{Commit, EventStore, IdempotencyRecord, Lease, StoreError};
use mongodb::{
    Client, ClientSession, Collection, Database, IndexModel,
    bson::{Bson, Document, doc},
    error::{ErrorKind, WriteFailure},
    options::{
        Acknowledgment, ClientOptions, IndexOptions, ReadConcern, ReadPreference,
        SelectionCriteria, WriteConcern,
    },
};
use tokio::sync::watch;

use crate::redact;

/// How the store talks to MongoDB.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// A `mongodb://` or `mongodb+srv://` URI.
    pub uri: String,
    /// The service's own database.
    pub database: String,
    /// `majority` (the default) or a number of nodes.
    pub write_concern: String,
    /// `majority` (the default) or `local`.
    pub read_concern: String,
}

impl MongoSettings {
    pub fn new(uri: &str, database: &str) -> Self {
        MongoSettings {
            uri: uri.to_owned(),
            database: database.to_owned(),
            write_concern: "majority".into(),
            read_concern: "majority".into(),
        }
    }

    fn write_concern(&self) -> Result<WriteConcern, StoreError> {
        let w = match self.write_concern.as_str() {
            "majority" => Acknowledgment::Majority,
            n => Acknowledgment::Nodes(n.parse().map_err(|_| {
                StoreError::Backend(format!(
                    "write concern {n:?} is neither \"majority\" nor a number of nodes"
                ))
            })?),
        };
        Ok(WriteConcern::builder().w(w).journal(true).build())
    }

    fn read_concern(&self) -> Result<ReadConcern, StoreError> {
        match self.read_concern.as_str() {
            "majority" => Ok(ReadConcern::majority()),
            "local" => Ok(ReadConcern::local()),
            other => Err(StoreError::Backend(format!(
                "read concern {other:?} is neither \"majority\" nor \"local\""
            ))),
        }
    }
}

/// A service's durable log in its own MongoDB database.
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    db: Database,
    events: Collection<Document>,
    idempotency: Collection<Document>,
    checkpoints: Collection<Document>,
    snapshots: Collection<Document>,
    index: Collection<Document>,
    leases: Collection<Document>,
    write_concern: WriteConcern,
    read_concern: ReadConcern,
    name: String,
    head: Arc<watch::Sender<u64>>,
}

impl MongoStore {
    /// Connects, creates the indexes (idempotently) and reads the head of the log.
    pub async fn open(settings: &MongoSettings) -> Result<Self, StoreError> {
        let mut stores = Self::open_all(settings, std::slice::from_ref(&settings.database)).await?;
        Ok(stores.remove(0))
    }

    /// One store per database of `databases` (a partitioned service's logs), over one
    /// connection pool.
    pub async fn open_all(
        settings: &MongoSettings,
        databases: &[String],
    ) -> Result<Vec<Self>, StoreError> {
        let write_concern = settings.write_concern()?;
        let read_concern = settings.read_concern()?;
        let mut options = ClientOptions::parse(&settings.uri)
            .await
            .map_err(StoreError::backend)?;
        options.app_name = Some(format!("libertum-{}", settings.database));
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        options.write_concern = Some(write_concern.clone());
        options.read_concern = Some(read_concern.clone());
        options.selection_criteria =
            Some(SelectionCriteria::ReadPreference(ReadPreference::Primary));
        let client = Client::with_options(options).map_err(StoreError::backend)?;
        client
            .database(&settings.database)
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "MongoDB at {} did not answer: {e}",
                    redact(&settings.uri)
                ))
            })?;
        let mut stores = Vec::with_capacity(databases.len());
        for database in databases {
            let db = client.database(database);
            let store = MongoStore {
                events: db.collection("events"),
                idempotency: db.collection("idempotency"),
                checkpoints: db.collection("checkpoints"),
                snapshots: db.collection("snapshots"),
                index: db.collection("index_rows"),
                leases: db.collection("leases"),
                db,
                client: client.clone(),
                write_concern: write_concern.clone(),
                read_concern: read_concern.clone(),
                name: format!("mongodb:{}/{database}", redact(&settings.uri)),
                head: Arc::new(watch::channel(0).0),
            };
            store.create_indexes().await?;
            let head = store.read_head(None).await?;
            store.head.send_replace(head);
            stores.push(store);
        }
        Ok(stores)
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        for (name, key) in [("unique_event_id", "event_id"), ("unique_seq", "seq")] {
            let unique = IndexOptions::builder()
                .unique(true)
                .name(name.to_owned())
                .build();
            self.events
                .create_index(
                    IndexModel::builder()
                        .keys(doc! {key: 1})
                        .options(unique)
                        .build(),
                )
                .await
                .map_err(StoreError::backend)?;
        }
        let by_age = IndexOptions::builder()
            .name("created_at".to_owned())
            .build();
        self.idempotency
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"created_at": 1})
                    .options(by_age)
                    .build(),
            )
            .await
            .map_err(StoreError::backend)?;
        self.snapshots
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"snapshot": 1, "i": 1})
                    .options(
                        IndexOptions::builder()
                            .name("snapshot_chunks".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    /// The database, for readiness checks.
    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn read_head(&self, session: Option<&mut ClientSession>) -> Result<u64, StoreError> {
        let find = self.events.find_one(doc! {}).sort(doc! {"seq": -1});
        let last = match session {
            Some(s) => find.session(s).await,
            None => find.await,
        }
        .map_err(StoreError::backend)?;
        last.map_or(Ok(0), |d| position(d.get("seq")))
    }

    async fn commit_in(
        &self,
        session: &mut ClientSession,
        commit: &Commit,
    ) -> Result<u64, StoreError> {
        if let Some(epoch) = commit.fence {
            let fenced = self
                .leases
                .update_one(
                    doc! {"_id": FENCE, "epoch": to_i64(epoch)?},
                    doc! {"$set": {"head": to_i64(commit.expected_head + commit.events.len() as u64)?}},
                )
                .session(&mut *session)
                .await
                .map_err(StoreError::backend)?;
            if fenced.matched_count == 0 {
                return Err(StoreError::Fenced { epoch });
            }
        }
        let head = self.read_head(Some(&mut *session)).await?;
        if head != commit.expected_head {
            return Err(StoreError::Conflict {
                expected: commit.expected_head,
                actual: head,
            });
        }
        let mut position = head;
        if !commit.events.is_empty() {
            let mut docs = Vec::with_capacity(commit.events.len());
            for bytes in &commit.events {
                position += 1;
                docs.push(event_document(position, bytes)?);
            }
            self.events
                .insert_many(docs)
                .session(&mut *session)
                .await
                .map_err(|e| conflict_or_backend(e, commit.expected_head))?;
        }
        if !commit.idempotency.is_empty() {
            let docs: Vec<Document> = commit
                .idempotency
                .iter()
                .map(|(key, r)| {
                    doc! {
                        "_id": key.as_str(),
                        "fingerprint": r.fingerprint.as_str(),
                        "status": i32::from(r.status),
                        "body": r.body.as_str(),
                        "created_at": r.created_at,
                    }
                })
                .collect();
            self.idempotency
                .insert_many(docs)
                .session(&mut *session)
                .await
                .map_err(|e| conflict_or_backend(e, commit.expected_head))?;
        }
        if !commit.index.is_empty() {
            let docs: Vec<Document> = commit
                .index
                .iter()
                .map(|(key, value)| index_document(key, value))
                .collect();
            self.index
                .insert_many(docs)
                .session(&mut *session)
                .await
                .map_err(|e| conflict_or_backend(e, commit.expected_head))?;
        }
        for (name, at) in &commit.checkpoints {
            self.checkpoints
                .update_one(
                    doc! {"_id": name.as_str()},
                    doc! {"$set": {"position": Bson::Int64(to_i64(*at)?)}},
                )
                .upsert(true)
                .session(&mut *session)
                .await
                .map_err(StoreError::backend)?;
        }
        Ok(position)
    }
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n)
        .map_err(|_| StoreError::Backend(format!("position {n} does not fit MongoDB's Int64")))
}

/// Reads a position tolerantly: the wire-compatible test server may narrow an Int64 to an Int32.
fn position(value: Option<&Bson>) -> Result<u64, StoreError> {
    match value {
        Some(Bson::Int64(n)) if *n >= 0 => Ok(*n as u64),
        Some(Bson::Int32(n)) if *n >= 0 => Ok(*n as u64),
        other => Err(StoreError::Backend(format!(
            "a stored position is not a non-negative integer: {other:?}"
        ))),
    }
}

/// The field of a CloudEvent the store indexes; the event itself is kept byte for byte.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
}

fn event_document(position: u64, bytes: &[u8]) -> Result<Document, StoreError> {
    let head: Head = serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Backend(format!(
            "an event to store is not a JSON object with an id: {e}"
        ))
    })?;
    let body = std::str::from_utf8(bytes).map_err(StoreError::backend)?;
    Ok(doc! {"_id": to_i64(position)?, "seq": to_i64(position)?, "event_id": head.id, "body": body})
}

/// Bytes as a BSON binary value.
fn binary(bytes: &[u8]) -> mongodb::bson::Binary {
    mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}

/// An index row as a document: `{_id: key, v: value}`.
fn index_document(key: &str, value: &[u8]) -> Document {
    doc! {"_id": key, "v": binary(value)}
}

const DUPLICATE_KEY: i32 = 11000;
/// The `_id`s of the lease and of the fence in `leases`.
const LEASE: &str = "log";
const FENCE: &str = "log.fence";

fn lease_of(d: &Document) -> Result<Lease, StoreError> {
    let text = |field: &str| {
        d.get_str(field)
            .map(str::to_owned)
            .map_err(|_| StoreError::Backend(format!("lease field {field} is not text")))
    };
    let expires_at_ms = match d.get("expires_at_ms") {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        other => {
            return Err(StoreError::Backend(format!(
                "lease field expires_at_ms is not a number: {other:?}"
            )));
        }
    };
    Ok(Lease {
        holder: text("holder")?,
        address: text("address")?,
        epoch: position(d.get("epoch"))?,
        expires_at_ms,
    })
}

/// Whether every error of an insert is a duplicate key.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

/// The most bytes of a snapshot one document holds (a document is at most 16 MiB).
pub const SNAPSHOT_CHUNK: usize = 4 * 1024 * 1024;

/// A whole number stored in a document, whatever integer width the server returns.
fn whole(d: &Document, field: &str) -> Result<u64, StoreError> {
    position(d.get(field))
        .map_err(|_| StoreError::Backend(format!("snapshot field {field} is not a count")))
}

/// A duplicate key means another writer got there first: the caller's head is stale.
fn conflict_or_backend(e: mongodb::error::Error, expected: u64) -> StoreError {
    let duplicate = match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|w| w.code == DUPLICATE_KEY)),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    };
    if duplicate {
        StoreError::Conflict {
            expected,
            actual: expected + 1,
        }
    } else {
        StoreError::backend(e)
    }
}

#[async_trait]
impl EventStore for MongoStore {
    async fn shutdown(&self) {
        // Waits for sessions and cursors still out, so it is bounded: a stuck one must not hold
        // the process.
        if tokio::time::timeout(Duration::from_secs(5), self.client.clone().shutdown())
            .await
            .is_err()
        {
            tracing::warn!(store = %self.name, "MongoDB connections not closed within 5 s");
        }
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(StoreError::backend)?;
        session
            .start_transaction()
            .write_concern(self.write_concern.clone())
            .read_concern(self.read_concern.clone())
            .await
            .map_err(StoreError::backend)?;
        let head = match self.commit_in(&mut session, &commit).await {
            Ok(head) => head,
            Err(e) => {
                let _ = session.abort_transaction().await;
                return Err(e);
            }
        };
        session
            .commit_transaction()
            .await
            .map_err(|e| conflict_or_backend(e, commit.expected_head))?;
        self.head.send_replace(head);
        Ok(())
    }

    async fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        use futures::TryStreamExt;
        let mut cursor = self
            .events
            .find(doc! {"seq": {"$gt": to_i64(after)?}})
            .sort(doc! {"seq": 1})
            .limit(i64::try_from(max).unwrap_or(i64::MAX))
            .projection(doc! {"seq": 1, "body": 1})
            .await
            .map_err(StoreError::backend)?;
        let mut out = Vec::with_capacity(max.min(4096));
        while let Some(d) = cursor.try_next().await.map_err(StoreError::backend)? {
            let body = d.get_str("body").map_err(StoreError::backend)?;
            out.push((position(d.get("seq"))?, body.as_bytes().to_vec()));
        }
        Ok(out)
    }

    async fn head(&self) -> Result<u64, StoreError> {
        // Asked of the database: with several replicas, another one may have appended.
        let head = self.read_head(None).await?;
        self.head.send_if_modified(|known| {
            let newer = head > *known;
            if newer {
                *known = head;
            }
            newer
        });
        Ok(head)
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        match self
            .idempotency
            .find_one(doc! {"_id": key})
            .await
            .map_err(StoreError::backend)?
        {
            Some(d) => record_of(key, &d).map(Some),
            None => Ok(None),
        }
    }

    async fn idempotency_many(
        &self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, IdempotencyRecord>, StoreError> {
        let mut found = std::collections::HashMap::new();
        if keys.is_empty() {
            return Ok(found);
        }
        use futures::TryStreamExt;
        // One query for the whole group, not one round trip per request.
        let mut cursor = self
            .idempotency
            .find(doc! {"_id": {"$in": keys.to_vec()}})
            .await
            .map_err(StoreError::backend)?;
        while let Some(d) = cursor.try_next().await.map_err(StoreError::backend)? {
            let key = d.get_str("_id").map_err(StoreError::backend)?.to_owned();
            let record = record_of(&key, &d)?;
            found.insert(key, record);
        }
        Ok(found)
    }

    async fn prune_idempotency(&self, before: i64) -> Result<u64, StoreError> {
        let deleted = self
            .idempotency
            .delete_many(doc! {"created_at": {"$lt": before}})
            .await
            .map_err(StoreError::backend)?;
        Ok(deleted.deleted_count)
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let found = self
            .checkpoints
            .find_one(doc! {"_id": name})
            .await
            .map_err(StoreError::backend)?;
        found.map(|d| position(d.get("position"))).transpose()
    }

    async fn save_checkpoint(&self, name: &str, at: u64) -> Result<(), StoreError> {
        self.checkpoints
            .update_one(
                doc! {"_id": name},
                doc! {"$max": {"position": Bson::Int64(to_i64(at)?)}},
            )
            .upsert(true)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        self.leases
            .find_one(doc! {"_id": LEASE})
            .await
            .map_err(StoreError::backend)?
            .map(|d| lease_of(&d))
            .transpose()
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        epoch: Option<u64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let expires_at_ms = now_ms + ttl_ms;
        if let Some(epoch) = epoch {
            let renewed = self
                .leases
                .update_one(
                    doc! {"_id": LEASE, "holder": holder, "epoch": to_i64(epoch)?},
                    doc! {"$set": {"expires_at_ms": expires_at_ms, "address": address}},
                )
                .await
                .map_err(StoreError::backend)?;
            return Ok((renewed.matched_count == 1).then(|| Lease {
                holder: holder.to_owned(),
                address: address.to_owned(),
                epoch,
                expires_at_ms,
            }));
        }
        // One atomic update takes an expired lease (or a released one), so of two replicas
        // trying at once only one matches.
        let taken = self
            .leases
            .update_one(
                doc! {"_id": LEASE, "expires_at_ms": {"$lte": now_ms}},
                doc! {
                    "$set": {"holder": holder, "address": address, "expires_at_ms": expires_at_ms},
                    "$inc": {"epoch": 1_i64},
                },
            )
            .await
            .map_err(StoreError::backend)?;
        if taken.matched_count == 0 {
            let first = self
                .leases
                .insert_one(doc! {
                    "_id": LEASE, "holder": holder, "address": address,
                    "epoch": 1_i64, "expires_at_ms": expires_at_ms,
                })
                .await;
            match first.map_err(|e| conflict_or_backend(e, 0)) {
                Ok(_) => {}
                // Someone holds it (or took it first).
                Err(StoreError::Conflict { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let Some(lease) = self.lease().await?.filter(|l| l.holder == holder) else {
            return Ok(None);
        };
        // From here no commit of an earlier epoch can be written.
        self.leases
            .update_one(
                doc! {"_id": FENCE},
                doc! {"$max": {"epoch": to_i64(lease.epoch)?}},
            )
            .upsert(true)
            .await
            .map_err(StoreError::backend)?;
        Ok(Some(lease))
    }

    async fn members(&self, replica: &str, now_ms: i64, ttl_ms: i64) -> Result<usize, StoreError> {
        let id = format!("member:{replica}");
        if ttl_ms > 0 {
            self.leases
                .update_one(
                    doc! {"_id": &id},
                    doc! {"$set": {"member": true, "expires_at_ms": now_ms + ttl_ms}},
                )
                .upsert(true)
                .await
                .map_err(StoreError::backend)?;
        } else {
            self.leases
                .delete_one(doc! {"_id": &id})
                .await
                .map_err(StoreError::backend)?;
        }
        // Those gone for an hour are forgotten.
        self.leases
            .delete_many(doc! {"member": true, "expires_at_ms": {"$lt": now_ms - 3_600_000}})
            .await
            .map_err(StoreError::backend)?;
        let alive = self
            .leases
            .count_documents(doc! {"member": true, "expires_at_ms": {"$gt": now_ms}})
            .await
            .map_err(StoreError::backend)?;
        Ok(usize::try_from(alive).unwrap_or(usize::MAX))
    }

    async fn release_lease(&self, holder: &str, epoch: u64) -> Result<(), StoreError> {
        self.leases
            .update_one(
                doc! {"_id": LEASE, "holder": holder, "epoch": to_i64(epoch)?},
                doc! {"$set": {"expires_at_ms": i64::MIN}},
            )
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    async fn put_index(&self, rows: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        // Replace by key, a thousand at a time: delete what is there, insert anew. Only a
        // starting writer does this, before it serves; a crash in between leaves rows that the
        // next start writes again.
        for chunk in rows.chunks(1_000) {
            let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
            self.index
                .delete_many(doc! {"_id": {"$in": &keys}})
                .await
                .map_err(StoreError::backend)?;
            let docs: Vec<Document> = chunk
                .iter()
                .map(|(key, value)| index_document(key, value))
                .collect();
            // Another replica starting at the same time may have written the same rows (they
            // are derived from the same log, so equal): a duplicate key is not a failure.
            match self.index.insert_many(docs).ordered(false).await {
                Ok(_) => {}
                Err(e) if only_duplicates(&e) => {}
                Err(e) => return Err(StoreError::backend(e)),
            }
        }
        Ok(())
    }

    async fn index_last(
        &self,
        low: &str,
        high: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let Some(row) = self
            .index
            .find_one(doc! {"_id": {"$gte": low, "$lte": high}})
            .sort(doc! {"_id": -1})
            .await
            .map_err(StoreError::backend)?
        else {
            return Ok(None);
        };
        Ok(Some((
            row.get_str("_id").map_err(StoreError::backend)?.to_owned(),
            row.get_binary_generic("v")
                .map_err(StoreError::backend)?
                .clone(),
        )))
    }

    async fn index_range(
        &self,
        low: &str,
        high: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use futures::TryStreamExt;
        let mut rows = self
            .index
            .find(doc! {"_id": {"$gte": low, "$lte": high}})
            .sort(doc! {"_id": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(StoreError::backend)?;
        let mut found = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(StoreError::backend)? {
            found.push((
                row.get_str("_id").map_err(StoreError::backend)?.to_owned(),
                row.get_binary_generic("v")
                    .map_err(StoreError::backend)?
                    .clone(),
            ));
        }
        Ok(found)
    }

    async fn save_snapshot(&self, position: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Each save has its own name, ordered as the snapshots are (by position, then by when
        // it was taken): chunks of an interrupted save are never read, and of two replicas
        // saving at once the newer snapshot stays the latest.
        let snapshot = format!("{position:020}-{nanos:039}");
        let chunks = bytes.chunks(SNAPSHOT_CHUNK).count();
        for (i, chunk) in bytes.chunks(SNAPSHOT_CHUNK).enumerate() {
            self.snapshots
                .insert_one(doc! {
                    "_id": format!("{snapshot}:{i:06}"),
                    "snapshot": &snapshot,
                    "i": to_i64(i as u64)?,
                    "data": binary(chunk),
                })
                .await
                .map_err(StoreError::backend)?;
        }
        // The manifest moves only forward: if a newer snapshot is already the latest, the
        // filter matches nothing, the upsert collides with its `_id`, and this one is dropped.
        let manifest = self
            .snapshots
            .update_one(
                doc! {"_id": "latest", "snapshot": {"$lt": &snapshot}},
                doc! {"$set": {
                    "snapshot": &snapshot,
                    "position": to_i64(position)?,
                    "chunks": to_i64(chunks as u64)?,
                    "bytes": to_i64(bytes.len() as u64)?,
                }},
            )
            .upsert(true)
            .await;
        match manifest.map_err(|e| conflict_or_backend(e, 0)) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                self.snapshots
                    .delete_many(doc! {"_id": {"$ne": "latest"}, "snapshot": &snapshot})
                    .await
                    .map_err(StoreError::backend)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let latest = snapshot;
        // Older snapshots' chunks (and those of saves interrupted before them) go; a save still
        // writing a newer one is left alone.
        self.snapshots
            .delete_many(doc! {"_id": {"$ne": "latest"}, "snapshot": {"$lt": &latest}})
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    async fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        use futures::TryStreamExt;
        let Some(latest) = self
            .snapshots
            .find_one(doc! {"_id": "latest"})
            .await
            .map_err(StoreError::backend)?
        else {
            return Ok(None);
        };
        let snapshot = latest.get_str("snapshot").map_err(StoreError::backend)?;
        let (at, chunks, size) = (
            whole(&latest, "position")?,
            whole(&latest, "chunks")?,
            whole(&latest, "bytes")?,
        );
        let mut cursor = self
            .snapshots
            .find(doc! {"_id": {"$ne": "latest"}, "snapshot": snapshot})
            .sort(doc! {"i": 1})
            .await
            .map_err(StoreError::backend)?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut read = 0u64;
        while let Some(chunk) = cursor.try_next().await.map_err(StoreError::backend)? {
            if whole(&chunk, "i")? != read {
                return Err(StoreError::Backend(format!(
                    "snapshot {snapshot}: chunk {read} is missing"
                )));
            }
            bytes.extend_from_slice(
                chunk
                    .get_binary_generic("data")
                    .map_err(StoreError::backend)?,
            );
            read += 1;
        }
        if read != chunks || bytes.len() as u64 != size {
            return Err(StoreError::Backend(format!(
                "snapshot {snapshot} is incomplete: {read} of {chunks} chunks, {} of {size} bytes",
                bytes.len()
            )));
        }
        Ok(Some((at, bytes)))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// An idempotency record as MongoDB keeps it.
fn record_of(key: &str, d: &Document) -> Result<IdempotencyRecord, StoreError> {
    let number = |field: &str| match d.get(field) {
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Int64(n)) => Ok(*n),
        other => Err(StoreError::Backend(format!(
            "idempotency record {key}: {field} is {other:?}"
        ))),
    };
    Ok(IdempotencyRecord {
        fingerprint: d
            .get_str("fingerprint")
            .map_err(StoreError::backend)?
            .to_owned(),
        status: u16::try_from(number("status")?).map_err(StoreError::backend)?,
        body: d.get_str("body").map_err(StoreError::backend)?.to_owned(),
        created_at: number("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_logs() {
        assert_eq!(
            redact("mongodb://app:s3cret@db:27017/?tls=true"),
            "mongodb://***@db:27017/?tls=true"
        );
        assert_eq!(
            redact("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
    }

    #[test]
    fn positions_are_read_whatever_integer_width_the_server_returns() {
        assert_eq!(position(Some(&Bson::Int32(7))).unwrap(), 7);
        assert_eq!(position(Some(&Bson::Int64(1 << 40))).unwrap(), 1 << 40);
        assert!(position(Some(&Bson::String("7".into()))).is_err());
        assert!(position(Some(&Bson::Int64(-1))).is_err());
    }

    #[test]
    fn an_event_is_stored_once_with_only_its_position_and_id_beside_it() {
        let d = event_document(
            3,
            br#"{"id":"e-1","type":"t","partitionkey":"k","data":{}}"#,
        )
        .unwrap();
        assert_eq!(d.get_i64("_id").unwrap(), 3);
        assert_eq!(d.get_str("event_id").unwrap(), "e-1");
        assert_eq!(
            d.get_str("body").unwrap(),
            r#"{"id":"e-1","type":"t","partitionkey":"k","data":{}}"#
        );
        assert_eq!(d.len(), 4, "_id, seq, event_id and body: {d}");
        assert!(event_document(1, b"not json").is_err());
    }
}
