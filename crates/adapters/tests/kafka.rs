//! The Kafka relay and bus against a real Kafka-protocol broker (tansu) over real connections.

use std::{sync::Arc, time::Duration};

use libertum_adapters::{KafkaBus, KafkaSettings, Relay, ensure_topics, kafka::dead_letter_topic};
use libertum_store::{Commit, EventBus, EventStore, RedbStore, contract};
use libertum_testkit::servers;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};
use tokio::sync::watch;

async fn relayed(
    brokers: &str,
    topic: &str,
) -> (tempfile::TempDir, Arc<dyn EventStore>, watch::Sender<bool>) {
    let settings = KafkaSettings::new(brokers);
    ensure_topics(&settings, &[topic]).await.expect("topics");
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(dir.path(), "log").unwrap());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(
        Relay::new(&settings, store.clone(), topic)
            .unwrap()
            .run(stopped),
    );
    (dir, store, stop)
}

#[tokio::test]
async fn the_kafka_bus_honours_the_event_bus_contract() {
    let (_broker, brokers) = servers::kafka();
    let (_dir, store, _stop) = relayed(&brokers, "contract.events").await;
    let bus = Arc::new(KafkaBus::new(&KafkaSettings::new(&brokers)).unwrap());
    contract::event_bus(store, bus, "contract.events").await;
}

#[tokio::test]
async fn a_consumer_resumes_after_the_positions_it_stored_and_the_relay_after_its_checkpoint() {
    let (_broker, brokers) = servers::kafka();
    let topic = "resume.events";
    let (dir, store, stop) = relayed(&brokers, topic).await;
    let bus = KafkaBus::new(&KafkaSettings::new(&brokers)).unwrap();
    let first: Vec<Vec<u8>> = (0..10)
        .map(|i| contract::event(&format!("a-{i}"), "k"))
        .collect();
    store
        .commit(Commit {
            expected_head: 0,
            events: first.clone(),
            ..Commit::default()
        })
        .await
        .unwrap();

    let mut subscription = bus
        .subscribe(topic, "resumer", &Default::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    // What a consumer stores with its effects: the last position applied in each partition.
    let mut applied = std::collections::BTreeMap::new();
    while got.len() < first.len() {
        let batch = tokio::time::timeout(Duration::from_secs(30), subscription.next(100))
            .await
            .expect("events within 30 s")
            .unwrap();
        subscription.commit(&batch).await.unwrap();
        for d in &batch {
            applied.insert(d.partition, d.offset);
        }
        got.extend(batch.into_iter().map(|d| d.payload));
    }
    assert_eq!(got, first);
    drop(subscription);

    // The relay stops; more events are committed meanwhile; a new relay takes over.
    stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second: Vec<Vec<u8>> = (0..10)
        .map(|i| contract::event(&format!("b-{i}"), "k"))
        .collect();
    store
        .commit(Commit {
            expected_head: 10,
            events: second.clone(),
            ..Commit::default()
        })
        .await
        .unwrap();
    let (_stop2, stopped) = watch::channel(false);
    tokio::spawn(
        Relay::new(&KafkaSettings::new(&brokers), store.clone(), topic)
            .unwrap()
            .run(stopped),
    );

    let mut subscription = bus
        // Another group name: the positions given decide, not what a group committed.
        .subscribe(topic, "resumer-2", &applied)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < second.len() {
        let batch = tokio::time::timeout(Duration::from_secs(30), subscription.next(100))
            .await
            .expect("events within 30 s")
            .unwrap();
        subscription.commit(&batch).await.unwrap();
        got.extend(batch.into_iter().map(|d| d.payload));
    }
    assert_eq!(
        got, second,
        "the consumer starts after what it stored, and nothing committed is lost"
    );
    // The checkpoint follows the acknowledgements within a tenth of a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let at = store.checkpoint(&format!("relay:{topic}")).await.unwrap();
        if at == Some(20) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay stored its position: {at:?}, not 20"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(dir);
}

#[tokio::test]
async fn a_dead_lettered_event_keeps_its_origin_and_the_error_in_headers() {
    let (_broker, brokers) = servers::kafka();
    let topic = "poison.events";
    let (_dir, store, _stop) = relayed(&brokers, topic).await;
    store
        .commit(Commit {
            expected_head: 0,
            events: vec![contract::event("p-1", "k")],
            ..Commit::default()
        })
        .await
        .unwrap();
    let bus = KafkaBus::new(&KafkaSettings::new(&brokers)).unwrap();
    let mut subscription = bus
        .subscribe(topic, "poisoned", &Default::default())
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(30), subscription.next(10))
        .await
        .expect("an event")
        .unwrap();
    subscription
        .dead_letter(&batch[0], "forged: unexpected source")
        .await
        .expect("dead letter");

    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&dead_letter_topic(topic)]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("a dead letter within 30 s")
        .unwrap();
    assert_eq!(
        message.payload(),
        Some(batch[0].payload.as_slice()),
        "the event is kept byte for byte"
    );
    let headers = message.headers().expect("headers");
    let header = |key: &str| {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header("dlq.error").as_deref(),
        Some("forged: unexpected source")
    );
    assert_eq!(header("dlq.topic").as_deref(), Some(topic));
    assert_eq!(
        header("dlq.partition"),
        Some(batch[0].partition.to_string())
    );
    assert_eq!(header("dlq.offset"), Some(batch[0].offset.to_string()));
}

#[tokio::test]
async fn without_failures_each_event_is_delivered_once() {
    let (_broker, brokers) = servers::kafka();
    let topic = "once.events";
    let (_dir, store, _stop) = relayed(&brokers, topic).await;
    let bus = KafkaBus::new(&KafkaSettings::new(&brokers)).unwrap();
    let mut subscription = bus
        .subscribe(topic, "once", &Default::default())
        .await
        .unwrap();
    let producer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..5u64 {
                let events: Vec<Vec<u8>> = (0..10)
                    .map(|i| contract::event(&format!("once-{round}-{i}"), &format!("k{i}")))
                    .collect();
                let commit = Commit {
                    expected_head: round * 10,
                    events,
                    ..Commit::default()
                };
                store.commit(commit).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // The service consumer's rhythm: a batch, a pause, its commit, then the lag.
    let mut delivered = Vec::new();
    while let Ok(batch) = tokio::time::timeout(Duration::from_secs(3), subscription.next(100)).await
    {
        let batch = batch.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        subscription.commit(&batch).await.unwrap();
        delivered.extend(batch.into_iter().map(|d| (d.partition, d.offset)));
        subscription.lag().await.unwrap();
    }
    producer.await.unwrap();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "every event arrives");
    assert_eq!(delivered.len(), 50, "and only once: {delivered:?}");
}

#[tokio::test]
async fn a_consumer_at_the_end_of_every_partition_waits_without_blocking() {
    let (_broker, brokers) = servers::kafka();
    let topic = "idle.events";
    let (_dir, store, _stop) = relayed(&brokers, topic).await;
    store
        .commit(Commit {
            expected_head: 0,
            events: vec![contract::event("i-1", "k")],
            ..Commit::default()
        })
        .await
        .unwrap();
    let bus = KafkaBus::new(&KafkaSettings::new(&brokers)).unwrap();
    let mut first = bus
        .subscribe(topic, "idle", &Default::default())
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(30), first.next(10))
        .await
        .expect("the event within 30 s")
        .unwrap();
    let applied: std::collections::BTreeMap<i32, u64> =
        batch.iter().map(|d| (d.partition, d.offset)).collect();
    drop(first);
    let mut resumed = bus.subscribe(topic, "idle", &applied).await.unwrap();
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(Duration::from_secs(1), resumed.next(10)).await;
    assert!(waited.is_err(), "nothing more to read: {waited:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the wait gave control back on time: {:?}",
        started.elapsed()
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), resumed.lag())
            .await
            .expect("the lag within 10 s")
            .unwrap(),
        0
    );
}
