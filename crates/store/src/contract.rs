//! The contract of the ports, as test functions every adapter's tests call: the embedded ones
//! here, the MongoDB, Kafka and Redis ones in `libertum-adapters`. Each panics, naming the
//! broken promise, when the adapter breaks it.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;

use crate::{Cache, Commit, EventBus, EventStore, IdempotencyRecord, StoreError};

pub type Open = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn EventStore>> + Send>>>;

/// A CloudEvent-shaped event with a unique id, as the services write them.
pub fn event(id: &str, key: &str) -> Vec<u8> {
    format!(r#"{{"specversion":"1.0","id":"{id}","type":"contract.test","source":"/contract","partitionkey":"{key}","data":{{"n":"{id}"}}}}"#)
        .into_bytes()
}

fn record(created_at: i64, body: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        fingerprint: format!("fp-{body}"),
        status: 201,
        body: body.to_owned(),
        created_at,
    }
}

/// The event store's contract. `open` opens the same, initially empty, log each time it is
/// called (a new connection or a reopened file).
pub async fn event_store(open: Open) {
    let store = open().await;
    assert_eq!(store.head().await.unwrap(), 0, "a new log starts empty");
    assert!(
        store.read(0, 10).await.unwrap().is_empty(),
        "a new log has nothing to read"
    );
    let mut head = store.watch_head();

    // Events, idempotency records and checkpoints go in together.
    store
        .commit(Commit {
            expected_head: 0,
            events: vec![event("e-1", "a"), event("e-2", "b")],
            idempotency: vec![("k-1".into(), record(1_000, "first"))],
            checkpoints: vec![("reader:topic".into(), 7)],
            index: Vec::new(),
            fence: None,
        })
        .await
        .expect("a commit at the expected head succeeds");
    assert_eq!(
        store.head().await.unwrap(),
        2,
        "the head is the last position"
    );
    tokio::time::timeout(Duration::from_secs(1), head.wait_for(|h| *h == 2))
        .await
        .expect("watchers see the new head")
        .unwrap();
    let all = store.read(0, 10).await.unwrap();
    assert_eq!(
        all,
        vec![(1, event("e-1", "a")), (2, event("e-2", "b"))],
        "events come back byte for byte, at consecutive positions"
    );
    assert_eq!(
        store.read(1, 10).await.unwrap(),
        vec![(2, event("e-2", "b"))],
        "read starts after `after`"
    );
    assert_eq!(
        store.read(0, 1).await.unwrap().len(),
        1,
        "read returns at most `max`"
    );
    assert_eq!(
        store.idempotency("k-1").await.unwrap(),
        Some(record(1_000, "first"))
    );
    assert_eq!(store.idempotency("k-unknown").await.unwrap(), None);
    let found = store
        .idempotency_many(&["k-unknown", "k-1", "k-1"])
        .await
        .unwrap();
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec![("k-1".to_owned(), record(1_000, "first"))],
        "idempotency_many returns the records that exist, once each"
    );
    assert!(store.idempotency_many(&[]).await.unwrap().is_empty());
    assert_eq!(store.checkpoint("reader:topic").await.unwrap(), Some(7));
    assert_eq!(store.checkpoint("unknown").await.unwrap(), None);

    // A writer with a stale head is refused and writes nothing.
    let stale = store
        .commit(Commit {
            expected_head: 1,
            events: vec![event("e-3", "a")],
            idempotency: vec![("k-2".into(), record(1_000, "stale"))],
            checkpoints: vec![("reader:topic".into(), 9)],
            index: vec![("refused".into(), b"x".to_vec())],
            fence: None,
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "a stale head is a conflict, got {stale:?}"
    );
    assert_eq!(
        store.read(0, 10).await.unwrap().len(),
        2,
        "a refused commit appends nothing"
    );
    assert_eq!(
        store.idempotency("k-2").await.unwrap(),
        None,
        "a refused commit stores no record"
    );
    assert_eq!(
        store.checkpoint("reader:topic").await.unwrap(),
        Some(7),
        "nor a checkpoint"
    );

    // A commit without events still needs the right head, and moves checkpoints.
    store
        .commit(Commit {
            expected_head: 2,
            checkpoints: vec![("reader:topic".into(), 8)],
            idempotency: vec![("k-3".into(), record(3_000, "later"))],
            ..Commit::default()
        })
        .await
        .expect("a commit of checkpoints only");
    assert_eq!(store.checkpoint("reader:topic").await.unwrap(), Some(8));
    assert_eq!(store.head().await.unwrap(), 2, "no event, same head");

    // Checkpoints kept outside the log do not move the head.
    store.save_checkpoint("relay:topic", 2).await.unwrap();
    assert_eq!(store.checkpoint("relay:topic").await.unwrap(), Some(2));
    assert_eq!(store.head().await.unwrap(), 2);

    // Old idempotency records are pruned, recent ones kept.
    assert_eq!(
        store.prune_idempotency(2_000).await.unwrap(),
        1,
        "one record is older than the cut"
    );
    assert_eq!(store.idempotency("k-1").await.unwrap(), None);
    assert!(store.idempotency("k-3").await.unwrap().is_some());

    // Index rows commit with events, and the greatest key in a range comes back.
    store
        .commit(Commit {
            expected_head: 2,
            index: vec![
                ("p|a|0001".into(), b"one".to_vec()),
                ("p|a|0003".into(), b"three".to_vec()),
                ("p|b|0002".into(), b"other".to_vec()),
            ],
            ..Commit::default()
        })
        .await
        .expect("a commit of index rows");
    let last = |low: &'static str, high: &'static str| {
        let store = store.clone();
        async move { store.index_last(low, high).await.unwrap() }
    };
    assert_eq!(
        last("p|a|", "p|a|0002").await,
        Some(("p|a|0001".into(), b"one".to_vec())),
        "the greatest key at or below the bound"
    );
    assert_eq!(
        last("p|a|", "p|a|0003").await,
        Some(("p|a|0003".into(), b"three".to_vec())),
        "the bound is inclusive"
    );
    assert_eq!(last("p|a|", "p|a|0000").await, None, "nothing at or below");
    assert_eq!(last("p|c|", "p|c|~").await, None, "nothing in the range");
    let range = |low: &'static str, high: &'static str, limit: usize| {
        let store = store.clone();
        async move {
            let rows = store.index_range(low, high, limit).await.unwrap();
            rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        range("p|a|", "p|a|~", 10).await,
        ["p|a|0001", "p|a|0003"],
        "a range in key order, and only its own"
    );
    assert_eq!(
        range("p|", "p|~", 2).await,
        ["p|a|0001", "p|a|0003"],
        "at most the limit"
    );
    assert_eq!(
        range("p|a|0002", "p|a|0003", 10).await,
        ["p|a|0003"],
        "both bounds inclusive"
    );
    assert!(
        range("p|c|", "p|c|~", 10).await.is_empty(),
        "nothing in the range"
    );
    let stale = store
        .commit(Commit {
            expected_head: 1,
            index: vec![("p|a|0002".into(), b"stale".to_vec())],
            ..Commit::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    assert_eq!(
        last("p|a|", "p|a|0002").await,
        Some(("p|a|0001".into(), b"one".to_vec())),
        "a refused commit writes no index row"
    );

    // Rows written again outside a commit replace those with the same key, and add the others.
    store
        .put_index(vec![
            ("p|a|0001".into(), b"one again".to_vec()),
            ("p|a|0004".into(), b"four".to_vec()),
        ])
        .await
        .expect("rows put");
    store
        .put_index(vec![("p|a|0004".into(), b"four".to_vec())])
        .await
        .expect("the same rows put twice");
    assert_eq!(
        last("p|a|", "p|a|0002").await,
        Some(("p|a|0001".into(), b"one again".to_vec()))
    );
    assert_eq!(
        last("p|a|", "p|a|9999").await,
        Some(("p|a|0004".into(), b"four".to_vec()))
    );
    assert_eq!(
        store.head().await.unwrap(),
        2,
        "putting rows appends no event"
    );

    // Snapshots: none at first, then the latest one replaces the one before, byte for byte,
    // whatever its size (larger than a MongoDB document).
    assert_eq!(
        store.latest_snapshot().await.unwrap(),
        None,
        "no snapshot yet"
    );
    store
        .save_snapshot(1, b"state at 1".to_vec())
        .await
        .unwrap();
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    store.save_snapshot(2, big.clone()).await.unwrap();
    let latest = store.latest_snapshot().await.unwrap();
    assert!(
        latest.as_ref().is_some_and(|(p, b)| *p == 2 && *b == big),
        "the latest snapshot comes back whole: {:?}",
        latest.map(|(p, b)| (p, b.len()))
    );
    store
        .save_snapshot(2, b"small again".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.latest_snapshot().await.unwrap(),
        Some((2, b"small again".to_vec())),
        "a new snapshot at the same position replaces the old one"
    );

    // Everything survives reopening.
    drop(store);
    let store = open().await;
    assert_eq!(
        store.latest_snapshot().await.unwrap(),
        Some((2, b"small again".to_vec())),
        "the snapshot survives reopening"
    );
    assert_eq!(
        store.head().await.unwrap(),
        2,
        "the head survives reopening"
    );
    assert_eq!(store.read(0, 10).await.unwrap().len(), 2);
    assert_eq!(store.checkpoint("reader:topic").await.unwrap(), Some(8));
    store
        .commit(Commit {
            expected_head: 2,
            events: vec![event("e-3", "a")],
            ..Commit::default()
        })
        .await
        .expect("appending after reopening");
    assert_eq!(
        store.read(2, 10).await.unwrap(),
        vec![(3, event("e-3", "a"))]
    );

    // Positions are numbers, not text: 10 comes after 9.
    let more: Vec<Vec<u8>> = (4..=12).map(|i| event(&format!("e-{i}"), "a")).collect();
    store
        .commit(Commit {
            expected_head: 3,
            events: more,
            ..Commit::default()
        })
        .await
        .expect("appending past nine");
    drop(store);
    let store = open().await;
    assert_eq!(
        store.head().await.unwrap(),
        12,
        "the head is the greatest position, numerically"
    );
    let tail: Vec<u64> = store
        .read(8, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    assert_eq!(tail, vec![9, 10, 11, 12], "reads are in numeric order");
}

/// The bus's contract: what is committed to `store`, published on `topic` (by the bus itself or
/// a relay the caller runs), reaches a subscriber once committed, in order per partition key.
pub async fn event_bus(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>, topic: &str) {
    let head = store.head().await.unwrap();
    let events: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            event(
                &format!("bus-{head}-{i}"),
                if i % 2 == 0 { "even" } else { "odd" },
            )
        })
        .collect();
    let mut subscription = bus
        .subscribe(topic, "contract", &Default::default())
        .await
        .expect("subscribe");
    store
        .commit(Commit {
            expected_head: head,
            events: events.clone(),
            ..Commit::default()
        })
        .await
        .unwrap();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < events.len() {
        let batch = tokio::time::timeout_at(deadline, subscription.next(100))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} events arrived within 30 s",
                    seen.len(),
                    events.len()
                )
            })
            .expect("next");
        assert!(!batch.is_empty(), "next returns at least one event");
        subscription.commit(&batch).await.expect("commit");
        seen.extend(
            batch
                .into_iter()
                .map(|d| d.payload)
                .filter(|p| events.contains(p)),
        );
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), events.len(), "every event arrives");
    for key in ["even", "odd"] {
        let sent: Vec<&Vec<u8>> = events.iter().filter(|e| contains(e, key)).collect();
        let mut got: Vec<&Vec<u8>> = seen.iter().filter(|e| contains(e, key)).collect();
        got.dedup();
        assert_eq!(
            got, sent,
            "events with partition key {key} arrive in commit order"
        );
    }
    assert_eq!(
        subscription.lag().await.unwrap(),
        0,
        "nothing is left to deliver"
    );
}

fn contains(haystack: &[u8], key: &str) -> bool {
    let needle = format!(r#""partitionkey":"{key}""#);
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The lease's contract: one holder at a time, taken over only once expired or released, with
/// an epoch that grows at every change of holder and fences every commit of an earlier one.
/// Replicas say they are alive and count those that are: the count of their fair share.
pub async fn members(open: Open) {
    let store = open().await;
    assert_eq!(store.members("a", 1_000, 5_000).await.unwrap(), 1);
    assert_eq!(store.members("b", 2_000, 5_000).await.unwrap(), 2);
    assert_eq!(
        store.members("a", 3_000, 5_000).await.unwrap(),
        2,
        "a renewal counts once"
    );
    assert_eq!(
        store.members("b", 6_500, 5_000).await.unwrap(),
        2,
        "a is alive until 8 s"
    );
    assert_eq!(
        store.members("b", 9_000, 5_000).await.unwrap(),
        1,
        "a, not renewed, is gone"
    );
    assert_eq!(store.members("b", 9_500, 0).await.unwrap(), 0, "b leaves");
}

pub async fn leases(open: Open) {
    let store = open().await;
    let ttl = 10_000;
    assert_eq!(
        store.lease().await.unwrap(),
        None,
        "nobody holds a new log's lease"
    );
    let a = store
        .acquire_lease("a", "10.0.0.1:8080", None, 1_000, ttl)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!((a.holder.as_str(), a.epoch), ("a", 1));
    assert_eq!(
        store.lease().await.unwrap(),
        Some(a.clone()),
        "the lease reads back"
    );
    assert_eq!(
        store
            .acquire_lease("b", "10.0.0.2:8080", None, 2_000, ttl)
            .await
            .unwrap(),
        None,
        "a held lease is not taken before it expires"
    );
    let renewed = store
        .acquire_lease("a", "10.0.0.1:8080", Some(1), 5_000, ttl)
        .await
        .unwrap()
        .expect("the holder renews");
    assert_eq!((renewed.epoch, renewed.expires_at_ms), (1, 15_000));
    store
        .commit(Commit {
            expected_head: 0,
            events: vec![event("l-1", "a")],
            fence: Some(1),
            ..Commit::default()
        })
        .await
        .expect("the holder's commit is written");

    // The holder pauses past its lease; another replica takes it.
    let b = store
        .acquire_lease("b", "10.0.0.2:8080", None, 15_000, ttl)
        .await
        .unwrap()
        .expect("an expired lease is taken");
    assert_eq!((b.holder.as_str(), b.epoch), ("b", 2), "the epoch grows");
    let late = store
        .commit(Commit {
            expected_head: 1,
            events: vec![event("l-late", "a")],
            idempotency: vec![("late".into(), record(1, "late"))],
            checkpoints: vec![("late".into(), 1)],
            index: vec![("late".into(), b"x".to_vec())],
            fence: Some(1),
        })
        .await;
    assert!(
        matches!(late, Err(StoreError::Fenced { epoch: 1 })),
        "the former holder's commit is fenced, got {late:?}"
    );
    assert_eq!(
        store.read(0, 10).await.unwrap().len(),
        1,
        "it appended nothing"
    );
    assert_eq!(
        store.idempotency("late").await.unwrap(),
        None,
        "nor a record"
    );
    assert_eq!(
        store.checkpoint("late").await.unwrap(),
        None,
        "nor a checkpoint"
    );
    assert_eq!(
        store
            .acquire_lease("a", "10.0.0.1:8080", Some(1), 16_000, ttl)
            .await
            .unwrap(),
        None,
        "the former holder cannot renew"
    );
    store
        .commit(Commit {
            expected_head: 1,
            events: vec![event("l-2", "a")],
            fence: Some(2),
            ..Commit::default()
        })
        .await
        .expect("the new holder's commit is written");

    // A release lets another take it at once, with a greater epoch.
    store.release_lease("a", 1).await.unwrap();
    assert_eq!(
        store.lease().await.unwrap().map(|l| l.holder),
        Some("b".into()),
        "only the holder can release"
    );
    store.release_lease("b", 2).await.unwrap();
    let c = store
        .acquire_lease("c", "10.0.0.3:8080", None, 16_000, ttl)
        .await
        .unwrap()
        .expect("a released lease is taken before its time");
    assert_eq!(c.epoch, 3);

    // The relay's checkpoint never moves back.
    store.save_checkpoint("relay:t", 9).await.unwrap();
    store.save_checkpoint("relay:t", 4).await.unwrap();
    assert_eq!(store.checkpoint("relay:t").await.unwrap(), Some(9));
}

/// The cache's contract, with versions: a lagging replica never puts back what an
/// invalidation removed.
pub async fn cache(cache: Arc<dyn Cache>) {
    let key = "contract:asset:1";
    cache.invalidate(key, 1).await;
    assert_eq!(cache.get(key).await, None, "a missing key is a miss");
    cache.put(key, 1, Bytes::from_static(b"v1")).await;
    assert_eq!(
        cache.get(key).await,
        Some(Bytes::from_static(b"v1")),
        "a value read at the invalidated version is put and read back"
    );
    cache.put(key, 2, Bytes::from_static(b"v2")).await;
    assert_eq!(
        cache.get(key).await,
        Some(Bytes::from_static(b"v2")),
        "a newer put replaces"
    );
    cache.put(key, 1, Bytes::from_static(b"v1")).await;
    assert_eq!(
        cache.get(key).await,
        Some(Bytes::from_static(b"v2")),
        "an older put does not replace a newer value"
    );
    cache.invalidate(key, 3).await;
    assert_eq!(cache.get(key).await, None, "an invalidated key is a miss");
    cache.put(key, 2, Bytes::from_static(b"v2")).await;
    assert_eq!(
        cache.get(key).await,
        None,
        "a value read before the invalidation is never put back"
    );
    cache.put(key, 3, Bytes::from_static(b"v3")).await;
    assert_eq!(
        cache.get(key).await,
        Some(Bytes::from_static(b"v3")),
        "a value read at the invalidating version is"
    );
}
