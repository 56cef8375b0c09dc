//! The engine: one writer per service applies commands to the in-memory state and commits the
//! resulting events, idempotency records and consumer checkpoints in group commits.
//!
//! Commands queue on a channel; the writer takes everything queued (up to [`MAX_GROUP`]), decides
//! each against the state, commits all of it in one durable write, and only then answers. The
//! state's write lock is held until the commit is durable and caches are invalidated, so no reader
//! ever sees a change that is not on disk. If a commit fails the writer rebuilds the state from
//! the log and answers 503 for that group (409 if another writer appended first): nothing
//! acknowledged is lost, nothing lost is shown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
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

/// A service's state, changed only by its own events.
pub trait StateMachine: Default + Send + Sync + 'static {
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
}

/// A response, as first given and as replayed for a retry with the same idempotency key.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub replayed: bool,
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
}

pub(crate) type Outcome = Result<Reply, EngineError>;

/// Submissions that go into the same group commit: all of them stand, or none.
struct Job<S: StateMachine> {
    submissions: Vec<Submission<S>>,
    done: oneshot::Sender<Vec<Outcome>>,
}

struct Inner<S: StateMachine> {
    state: RwLock<S>,
    store: Arc<dyn EventStore>,
    cache: Option<Arc<dyn Cache>>,
    service: &'static str,
    healthy: AtomicBool,
}

/// A handle on one service's state and writer; cheap to clone.
pub struct Engine<S: StateMachine> {
    inner: Arc<Inner<S>>,
    tx: mpsc::Sender<Job<S>>,
    writer: Arc<parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl<S: StateMachine> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
            tx: self.tx.clone(),
            writer: self.writer.clone(),
        }
    }
}

/// Per-subject stream versions, the `subjectversion` of each event.
type Versions = FxHashMap<String, u64>;

impl<S: StateMachine> Engine<S> {
    /// Rebuilds the state from `store`'s log, then starts the writer.
    pub async fn start(
        service: &'static str,
        store: Arc<dyn EventStore>,
        cache: Option<Arc<dyn Cache>>,
    ) -> Result<Self, StoreError> {
        let mut replayed = replay::<S>(store.as_ref()).await?;
        let state = std::mem::take(&mut replayed.state);
        let head = replayed.head;
        tracing::info!(service, events = head, "state rebuilt from the log");
        let inner = Arc::new(Inner {
            state: RwLock::new(state),
            store,
            cache,
            service,
            healthy: AtomicBool::new(true),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(writer(inner.clone(), rx, replayed));
        Ok(Engine {
            inner,
            tx,
            writer: Arc::new(parking_lot::Mutex::new(Some(handle))),
        })
    }

    /// Drops this handle and, once every other handle is gone too, waits (up to five seconds)
    /// for the writer to finish what is queued and release the store.
    pub async fn close(self) {
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
        self.inner.state.read().await
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
}

/// The state rebuilt from a log, with what the writer needs to continue it.
struct Replayed<S> {
    state: S,
    versions: Versions,
    head: u64,
    /// The latest event time, so new events never get an earlier one after a restart.
    last_time: OffsetDateTime,
}

async fn replay<S: StateMachine>(store: &dyn EventStore) -> Result<Replayed<S>, StoreError> {
    let mut r = Replayed {
        state: S::default(),
        versions: Versions::default(),
        head: 0,
        last_time: OffsetDateTime::UNIX_EPOCH,
    };
    loop {
        let chunk = store.read(r.head, 4_096).await?;
        let Some((last, _)) = chunk.last() else { break };
        let last = *last;
        for (position, bytes) in chunk {
            let envelope: CloudEvent = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Backend(format!("event at position {position} is unreadable: {e}"))
            })?;
            let event: S::Event = envelope.data().map_err(|e| {
                StoreError::Backend(format!(
                    "event at position {position} has unreadable data: {e}"
                ))
            })?;
            r.versions
                .insert(envelope.subject.clone(), envelope.subject_version());
            r.last_time = r.last_time.max(S::describe(&event).time);
            r.state.apply(&event);
        }
        r.head = last;
    }
    Ok(r)
}

async fn writer<S: StateMachine>(
    inner: Arc<Inner<S>>,
    mut rx: mpsc::Receiver<Job<S>>,
    mut replayed: Replayed<S>,
) {
    let service = inner.service;
    let mut versions = std::mem::take(&mut replayed.versions);
    let (mut head, mut last_now) = (replayed.head, replayed.last_time);
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let mut state = inner.state.write().await;
        let mut group = Group {
            commit: Commit {
                expected_head: head,
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
                last_now = OffsetDateTime::now_utc().max(last_now);
                answers.push(
                    run_one(
                        &mut *state,
                        submission,
                        last_now,
                        &inner,
                        &mut versions,
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
                    head += appended;
                    metrics::counter!(m::COMMITS, "service" => service).increment(1);
                    metrics::counter!(m::EVENTS_APPENDED, "service" => service).increment(appended);
                    metrics::histogram!(m::COMMIT_SECONDS, "service" => service)
                        .record(started.elapsed().as_secs_f64());
                    if let Some(cache) = &inner.cache {
                        for key in &stale_keys {
                            cache.invalidate(key).await;
                        }
                    }
                    None
                }
                Err(error) => Some(error),
            }
        };
        if let Some(error) = failure {
            // Memory is ahead of the log: nothing of this group stands. Everything in it is
            // answered 409 if another writer appended first, 503 otherwise (a consumer's batch is
            // one job, so it fails or commits whole), and the state is rebuilt from the log.
            tracing::error!(service, %error, "group commit failed; rebuilding the state from the log");
            inner.healthy.store(false, Ordering::Relaxed);
            let conflict = matches!(error, StoreError::Conflict { .. });
            for (_, answers) in &mut outcomes {
                for outcome in answers.iter_mut().filter(|o| o.is_ok()) {
                    *outcome = Err(if conflict {
                        EngineError::Conflict
                    } else {
                        EngineError::Unavailable("the commit failed; nothing was changed".into())
                    });
                }
            }
            match replay::<S>(inner.store.as_ref()).await {
                Ok(fresh) => {
                    *state = fresh.state;
                    versions = fresh.versions;
                    head = fresh.head;
                    last_now = last_now.max(fresh.last_time);
                    inner.healthy.store(true, Ordering::Relaxed);
                }
                Err(error) => {
                    // The state may show what the log does not hold: stop serving writes.
                    tracing::error!(service, %error, "cannot rebuild the state; the writer stops");
                    drop(state);
                    for (done, answers) in outcomes {
                        let _ = done.send(answers);
                    }
                    return;
                }
            }
        }
        drop(state);
        for (done, answers) in outcomes {
            // The requester may have gone away; its effect stands either way.
            let _ = done.send(answers);
        }
    }
}

/// What one group commit accumulates.
struct Group {
    commit: Commit,
    pending: FxHashMap<String, IdempotencyRecord>,
    stale_keys: Vec<String>,
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
        S::invalidates(event, stale_keys);
    }
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
