//! The engine: one writer per service applies commands to the in-memory state and commits the
//! resulting events, idempotency records and consumer checkpoints in group commits.
//!
//! Commands queue on a channel; the writer takes everything queued (up to [`MAX_GROUP`]), decides
//! each against the state, commits all of it in one durable write, and only then answers. The
//! state's write lock is held until the commit is durable and caches are invalidated, so no reader
//! ever sees a change that is not on disk. If a commit fails the writer restores the state from
//! the latest snapshot and the log after it, and answers 503 for that group (409 if another
//! writer appended first): nothing acknowledged is lost, nothing lost is shown.
//!
//! The state starts from the latest snapshot and the events after it; a background task writes
//! a new snapshot when the [`SnapshotPolicy`] says one is due (see `snapshot.rs`).
//!
//! A **replica** engine ([`Engine::start_replica`]) shares its log with other processes. It
//! writes only while it holds the log's lease ([`Engine::promote`] with the lease's epoch, which
//! every commit carries: see `ownership.rs`); otherwise it is a follower, which applies what the
//! owner appended by reading the log, and refuses commands with [`EngineError::NotOwner`] so
//! that they are forwarded to the owner.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use libertum_domain as domain;
use libertum_events::CloudEvent;
use rustc_hash::FxHashMap;
use serde::{Serialize, de::DeserializeOwned};
use time::OffsetDateTime;
use tokio::sync::{RwLock, RwLockReadGuard, mpsc, oneshot};

use crate::{
    metrics as m,
    ports::{Cache, Commit, EventStore, IdempotencyRecord, StoreError},
    snapshot::{self, SnapshotPolicy},
};

/// The most commands one group commit takes.
pub const MAX_GROUP: usize = 2_048;
const QUEUE: usize = 16_384;

/// How an event is named and keyed in its CloudEvents envelope.
pub struct Described<'a> {
    /// `asset`, `token` or `ledger`: the middle of the type `libertum.{family}.{name}.v1`.
    pub family: &'static str,
    pub name: &'static str,
    /// The stream the event belongs to (asset, token or investor id): the partition key.
    pub subject: &'a str,
    pub actor: &'a str,
    pub time: OffsetDateTime,
}

/// A service's state, changed only by its own events; serialisable, for snapshots.
pub trait StateMachine: Default + Send + Sync + Serialize + DeserializeOwned + 'static {
    type Command: Send + 'static;
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The CloudEvents `source` of this service's events.
    const SOURCE: &'static str;

    /// Decides `command` at `now` and applies its events; a refusal changes nothing.
    fn execute(
        &mut self,
        command: Self::Command,
        now: OffsetDateTime,
    ) -> domain::Result<Vec<Self::Event>>;
    /// Applies an event read back from the log.
    fn apply(&mut self, event: &Self::Event);
    fn describe(event: &Self::Event) -> Described<'_>;
    /// Cache keys that `event` makes stale.
    fn invalidates(_event: &Self::Event, _keys: &mut Vec<String>) {}
    /// The index rows (see [`crate::Commit::index`]) the events applied since the last call
    /// produced. The engine commits those of a command with its events, and drops those of
    /// events read back from the log, whose rows are already stored.
    fn take_index(&mut self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// A response, as first given and as replayed for a retry with the same idempotency key.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub replayed: bool,
    /// The log position whose state includes this reply's effect (set by the writer after the
    /// commit): a later read can ask to see at least this position (read-your-writes).
    pub position: u64,
}

/// Builds the response from the state after the command's events are applied.
pub type ReplyFn<S> = Box<dyn FnOnce(&S, &[<S as StateMachine>::Event]) -> Reply + Send>;

/// What the writer is asked to do.
pub struct Submission<S: StateMachine> {
    /// `None` only advances a consumer checkpoint.
    pub command: Option<S::Command>,
    /// `(key, fingerprint of the request)`.
    pub idempotency: Option<(String, String)>,
    /// `(consumer name, position)` stored with the effect.
    pub checkpoint: Option<(String, u64)>,
    pub reply: ReplyFn<S>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Refused(#[from] domain::Error),
    #[error("this idempotency key was used with a different request")]
    IdempotencyMismatch,
    #[error("the service cannot commit right now: {0}")]
    Unavailable(String),
    /// Another writer appended to this service's log first (optimistic concurrency): nothing of
    /// the request was changed, and the state now shows the other writer's events.
    #[error("another writer changed this service's log first")]
    Conflict,
    /// This replica does not own the log's writes (now): nothing was done, and the request may
    /// be sent to the owner.
    #[error("this replica does not own this service's writes")]
    NotOwner,
}

pub(crate) type Outcome = Result<Reply, EngineError>;

/// Submissions that go into the same group commit: all of them stand, or none.
struct Job<S: StateMachine> {
    submissions: Vec<Submission<S>>,
    done: oneshot::Sender<Vec<Outcome>>,
}

/// The state with the writer's bookkeeping, under one lock: whoever reads it sees the three
/// agree with one position of the log.
struct Held<S> {
    state: S,
    versions: Versions,
    /// The position of the last event applied.
    head: u64,
    /// The latest event time, so new events never get an earlier one after a restart.
    last_time: OffsetDateTime,
    /// The id of the event at `head`, when read from the log: a follower checks that the log
    /// still holds it before it applies what follows.
    last_id: Option<String>,
}

impl<S: Default> Default for Held<S> {
    fn default() -> Self {
        Held {
            state: S::default(),
            versions: Versions::default(),
            head: 0,
            last_time: OffsetDateTime::UNIX_EPOCH,
            last_id: None,
        }
    }
}

struct Inner<S: StateMachine> {
    held: RwLock<Held<S>>,
    store: Arc<dyn EventStore>,
    cache: Option<Arc<dyn Cache>>,
    service: &'static str,
    healthy: AtomicBool,
    /// The position of the latest snapshot saved or restored.
    snapshot_at: AtomicU64,
    /// A replica shares its log and writes only while it holds the lease.
    replica: bool,
    /// The lease epoch a replica writes under; 0 while it does not own the writes.
    epoch: AtomicU64,
    /// The position of the state readers see.
    applied: tokio::sync::watch::Sender<u64>,
}

impl<S: StateMachine> Inner<S> {
    /// The fence of the next commit: `Ok(None)` for a sole writer, `Err` for a replica that
    /// does not own the writes.
    fn fence(&self) -> Result<Option<u64>, EngineError> {
        if !self.replica {
            return Ok(None);
        }
        match self.epoch.load(Ordering::Acquire) {
            0 => Err(EngineError::NotOwner),
            epoch => Ok(Some(epoch)),
        }
    }
}

/// A handle on one service's state and writer; cheap to clone.
pub struct Engine<S: StateMachine> {
    inner: Arc<Inner<S>>,
    tx: mpsc::Sender<Job<S>>,
    writer: Arc<parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Stops the snapshot task.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<S: StateMachine> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
            tx: self.tx.clone(),
            writer: self.writer.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// Per-subject stream versions, the `subjectversion` of each event.
pub(crate) type Versions = FxHashMap<String, u64>;

impl<S: StateMachine> Engine<S> {
    /// Restores the state from `store` (its latest snapshot and the events after it), then
    /// starts the writer, with snapshots taken on the default policy.
    pub async fn start(
        service: &'static str,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<dyn Cache>>,
    ) -> Result<Self, StoreError> {
        Self::start_with(service, store, cache, SnapshotPolicy::default()).await
    }

    /// [`Engine::start`], with snapshots taken when `policy` says.
    pub async fn start_with(
        service: &'static str,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<dyn Cache>>,
        policy: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Self::launch(service, store, cache, policy, false).await
    }

    /// Starts a replica: one of several processes sharing `store`'s log. It begins as a
    /// follower, applying what the owner appends, and writes only after [`Engine::promote`].
    pub async fn start_replica(
        service: &'static str,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<dyn Cache>>,
        policy: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Self::launch(service, store, cache, policy, true).await
    }

    async fn launch(
        service: &'static str,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<dyn Cache>>,
        policy: SnapshotPolicy,
        replica: bool,
    ) -> Result<Self, StoreError> {
        let started = Instant::now();
        let (held, snapshot_at) = restore::<S>(service, store.as_ref(), true).await?;
        tracing::info!(
            service,
            head = held.head,
            snapshot = snapshot_at,
            replayed = held.head - snapshot_at,
            seconds = started.elapsed().as_secs_f64(),
            "state restored"
        );
        if replica {
            // From zero, so that the first late commit of a former owner is an increase.
            metrics::counter!(m::COMMITS_FENCED, "service" => service).increment(0);
        }
        let inner = Arc::new(Inner {
            applied: tokio::sync::watch::channel(held.head).0,
            held: RwLock::new(held),
            store,
            cache,
            service,
            healthy: AtomicBool::new(true),
            snapshot_at: AtomicU64::new(snapshot_at),
            replica,
            epoch: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(writer(inner.clone(), rx));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if !policy.is_never() {
            tokio::spawn(snapshots(Arc::downgrade(&inner), policy, stopped.clone()));
        }
        if replica {
            tokio::spawn(follow(Arc::downgrade(&inner), stopped));
        }
        Ok(Engine {
            inner,
            tx,
            writer: Arc::new(parking_lot::Mutex::new(Some(handle))),
            stop: Arc::new(stop),
        })
    }

    /// Writes a snapshot of the state now (the background task does it when due); returns its
    /// position.
    pub async fn snapshot(&self) -> Result<u64, StoreError> {
        take_snapshot(&self.inner).await
    }

    /// Drops this handle and, once every other handle is gone too, waits (up to five seconds)
    /// for the writer to finish what is queued and release the store.
    pub async fn close(self) {
        self.stop.send_replace(true);
        let handle = self.writer.lock().take();
        let service = self.inner.service;
        let store = self.inner.store.clone();
        drop(self);
        if let Some(handle) = handle
            && tokio::time::timeout(std::time::Duration::from_secs(5), handle)
                .await
                .is_err()
        {
            tracing::warn!(
                service,
                "the writer did not stop within five seconds: a handle is still held"
            );
        }
        store.shutdown().await;
    }

    /// Submits a command and waits until its effect is durable (or refused).
    pub async fn submit(&self, submission: Submission<S>) -> Outcome {
        self.enqueue_many(vec![submission])
            .await?
            .await
            .map_err(|_| EngineError::Unavailable("the writer stopped".into()))?
            .pop()
            .unwrap_or_else(|| Err(EngineError::Unavailable("the writer gave no answer".into())))
    }

    /// Queues commands that must commit together (all or none, in order) and returns at once;
    /// the receiver yields their outcomes. Consumers queue each batch of events this way.
    pub async fn enqueue_many(
        &self,
        submissions: Vec<Submission<S>>,
    ) -> Result<oneshot::Receiver<Vec<Outcome>>, EngineError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { submissions, done })
            .await
            .map_err(|_| EngineError::Unavailable("the writer stopped".into()))?;
        Ok(rx)
    }

    /// Read access to the committed state.
    pub async fn read(&self) -> RwLockReadGuard<'_, S> {
        RwLockReadGuard::map(self.inner.held.read().await, |held| &held.state)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    pub fn cache(&self) -> Option<&Arc<dyn Cache>> {
        self.inner.cache.as_ref()
    }

    /// False after a failed commit until the state has been rebuilt.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// The service's name.
    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// The position of the state readers see, as it moves.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Whether this engine takes commands now: a sole writer always, a replica while it owns
    /// the writes.
    pub fn is_writer(&self) -> bool {
        self.inner.fence().is_ok()
    }

    /// Makes a replica the writer under `epoch`, the lease it just took (whose fence the store
    /// has raised, so no earlier owner can append any more): it first applies everything the
    /// log holds, then takes commands.
    pub async fn promote(&self, epoch: u64) -> Result<(), StoreError> {
        let mut held = self.inner.held.write().await;
        let from = held.head;
        if !still_holds(self.inner.store.as_ref(), &held).await? {
            // What this follower applied is not what the log holds: start again from the store.
            let _ = reload(self.inner.service, self.inner.store.as_ref(), &mut held).await?;
        }
        replay_tail(self.inner.store.as_ref(), &mut held, false).await?;
        self.inner.epoch.store(epoch, Ordering::Release);
        self.inner.applied.send_replace(held.head);
        tracing::info!(
            service = self.inner.service,
            epoch,
            head = held.head,
            caught_up = held.head - from,
            "this replica now owns the writes"
        );
        Ok(())
    }

    /// Stops a replica writing: what is queued after this is refused with
    /// [`EngineError::NotOwner`]. A group being committed finishes (under the old epoch, which
    /// the store accepts only while it is still the lease's).
    pub async fn demote(&self) {
        let previous = self.inner.epoch.swap(0, Ordering::AcqRel);
        if previous != 0 {
            // Taking the lock waits for a group in flight.
            drop(self.inner.held.write().await);
            tracing::info!(
                service = self.inner.service,
                epoch = previous,
                "this replica no longer owns the writes"
            );
        }
    }

    /// Waits until the state readers see includes `position` (read-your-writes), up to
    /// `within`; says whether it does. A follower looks at the log at once.
    pub async fn wait_applied(&self, position: u64, within: std::time::Duration) -> bool {
        let mut applied = self.inner.applied.subscribe();
        if *applied.borrow() >= position {
            return true;
        }
        if self.inner.replica && !self.is_writer() {
            let _ = follow_once(&self.inner).await;
        }
        tokio::time::timeout(within, applied.wait_for(|at| *at >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// How often a follower looks for what the owner appended.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Applies to a follower's state what the owner appends, until `stop` or the engine is gone.
async fn follow<S: StateMachine>(
    inner: std::sync::Weak<Inner<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.epoch.load(Ordering::Acquire) != 0 {
            continue;
        }
        if let Err(error) = follow_once(&inner).await {
            tracing::warn!(service = inner.service, %error, "could not read the log the owner appends to; trying again");
        }
    }
}

/// Reads what was appended after the follower's state, outside the lock, and applies it under
/// the lock if nothing moved meanwhile. The read starts at the last event applied, which must
/// still be the same event: a log that no longer holds it (what a store without isolation can
/// show: a transaction read before it was rolled back) makes the follower rebuild its state
/// from the store rather than build on what is gone.
async fn follow_once<S: StateMachine>(inner: &Inner<S>) -> Result<(), StoreError> {
    loop {
        let (from, expected) = {
            let held = inner.held.read().await;
            (held.head, held.last_id.clone().filter(|_| held.head > 0))
        };
        let after = if expected.is_some() { from - 1 } else { from };
        let mut chunk = inner.store.read(after, 4_096).await?;
        if let Some(id) = &expected {
            if !is_event(chunk.first(), from, id) {
                return rebuild(inner, from).await;
            }
            chunk.remove(0);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let full = chunk.len() >= 4_095;
        let mut held = inner.held.write().await;
        if held.head != from || inner.epoch.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        let mut stale = Vec::new();
        apply_chunk(&mut held, chunk, None, Some(&mut stale))?;
        if let Some(cache) = &inner.cache {
            for (key, version) in &stale {
                cache.invalidate(key, *version).await;
            }
        }
        inner.applied.send_replace(held.head);
        if !full {
            return Ok(());
        }
    }
}

/// Whether the log still holds, at `held.head`, the event `held` applied there (true when that
/// is not known: a state from a snapshot, or an empty one).
async fn still_holds<S>(store: &dyn EventStore, held: &Held<S>) -> Result<bool, StoreError> {
    let (Some(last_id), true) = (&held.last_id, held.head > 0) else {
        return Ok(true);
    };
    let found = store.read(held.head - 1, 1).await?;
    Ok(is_event(found.first(), held.head, last_id))
}

/// Whether `found`, a row read from the log, is the event `id` at `position`.
fn is_event(found: Option<&(u64, Vec<u8>)>, position: u64, id: &str) -> bool {
    found.is_some_and(|(at, bytes)| {
        *at == position && serde_json::from_slice::<CloudEvent>(bytes).is_ok_and(|e| e.id == id)
    })
}

/// Rebuilds a follower's state from the store (the latest snapshot and the log after it),
/// when the log no longer holds what it applied at `from`.
async fn rebuild<S: StateMachine>(inner: &Inner<S>, from: u64) -> Result<(), StoreError> {
    let mut held = inner.held.write().await;
    if held.head != from || inner.epoch.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    tracing::error!(
        service = inner.service,
        position = from,
        "the log no longer holds the event this replica applied there; rebuilding the state from the store"
    );
    let _ = reload(inner.service, inner.store.as_ref(), &mut held).await?;
    inner.applied.send_replace(held.head);
    Ok(())
}

/// Replaces `held` with the state the store holds (its latest snapshot and the log after it),
/// keeping the latest event time seen, so time never runs backwards. Returns the snapshot's
/// position (0 if none).
async fn reload<S: StateMachine>(
    service: &'static str,
    store: &dyn EventStore,
    held: &mut Held<S>,
) -> Result<u64, StoreError> {
    let (fresh, snapshot_at) = restore::<S>(service, store, false).await?;
    let last_time = held.last_time.max(fresh.last_time);
    *held = fresh;
    held.last_time = last_time;
    Ok(snapshot_at)
}

/// Applies the events after `held.head` to `held`. With `reindex`, it also writes the index
/// rows those events derive (see [`restore`]); otherwise they are dropped, being stored already.
async fn replay_tail<S: StateMachine>(
    store: &dyn EventStore,
    held: &mut Held<S>,
    reindex: bool,
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    loop {
        let chunk = store.read(held.head, 4_096).await?;
        if chunk.is_empty() {
            return store.put_index(rows).await;
        }
        apply_chunk(held, chunk, reindex.then_some(&mut rows), None)?;
        if rows.len() >= 16_384 {
            store.put_index(std::mem::take(&mut rows)).await?;
        }
    }
}

/// Applies events read from the log to `held`, collecting the index rows they derive into
/// `rows` (else dropping them) and the cache keys they make stale into `stale`.
fn apply_chunk<S: StateMachine>(
    held: &mut Held<S>,
    chunk: Vec<(u64, Vec<u8>)>,
    mut rows: Option<&mut Vec<(String, Vec<u8>)>>,
    mut stale: Option<&mut Vec<(String, u64)>>,
) -> Result<(), StoreError> {
    for (position, bytes) in chunk {
        let envelope: CloudEvent = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Backend(format!("event at position {position} is unreadable: {e}"))
        })?;
        let event: S::Event = envelope.data().map_err(|e| {
            StoreError::Backend(format!(
                "event at position {position} has unreadable data: {e}"
            ))
        })?;
        let version = envelope.subject_version();
        held.versions.insert(envelope.subject.clone(), version);
        held.last_time = held.last_time.max(S::describe(&event).time);
        held.state.apply(&event);
        let derived = held.state.take_index();
        if let Some(rows) = rows.as_deref_mut() {
            rows.extend(derived);
        }
        if let Some(stale) = stale.as_deref_mut() {
            let mut keys = Vec::new();
            S::invalidates(&event, &mut keys);
            stale.extend(keys.into_iter().map(|key| (key, version)));
        }
        held.head = position;
        held.last_id = Some(envelope.id);
    }
    Ok(())
}

/// The state as of the store's head: the latest snapshot and the events after it, or the whole
/// log when there is no usable snapshot. Returns it with the snapshot's position (0 if none).
async fn restore<S: StateMachine>(
    service: &'static str,
    store: &dyn EventStore,
    at_start: bool,
) -> Result<(Held<S>, u64), StoreError> {
    let head = store.head().await?;
    let from_snapshot = match store.latest_snapshot().await {
        Ok(None) => None,
        Ok(Some((position, _))) if position > head => {
            fallback(
                service,
                position,
                &format!("the log ends at {head}, before it"),
            );
            None
        }
        Ok(Some((position, bytes))) => match snapshot::decode::<S>(position, &bytes) {
            Ok(restored) => Some(Held {
                state: restored.state,
                versions: restored.versions,
                head: restored.position,
                last_time: restored.last_time,
                last_id: None,
            }),
            Err(why) => {
                fallback(service, position, &why);
                None
            }
        },
        Err(error) => {
            fallback(service, 0, &format!("it could not be read: {error}"));
            None
        }
    };
    // Reading the whole log at start, the engine also writes again the index rows it derives:
    // the same rows as stored, or the ones a log written before the index existed lacks (a
    // distribution paid from a missing row would pay the wrong holders). A snapshot exists only
    // where the index does, so the tail after one needs nothing; and a restore after a failed
    // commit only reads, so that a store refusing writes cannot stop the writer.
    let reindex = at_start && from_snapshot.is_none();
    let mut held = from_snapshot.unwrap_or_default();
    let snapshot_at = held.head;
    replay_tail(store, &mut held, reindex).await?;
    Ok((held, snapshot_at))
}

/// Says, loudly, that a snapshot is not used and the whole log is read instead.
fn fallback(service: &'static str, position: u64, why: &str) {
    tracing::error!(
        service,
        snapshot = position,
        reason = why,
        "the latest snapshot is unusable: rebuilding the state from the whole log"
    );
    metrics::counter!(m::SNAPSHOT_FALLBACKS, "service" => service).increment(1);
}

/// Encodes the state under the read lock (writers wait for that long) and saves it.
async fn take_snapshot<S: StateMachine>(inner: &Inner<S>) -> Result<u64, StoreError> {
    let started = Instant::now();
    let (position, bytes) = {
        let held = inner.held.read().await;
        let bytes = snapshot::encode(held.head, held.last_time, &held.versions, &held.state)
            .map_err(StoreError::Backend)?;
        (held.head, bytes)
    };
    let size = bytes.len();
    inner.store.save_snapshot(position, bytes).await?;
    inner.snapshot_at.store(position, Ordering::Relaxed);
    metrics::counter!(m::SNAPSHOTS, "service" => inner.service).increment(1);
    metrics::gauge!(m::SNAPSHOT_BYTES, "service" => inner.service).set(size as f64);
    metrics::histogram!(m::SNAPSHOT_SECONDS, "service" => inner.service)
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        service = inner.service,
        position,
        bytes = size,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot saved"
    );
    Ok(position)
}

/// Writes a snapshot whenever `policy` says one is due, until `stop` or the engine is gone.
async fn snapshots<S: StateMachine>(
    inner: std::sync::Weak<Inner<S>>,
    policy: SnapshotPolicy,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.fence().is_err() {
            // A follower leaves snapshots to the owner.
            continue;
        }
        let head = *inner.applied.borrow();
        let appended = head.saturating_sub(inner.snapshot_at.load(Ordering::Relaxed));
        if !policy.due(appended, last.elapsed()) {
            continue;
        }
        last = Instant::now();
        if let Err(error) = take_snapshot(&inner).await {
            // The log holds everything: a missed snapshot only makes the next start longer.
            tracing::warn!(service = inner.service, %error, "snapshot not saved");
        }
    }
}

async fn writer<S: StateMachine>(inner: Arc<Inner<S>>, mut rx: mpsc::Receiver<Job<S>>) {
    let service = inner.service;
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let mut guard = inner.held.write().await;
        let held = &mut *guard;
        let fence = match inner.fence() {
            Ok(fence) => fence,
            Err(_) => {
                // Not the owner: nothing is decided here; the requests go to the owner.
                drop(guard);
                for Job { submissions, done } in jobs.drain(..) {
                    let _ = done.send(
                        submissions
                            .iter()
                            .map(|_| Err(EngineError::NotOwner))
                            .collect(),
                    );
                }
                continue;
            }
        };
        let mut group = Group {
            commit: Commit {
                expected_head: held.head,
                fence,
                ..Commit::default()
            },
            pending: FxHashMap::default(),
            stale_keys: Vec::new(),
            poisoned: false,
        };
        let mut outcomes: Vec<(oneshot::Sender<Vec<Outcome>>, Vec<Outcome>)> =
            Vec::with_capacity(jobs.len());
        let mut commands = 0;
        for Job { submissions, done } in jobs.drain(..) {
            let mut answers = Vec::with_capacity(submissions.len());
            for submission in submissions {
                // Time never runs backwards inside one log, whatever the wall clock does.
                held.last_time = OffsetDateTime::now_utc().max(held.last_time);
                answers.push(
                    run_one(
                        &mut held.state,
                        submission,
                        held.last_time,
                        &inner,
                        &mut held.versions,
                        &mut group,
                    )
                    .await,
                );
                commands += 1;
            }
            outcomes.push((done, answers));
        }
        metrics::histogram!(m::BATCH_SIZE, "service" => service).record(commands as f64);
        let Group {
            commit,
            stale_keys,
            poisoned,
            ..
        } = group;
        let failure = if poisoned {
            Some(StoreError::Backend("an event could not be encoded".into()))
        } else if commit.is_empty() {
            None
        } else {
            let appended = commit.events.len() as u64;
            let started = Instant::now();
            match inner.store.commit(commit).await {
                Ok(()) => {
                    held.head += appended;
                    metrics::counter!(m::COMMITS, "service" => service).increment(1);
                    metrics::counter!(m::EVENTS_APPENDED, "service" => service).increment(appended);
                    metrics::histogram!(m::COMMIT_SECONDS, "service" => service)
                        .record(started.elapsed().as_secs_f64());
                    if let Some(cache) = &inner.cache {
                        for (key, version) in &stale_keys {
                            cache.invalidate(key, *version).await;
                        }
                    }
                    inner.applied.send_replace(held.head);
                    None
                }
                Err(error) => Some(error),
            }
        };
        if let Some(error) = failure {
            // Memory is ahead of the log: nothing of this group stands. Everything in it is
            // answered 409 if another writer appended first, 503 otherwise (a consumer's batch is
            // one job, so it fails or commits whole), and the state is restored from the latest
            // snapshot and the log after it.
            tracing::error!(service, %error, "group commit failed; restoring the state from the latest snapshot and the log");
            inner.healthy.store(false, Ordering::Relaxed);
            let conflict = matches!(error, StoreError::Conflict { .. });
            let fenced = matches!(error, StoreError::Fenced { .. });
            if fenced {
                metrics::counter!(m::COMMITS_FENCED, "service" => service).increment(1);
            }
            // A replica that finds the log appended by another lost the writes (or is about to
            // learn it): the requests were not executed and go to the owner.
            let elsewhere = fenced || (conflict && inner.replica);
            if fenced {
                // Another replica took the lease: this one must not write again.
                inner.epoch.store(0, Ordering::Release);
            }
            for (_, answers) in &mut outcomes {
                for outcome in answers.iter_mut().filter(|o| o.is_ok()) {
                    *outcome = Err(if elsewhere {
                        EngineError::NotOwner
                    } else if conflict {
                        EngineError::Conflict
                    } else {
                        EngineError::Unavailable("the commit failed; nothing was changed".into())
                    });
                }
            }
            let started = Instant::now();
            match reload(service, inner.store.as_ref(), held).await {
                Ok(snapshot_at) => {
                    tracing::info!(
                        service,
                        head = held.head,
                        replayed = held.head - snapshot_at,
                        seconds = started.elapsed().as_secs_f64(),
                        "state restored after the failed commit"
                    );
                    inner.applied.send_replace(held.head);
                    inner.healthy.store(true, Ordering::Relaxed);
                }
                Err(error) => {
                    // The state may show what the log does not hold: stop serving writes.
                    tracing::error!(service, %error, "cannot rebuild the state; the writer stops");
                    drop(guard);
                    for (done, answers) in outcomes {
                        let _ = done.send(answers);
                    }
                    return;
                }
            }
        }
        let position = held.head;
        drop(guard);
        for (done, mut answers) in outcomes {
            for reply in answers.iter_mut().flatten() {
                reply.position = position;
            }
            // The requester may have gone away; its effect stands either way.
            let _ = done.send(answers);
        }
    }
}

/// What one group commit accumulates.
struct Group {
    commit: Commit,
    pending: FxHashMap<String, IdempotencyRecord>,
    /// Cache keys the group's events make stale, with the subject version that does.
    stale_keys: Vec<(String, u64)>,
    /// Set when the state changed but its events cannot be written: the group must fail.
    poisoned: bool,
}

async fn run_one<S: StateMachine>(
    state: &mut S,
    submission: Submission<S>,
    now: OffsetDateTime,
    inner: &Inner<S>,
    versions: &mut Versions,
    group: &mut Group,
) -> Outcome {
    let Submission {
        command,
        idempotency,
        checkpoint,
        reply,
    } = submission;
    let Group {
        commit,
        pending,
        stale_keys,
        poisoned,
    } = group;
    if let Some((key, fingerprint)) = &idempotency {
        let earlier = match pending.get(key) {
            Some(record) => Some(record.clone()),
            None => inner
                .store
                .idempotency(key)
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))?,
        };
        if let Some(record) = earlier {
            return if &record.fingerprint == fingerprint {
                Ok(Reply {
                    status: record.status,
                    body: Bytes::from(record.body),
                    replayed: true,
                    position: 0,
                })
            } else {
                Err(EngineError::IdempotencyMismatch)
            };
        }
    }
    if let Some((name, at)) = checkpoint {
        // A consumer's batch carries one checkpoint per event: the last one supersedes the
        // others, so the commit writes each stream's checkpoint once.
        match commit.checkpoints.iter_mut().find(|(n, _)| *n == name) {
            Some(stored) => stored.1 = at,
            None => commit.checkpoints.push((name, at)),
        }
    }
    let events = match command {
        None => Vec::new(),
        Some(command) => match state.execute(command, now) {
            Ok(events) => events,
            Err(refusal) => {
                metrics::counter!(m::COMMANDS_REFUSED, "service" => inner.service, "code" => refusal.code).increment(1);
                return Err(EngineError::Refused(refusal));
            }
        },
    };
    for event in &events {
        let d = S::describe(event);
        let version = versions.entry(d.subject.to_owned()).or_insert(0);
        *version += 1;
        // The group appends its events right after the head it was decided on.
        let position = commit.expected_head + commit.events.len() as u64 + 1;
        let envelope = CloudEvent::new(
            uuid::Uuid::now_v7().to_string(),
            S::SOURCE,
            d.family,
            d.name,
            d.time,
            d.subject,
            position,
            *version,
            d.actor,
            event,
        )
        .map_err(|e| {
            // The state already holds this command's effect: the whole group must fail.
            *poisoned = true;
            EngineError::Unavailable(format!("an event could not be encoded: {e}"))
        })?;
        commit.events.push(envelope.to_bytes());
        let mut keys = Vec::new();
        S::invalidates(event, &mut keys);
        stale_keys.extend(keys.into_iter().map(|key| (key, *version)));
    }
    commit.index.extend(state.take_index());
    let reply = reply(state, &events);
    if let Some((key, fingerprint)) = idempotency {
        let record = IdempotencyRecord {
            fingerprint,
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
            created_at: now.unix_timestamp(),
        };
        pending.insert(key.clone(), record.clone());
        commit.idempotency.push((key, record));
    }
    Ok(reply)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
