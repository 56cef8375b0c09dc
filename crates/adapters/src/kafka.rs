//! Kafka through rdkafka (bundled librdkafka): the relay that publishes a service's committed
//! events, the consumers (every partition assigned, resuming from positions stored with the
//! effects), the dead-letter topic and topic creation.
//!
//! Delivery is at least once. The relay stores its position in the service's own store only
//! after the broker acknowledged every event up to it (idempotent producer, `acks=all`), so a
//! crash republishes at most the unacknowledged tail. Consumers store each partition's position
//! in the same commit as the effects and resume from it; no broker group membership decides who
//! consumes (the lease of the service's writes does), so a failover never waits for the broker
//! to expire a dead member's session. The group's offsets are still committed, after the
//! effects, for monitoring tools.

use std::{
    collections::BTreeMap,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::FutureExt;
use libertum_store::{Delivery, EventBus, EventStore, Ownership, StoreError, Subscription, trace};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    types::RDKafkaErrorCode,
};
use tokio::sync::{mpsc, watch};

/// Metric names of the Kafka adapter.
pub const EVENTS_PRODUCED: &str = "libertum_kafka_events_produced_total";
pub const RELAY_BACKLOG: &str = "libertum_kafka_relay_backlog";
pub const DEAD_LETTERED: &str = "libertum_kafka_events_dead_lettered_total";

/// How the services reach Kafka.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Partitions of the topics created when missing.
    pub partitions: i32,
    /// Replication factor of the topics created when missing.
    pub replication: i32,
}

impl KafkaSettings {
    pub fn new(brokers: &str) -> Self {
        KafkaSettings {
            brokers: brokers.to_owned(),
            partitions: 3,
            replication: 1,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", "10000")
            .set("log_level", "4");
        config
    }

    fn producer(&self) -> Result<FutureProducer, StoreError> {
        self.config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(StoreError::backend)
    }
}

/// A client that only asks the cluster for its metadata, for readiness.
pub struct KafkaPing {
    client: Arc<rdkafka::producer::BaseProducer>,
}

impl KafkaPing {
    pub fn new(settings: &KafkaSettings) -> Result<Self, StoreError> {
        Ok(KafkaPing {
            client: Arc::new(settings.config().create().map_err(StoreError::backend)?),
        })
    }

    /// The number of brokers that answered, or why none did.
    pub async fn ping(&self) -> Result<usize, String> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            client
                .client()
                // Well within a front's 2 s check: a broker that does not answer in 1 s
                // makes the service degraded, and readiness must still answer in time.
                .fetch_metadata(None, Duration::from_secs(1))
                .map(|m| m.brokers().len())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Creates `topics` and their dead-letter topics when missing; existing ones are left alone.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[&str]) -> Result<(), StoreError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.config().create().map_err(StoreError::backend)?;
    let names: Vec<String> = topics
        .iter()
        .flat_map(|t| [t.to_string(), dead_letter_topic(t)])
        .collect();
    let new: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                settings.partitions,
                TopicReplication::Fixed(settings.replication),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new.iter(), &options)
        .await
        .map_err(StoreError::backend)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(StoreError::Backend(format!(
                    "could not create topic {name}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// The fields of a CloudEvent the relay needs to route it.
#[derive(serde::Deserialize)]
struct Route<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(default, borrow)]
    partitionkey: Option<&'a str>,
    #[serde(default, borrow)]
    traceparent: Option<&'a str>,
}

/// Publishes a service's committed events to its topic, in log order, keyed by partition key so
/// one asset's or token's events stay in one partition and in order.
#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn EventStore>,
    producer: FutureProducer,
    topic: String,
    backlog: Arc<AtomicU64>,
    /// On a replica, the relay sends only while this replica owns the writes.
    ownership: Option<Ownership>,
    /// The partition of the service whose log this relay publishes, for its metrics.
    partition: String,
    /// The name of its spans: `publish {topic}`.
    span_name: String,
}

const RELAY_BATCH: usize = 2_000;
/// Batches the relay sends ahead of the oldest one not yet acknowledged.
const RELAY_WINDOW: usize = 4;
/// How often the relay stores its checkpoint, at most.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A batch handed to the producer: its last position and one acknowledgement per record.
struct Sent {
    last: u64,
    acks: Vec<rdkafka::producer::DeliveryFuture>,
}

impl Relay {
    pub fn new(
        settings: &KafkaSettings,
        store: Arc<dyn EventStore>,
        topic: &str,
    ) -> Result<Self, StoreError> {
        metrics::counter!(EVENTS_PRODUCED, "topic" => topic.to_owned()).increment(0);
        Ok(Relay {
            store,
            producer: settings.producer()?,
            topic: topic.to_owned(),
            backlog: Arc::default(),
            ownership: None,
            partition: "0".into(),
            span_name: format!("publish {topic}"),
        })
    }

    /// Makes the relay send only while `ownership` says this replica owns the writes: it asks
    /// before every batch, so a paused former owner that wakes up after its lease ran out sends
    /// nothing more.
    pub fn owned_by(mut self, ownership: Option<Ownership>) -> Self {
        if let Some(ownership) = &ownership {
            self.partition = ownership.partition().to_string();
        }
        self.ownership = ownership;
        self
    }

    fn checkpoint(&self) -> String {
        format!("relay:{}", self.topic)
    }

    /// Events committed but not yet acknowledged by the broker, as last measured.
    pub fn backlog(&self) -> Arc<AtomicU64> {
        self.backlog.clone()
    }

    /// Publishes until `shutdown` turns true. Failures are retried with a growing pause.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(ownership) = &self.ownership
                && !ownership.is_owner()
            {
                // Stopped by the hand-over in a moment; meanwhile nothing is sent.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            let result = self.publish(&mut shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            if let Err(error) = result {
                if self.ownership.as_ref().is_some_and(|o| !o.is_owner()) {
                    tracing::info!(topic = %self.topic, "the relay stops: this replica no longer owns the writes");
                    continue;
                }
                tracing::error!(topic = %self.topic, %error, retry_in_ms = pause.as_millis() as u64, "relay failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {},
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// Sends and settles at once: the sender reads the next batch and hands it to the producer
    /// while the broker acknowledges the previous ones (at most [`RELAY_WINDOW`] in flight), and
    /// the settler stores the checkpoint past acknowledged batches only, so a restart re-sends,
    /// never skips. Either failing ends both, and `run` starts again from the checkpoint.
    /// On `shutdown` it stores the checkpoint past what is acknowledged so far and returns.
    async fn publish(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), StoreError> {
        let start = self
            .store
            .checkpoint(&self.checkpoint())
            .await?
            .unwrap_or(0);
        let acknowledged = AtomicU64::new(start);
        let (sent, in_flight) = mpsc::channel(RELAY_WINDOW);
        tokio::select! {
            r = self.send(start, sent, &acknowledged) => r,
            r = self.settle(start, in_flight, &acknowledged) => r,
            // The guard `wait_for` returns is dropped inside, before the write below awaits.
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
                let acked = acknowledged.load(Ordering::Relaxed);
                if acked > start {
                    self.store.save_checkpoint(&self.checkpoint(), acked).await?;
                }
                Ok(())
            }
        }
    }

    async fn send(
        &self,
        mut sent_up_to: u64,
        in_flight: mpsc::Sender<Sent>,
        acknowledged: &AtomicU64,
    ) -> Result<(), StoreError> {
        let mut head = self.store.watch_head();
        // What another replica appended is seen by asking the store, at start and every second.
        let mut current = self.store.head().await?;
        loop {
            current = current.max(*head.borrow_and_update());
            self.report_backlog(current, acknowledged.load(Ordering::Relaxed));
            if current <= sent_up_to {
                // Wakes on the next commit of this process's writer; the timeout keeps the
                // backlog gauge fresh and notices a closed store.
                if tokio::time::timeout(Duration::from_secs(1), head.changed())
                    .await
                    .is_err()
                {
                    current = self.store.head().await?;
                }
                continue;
            }
            if let Some(ownership) = &self.ownership
                && !ownership.is_owner()
            {
                return Err(StoreError::Backend(
                    "this replica no longer owns the writes; the relay stops sending".into(),
                ));
            }
            let events = self.store.read(sent_up_to, RELAY_BATCH).await?;
            let Some(&(last, _)) = events.last() else {
                continue;
            };
            let mut acks = Vec::with_capacity(events.len());
            for (at, bytes) in &events {
                let route: Route = serde_json::from_slice(bytes).map_err(|e| {
                    StoreError::Backend(format!("event at {at} is not a CloudEvent: {e}"))
                })?;
                // CloudEvents' Kafka binding, structured mode: the whole event is the value; the
                // content type travels as a header, and so does the trace, from this relay's
                // span (a child of the decision's, which the event carries).
                let mut headers = OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json"),
                });
                if let Some(decided) = route.traceparent.filter(|_| trace::enabled()) {
                    let span = tracing::info_span!("relay", otel.name = self.span_name.as_str(), topic = %self.topic, position = at);
                    trace::continue_from(&span, Some(decided));
                    if let Some(traceparent) = trace::traceparent(&span) {
                        headers = headers.insert(Header {
                            key: trace::TRACEPARENT,
                            value: Some(traceparent.as_str()),
                        });
                    }
                }
                let record = FutureRecord::to(&self.topic)
                    .payload(bytes.as_slice())
                    .key(route.partitionkey.unwrap_or(route.id))
                    .headers(headers);
                let ack = self
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| StoreError::backend(e))?;
                acks.push(ack);
            }
            in_flight
                .send(Sent { last, acks })
                .await
                .map_err(|_| StoreError::Backend("the relay's settler stopped".into()))?;
            sent_up_to = last;
        }
    }

    /// Waits for each batch's acknowledgements in order and stores the checkpoint past the last
    /// acknowledged one, at most every [`CHECKPOINT_EVERY`]: one write per batch would load the
    /// database as much as the services' own commits, and a checkpoint a little behind only
    /// means a few records re-sent after a restart, which consumers ignore.
    async fn settle(
        &self,
        start: u64,
        mut in_flight: mpsc::Receiver<Sent>,
        acknowledged: &AtomicU64,
    ) -> Result<(), StoreError> {
        let (mut saved, mut saved_at) = (start, Instant::now());
        loop {
            let acked = acknowledged.load(Ordering::Relaxed);
            let next = if acked > saved {
                let wait = CHECKPOINT_EVERY.saturating_sub(saved_at.elapsed());
                tokio::time::timeout(wait, in_flight.recv()).await.ok()
            } else {
                Some(in_flight.recv().await)
            };
            match next {
                Some(Some(Sent { last, acks })) => {
                    let count = acks.len() as u64;
                    for ack in futures::future::join_all(acks).await {
                        match ack {
                            Ok(Ok(_)) => {}
                            Ok(Err((e, _))) => return Err(StoreError::backend(e)),
                            Err(_) => {
                                return Err(StoreError::Backend("the producer was dropped".into()));
                            }
                        }
                    }
                    metrics::counter!(EVENTS_PRODUCED, "topic" => self.topic.clone())
                        .increment(count);
                    acknowledged.store(last, Ordering::Relaxed);
                }
                // The sender stopped; its error is what `publish` returns.
                Some(None) => return Ok(()),
                None => {}
            }
            let acked = acknowledged.load(Ordering::Relaxed);
            if acked > saved && saved_at.elapsed() >= CHECKPOINT_EVERY {
                self.store
                    .save_checkpoint(&self.checkpoint(), acked)
                    .await?;
                (saved, saved_at) = (acked, Instant::now());
                self.report_backlog(*self.store.watch_head().borrow(), acked);
            }
        }
    }

    fn report_backlog(&self, head: u64, position: u64) {
        let backlog = head.saturating_sub(position);
        self.backlog.store(backlog, Ordering::Relaxed);
        metrics::gauge!(RELAY_BACKLOG, "topic" => self.topic.clone(), "partition" => self.partition.clone()).set(backlog as f64);
    }
}

/// The bus on Kafka: every partition assigned, positions stored with the effects (and offsets
/// committed after them), a dead-letter topic.
pub struct KafkaBus {
    settings: KafkaSettings,
    producer: FutureProducer,
}

impl KafkaBus {
    pub fn new(settings: &KafkaSettings) -> Result<Self, StoreError> {
        Ok(KafkaBus {
            settings: settings.clone(),
            producer: settings.producer()?,
        })
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, StoreError> {
        let client: rdkafka::consumer::BaseConsumer = self
            .settings
            .config()
            .create()
            .map_err(StoreError::backend)?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(StoreError::backend)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if partitions.is_empty() {
                return Err(StoreError::Backend(format!(
                    "topic {topic} has no partitions the broker knows of"
                )));
            }
            Ok(partitions)
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        resume: &BTreeMap<i32, u64>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let consumer: StreamConsumer = self
            .settings
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // An idle consumer asks the broker ten times a second (a partitioned service runs
            // one per partition on its owners); an event arriving meanwhile is answered at once.
            .set("fetch.wait.max.ms", "100")
            // Small fetches: the first one after a backlog stays quick.
            .set("max.partition.fetch.bytes", "1048576")
            // At most 8 MiB fetched ahead per consumer (64 MiB by default): a partitioned
            // service's owner may run a consumer per partition it owns.
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.min.bytes", "1")
            .create()
            .map_err(StoreError::backend)?;
        let mut assignment = TopicPartitionList::new();
        for partition in self.partitions(topic).await? {
            let from = match resume.get(&partition) {
                Some(&at) => Offset::Offset(i64::try_from(at + 1).map_err(StoreError::backend)?),
                // Never applied anything here: the group's committed offset (an older version
                // kept only that), else the beginning.
                None => Offset::Stored,
            };
            assignment
                .add_partition_offset(topic, partition, from)
                .map_err(StoreError::backend)?;
        }
        consumer.assign(&assignment).map_err(StoreError::backend)?;
        metrics::counter!(DEAD_LETTERED, "topic" => topic.to_owned()).increment(0);
        Ok(Box::new(KafkaSubscription {
            consumer: Arc::new(consumer),
            producer: self.producer.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            lag: Arc::default(),
        }))
    }

    fn describe(&self) -> String {
        format!("kafka:{}", self.settings.brokers)
    }

    fn checkpoint_name(&self, base: &str, partition: i32) -> String {
        format!("{base}#{partition}")
    }
}

struct KafkaSubscription {
    consumer: Arc<StreamConsumer>,
    producer: FutureProducer,
    topic: String,
    group: String,
    lag: Arc<parking_lot::Mutex<Lag>>,
}

/// A subscription's lag as last measured.
#[derive(Default)]
struct Lag {
    events: u64,
    at: Option<Instant>,
    measuring: bool,
}

impl KafkaSubscription {
    /// librdkafka reports broker outages through the consumer but recovers from them itself,
    /// keeping the group membership: only a fatal error ends the subscription.
    fn transient(&self, e: KafkaError) -> Result<(), StoreError> {
        if let KafkaError::MessageConsumptionFatal(_) = e {
            return Err(StoreError::backend(e));
        }
        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "kafka consumer error; librdkafka retries");
        Ok(())
    }
}

fn delivery(message: &rdkafka::message::BorrowedMessage<'_>) -> Delivery {
    Delivery {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: u64::try_from(message.offset()).unwrap_or(0),
        payload: message.payload().unwrap_or_default().to_vec(),
        traceparent: message.headers().and_then(|headers| {
            (0..headers.count())
                .map(|i| headers.get(i))
                .find(|h| h.key == trace::TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        }),
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            match self.consumer.recv().await {
                Ok(message) => batch.push(delivery(&message)),
                Err(e) => {
                    self.transient(e)?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(delivery(&message)),
                Some(Err(e)) => {
                    self.transient(e)?;
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self, batch: &[Delivery]) -> Result<(), StoreError> {
        let mut next: BTreeMap<(&str, i32), u64> = BTreeMap::new();
        for d in batch {
            let entry = next.entry((d.topic.as_str(), d.partition)).or_default();
            *entry = (*entry).max(d.offset + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets
                .add_partition_offset(topic, partition, Offset::Offset(offset as i64))
                .map_err(StoreError::backend)?;
        }
        // Asynchronous: the effects are already stored, so a commit lost in a crash only means
        // those events are delivered again, and redeliveries change nothing. Waiting for the
        // broker here would add its round trip to every batch's delay.
        self.consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(StoreError::backend)
    }

    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<(), StoreError> {
        let topic = dead_letter_topic(&delivery.topic);
        let (partition, offset) = (delivery.partition.to_string(), delivery.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.error",
                value: Some(reason),
            })
            .insert(Header {
                key: "dlq.topic",
                value: Some(delivery.topic.as_str()),
            })
            .insert(Header {
                key: "dlq.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "dlq.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "dlq.group",
                value: Some(self.group.as_str()),
            });
        let record = FutureRecord::<(), _>::to(&topic)
            .payload(delivery.payload.as_slice())
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| StoreError::backend(e))?;
        metrics::counter!(DEAD_LETTERED, "topic" => delivery.topic.clone()).increment(1);
        Ok(())
    }

    /// The lag as last measured. Measuring asks the broker for each partition's high
    /// watermark, so it runs in the background at most once a second and never holds up the
    /// batch that asks.
    async fn lag(&mut self) -> Result<u64, StoreError> {
        let mut last = self.lag.lock();
        if last.measuring
            || last
                .at
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return Ok(last.events);
        }
        last.measuring = true;
        let known = last.events;
        drop(last);
        let (consumer, topic, lag) = (self.consumer.clone(), self.topic.clone(), self.lag.clone());
        tokio::task::spawn_blocking(move || {
            let measured = (|| -> Result<u64, KafkaError> {
                let positions = consumer.position()?;
                // A partition this process has read nothing from since it started has no
                // position yet: the group's committed offset says where it stands (asked for
                // only then: it is a round trip to the coordinator).
                let mut committed = None;
                let mut lag = 0u64;
                for p in positions.elements_for_topic(&topic) {
                    let (low, high) =
                        consumer.fetch_watermarks(&topic, p.partition(), Duration::from_secs(5))?;
                    let at = match p.offset() {
                        Offset::Offset(o) => o,
                        _ => {
                            if committed.is_none() {
                                committed = Some(consumer.committed(Duration::from_secs(5))?);
                            }
                            match committed
                                .as_ref()
                                .and_then(|c| c.find_partition(&topic, p.partition()))
                                .map(|c| c.offset())
                            {
                                Some(Offset::Offset(o)) => o,
                                _ => low,
                            }
                        }
                    };
                    lag += u64::try_from(high - at).unwrap_or(0);
                }
                Ok(lag)
            })();
            let mut last = lag.lock();
            last.measuring = false;
            last.at = Some(Instant::now());
            match measured {
                Ok(events) => last.events = events,
                Err(error) => tracing::warn!(%topic, %error, "consumer lag not measured"),
            }
        });
        Ok(known)
    }
}
