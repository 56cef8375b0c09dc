//! The engine: one writer per service applies commands to the in-memory state and commits the
//! resulting events, idempotency records and consumer checkpoints in group commits.
//!
//! Commands queue on a channel; the writer takes everything queued (up to [`MAX_GROUP`]), decides
//! each against **its own copy** of the state, and hands the group to the committer, which makes
//! it durable in one write and only then applies its events to **the copy readers see** and
//! answers. So no reader and no reply ever sees a change that is not on disk, readers never wait
//! for a commit (only for the moment its events are applied), and the writer decides the next
//! group while the last one is being made durable (a pipelined group commit). If a commit fails,
//! the readers' copy is restored from the latest snapshot and the log after it, every group decided
//! on top of the failed one is answered 503 without being written (409 if another writer appended
//! first), and the writer starts again from a copy of the restored state: nothing acknowledged is
//! lost, nothing lost is shown.
//!
//! The state starts from the latest snapshot and the events after it; a background task writes
//! a new snapshot when the [`SnapshotPolicy`] says one is due (see `snapshot.rs`).
//!
//! A **replica** engine ([`Engine::start_replica`]) shares its log with other processes. It
//! writes only while it holds the log's lease ([`Engine::promote`] with the lease's epoch, which
//! every commit carries: see `ownership.rs`); otherwise it is a follower, which applies what the
//! owner appended by reading the log, and refuses commands with [`EngineError::NotOwner`] so
//! that they are forwarded to the owner. What a follower applies to the readers' copy is applied
//! to the writer's copy too, before the writer decides its next group.
//!
//! A **partitioned** engine ([`Engine::start_partitioned`]) has one log per partition (see
//! `partition.rs`) and one state: each command belongs to one partition
//! ([`StateMachine::partition_key`]) and commits to its log; a replica owns each partition's
//! writes apart and follows the others. Partition 0, the registry, holds what every partition
//! reads (investors, assets); a follower reads the other partitions' new events before the
//! registry's, and applies the registry's first, so an event never arrives before what it was
//! decided on.

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
use tracing::Instrument;

use crate::{
    metrics as m,
    partition::{self, Position},
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
///
/// It is `Clone` because the engine keeps two copies: the one readers see, which holds only what
/// is durable, and the one the writer decides on, ahead of it by the groups being committed.
pub trait StateMachine:
    Default + Clone + Send + Sync + Serialize + DeserializeOwned + 'static
{
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
    /// The key whose partition `command` writes to (a token's or an asset's id); `None` for
    /// the registry, partition 0 (and for every command of an unpartitioned service).
    fn partition_key(_command: &Self::Command) -> Option<&str> {
        None
    }
    /// Commands the state owes at `now` (a claimed token class to open in its partition, a
    /// hold past its deadline to expire): the owner of each one's partition submits them,
    /// every 100 ms, until they are done. Each must be refused once done,
    /// so that submitting it again changes nothing.
    fn pending(&self, _now: OffsetDateTime) -> Vec<Self::Command> {
        Vec::new()
    }
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
    /// The partition whose log `position` is in.
    pub partition: usize,
}

impl Reply {
    /// A reply of `status` with `body`, before the writer sets its position.
    pub fn new(status: u16, body: Bytes) -> Self {
        Reply {
            status,
            body,
            replayed: false,
            position: 0,
            partition: 0,
        }
    }
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
    /// The partition to commit to when there is no command (a consumer's checkpoint); a
    /// command's own partition otherwise.
    pub partition: Option<usize>,
    /// The span the command comes from (a request's, a consumed event's): its decision and
    /// commit are traced under it, and its events carry that trace on.
    pub span: tracing::Span,
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

/// The state with the writer's bookkeeping: whoever reads it sees them agree with one position
/// of each partition's log. There are two: the readers' (under `Inner::held`) and the writer's
/// own, ahead of it by the groups decided and not yet durable.
#[derive(Clone)]
struct Held<S> {
    state: S,
    versions: Versions,
    /// Each partition's position: that of the last event applied from its log.
    heads: Vec<u64>,
    /// The latest event time, so new events never get an earlier one after a restart.
    last_time: OffsetDateTime,
    /// Each partition's id of the event at its head, when read from the log: a follower checks
    /// that the log still holds it before it applies what follows.
    last_ids: Vec<Option<String>>,
    /// Moves each time the readers' copy is replaced or changed in a way the writer's copy
    /// cannot follow event by event (a reload, a rebuild, too much followed at once): the
    /// writer then takes a fresh copy of it.
    generation: u64,
    /// What was applied to the readers' copy from logs the writer does not write (followed
    /// partitions, the registry's catch-up, a promoted partition's tail) since the writer last
    /// looked, for the writer to apply to its copy too. Bounded by [`FOLLOWED_MAX`].
    followed: Vec<(usize, Chunk)>,
}

/// Events read from a log: each with its position.
type Chunk = Vec<(u64, Vec<u8>)>;

/// The most events [`Held::followed`] keeps; beyond, the writer copies the readers' state again.
const FOLLOWED_MAX: usize = 32_768;

impl<S: Default> Held<S> {
    fn empty(partitions: usize) -> Self {
        Held {
            state: S::default(),
            versions: Versions::default(),
            heads: vec![0; partitions],
            last_time: OffsetDateTime::UNIX_EPOCH,
            last_ids: vec![None; partitions],
            generation: 0,
            followed: Vec::new(),
        }
    }
}

impl<S: StateMachine> Held<S> {
    /// Applies `chunk`, read from the log of a partition the writer does not write, to the
    /// readers' copy, and keeps it for the writer's (see [`Held::followed`]).
    fn follow(
        &mut self,
        partition: usize,
        chunk: Chunk,
        stale: Option<&mut Vec<(String, u64)>>,
    ) -> Result<(), StoreError> {
        let kept: usize = self.followed.iter().map(|(_, c)| c.len()).sum();
        if kept + chunk.len() <= FOLLOWED_MAX {
            self.followed.push((partition, chunk.clone()));
        } else {
            self.followed.clear();
            self.generation += 1;
        }
        apply_chunk(self, partition, chunk, None, stale)
    }
}

struct Inner<S: StateMachine> {
    /// The readers' copy of the state: what is durable.
    held: RwLock<Held<S>>,
    /// Held by the writer while it decides a group: a promotion or a demotion takes it to keep
    /// the writer from deciding meanwhile.
    writing: tokio::sync::Mutex<()>,
    /// Groups decided and not yet committed and applied to the readers' copy (or refused).
    in_flight: tokio::sync::watch::Sender<usize>,
    /// One log per partition; an unpartitioned service has one.
    stores: Vec<Arc<dyn EventStore>>,
    cache: Option<Arc<dyn Cache>>,
    service: &'static str,
    healthy: AtomicBool,
    /// The sum of the heads of the latest snapshot saved or restored.
    snapshot_at: AtomicU64,
    /// A replica shares its logs and writes a partition only while it holds its lease.
    replica: bool,
    /// The lease epoch a replica writes each partition under; 0 where it does not own them.
    epochs: Vec<AtomicU64>,
    /// The position of each partition's log in the state readers see.
    applied: Vec<tokio::sync::watch::Sender<u64>>,
    /// The number of the last batch the committer passed (committed or refused).
    committed: AtomicU64,
    /// Wakes the submission of what the state owes, after the state moved.
    nudge: Arc<tokio::sync::Notify>,
    /// The names of its decision and commit spans: `{service}.decide`, `{service}.commit`.
    span_names: (String, String),
}

impl<S: StateMachine> Inner<S> {
    /// The fence of the next commit to `partition`: `Ok(None)` for a sole writer, `Err` for a
    /// replica that does not own the partition's writes.
    fn fence(&self, partition: usize) -> Result<Option<u64>, EngineError> {
        if !self.replica {
            return Ok(None);
        }
        match self.epochs[partition].load(Ordering::Acquire) {
            0 => Err(EngineError::NotOwner),
            epoch => Ok(Some(epoch)),
        }
    }

    fn owns(&self, partition: usize) -> bool {
        self.fence(partition).is_ok()
    }

    fn partitions(&self) -> usize {
        self.stores.len()
    }

    fn partition_of(&self, command: &S::Command) -> usize {
        S::partition_key(command).map_or(0, |key| partition::of(key, self.partitions()))
    }

    /// Where `submission` commits: its command's partition, or the one it names (a consumer's
    /// checkpoint alone), else the registry.
    fn partition_of_submission(&self, submission: &Submission<S>) -> usize {
        match (&submission.command, submission.partition) {
            (Some(command), _) => self.partition_of(command),
            (None, partition) => partition.unwrap_or(0),
        }
    }

    /// Waits until no decided group is waiting for its commit.
    async fn settled(&self) {
        let mut in_flight = self.in_flight.subscribe();
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }

    fn publish(&self, held: &Held<S>) {
        self.nudge.notify_one();
        for (applied, head) in self.applied.iter().zip(&held.heads) {
            applied.send_if_modified(|at| {
                let moved = *at != *head;
                *at = *head;
                moved
            });
        }
    }
}

/// A handle on one service's state and writer; cheap to clone (one reference count: every
/// request's handler takes a clone).
pub struct Engine<S: StateMachine> {
    handle: Arc<Handle<S>>,
}

#[doc(hidden)]
pub struct Handle<S: StateMachine> {
    inner: Arc<Inner<S>>,
    tx: mpsc::Sender<Job<S>>,
    writer: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Stops the snapshot task.
    stop: tokio::sync::watch::Sender<bool>,
}

impl<S: StateMachine> std::ops::Deref for Engine<S> {
    type Target = Handle<S>;

    fn deref(&self) -> &Handle<S> {
        &self.handle
    }
}

impl<S: StateMachine> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            handle: self.handle.clone(),
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
        Self::start_partitioned(service, vec![store], cache, policy, false).await
    }

    /// Starts a replica: one of several processes sharing `store`'s log. It begins as a
    /// follower, applying what the owner appends, and writes only after [`Engine::promote`].
    pub async fn start_replica(
        service: &'static str,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<dyn Cache>>,
        policy: SnapshotPolicy,
    ) -> Result<Self, StoreError> {
        Self::start_partitioned(service, vec![store], cache, policy, true).await
    }

    /// Starts an engine over one log per partition (`stores[0]` is the registry, where
    /// snapshots are kept). A `replica` begins as a follower of every partition.
    pub async fn start_partitioned(
        service: &'static str,
        stores: Vec<Arc<dyn EventStore>>,
        cache: Option<Arc<dyn Cache>>,
        policy: SnapshotPolicy,
        replica: bool,
    ) -> Result<Self, StoreError> {
        assert!(!stores.is_empty(), "an engine needs at least one log");
        let started = Instant::now();
        let (held, snapshot_at) = restore::<S>(service, &stores, true).await?;
        let total: u64 = held.heads.iter().sum();
        tracing::info!(
            service,
            partitions = stores.len(),
            head = total,
            snapshot = snapshot_at,
            replayed = total - snapshot_at,
            seconds = started.elapsed().as_secs_f64(),
            "state restored"
        );
        if replica {
            // From zero, so that the first late commit of a former owner is an increase.
            metrics::counter!(m::COMMITS_FENCED, "service" => service).increment(0);
        }
        let inner = Arc::new(Inner {
            applied: held
                .heads
                .iter()
                .map(|head| tokio::sync::watch::channel(*head).0)
                .collect(),
            epochs: stores.iter().map(|_| AtomicU64::new(0)).collect(),
            held: RwLock::new(held),
            writing: tokio::sync::Mutex::new(()),
            in_flight: tokio::sync::watch::channel(0).0,
            committed: AtomicU64::new(0),
            stores,
            cache,
            service,
            healthy: AtomicBool::new(true),
            snapshot_at: AtomicU64::new(snapshot_at),
            replica,
            nudge: Arc::new(tokio::sync::Notify::new()),
            span_names: (format!("{service}.decide"), format!("{service}.commit")),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(writer(inner.clone(), rx));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if !policy.is_never() {
            tokio::spawn(snapshots(Arc::downgrade(&inner), policy, stopped.clone()));
        }
        tokio::spawn(owed(Arc::downgrade(&inner), tx.clone(), stopped.clone()));
        if replica {
            tokio::spawn(follow(Arc::downgrade(&inner), stopped));
        }
        Ok(Engine {
            handle: Arc::new(Handle {
                inner,
                tx,
                writer: parking_lot::Mutex::new(Some(handle)),
                stop,
            }),
        })
    }

    /// Writes a snapshot of the state now (the background task does it when due); returns the
    /// sum of the partitions' positions it holds.
    pub async fn snapshot(&self) -> Result<u64, StoreError> {
        take_snapshot(&self.inner).await
    }

    /// Drops this handle and, once every other handle is gone too, waits (up to five seconds)
    /// for the writer to finish what is queued and release the stores.
    pub async fn close(self) {
        self.stop.send_replace(true);
        let handle = self.writer.lock().take();
        let service = self.inner.service;
        let stores = self.inner.stores.clone();
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
        for store in stores {
            store.shutdown().await;
        }
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

    /// Queues commands that must commit together (all or none, in order, all of one
    /// partition) and returns at once; the receiver yields their outcomes. Consumers queue each
    /// batch of events this way.
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

    /// The registry's log (the only one of an unpartitioned service), where snapshots are.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.stores[0]
    }

    /// The log of `partition`.
    pub fn store_of(&self, partition: usize) -> &Arc<dyn EventStore> {
        &self.inner.stores[partition]
    }

    /// Every partition's log, in order.
    pub fn stores(&self) -> &[Arc<dyn EventStore>] {
        &self.inner.stores
    }

    /// How many partitions (logs) the service has.
    pub fn partitions(&self) -> usize {
        self.inner.partitions()
    }

    /// The partition `key` (a token's or an asset's id) belongs to.
    pub fn partition_of_key(&self, key: &str) -> usize {
        partition::of(key, self.partitions())
    }

    /// The partition `command` commits to.
    pub fn partition_of(&self, command: &S::Command) -> usize {
        self.inner.partition_of(command)
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

    /// The position of `partition`'s log in the state readers see, as it moves.
    pub fn applied(&self, partition: usize) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied[partition].subscribe()
    }

    /// Whether this engine takes commands of `partition` now: a sole writer always, a replica
    /// while it owns the partition's writes.
    pub fn is_writer(&self, partition: usize) -> bool {
        self.inner.owns(partition)
    }

    /// Makes a replica the writer of `partition` under `epoch`, the lease it just took (whose
    /// fence the store has raised, so no earlier owner can append any more): it first applies
    /// everything the partition's log holds, then takes its commands.
    pub async fn promote(&self, partition: usize, epoch: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        // No group is decided meanwhile, and every group decided is applied first.
        let _writing = inner.writing.lock().await;
        inner.settled().await;
        let mut held = inner.held.write().await;
        let from = held.heads[partition];
        if !still_holds(inner.stores[partition].as_ref(), &held, partition).await? {
            // What this follower applied is not what the log holds: start again from the store.
            let _ = reload(inner.service, &inner.stores, &mut held).await?;
        }
        // The partition's tail first, then the registry's (unless owned here, so current),
        // applied registry first: what the tail was decided on is in the registry's log.
        let tail = read_tail(inner.stores[partition].as_ref(), held.heads[partition]).await?;
        if partition != 0 && !inner.owns(0) {
            let registry = read_tail(inner.stores[0].as_ref(), held.heads[0]).await?;
            held.follow(0, registry, None)?;
        }
        held.follow(partition, tail, None)?;
        inner.epochs[partition].store(epoch, Ordering::Release);
        inner.publish(&held);
        tracing::info!(
            service = inner.service,
            partition,
            epoch,
            head = held.heads[partition],
            caught_up = held.heads[partition] - from,
            "this replica now owns the partition's writes"
        );
        Ok(())
    }

    /// Stops a replica writing `partition`: what is queued after this is refused with
    /// [`EngineError::NotOwner`]. A group being committed finishes (under the old epoch, which
    /// the store accepts only while it is still the lease's).
    pub async fn demote(&self, partition: usize) {
        let previous = self.inner.epochs[partition].swap(0, Ordering::AcqRel);
        if previous != 0 {
            // Waits for the group being decided and for those being committed.
            let _writing = self.inner.writing.lock().await;
            self.inner.settled().await;
            tracing::info!(
                service = self.inner.service,
                partition,
                epoch = previous,
                "this replica no longer owns the partition's writes"
            );
        }
    }

    /// Reads at once what the owner of `partition` appended (and the registry's news), on a
    /// replica that does not own it; nothing otherwise.
    pub async fn look_at(&self, partition: usize) -> Result<(), StoreError> {
        if !self.inner.replica || self.inner.owns(partition) {
            return Ok(());
        }
        let due: Vec<bool> = (0..self.partitions()).map(|p| p == partition).collect();
        follow_once(&self.inner, &due).await.map(|_| ())
    }

    /// Waits until the state readers see includes `position` (read-your-writes), up to
    /// `within`; says whether it does. A follower looks at the logs at once.
    pub async fn wait_applied(&self, position: Position, within: std::time::Duration) -> bool {
        let Some(applied) = self.inner.applied.get(position.partition) else {
            return false;
        };
        let mut applied = applied.subscribe();
        if *applied.borrow() >= position.at {
            return true;
        }
        if self.inner.replica && !self.inner.owns(position.partition) {
            let _ = follow_once(&self.inner, &[]).await;
        }
        tokio::time::timeout(within, applied.wait_for(|at| *at >= position.at))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Submits what the state owes (see [`StateMachine::pending`]) in the partitions this engine
/// writes, until `stop` or the engine is gone: soon after whatever makes it owed, and again
/// after a failure or a takeover.
async fn owed<S: StateMachine>(
    inner: std::sync::Weak<Inner<S>>,
    tx: mpsc::Sender<Job<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let nudged = {
            let Some(inner) = inner.upgrade() else { return };
            inner.nudge.clone()
        };
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = nudged.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let owed: Vec<S::Command> = {
            let held = inner.held.read().await;
            held.state
                .pending(OffsetDateTime::now_utc())
                .into_iter()
                .filter(|command| inner.owns(inner.partition_of(command)))
                .collect()
        };
        drop(inner);
        // Sent together, so that the writer decides them as one group; then waited for.
        let mut answers = Vec::with_capacity(owed.len());
        for command in owed {
            let (done, answer) = oneshot::channel();
            let job = Job {
                submissions: vec![Submission {
                    command: Some(command),
                    idempotency: None,
                    checkpoint: None,
                    reply: Box::new(|_, _| Reply::new(200, Bytes::new())),
                    partition: None,
                    span: tracing::Span::none(),
                }],
                done,
            };
            if tx.send(job).await.is_err() {
                return;
            }
            answers.push(answer);
        }
        // Refused once done (by another try), or failed: looked at again next time.
        for answer in answers {
            let _ = answer.await;
        }
    }
}

/// How often a follower looks for what the owners appended, and the owner for what its
/// state owes.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Events read from a log at a time.
const CHUNK: usize = 4_096;

/// Applies to a replica's state what the owners of the partitions it does not own append,
/// until `stop` or the engine is gone.
async fn follow<S: StateMachine>(
    inner: std::sync::Weak<Inner<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // How many looks in a row found nothing new, per partition: a quiet partition is looked
    // at less often (down to every `FOLLOW_EVERY << QUIET_MAX`), one that moves every time.
    let mut quiet: Vec<u32> = Vec::new();
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        quiet.resize(inner.partitions(), 0);
        tick += 1;
        // The registry every time: what it holds (a claimed token class, a KYC change) is
        // what the other partitions' owners decide on.
        let due: Vec<bool> = quiet
            .iter()
            .enumerate()
            .map(|(p, q)| p == 0 || tick.is_multiple_of(1u64 << (*q).min(QUIET_MAX)))
            .collect();
        match follow_once(&inner, &due).await {
            Ok(moved) => {
                for (partition, moved) in moved.into_iter().enumerate() {
                    if !due[partition] {
                        continue;
                    }
                    quiet[partition] = if moved { 0 } else { quiet[partition] + 1 };
                }
            }
            Err(error) => {
                tracing::warn!(service = inner.service, %error, "could not read the logs the owners append to; trying again");
            }
        }
    }
}

/// A partition that showed nothing new for this many looks in a row is looked at every
/// `2^QUIET_MAX` ticks (0.8 s) at most; a read that asks for a position looks at once.
const QUIET_MAX: u32 = 3;

/// Reads what was appended to the partitions this replica does not own, outside the lock
/// (the registry's last, so that it holds whatever the others' new events were decided on),
/// and applies it under the lock, the registry's first, where nothing moved meanwhile. Each
/// read starts at the last event applied, which must still be the same event: a log that no
/// longer holds it (what a store without isolation can show: a transaction read before it was
/// rolled back) makes the replica rebuild its state from the store rather than build on what
/// is gone.
///
/// Only the partitions `due` says are read (all if it is empty), and the registry whenever
/// any is. Returns, per partition, whether anything new was applied.
async fn follow_once<S: StateMachine>(
    inner: &Inner<S>,
    due: &[bool],
) -> Result<Vec<bool>, StoreError> {
    let mut moved = vec![false; inner.partitions()];
    loop {
        let followed: Vec<usize> = (0..inner.partitions())
            .filter(|p| !inner.owns(*p))
            .filter(|p| *p == 0 || due.get(*p).copied().unwrap_or(true))
            .collect();
        // Nothing due, or the registry alone while it is not due itself.
        let registry_alone = followed.iter().all(|p| *p == 0) && due.first() == Some(&false);
        if followed.is_empty() || registry_alone {
            return Ok(moved);
        }
        let mut chunks = Vec::with_capacity(followed.len());
        // The registry is read last.
        for &partition in followed.iter().rev() {
            let (from, expected) = {
                let held = inner.held.read().await;
                (
                    held.heads[partition],
                    held.last_ids[partition]
                        .clone()
                        .filter(|_| held.heads[partition] > 0),
                )
            };
            let store = inner.stores[partition].as_ref();
            let after = if expected.is_some() { from - 1 } else { from };
            let mut chunk = store.read(after, CHUNK).await?;
            if let Some(id) = &expected {
                if !is_event(chunk.first(), from, id) {
                    rebuild(inner, partition, from).await?;
                    return Ok(vec![true; inner.partitions()]);
                }
                chunk.remove(0);
            }
            chunks.push((partition, from, chunk));
        }
        let full = chunks.iter().any(|(_, _, c)| c.len() >= CHUNK - 1);
        if chunks.iter().all(|(_, _, c)| c.is_empty()) {
            return Ok(moved);
        }
        let mut held = inner.held.write().await;
        let mut stale = Vec::new();
        // The registry first.
        for (partition, from, chunk) in chunks.into_iter().rev() {
            if chunk.is_empty() || held.heads[partition] != from || inner.owns(partition) {
                continue;
            }
            moved[partition] = true;
            held.follow(partition, chunk, Some(&mut stale))?;
        }
        if let Some(cache) = &inner.cache {
            for (key, version) in &stale {
                cache.invalidate(key, *version).await;
            }
        }
        inner.publish(&held);
        drop(held);
        if !full {
            return Ok(moved);
        }
    }
}

/// Applies what the registry's log holds after what `held` applied of it (one chunk), under
/// the writer's lock; nothing if the log no longer holds the last event applied (the follower
/// rebuilds the state then).
async fn catch_up_registry<S: StateMachine>(
    inner: &Inner<S>,
    held: &mut Held<S>,
) -> Result<(), StoreError> {
    let from = held.heads[0];
    let expected = held.last_ids[0].clone().filter(|_| from > 0);
    let after = if expected.is_some() { from - 1 } else { from };
    let mut chunk = inner.stores[0].read(after, CHUNK).await?;
    if let Some(id) = &expected {
        if !is_event(chunk.first(), from, id) {
            return Ok(());
        }
        chunk.remove(0);
    }
    if chunk.is_empty() {
        return Ok(());
    }
    let mut stale = Vec::new();
    held.follow(0, chunk, Some(&mut stale))?;
    if let Some(cache) = &inner.cache {
        for (key, version) in &stale {
            cache.invalidate(key, *version).await;
        }
    }
    inner.publish(held);
    Ok(())
}

/// Whether the log of `partition` still holds, at its head, the event `held` applied there
/// (true when that is not known: a state from a snapshot, or an empty one).
async fn still_holds<S>(
    store: &dyn EventStore,
    held: &Held<S>,
    partition: usize,
) -> Result<bool, StoreError> {
    let head = held.heads[partition];
    let (Some(last_id), true) = (&held.last_ids[partition], head > 0) else {
        return Ok(true);
    };
    let found = store.read(head - 1, 1).await?;
    Ok(is_event(found.first(), head, last_id))
}

/// Whether `found`, a row read from the log, is the event `id` at `position`.
fn is_event(found: Option<&(u64, Vec<u8>)>, position: u64, id: &str) -> bool {
    found.is_some_and(|(at, bytes)| {
        *at == position && serde_json::from_slice::<CloudEvent>(bytes).is_ok_and(|e| e.id == id)
    })
}

/// Rebuilds a replica's state from the stores (the latest snapshot and the logs after it),
/// when the log of `partition` no longer holds what it applied at `from`.
async fn rebuild<S: StateMachine>(
    inner: &Inner<S>,
    partition: usize,
    from: u64,
) -> Result<(), StoreError> {
    let mut held = inner.held.write().await;
    if held.heads[partition] != from || inner.owns(partition) {
        return Ok(());
    }
    tracing::error!(
        service = inner.service,
        partition,
        position = from,
        "the log no longer holds the event this replica applied there; rebuilding the state from the store"
    );
    let _ = reload(inner.service, &inner.stores, &mut held).await?;
    inner.publish(&held);
    Ok(())
}

/// Replaces `held` with the state the stores hold (the latest snapshot and the logs after
/// it), keeping the latest event time seen, so time never runs backwards. Returns the
/// snapshot's position (0 if none).
async fn reload<S: StateMachine>(
    service: &'static str,
    stores: &[Arc<dyn EventStore>],
    held: &mut Held<S>,
) -> Result<u64, StoreError> {
    let (fresh, snapshot_at) = restore::<S>(service, stores, false).await?;
    let last_time = held.last_time.max(fresh.last_time);
    let generation = held.generation + 1;
    *held = fresh;
    held.last_time = last_time;
    held.generation = generation;
    Ok(snapshot_at)
}

/// The events of a log after `head`, all of them.
async fn read_tail(store: &dyn EventStore, head: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut tail = Vec::new();
    loop {
        let from = tail.last().map_or(head, |(at, _)| *at);
        let chunk = store.read(from, CHUNK).await?;
        if chunk.is_empty() {
            return Ok(tail);
        }
        tail.extend(chunk);
    }
}

/// Applies the events of `partition`'s log after its head to `held`, up to position `until`
/// (all of them if `None`). With `reindex`, it also writes the index rows those events derive
/// (see [`restore`]); otherwise they are dropped, being stored already.
async fn replay_tail<S: StateMachine>(
    store: &dyn EventStore,
    held: &mut Held<S>,
    partition: usize,
    until: Option<u64>,
    reindex: bool,
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    loop {
        let mut chunk = store.read(held.heads[partition], CHUNK).await?;
        if let Some(until) = until {
            chunk.retain(|(at, _)| *at <= until);
        }
        if chunk.is_empty() {
            return store.put_index(rows).await;
        }
        apply_chunk(held, partition, chunk, reindex.then_some(&mut rows), None)?;
        if rows.len() >= 16_384 {
            store.put_index(std::mem::take(&mut rows)).await?;
        }
    }
}

/// Applies events read from `partition`'s log to `held`, collecting the index rows they derive
/// into `rows` (else dropping them) and the cache keys they make stale into `stale`.
fn apply_chunk<S: StateMachine>(
    held: &mut Held<S>,
    partition: usize,
    chunk: Vec<(u64, Vec<u8>)>,
    mut rows: Option<&mut Vec<(String, Vec<u8>)>>,
    mut stale: Option<&mut Vec<(String, u64)>>,
) -> Result<(), StoreError> {
    for (position, bytes) in chunk {
        let envelope: CloudEvent = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Backend(format!(
                "event at position {position} of partition {partition} is unreadable: {e}"
            ))
        })?;
        let event: S::Event = envelope.data().map_err(|e| {
            StoreError::Backend(format!(
                "event at position {position} of partition {partition} has unreadable data: {e}"
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
        held.heads[partition] = position;
        held.last_ids[partition] = Some(envelope.id);
    }
    Ok(())
}

/// The state as of the stores' heads: the latest snapshot and the events after it, or the
/// whole logs when there is no usable snapshot. Returns it with the snapshot's position (the
/// sum of its heads, 0 if none).
///
/// Each partition's head is read before the registry is replayed, and its log replayed up to
/// that head only, so that no event is applied before the registry events it was decided on;
/// what the owners append later is applied by following (or on promotion).
async fn restore<S: StateMachine>(
    service: &'static str,
    stores: &[Arc<dyn EventStore>],
    at_start: bool,
) -> Result<(Held<S>, u64), StoreError> {
    let mut limits = Vec::with_capacity(stores.len());
    for store in stores {
        limits.push(store.head().await?);
    }
    let from_snapshot = match stores[0].latest_snapshot().await {
        Ok(None) => None,
        Ok(Some((position, bytes))) => match snapshot::decode::<S>(position, &bytes) {
            Ok(restored) if restored.heads.len() != stores.len() => {
                fallback(
                    service,
                    position,
                    &format!(
                        "it holds {} partitions, not {}",
                        restored.heads.len(),
                        stores.len()
                    ),
                );
                None
            }
            Ok(restored) => match restored.heads.iter().zip(&limits).position(|(h, l)| h > l) {
                Some(partition) => {
                    fallback(
                        service,
                        position,
                        &format!(
                            "the log of partition {partition} ends at {}, before its {}",
                            limits[partition], restored.heads[partition]
                        ),
                    );
                    None
                }
                None => Some(Held {
                    state: restored.state,
                    versions: restored.versions,
                    last_ids: vec![None; stores.len()],
                    heads: restored.heads,
                    last_time: restored.last_time,
                    generation: 0,
                    followed: Vec::new(),
                }),
            },
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
    let mut held = from_snapshot.unwrap_or_else(|| Held::empty(stores.len()));
    let snapshot_at = held.heads.iter().sum();
    replay_tail(stores[0].as_ref(), &mut held, 0, None, reindex).await?;
    for (partition, store) in stores.iter().enumerate().skip(1) {
        replay_tail(
            store.as_ref(),
            &mut held,
            partition,
            Some(limits[partition]),
            reindex,
        )
        .await?;
    }
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

/// Copies the readers' state under the read lock, encodes the copy on a blocking thread (a large
/// state takes tens of milliseconds, which neither the committer nor the requests queued on this
/// runtime's workers should wait for) and saves it in the registry's store.
async fn take_snapshot<S: StateMachine>(inner: &Inner<S>) -> Result<u64, StoreError> {
    let started = Instant::now();
    let (heads, last_time, versions, state) = {
        let held = inner.held.read().await;
        (
            held.heads.clone(),
            held.last_time,
            held.versions.clone(),
            held.state.clone(),
        )
    };
    let position = heads.iter().sum::<u64>();
    let bytes =
        tokio::task::spawn_blocking(move || snapshot::encode(&heads, last_time, &versions, &state))
            .await
            .map_err(|e| StoreError::Backend(format!("the snapshot's encoding stopped: {e}")))?
            .map_err(StoreError::Backend)?;
    let size = bytes.len();
    inner.stores[0].save_snapshot(position, bytes).await?;
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
        if !inner.owns(0) {
            // The registry's owner takes the snapshots.
            continue;
        }
        let head: u64 = inner.applied.iter().map(|a| *a.borrow()).sum();
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

/// The answers of one job, and the partition it went to.
struct Answered {
    done: oneshot::Sender<Vec<Outcome>>,
    answers: Vec<Outcome>,
    partition: usize,
}

/// A batch the writer decided, on its way to the committer.
struct Decided<E> {
    /// Its number: the writer's records of its idempotency keys are dropped once the committer
    /// has passed it (they are in the store then, or were never executed).
    number: u64,
    /// One group per partition, committed in this order: the registry's first.
    groups: std::collections::BTreeMap<usize, Group<E>>,
    answered: Vec<Answered>,
    /// Which copy of the state it was decided on: a batch decided on a copy that holds a failed
    /// group is not committed.
    lineage: u64,
    /// The latest event time of the writer's copy once it was decided.
    last_time: OffsetDateTime,
}

/// Idempotency records decided in batches the committer has not passed yet, by partition and
/// key, with the number of their batch: a retry arriving meanwhile must find them, not the store.
type Recent = FxHashMap<usize, FxHashMap<String, (u64, IdempotencyRecord)>>;

/// Decides what is queued on the writer's own copy of the state and hands each batch to the
/// committer, deciding the next batch while the last one is committed. The writer's copy is
/// ahead of the readers' by the batches in flight.
async fn writer<S: StateMachine>(inner: Arc<Inner<S>>, mut rx: mpsc::Receiver<Job<S>>) {
    let service = inner.service;
    // One decided batch waits while another is committed.
    let (to_commit, decided) = mpsc::channel::<Decided<S::Event>>(1);
    let committer = tokio::spawn(committer(inner.clone(), decided));
    let mut copy: Option<Held<S>> = None;
    let mut lineage = 0;
    let mut number = 0;
    let mut recent = Recent::default();
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    loop {
        // The next batch is taken once the committer has taken the last one: what arrives while
        // a group commits forms the next group, as in a writer that waits for its commits.
        // Deciding sooner would split it into small groups, each a commit of its own.
        let Ok(slot) = to_commit.reserve().await else {
            // The committer stopped (the state could not be rebuilt after a failed commit):
            // what is queued is answered "the writer stopped".
            inner.in_flight.send_replace(0);
            break;
        };
        if rx.recv_many(&mut jobs, MAX_GROUP).await == 0 {
            break;
        }
        let writing = inner.writing.lock().await;
        if inner.replica && !inner.owns(0) && (1..inner.partitions()).any(|p| inner.owns(p)) {
            // What the registry's owner acknowledged before this group is decided on here
            // (a KYC change, a new investor, a claimed token class).
            let mut held = inner.held.write().await;
            if let Err(error) = catch_up_registry(&inner, &mut held).await {
                tracing::warn!(service, %error, "could not read the registry's log; deciding on what this replica applied");
            }
        }
        if catch_up_copy(&inner, &mut copy).await {
            // A fresh copy: every batch decided on the last one is settled.
            lineage += 1;
            recent.clear();
        }
        let Some(held) = copy.as_mut() else {
            unreachable!("the writer's copy was just made")
        };
        // Every idempotency key of the batch, looked up at once per partition: what the
        // committer passed is in the store, what it has not is in `recent`.
        let passed = inner.committed.load(Ordering::Acquire);
        for records in recent.values_mut() {
            records.retain(|_, (batch, _)| *batch > passed);
        }
        let keys = idempotency_keys(&inner, &jobs);
        let known = known_records(&inner, keys).await;
        number += 1;
        let mut batch = Decided {
            number,
            groups: Default::default(),
            answered: Vec::with_capacity(jobs.len()),
            lineage,
            last_time: held.last_time,
        };
        decide(&inner, held, &mut jobs, (&known, &recent), &mut batch).await;
        batch.last_time = held.last_time;
        for (partition, group) in &batch.groups {
            // The next batch's groups follow this one's in their logs.
            held.heads[*partition] += group.commit.events.len() as u64;
            if group.last_id.is_some() {
                held.last_ids[*partition] = group.last_id.clone();
            }
            let records = recent.entry(*partition).or_default();
            for (key, record) in &group.pending {
                records.insert(key.clone(), (number, record.clone()));
            }
        }
        inner.in_flight.send_modify(|n| *n += 1);
        drop(writing);
        slot.send(batch);
    }
    drop(to_commit);
    let _ = committer.await;
}

/// Brings the writer's copy of the state up to date with what was applied to the readers' copy
/// from logs the writer does not write (see [`Held::followed`]). When it has no copy, or the
/// readers' copy was replaced, it waits until every batch decided on its copy is settled and
/// takes a fresh copy of the readers'. Says whether it did.
async fn catch_up_copy<S: StateMachine>(inner: &Inner<S>, copy: &mut Option<Held<S>>) -> bool {
    if let Some(mine) = copy.as_ref() {
        // Nothing to do, most of the time (always for a sole writer): a shared look is enough.
        let held = inner.held.read().await;
        if held.generation == mine.generation && held.followed.is_empty() {
            return false;
        }
    }
    {
        let mut held = inner.held.write().await;
        let followed = std::mem::take(&mut held.followed);
        if let Some(mine) = copy.as_mut()
            && mine.generation == held.generation
        {
            drop(held);
            let applied = followed
                .into_iter()
                .try_for_each(|(partition, chunk)| apply_chunk(mine, partition, chunk, None, None));
            match applied {
                Ok(()) => return false,
                Err(error) => {
                    tracing::warn!(service = inner.service, %error, "could not apply to the writer's copy what the readers' copy holds; copying it again");
                }
            }
        }
    }
    inner.settled().await;
    let mut held = inner.held.write().await;
    held.followed.clear();
    *copy = Some(held.clone());
    true
}

/// Decides `jobs` on the writer's copy `held`, into `batch`'s groups and answers.
async fn decide<S: StateMachine>(
    inner: &Inner<S>,
    held: &mut Held<S>,
    jobs: &mut Vec<Job<S>>,
    (known, recent): (&Known, &Recent),
    batch: &mut Decided<S::Event>,
) {
    let service = inner.service;
    let mut commands = 0;
    for Job { submissions, done } in jobs.drain(..) {
        let partitions: Vec<usize> = submissions
            .iter()
            .map(|s| inner.partition_of_submission(s))
            .collect();
        let partition = partitions.first().copied().unwrap_or(0);
        if partitions.iter().any(|p| *p != partition) {
            let _ = done.send(
                submissions
                    .iter()
                    .map(|_| {
                        Err(EngineError::Unavailable(
                            "commands that must commit together belong to different partitions"
                                .into(),
                        ))
                    })
                    .collect(),
            );
            continue;
        }
        let fence = match inner.fence(partition) {
            Ok(fence) => fence,
            Err(_) => {
                // Not the owner: nothing is decided here; the requests go to the owner.
                let _ = done.send(
                    submissions
                        .iter()
                        .map(|_| Err(EngineError::NotOwner))
                        .collect(),
                );
                continue;
            }
        };
        let group = batch.groups.entry(partition).or_insert_with(|| Group {
            commit: Commit {
                expected_head: held.heads[partition],
                fence,
                ..Commit::default()
            },
            pending: FxHashMap::default(),
            stale_keys: Vec::new(),
            poisoned: false,
            last_id: None,
            decisions: Vec::new(),
            events: Vec::new(),
        });
        let store = inner.stores[partition].as_ref();
        let records = Records {
            store,
            known: known.get(&partition),
            recent: recent.get(&partition),
        };
        let mut answers = Vec::with_capacity(submissions.len());
        for submission in submissions {
            // Time never runs backwards inside one log, whatever the wall clock does.
            held.last_time = OffsetDateTime::now_utc().max(held.last_time);
            // Spans of their own only when they are exported: a group of thousands of
            // commands pays nothing for them otherwise.
            let decision = match crate::trace::enabled() && submission.command.is_some() {
                true => {
                    tracing::info_span!(parent: &submission.span, "decide", otel.name = inner.span_names.0.as_str(), service, partition)
                }
                false => tracing::Span::none(),
            };
            if !decision.is_disabled() {
                group.decisions.push(decision.clone());
            }
            answers.push(
                run_one(
                    &mut held.state,
                    submission,
                    held.last_time,
                    inner,
                    &records,
                    &mut held.versions,
                    group,
                )
                .instrument(decision)
                .await,
            );
            commands += 1;
        }
        batch.answered.push(Answered {
            done,
            answers,
            partition,
        });
    }
    metrics::histogram!(m::BATCH_SIZE, "service" => service).record(commands as f64);
}

/// Commits the batches the writer decided, in order, applies each durable group's events to
/// the readers' copy and answers; after a failed commit, restores the readers' copy from the
/// stores and refuses, uncommitted, every batch decided on the writer's copy that held it.
async fn committer<S: StateMachine>(
    inner: Arc<Inner<S>>,
    mut decided: mpsc::Receiver<Decided<S::Event>>,
) {
    // The copy of the latest failed batch: batches decided on it (or before) are refused.
    let mut failed: Option<u64> = None;
    while let Some(batch) = decided.recv().await {
        let number = batch.number;
        let go_on = commit_batch(&inner, batch, &mut failed).await;
        inner.committed.store(number, Ordering::Release);
        inner.in_flight.send_modify(|n| *n = n.saturating_sub(1));
        if !go_on {
            inner.in_flight.send_replace(0);
            return;
        }
    }
}

/// Commits one decided batch (see [`committer`]); false once the state cannot be rebuilt and
/// nothing more may be committed.
async fn commit_batch<S: StateMachine>(
    inner: &Inner<S>,
    batch: Decided<S::Event>,
    failed: &mut Option<u64>,
) -> bool {
    let service = inner.service;
    let Decided {
        groups,
        mut answered,
        lineage,
        last_time,
        ..
    } = batch;
    if failed.is_some_and(|failed| lineage <= failed) {
        // Decided on a state that holds what failed: nothing of it is written.
        for job in answered {
            let answers = job
                .answers
                .into_iter()
                .map(|outcome| {
                    outcome.and(Err(EngineError::Unavailable(
                        "an earlier commit failed; nothing was changed".into(),
                    )))
                })
                .collect();
            let _ = job.done.send(answers);
        }
        return true;
    }
    // Each partition's group commits on its own; once one fails, the later ones are not
    // tried (what they decided may rest on what failed) and the state is restored.
    let mut failure: Option<(usize, StoreError)> = None;
    let mut failed_partitions = Vec::new();
    let mut durable = Vec::with_capacity(groups.len());
    for (partition, group) in groups {
        if failure.is_some() {
            failed_partitions.push(partition);
            continue;
        }
        let outcome = if group.poisoned {
            Err(StoreError::Backend("an event could not be encoded".into()))
        } else if group.commit.is_empty() {
            Ok(())
        } else {
            let appended = group.commit.events.len() as u64;
            let started = Instant::now();
            // One commit for the whole group, in each trace the group decided on: under
            // its first decision there. They end when the commit does.
            let mut traced = std::collections::HashSet::new();
            let spans: Vec<tracing::Span> = group
                .decisions
                .iter()
                .filter(|decision| traced.insert(crate::trace::trace_id(decision)))
                .map(|decision| tracing::info_span!(parent: decision, "commit", otel.name = inner.span_names.1.as_str(), service, partition, events = appended))
                .collect();
            let result = inner.stores[partition].commit(group.commit).await;
            drop(spans);
            if result.is_ok() {
                metrics::counter!(m::COMMITS, "service" => service).increment(1);
                metrics::counter!(m::EVENTS_APPENDED, "service" => service).increment(appended);
                metrics::histogram!(m::COMMIT_SECONDS, "service" => service)
                    .record(started.elapsed().as_secs_f64());
            }
            result
        };
        match outcome {
            Ok(()) => durable.push((
                partition,
                Applied {
                    events: group.events,
                    last_id: group.last_id,
                    stale_keys: group.stale_keys,
                },
            )),
            Err(error) => {
                failed_partitions.push(partition);
                failure = Some((partition, error));
            }
        }
    }
    let heads = match failure {
        None => {
            // Durable: the readers see it now.
            let mut held = inner.held.write().await;
            for (partition, applied) in &mut durable {
                apply_durable(&mut held, *partition, applied);
            }
            held.last_time = held.last_time.max(last_time);
            inner.publish(&held);
            held.heads.clone()
        }
        Some((partition, error)) => {
            *failed = Some(lineage);
            // Memory is ahead of the log: nothing of the failed groups stands. Everything in
            // them is answered 409 if another writer appended first, 503 otherwise (a
            // consumer's batch is one job, so it fails or commits whole), and the state is
            // restored from the latest snapshot and the logs after it.
            tracing::error!(service, partition, %error, "group commit failed; restoring the state from the latest snapshot and the log");
            inner.healthy.store(false, Ordering::Relaxed);
            let conflict = matches!(error, StoreError::Conflict { .. });
            let fenced = matches!(error, StoreError::Fenced { .. });
            if fenced {
                metrics::counter!(m::COMMITS_FENCED, "service" => service).increment(1);
                // Another replica took the lease: this one must not write there again.
                inner.epochs[partition].store(0, Ordering::Release);
            }
            // A replica that finds the log appended by another lost the writes (or is about to
            // learn it): the requests were not executed and go to the owner.
            let elsewhere = fenced || (conflict && inner.replica);
            for job in answered
                .iter_mut()
                .filter(|job| failed_partitions.contains(&job.partition))
            {
                let this = job.partition == partition;
                for outcome in job.answers.iter_mut().filter(|o| o.is_ok()) {
                    *outcome = Err(if this && elsewhere {
                        EngineError::NotOwner
                    } else if this && conflict {
                        EngineError::Conflict
                    } else {
                        EngineError::Unavailable("the commit failed; nothing was changed".into())
                    });
                }
            }
            let started = Instant::now();
            let mut held = inner.held.write().await;
            match reload(service, &inner.stores, &mut held).await {
                Ok(snapshot_at) => {
                    tracing::info!(
                        service,
                        head = held.heads.iter().sum::<u64>(),
                        snapshot = snapshot_at,
                        seconds = started.elapsed().as_secs_f64(),
                        "state restored after the failed commit"
                    );
                    inner.publish(&held);
                    inner.healthy.store(true, Ordering::Relaxed);
                    held.heads.clone()
                }
                Err(error) => {
                    // The state may show what the log does not hold: stop serving writes.
                    tracing::error!(service, %error, "cannot rebuild the state; the writer stops");
                    drop(held);
                    for job in answered {
                        let _ = job.done.send(job.answers);
                    }
                    return false;
                }
            }
        }
    };
    if let Some(cache) = &inner.cache {
        // After the readers' copy moved: a reader that read before puts an older version,
        // which the mark left here outranks.
        for (_, applied) in &durable {
            for (key, version) in &applied.stale_keys {
                cache.invalidate(key, *version).await;
            }
        }
    }
    for Answered {
        done,
        mut answers,
        partition,
    } in answered
    {
        for reply in answers.iter_mut().flatten() {
            reply.position = heads[partition];
            reply.partition = partition;
        }
        // The requester may have gone away; its effect stands either way.
        let _ = done.send(answers);
    }
    true
}

/// What a durable group changes in the readers' copy.
struct Applied<E> {
    /// Its events, with their subject versions.
    events: Vec<(E, u64)>,
    last_id: Option<String>,
    /// Cache keys its events make stale, with the subject version that does.
    stale_keys: Vec<(String, u64)>,
}

/// Applies a durable group's events to the readers' copy `held`.
fn apply_durable<S: StateMachine>(
    held: &mut Held<S>,
    partition: usize,
    applied: &mut Applied<S::Event>,
) {
    let appended = applied.events.len() as u64;
    for (event, version) in applied.events.drain(..) {
        held.versions
            .insert(S::describe(&event).subject.to_owned(), version);
        held.state.apply(&event);
    }
    // Their index rows were committed with them.
    drop(held.state.take_index());
    held.heads[partition] += appended;
    if applied.last_id.is_some() {
        held.last_ids[partition] = applied.last_id.take();
    }
}

/// The idempotency keys `jobs` carry, by partition.
fn idempotency_keys<S: StateMachine>(
    inner: &Inner<S>,
    jobs: &[Job<S>],
) -> std::collections::BTreeMap<usize, Vec<String>> {
    let mut keys: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for submission in jobs.iter().flat_map(|job| &job.submissions) {
        if let Some((key, _)) = &submission.idempotency {
            keys.entry(inner.partition_of_submission(submission))
                .or_default()
                .push(key.clone());
        }
    }
    keys
}

/// The stored records of `keys`, by partition: one read per partition (one query on MongoDB)
/// for the whole batch instead of one per request. A partition whose read failed is left out,
/// and its requests look their keys up one by one.
async fn known_records<S: StateMachine>(
    inner: &Inner<S>,
    keys: std::collections::BTreeMap<usize, Vec<String>>,
) -> Known {
    let mut known = FxHashMap::default();
    for (partition, keys) in keys {
        if !inner.owns(partition) {
            continue;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        match inner.stores[partition].idempotency_many(&keys).await {
            Ok(found) => {
                known.insert(partition, found);
            }
            Err(error) => {
                tracing::warn!(service = inner.service, partition, %error, "could not read a batch's idempotency records; looking them up one by one");
            }
        }
    }
    known
}

/// The stored idempotency records of a batch's keys, by partition.
type Known = FxHashMap<usize, std::collections::HashMap<String, IdempotencyRecord>>;

/// Where a command's idempotency key is looked up, after its own group's records
/// ([`Group::pending`]): the records of batches in flight, then the store's, read for the whole
/// batch beforehand (`known`) or, if that read failed, now.
struct Records<'a> {
    store: &'a dyn EventStore,
    known: Option<&'a std::collections::HashMap<String, IdempotencyRecord>>,
    recent: Option<&'a FxHashMap<String, (u64, IdempotencyRecord)>>,
}

/// What one group commit accumulates.
struct Group<E> {
    commit: Commit,
    pending: FxHashMap<String, IdempotencyRecord>,
    /// Cache keys the group's events make stale, with the subject version that does.
    stale_keys: Vec<(String, u64)>,
    /// Set when the state changed but its events cannot be written: the group must fail.
    poisoned: bool,
    /// The id of the group's last event.
    last_id: Option<String>,
    /// The spans of the group's decisions, when traced: the parents of its commit's.
    decisions: Vec<tracing::Span>,
    /// Its events with their subject versions, applied to the readers' copy once durable.
    events: Vec<(E, u64)>,
}

async fn run_one<S: StateMachine>(
    state: &mut S,
    submission: Submission<S>,
    now: OffsetDateTime,
    inner: &Inner<S>,
    records: &Records<'_>,
    versions: &mut Versions,
    group: &mut Group<S::Event>,
) -> Outcome {
    let Submission {
        command,
        idempotency,
        checkpoint,
        reply,
        partition: _,
        span: _,
    } = submission;
    let Group {
        commit,
        pending,
        stale_keys,
        poisoned,
        last_id,
        decisions: _,
        events: decided,
    } = group;
    if let Some((key, fingerprint)) = &idempotency {
        let in_flight = records.recent.and_then(|recent| recent.get(key));
        let earlier = match (pending.get(key), in_flight, records.known) {
            // Earlier in this group.
            (Some(record), _, _) => Some(record.clone()),
            // In a batch being committed.
            (None, Some((_, record)), _) => Some(record.clone()),
            // Stored before the batch was decided.
            (None, None, Some(known)) => known.get(key).cloned(),
            (None, None, None) => records
                .store
                .idempotency(key)
                .await
                .map_err(|e| EngineError::Unavailable(e.to_string()))?,
        };
        if let Some(record) = earlier {
            return if &record.fingerprint == fingerprint {
                Ok(Reply {
                    replayed: true,
                    ..Reply::new(record.status, Bytes::from(record.body))
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
    // The decision's trace goes on with its events (`run_one` runs in the decision's span).
    let traceparent = match events.is_empty() {
        true => None,
        false => crate::trace::traceparent(&tracing::Span::current()),
    };
    let mut subject_versions = Vec::with_capacity(events.len());
    for event in &events {
        let d = S::describe(event);
        let version = versions.entry(d.subject.to_owned()).or_insert(0);
        *version += 1;
        subject_versions.push(*version);
        // The group appends its events right after the head it was decided on.
        let position = commit.expected_head + commit.events.len() as u64 + 1;
        let mut envelope = CloudEvent::new(
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
        envelope.traceparent = traceparent.clone();
        commit.events.push(envelope.to_bytes());
        *last_id = Some(envelope.id.clone());
        let mut keys = Vec::new();
        S::invalidates(event, &mut keys);
        stale_keys.extend(keys.into_iter().map(|key| (key, *version)));
    }
    commit.index.extend(state.take_index());
    let reply = reply(state, &events);
    decided.extend(events.into_iter().zip(subject_versions));
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
