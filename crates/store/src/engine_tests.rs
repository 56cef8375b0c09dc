//! The engine against a real redb store, and against one whose commits can be made to fail.

use std::sync::atomic::{AtomicBool, AtomicUsize};

use async_trait::async_trait;
use libertum_domain::Error;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::*;
use crate::{IdempotencyRecord, RedbStore, ports::EventStore};

/// A counter that refuses to go above 10: the smallest state machine with a rule. Its index
/// holds each total it reached (`c|{total}`).
#[derive(Default, Clone, Serialize, Deserialize)]
struct Counter(u64, #[serde(skip)] Vec<(String, Vec<u8>)>);

#[derive(Clone, Serialize, Deserialize)]
struct Added {
    n: u64,
}

impl StateMachine for Counter {
    type Command = u64;
    type Event = Added;
    const SOURCE: &'static str = "/test";

    fn execute(&mut self, n: u64, _now: OffsetDateTime) -> domain::Result<Vec<Added>> {
        if self.0 + n > 10 {
            return Err(Error::refused("too_much", "the counter stops at 10"));
        }
        let event = Added { n };
        self.apply(&event);
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Added) {
        self.0 += event.n;
        self.1
            .push((format!("c|{:016x}", self.0), event.n.to_le_bytes().to_vec()));
    }

    fn take_index(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.1)
    }

    fn describe(_: &Added) -> Described<'_> {
        Described {
            family: "test",
            name: "added",
            subject: "counter",
            actor: "test",
            time: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

fn add(n: u64, key: Option<&str>, body: &str) -> Submission<Counter> {
    Submission {
        command: Some(n),
        idempotency: key.map(|k| (k.to_owned(), body.to_owned())),
        checkpoint: None,
        reply: Box::new(|state: &Counter, _| Reply::new(200, Bytes::from(state.0.to_string()))),
        partition: None,
        span: tracing::Span::current(),
    }
}

/// A redb store whose commits fail while `failing` is set, and wait while `hold` is.
struct Flaky {
    inner: RedbStore,
    failing: AtomicBool,
    hold: watch::Sender<bool>,
    /// The most checkpoints one commit carried.
    most_checkpoints: AtomicUsize,
    /// The `after` of every read, to see where a restore started.
    reads_after: parking_lot::Mutex<Vec<u64>>,
}

impl Flaky {
    fn open(dir: &std::path::Path, name: &str) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: RedbStore::open(dir, name).expect("open"),
            failing: AtomicBool::new(false),
            hold: watch::channel(false).0,
            most_checkpoints: AtomicUsize::new(0),
            reads_after: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Where the reads since the last call started.
    fn reads(&self) -> Vec<u64> {
        std::mem::take(&mut *self.reads_after.lock())
    }
}

#[async_trait]
impl EventStore for Flaky {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let _ = self.hold.subscribe().wait_for(|hold| !*hold).await;
        if self.failing.load(Ordering::Relaxed) {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        self.most_checkpoints
            .fetch_max(commit.checkpoints.len(), Ordering::Relaxed);
        self.inner.commit(commit).await
    }
    async fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.reads_after.lock().push(after);
        self.inner.read(after, max).await
    }
    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }
    async fn prune_idempotency(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_idempotency(before).await
    }
    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.inner.checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, position).await
    }
    async fn lease(&self) -> Result<Option<crate::Lease>, StoreError> {
        self.inner.lease().await
    }
    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        epoch: Option<u64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<crate::Lease>, StoreError> {
        self.inner
            .acquire_lease(holder, address, epoch, now_ms, ttl_ms)
            .await
    }
    async fn release_lease(&self, holder: &str, epoch: u64) -> Result<(), StoreError> {
        self.inner.release_lease(holder, epoch).await
    }
    async fn members(&self, replica: &str, now_ms: i64, ttl_ms: i64) -> Result<usize, StoreError> {
        self.inner.members(replica, now_ms, ttl_ms).await
    }
    async fn put_index(&self, rows: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        self.inner.put_index(rows).await
    }
    async fn index_last(
        &self,
        low: &str,
        high: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.inner.index_last(low, high).await
    }
    async fn index_range(
        &self,
        low: &str,
        high: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.index_range(low, high, limit).await
    }
    async fn save_snapshot(&self, position: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner.save_snapshot(position, bytes).await
    }
    async fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_snapshot().await
    }
    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }
    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[tokio::test]
async fn concurrent_commands_are_committed_together_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Arc::new(RedbStore::open(dir.path(), "t").expect("open"));
        let engine = Engine::<Counter>::start("test", store.clone(), None)
            .await
            .expect("start");
        // Queued together, so the writer commits them as one group.
        let outcomes = engine
            .enqueue_many((0..5).map(|_| add(1, None, "")).collect())
            .await
            .expect("queued")
            .await
            .expect("answered");
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(engine.read().await.0, 5);
        assert_eq!(store.head().await.expect("head"), 5);
        engine.close().await;
    }
    let store = Arc::new(RedbStore::open(dir.path(), "t").expect("reopen"));
    let engine = Engine::<Counter>::start("test", store, None)
        .await
        .expect("restart");
    assert_eq!(
        engine.read().await.0,
        5,
        "the state is rebuilt from the log"
    );
}

#[tokio::test]
async fn a_refused_command_changes_nothing_and_is_not_remembered_for_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(dir.path(), "t").expect("open"));
    let engine = Engine::<Counter>::start("test", store.clone(), None)
        .await
        .expect("start");
    let err = engine
        .submit(add(11, Some("k"), "a"))
        .await
        .expect_err("refused");
    assert!(matches!(err, EngineError::Refused(e) if e.code == "too_much"));
    assert_eq!(store.head().await.expect("head"), 0);
    // The same key may be used again: only successes are kept for replay.
    let ok = engine
        .submit(add(2, Some("k"), "a"))
        .await
        .expect("applied");
    assert_eq!(ok.body, "2");
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_response_and_another_body_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(dir.path(), "t").expect("open"));
    let engine = Engine::<Counter>::start("test", store.clone(), None)
        .await
        .expect("start");
    let first = engine
        .submit(add(3, Some("k"), "fp1"))
        .await
        .expect("applied");
    let again = engine
        .submit(add(3, Some("k"), "fp1"))
        .await
        .expect("replayed");
    assert!(again.replayed && !first.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(engine.read().await.0, 3, "the retry applied nothing");
    assert!(matches!(
        engine.submit(add(3, Some("k"), "fp2")).await,
        Err(EngineError::IdempotencyMismatch)
    ));
}

#[tokio::test]
async fn a_failed_commit_answers_unavailable_and_shows_nothing_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Flaky::open(dir.path(), "t");
    let engine = Engine::<Counter>::start("test", store.clone(), None)
        .await
        .expect("start");
    engine.submit(add(1, None, "")).await.expect("applied");
    store.failing.store(true, Ordering::Relaxed);
    let err = engine
        .submit(add(4, None, ""))
        .await
        .expect_err("the commit fails");
    assert!(matches!(err, EngineError::Unavailable(_)));
    assert_eq!(
        engine.read().await.0,
        1,
        "the state was rebuilt from the log"
    );
    assert!(engine.healthy());
    store.failing.store(false, Ordering::Relaxed);
    engine
        .submit(add(4, None, ""))
        .await
        .expect("applied once the disk is back");
    assert_eq!(engine.read().await.0, 5);
}

/// Waits until `n` batches are decided and not yet committed.
async fn in_flight(engine: &Engine<Counter>, n: usize) {
    let mut in_flight = engine.inner.in_flight.subscribe();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        in_flight.wait_for(|at| *at == n),
    )
    .await
    .expect("the batches are decided")
    .expect("the engine runs");
}

/// An engine on a [`Flaky`] store whose counter is at 1, and whose commits now wait until
/// `hold` is cleared.
async fn held_at_one(dir: &std::path::Path) -> (Arc<Flaky>, Engine<Counter>) {
    let store = Flaky::open(dir, "t");
    let engine = Engine::<Counter>::start("test", store.clone(), None)
        .await
        .expect("start");
    engine.submit(add(1, None, "")).await.expect("applied");
    store.hold.send_replace(true);
    (store, engine)
}

/// Submits on a task of its own.
fn spawn_submit(
    engine: &Engine<Counter>,
    submission: Submission<Counter>,
) -> tokio::task::JoinHandle<Outcome> {
    let engine = engine.clone();
    tokio::spawn(async move { engine.submit(submission).await })
}

#[tokio::test]
async fn readers_neither_wait_for_a_commit_nor_see_it_before_it_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, engine) = held_at_one(dir.path()).await;
    let first = spawn_submit(&engine, add(2, Some("k"), "fp"));
    in_flight(&engine, 1).await;
    // The next batch is decided on the writer's copy while the first is being committed: a
    // retry of the same key there finds the first's record, not the store's nothing.
    let retry = spawn_submit(&engine, add(2, Some("k"), "fp"));
    let refused = spawn_submit(&engine, add(8, None, ""));
    in_flight(&engine, 2).await;
    let seen = tokio::time::timeout(std::time::Duration::from_secs(1), engine.read())
        .await
        .expect("a read does not wait for the commit in flight")
        .0;
    assert_eq!(seen, 1, "nothing that is not durable is shown");
    store.hold.send_replace(false);
    let first = first.await.expect("joined").expect("applied");
    let retry = retry.await.expect("joined").expect("replayed");
    assert!(!first.replayed && retry.replayed);
    assert_eq!(retry.body, first.body);
    assert!(
        matches!(refused.await.expect("joined"), Err(EngineError::Refused(e)) if e.code == "too_much"),
        "decided on 3, not on the 1 readers saw"
    );
    assert_eq!(engine.read().await.0, 3, "the retry applied nothing");
    assert_eq!(store.head().await.expect("head"), 2);
}

#[tokio::test]
async fn a_failed_commit_fails_the_batches_decided_on_top_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, engine) = held_at_one(dir.path()).await;
    let first = spawn_submit(&engine, add(2, Some("a"), "fp"));
    in_flight(&engine, 1).await;
    let second = spawn_submit(&engine, add(3, Some("b"), "fp"));
    in_flight(&engine, 2).await;
    store.failing.store(true, Ordering::Relaxed);
    store.hold.send_replace(false);
    for outcome in [first, second] {
        assert!(matches!(
            outcome.await.expect("joined"),
            Err(EngineError::Unavailable(_))
        ));
    }
    assert_eq!(engine.read().await.0, 1, "nothing of either batch is shown");
    store.failing.store(false, Ordering::Relaxed);
    // Neither key was recorded: each request is executed when retried, once.
    let first = engine
        .submit(add(2, Some("a"), "fp"))
        .await
        .expect("applied");
    let second = engine
        .submit(add(3, Some("b"), "fp"))
        .await
        .expect("applied");
    assert!(!first.replayed && !second.replayed);
    assert_eq!(&second.body[..], b"6");
    assert_eq!(engine.read().await.0, 6);
    assert_eq!(store.head().await.expect("head"), 3);
}

#[tokio::test]
async fn a_write_that_loses_a_race_with_another_writer_answers_conflict_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(dir.path(), "t").expect("open"));
    // Two writers on one log, as two replicas of a service would be.
    let first = Engine::<Counter>::start("first", store.clone(), None)
        .await
        .expect("start");
    let second = Engine::<Counter>::start("second", store.clone(), None)
        .await
        .expect("start");
    first.submit(add(1, None, "")).await.expect("applied");
    let err = second
        .submit(add(4, None, ""))
        .await
        .expect_err("the second writer's view is stale");
    assert!(matches!(err, EngineError::Conflict), "{err:?}");
    assert_eq!(
        second.read().await.0,
        1,
        "the loser rebuilt its state, with the winner's event and without its own"
    );
    second
        .submit(add(4, None, ""))
        .await
        .expect("the retry is applied");
    assert_eq!(second.read().await.0, 5);
    assert_eq!(
        store.head().await.expect("head"),
        2,
        "one event per applied command"
    );
}

#[tokio::test]
async fn a_consumer_batch_that_fails_to_commit_is_applied_later_exactly_once() {
    use crate::{Consumer, InProcessBus, Verdict};

    let dir = tempfile::tempdir().expect("tempdir");
    let producer = Arc::new(RedbStore::open(dir.path(), "producer").expect("open"));
    let events = (0..100).map(|_| b"1".to_vec()).collect();
    producer
        .commit(Commit {
            expected_head: 0,
            events,
            ..Commit::default()
        })
        .await
        .expect("commit");
    let bus = InProcessBus::new();
    bus.attach("numbers", producer);

    let store = Flaky::open(dir.path(), "consumer");
    store.failing.store(true, Ordering::Relaxed);
    let engine = Engine::<Counter>::start("test", store.clone(), None)
        .await
        .expect("start");
    let consumer = Consumer::new("counter", "numbers", engine.clone(), Arc::new(bus), |d| {
        match std::str::from_utf8(&d.payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            // The counter stops at 10: events beyond that are refused by the rule and skipped.
            Some(n) => Verdict::Apply(n),
            None => Verdict::Reject("not a number".into()),
        }
    });
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(consumer.run(stopped));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        engine.read().await.0,
        0,
        "nothing is applied while commits fail"
    );
    store.failing.store(false, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.checkpoint("counter:numbers").await.expect("read") != Some(100) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        engine.read().await.0,
        10,
        "each event applied once, the rest refused by the rule"
    );
    assert_eq!(
        store.head().await.expect("head"),
        10,
        "ten events recorded, none twice"
    );
    assert_eq!(
        store.most_checkpoints.load(Ordering::Relaxed),
        1,
        "a batch's commit writes its stream's checkpoint once, not once per event"
    );
    let _ = stop.send(true);
    running.await.expect("the consumer stops");
}

/// An engine on `store` that takes snapshots only when asked.
async fn engine_on(store: Arc<Flaky>) -> Engine<Counter> {
    Engine::<Counter>::start_with("test", store, None, SnapshotPolicy::NEVER)
        .await
        .expect("start")
}

/// [`engine_on`] a new store in `dir`, after `n` commands adding one each.
async fn counted(dir: &std::path::Path, n: usize) -> (Arc<Flaky>, Engine<Counter>) {
    let store = Flaky::open(dir, "t");
    let engine = engine_on(store.clone()).await;
    for _ in 0..n {
        engine.submit(add(1, None, "")).await.expect("applied");
    }
    (store, engine)
}

#[tokio::test]
async fn a_restart_reads_the_latest_snapshot_and_only_the_events_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, engine) = counted(dir.path(), 4).await;
    assert_eq!(engine.snapshot().await.expect("snapshot"), 4);
    engine.submit(add(2, None, "")).await.expect("applied");
    engine.close().await;

    store.reads();
    let engine = engine_on(store.clone()).await;
    assert_eq!(engine.read().await.0, 6, "snapshot (4) plus the tail (2)");
    assert_eq!(
        store.reads(),
        [4, 5],
        "the log was read from the snapshot on"
    );
    // The subject's version continues from the snapshot: the next event is the sixth.
    engine.submit(add(1, None, "")).await.expect("applied");
    let (_, last) = store.read(5, 1).await.unwrap().pop().expect("an event");
    let event: CloudEvent = serde_json::from_slice(&last).unwrap();
    assert_eq!((event.sequence(), event.subject_version()), (6, 6));
}

#[tokio::test]
async fn a_corrupt_or_future_snapshot_is_not_used_and_the_whole_log_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, engine) = counted(dir.path(), 3).await;
    engine.snapshot().await.expect("snapshot");
    engine.close().await;

    // A flipped byte, as a bad disk or a partial copy would leave it.
    let (position, mut bytes) = store.latest_snapshot().await.unwrap().expect("saved");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    store.save_snapshot(position, bytes).await.unwrap();
    store.reads();
    let engine = engine_on(store.clone()).await;
    assert_eq!(engine.read().await.0, 3);
    assert_eq!(store.reads().first(), Some(&0), "read from the beginning");
    engine.close().await;

    // A snapshot ahead of the log (a log restored from an older backup) is not trusted either.
    store.save_snapshot(99, b"whatever".to_vec()).await.unwrap();
    let engine = engine_on(store.clone()).await;
    assert_eq!(engine.read().await.0, 3);
    assert_eq!(store.reads().first(), Some(&0));
}

#[tokio::test]
async fn a_failed_commit_restores_from_the_snapshot_not_from_the_beginning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, engine) = counted(dir.path(), 3).await;
    engine.snapshot().await.expect("snapshot");
    engine.submit(add(1, None, "")).await.expect("applied");
    store.failing.store(true, Ordering::Relaxed);
    store.reads();
    engine
        .submit(add(5, None, ""))
        .await
        .expect_err("the commit fails");
    assert_eq!(
        engine.read().await.0,
        4,
        "restored: 3 from the snapshot, 1 after it"
    );
    assert_eq!(store.reads(), [3, 4], "from the snapshot's position on");
}

#[tokio::test]
async fn snapshots_are_taken_in_the_background_when_the_policy_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Flaky::open(dir.path(), "t");
    let policy = SnapshotPolicy {
        every_events: 3,
        interval: std::time::Duration::ZERO,
    };
    let engine = Engine::<Counter>::start_with("test", store.clone(), None, policy)
        .await
        .expect("start");
    for _ in 0..3 {
        engine.submit(add(1, None, "")).await.expect("applied");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.latest_snapshot().await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (position, _) = store.latest_snapshot().await.unwrap().unwrap();
    assert_eq!(position, 3);
}

#[tokio::test]
async fn index_rows_commit_with_their_events_and_a_log_without_them_gets_them_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, engine) = counted(dir.path(), 3).await;
    let top = store.index_last("c|", "c|~").await.unwrap();
    assert_eq!(top.map(|(k, _)| k), Some(format!("c|{:016x}", 3)));
    engine.close().await;

    // The same log copied into a store without its index, as a log written before the index
    // existed would be.
    let old = Flaky::open(dir.path(), "old");
    let events = store.read(0, 10).await.unwrap();
    old.commit(Commit {
        expected_head: 0,
        events: events.into_iter().map(|(_, bytes)| bytes).collect(),
        ..Commit::default()
    })
    .await
    .unwrap();
    assert_eq!(old.index_last("c|", "c|~").await.unwrap(), None);
    let engine = engine_on(old.clone()).await;
    assert_eq!(engine.read().await.0, 3);
    for total in 1..=3u64 {
        let key = format!("c|{total:016x}");
        assert!(
            old.index_last(&key, &key).await.unwrap().is_some(),
            "row {key} written at start"
        );
    }
}

#[tokio::test]
async fn a_replica_writes_only_under_the_lease_and_a_former_owner_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(dir.path(), "replicas").unwrap());
    let never = SnapshotPolicy::NEVER;
    let a = Engine::<Counter>::start_replica("a", store.clone(), None, never)
        .await
        .unwrap();
    let b = Engine::<Counter>::start_replica("b", store.clone(), None, never)
        .await
        .unwrap();
    assert!(
        matches!(a.submit(add(1, None, "")).await, Err(EngineError::NotOwner)),
        "nobody owns the writes yet: a replica refuses, for the request to go elsewhere"
    );
    let lease = store
        .acquire_lease("a", "a:1", None, 0, 1_000)
        .await
        .unwrap()
        .unwrap();
    a.promote(0, lease.epoch).await.unwrap();
    let reply = a.submit(add(1, None, "")).await.unwrap();
    assert_eq!(reply.position, 1, "a write says the position that holds it");
    assert!(
        b.wait_applied(
            Position {
                partition: 0,
                at: 1
            },
            std::time::Duration::from_secs(5)
        )
        .await,
        "the follower applies what the owner appended"
    );
    assert_eq!(b.read().await.0, 1);

    // `a` pauses past its lease; `b` takes it, which raises the fence.
    let lease = store
        .acquire_lease("b", "b:1", None, 5_000, 1_000)
        .await
        .unwrap()
        .expect("an expired lease is taken");
    b.promote(0, lease.epoch).await.unwrap();
    assert!(
        matches!(
            a.submit(add(5, Some("late"), "x")).await,
            Err(EngineError::NotOwner)
        ),
        "the former owner's late write is fenced: not written, to be sent to the owner"
    );
    assert!(!a.is_writer(0), "and it stops taking writes");
    assert_eq!(
        store.head().await.unwrap(),
        1,
        "nothing of it reached the log"
    );
    assert_eq!(store.idempotency("late").await.unwrap(), None);
    b.submit(add(2, None, "")).await.unwrap();
    assert!(
        a.wait_applied(
            Position {
                partition: 0,
                at: 2
            },
            std::time::Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(
        a.read().await.0,
        3,
        "the former owner shows the new owner's writes, not its own late one"
    );
    b.demote(0).await;
    assert!(matches!(
        b.submit(add(1, None, "")).await,
        Err(EngineError::NotOwner)
    ));
}

/// Counters by name, each in its name's partition, that take additions only once their name
/// is registered in the registry (partition 0): the smallest partitioned state machine.
#[derive(Default, Clone, Serialize, Deserialize)]
struct Counters {
    registered: FxHashMap<String, u64>,
    totals: FxHashMap<String, u64>,
    /// Additions applied before their name's registration: what must never happen.
    orphans: u64,
}

#[derive(Serialize, Deserialize)]
enum Change {
    Registered { name: String },
    Added { name: String, n: u64 },
}

enum Order {
    Register(String),
    Add(String, u64),
}

impl StateMachine for Counters {
    type Command = Order;
    type Event = Change;
    const SOURCE: &'static str = "/test";

    fn execute(&mut self, order: Order, _now: OffsetDateTime) -> domain::Result<Vec<Change>> {
        let event = match order {
            Order::Register(name) => Change::Registered { name },
            Order::Add(name, n) => {
                if !self.registered.contains_key(&name) {
                    return Err(Error::not_found("not_registered", "no such counter"));
                }
                Change::Added { name, n }
            }
        };
        self.apply(&event);
        Ok(vec![event])
    }

    fn apply(&mut self, event: &Change) {
        match event {
            Change::Registered { name } => {
                self.registered.insert(name.clone(), 0);
            }
            Change::Added { name, n } => {
                if !self.registered.contains_key(name) {
                    self.orphans += 1;
                }
                *self.totals.entry(name.clone()).or_default() += n;
            }
        }
    }

    fn partition_key(order: &Order) -> Option<&str> {
        match order {
            Order::Register(_) => None,
            Order::Add(name, _) => Some(name),
        }
    }

    fn describe(event: &Change) -> Described<'_> {
        let subject = match event {
            Change::Registered { name } => name,
            Change::Added { name, .. } => name,
        };
        Described {
            family: "test",
            name: "counted",
            subject,
            actor: "test",
            time: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

fn order(order: Order) -> Submission<Counters> {
    Submission {
        command: Some(order),
        idempotency: None,
        checkpoint: None,
        reply: Box::new(|_, _| Reply::new(200, Bytes::new())),
        partition: None,
        span: tracing::Span::current(),
    }
}

fn partition_stores(dir: &std::path::Path, n: usize) -> Vec<Arc<dyn EventStore>> {
    (0..n)
        .map(|p| Arc::new(RedbStore::open(dir, &format!("p{p}")).unwrap()) as Arc<dyn EventStore>)
        .collect()
}

/// A name that lands in `partition` of three.
fn name_in(partition: usize) -> String {
    (0..)
        .map(|n| format!("counter-{n}"))
        .find(|name| crate::partition::of(name, 3) == partition)
        .unwrap()
}

#[tokio::test]
async fn a_partitioned_engine_commits_each_command_to_its_partitions_log_and_restores_from_all() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(name_in).collect();
    let policy = SnapshotPolicy::NEVER;
    {
        let engine = Engine::<Counters>::start_partitioned(
            "test",
            partition_stores(dir.path(), 3),
            None,
            policy,
            false,
        )
        .await
        .unwrap();
        for name in &names {
            let reply = engine
                .submit(order(Order::Register(name.clone())))
                .await
                .unwrap();
            assert_eq!(reply.partition, 0, "registrations go to the registry");
        }
        for (i, name) in names.iter().enumerate() {
            for n in 1..=(i as u64 + 1) {
                let reply = engine
                    .submit(order(Order::Add(name.clone(), n)))
                    .await
                    .unwrap();
                assert_eq!(
                    reply.partition, i,
                    "an addition goes to its name's partition"
                );
                assert_eq!(reply.position, n + u64::from(i == 0) * 3);
            }
        }
        let heads: Vec<u64> = futures_heads(&engine).await;
        assert_eq!(
            heads,
            vec![3 + 1, 2, 3],
            "each log holds its partition's events"
        );
        assert_eq!(
            engine.snapshot().await.unwrap(),
            9,
            "stored under the sum of the heads"
        );
        engine
            .submit(order(Order::Add(names[2].clone(), 10)))
            .await
            .unwrap();
        engine.close().await;
    }
    let engine = Engine::<Counters>::start_partitioned(
        "test",
        partition_stores(dir.path(), 3),
        None,
        policy,
        false,
    )
    .await
    .unwrap();
    let state = engine.read().await;
    assert_eq!(state.totals[&names[0]], 1);
    assert_eq!(state.totals[&names[1]], 3);
    assert_eq!(
        state.totals[&names[2]], 16,
        "the snapshot and the tail after it"
    );
    assert_eq!(state.orphans, 0);
}

async fn futures_heads<S: StateMachine>(engine: &Engine<S>) -> Vec<u64> {
    let mut heads = Vec::new();
    for store in engine.stores() {
        heads.push(store.head().await.unwrap());
    }
    heads
}

#[tokio::test]
async fn replicas_own_partitions_apart_and_follow_the_others_registry_first() {
    let dir = tempfile::tempdir().unwrap();
    let stores = partition_stores(dir.path(), 3);
    let never = SnapshotPolicy::NEVER;
    let a = Engine::<Counters>::start_partitioned("a", stores.clone(), None, never, true)
        .await
        .unwrap();
    let b = Engine::<Counters>::start_partitioned("b", stores.clone(), None, never, true)
        .await
        .unwrap();
    let take = |p: usize, holder: &'static str| {
        let store = stores[p].clone();
        async move {
            store
                .acquire_lease(holder, holder, None, 0, 60_000)
                .await
                .unwrap()
                .unwrap()
                .epoch
        }
    };
    a.promote(0, take(0, "a").await).await.unwrap();
    a.promote(1, take(1, "a").await).await.unwrap();
    b.promote(2, take(2, "b").await).await.unwrap();
    let in_two = name_in(2);
    let registered = a
        .submit(order(Order::Register(in_two.clone())))
        .await
        .unwrap();
    assert!(
        matches!(
            a.submit(order(Order::Add(in_two.clone(), 1))).await,
            Err(EngineError::NotOwner)
        ),
        "a does not own partition 2: the write goes to b"
    );
    assert!(
        b.wait_applied(
            Position {
                partition: 0,
                at: registered.position
            },
            std::time::Duration::from_secs(5)
        )
        .await
    );
    let added = b
        .submit(order(Order::Add(in_two.clone(), 5)))
        .await
        .unwrap();
    assert_eq!((added.partition, added.position), (2, 1));
    assert!(
        a.wait_applied(
            Position {
                partition: 2,
                at: 1
            },
            std::time::Duration::from_secs(5)
        )
        .await,
        "a follows the partition it does not own"
    );
    assert_eq!(a.read().await.totals[&in_two], 5);

    // A third replica starting now, and a follower that reads partition 2's new events
    // before the registry's, never applies an addition before its registration.
    let in_two_again = {
        let mut n = 0;
        loop {
            let name = format!("late-{n}");
            if crate::partition::of(&name, 3) == 2 {
                break name;
            }
            n += 1;
        }
    };
    let c = Engine::<Counters>::start_partitioned("c", stores.clone(), None, never, true)
        .await
        .unwrap();
    for round in 0..20u64 {
        let name = format!("{in_two_again}-{round}");
        let name = if crate::partition::of(&name, 3) == 2 {
            name
        } else {
            in_two_again.clone()
        };
        let at = a
            .submit(order(Order::Register(name.clone())))
            .await
            .unwrap();
        assert!(
            b.wait_applied(
                Position {
                    partition: 0,
                    at: at.position
                },
                std::time::Duration::from_secs(5)
            )
            .await
        );
        b.submit(order(Order::Add(name, 1))).await.unwrap();
    }
    assert!(
        c.wait_applied(
            Position {
                partition: 2,
                at: 21
            },
            std::time::Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(
        c.read().await.orphans,
        0,
        "no addition before its registration"
    );
    assert_eq!(a.read().await.orphans, 0);
    assert_eq!(c.read().await.totals.values().sum::<u64>(), 25);
}

#[tokio::test]
async fn a_former_owner_follows_on_from_its_own_writes_without_rebuilding() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::open(dir.path(), "handover");
    let store: Arc<dyn EventStore> = flaky.clone();
    let never = SnapshotPolicy::NEVER;
    let a = Engine::<Counter>::start_replica("a", store.clone(), None, never)
        .await
        .unwrap();
    let b = Engine::<Counter>::start_replica("b", store.clone(), None, never)
        .await
        .unwrap();
    let within = std::time::Duration::from_secs(5);
    let lease = |holder: &'static str, now: i64| {
        let store = store.clone();
        async move {
            store
                .acquire_lease(holder, holder, None, now, 1_000)
                .await
                .unwrap()
                .expect("taken")
                .epoch
        }
    };
    // b writes, a follows it; then a writes, and b again.
    b.promote(0, lease("b", 0).await).await.unwrap();
    b.submit(add(1, None, "")).await.unwrap();
    assert!(
        a.wait_applied(
            Position {
                partition: 0,
                at: 1
            },
            within
        )
        .await
    );
    a.promote(0, lease("a", 5_000).await).await.unwrap();
    b.demote(0).await;
    a.submit(add(2, None, "")).await.unwrap();
    b.promote(0, lease("b", 10_000).await).await.unwrap();
    a.demote(0).await;
    b.submit(add(3, None, "")).await.unwrap();
    flaky.reads();
    assert!(
        a.wait_applied(
            Position {
                partition: 0,
                at: 3
            },
            within
        )
        .await
    );
    assert_eq!(a.read().await.0, 6);
    assert!(
        !flaky.reads().contains(&0),
        "a follows on from the event it wrote itself, without reading the log from the start"
    );
}
