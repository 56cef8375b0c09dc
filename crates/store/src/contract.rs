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
        .subscribe(topic, "contract", None)
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

/// The cache's contract.
pub async fn cache(cache: Arc<dyn Cache>) {
    let key = "contract:asset:1";
    cache.invalidate(key).await;
    assert_eq!(cache.get(key).await, None, "a missing key is a miss");
    cache.put(key, Bytes::from_static(b"v1")).await;
    assert_eq!(
        cache.get(key).await,
        Some(Bytes::from_static(b"v1")),
        "a put value is read back"
    );
    cache.put(key, Bytes::from_static(b"v2")).await;
    assert_eq!(
        cache.get(key).await,
        Some(Bytes::from_static(b"v2")),
        "a put replaces"
    );
    cache.invalidate(key).await;
    assert_eq!(cache.get(key).await, None, "an invalidated key is a miss");
}
