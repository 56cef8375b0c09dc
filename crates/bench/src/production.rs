//! Production-mode figures, against the local stack (tansu, nx-27017, redis-server started on
//! free loopback ports):
//!
//! 1. the relay draining a backlog of 100,000 committed events to Kafka, events per second;
//! 2. a consumer group reading them back, events per second;
//! 3. the broker alone, measured first: the same 100,000 payloads from a bare rdkafka producer
//!    (acks=all, idempotent), to tell the relay's cost from the test server's;
//! 4. a steady stream of HTTP transfers (2,000/s for `BENCH_PRODUCTION_SECONDS`, default 60)
//!    through the product on MongoDB, Kafka and Redis, and the time from each response to its
//!    ledger entry, p50/p99.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use libertum_adapters::{KafkaBus, KafkaSettings, Relay, ensure_topics};
use libertum_store::{Commit, EventBus, EventStore, RedbStore};
use libertum_testkit::servers;
use tokio::sync::watch;

const BACKLOG: usize = 100_000;

fn event(i: usize) -> Vec<u8> {
    format!(
        r#"{{"specversion":"1.0","id":"bench-{i}","source":"/bench","type":"libertum.bench.v1","subject":"tok_{k}","partitionkey":"tok_{k}","sequence":"{i}","time":"2026-11-25T00:00:00Z","datacontenttype":"application/json","data":{{"from":"inv_a","to":"inv_b","amount":"1"}}}}"#,
        k = i % 16
    )
    .into_bytes()
}

pub async fn run(seconds: u64, rate: u64, backlog: bool) -> anyhow::Result<()> {
    let (_mongo, mongodb_uri) = servers::mongo();
    let (_redis, redis_url) = servers::redis();
    mongo_alone(&mongodb_uri).await?;
    if backlog {
        backlogs().await?;
    }
    // Steady transfers through the product on the production backends, on a fresh broker: the
    // backlog reads can leave the test broker unresponsive.
    let (_kafka, brokers) = servers::kafka();
    broker_round_trip(&brokers, rate.min(1_000)).await?;
    steady(&brokers, &mongodb_uri, &redis_url, seconds, rate).await
}

/// The broker alone on the path a transfer takes to the ledger: a bare idempotent `acks=all`
/// producer sends 2,000 records at `rate`/s and a bare consumer, already reading, receives them;
/// the time from each send to its receipt, p50/p99.
async fn broker_round_trip(brokers: &str, rate: u64) -> anyhow::Result<()> {
    use rdkafka::{
        Message,
        consumer::{Consumer, StreamConsumer},
        producer::{FutureProducer, FutureRecord},
    };
    const RECORDS: usize = 2_000;
    let kafka = KafkaSettings::new(brokers);
    ensure_topics(&kafka, &["bench.round-trip"]).await?;
    let consumer: StreamConsumer = bare_consumer(brokers, "bench-round-trip")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&["bench.round-trip"])?;
    let producer: FutureProducer = bare_producer(brokers).create()?;
    let payload = event(0);
    let send = |i: usize| {
        let key = format!("tok_{}", i % 16);
        let producer = producer.clone();
        let payload = payload.clone();
        async move {
            producer
                .send(
                    FutureRecord::to("bench.round-trip")
                        .payload(&payload)
                        .key(&key)
                        .partition((i % 3) as i32),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))
        }
    };
    // Warm up until the consumer has its partitions and reads live.
    let deadline = Instant::now() + Duration::from_secs(60);
    'warm: loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bare consumer never started reading"
        );
        for p in 0..3 {
            send(p).await?;
        }
        let mut seen = 0;
        while let Ok(message) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
        {
            message?;
            seen += 1;
            if seen == 3 {
                break 'warm;
            }
        }
    }
    let sent = Arc::new(parking_lot::Mutex::new(vec![None::<Instant>; RECORDS]));
    let reader = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut delays = Vec::with_capacity(RECORDS);
            while delays.len() < RECORDS {
                let message =
                    match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                        Ok(Ok(message)) => message,
                        _ => break,
                    };
                let Some(i) = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.strip_prefix("rtt-"))
                    .and_then(|k| k.parse::<usize>().ok())
                else {
                    continue;
                };
                if let Some(at) = sent.lock()[i] {
                    delays.push(at.elapsed().as_secs_f64() * 1e3);
                }
            }
            delays
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    let mut acks = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        tick.tick().await;
        let key = format!("rtt-{i}");
        sent.lock()[i] = Some(Instant::now());
        acks.push(
            producer
                .send_result(
                    FutureRecord::to("bench.round-trip")
                        .payload(&payload)
                        .key(&key),
                )
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?,
        );
    }
    for ack in futures::future::join_all(acks).await {
        ack?.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    }
    let mut delays = reader.await?;
    anyhow::ensure!(
        delays.len() == RECORDS,
        "the bare consumer received {} of {RECORDS} records",
        delays.len()
    );
    delays.sort_by(f64::total_cmp);
    println!(
        "the broker alone, bare producer to bare consumer at {rate}/s: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        delays[RECORDS / 2],
        delays[RECORDS * 99 / 100],
        delays[RECORDS - 1]
    );
    Ok(())
}

/// The MongoDB-wire server alone: a bare `mongodb` client committing, one after another,
/// transactions shaped like the services' commits (read the head, insert the events, with the
/// event store's documents and unique indexes), for 5 s each with 1, 20, 200 and 2,000 events
/// per transaction; then two such writers at once on two databases, as the tokens service and
/// the ledger are.
async fn mongo_alone(uri: &str) -> anyhow::Result<()> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let five = Duration::from_secs(5);
    for per_commit in [1, 20, 200, 2_000] {
        let commits = mongo_writer(
            &client,
            &format!("bench_alone_{per_commit}"),
            per_commit,
            five,
        )
        .await?;
        println!(
            "the MongoDB-wire server alone, {per_commit:>5} event(s) per transaction: {:>6.0} commits/s {:>7.0} events/s",
            commits as f64 / 5.0,
            (commits * per_commit) as f64 / 5.0
        );
    }
    let (a, b) = tokio::try_join!(
        mongo_writer(&client, "bench_alone_a", 200, five),
        mongo_writer(&client, "bench_alone_b", 200, five),
    )?;
    println!(
        "the MongoDB-wire server alone, two writers at once, 200 events per transaction: {:>7.0} events/s in all",
        ((a + b) * 200) as f64 / 5.0
    );
    Ok(())
}

/// Commits `per_commit` events per transaction into database `name` for `duration`; returns
/// how many transactions committed.
async fn mongo_writer(
    client: &mongodb::Client,
    name: &str,
    per_commit: u64,
    duration: Duration,
) -> anyhow::Result<u64> {
    use mongodb::bson::{Bson, Document, doc};
    let events = client.database(name).collection::<Document>("events");
    // The documents and indexes of the services' event store (see `adapters::mongo`).
    for key in ["seq", "event_id"] {
        let unique = mongodb::options::IndexOptions::builder()
            .unique(true)
            .build();
        events
            .create_index(
                mongodb::IndexModel::builder()
                    .keys(doc! {key: 1})
                    .options(unique)
                    .build(),
            )
            .await?;
    }
    // A body the size of a ledger entry's event (about 1 KiB, as the steady phase prints).
    let body = format!("{:<1024}", String::from_utf8(event(0))?);
    let (mut seq, mut commits) = (0i64, 0u64);
    let started = Instant::now();
    while started.elapsed() < duration {
        let mut session = client.start_session().await?;
        session.start_transaction().await?;
        let head = events
            .find_one(doc! {})
            .sort(doc! {"seq": -1})
            .session(&mut session)
            .await?;
        let head = head.and_then(|d| match d.get("seq") {
            Some(Bson::Int64(n)) => Some(*n),
            Some(Bson::Int32(n)) => Some(i64::from(*n)),
            _ => None,
        });
        anyhow::ensure!(
            head.unwrap_or(0) == seq,
            "the head moved under the benchmark"
        );
        let docs: Vec<Document> = (0..per_commit)
            .map(|_| {
                seq += 1;
                doc! {
                    "_id": seq,
                    "seq": seq,
                    "event_id": format!("{name}-{seq}"),
                    "type": "libertum.ledger.entry_recorded.v1",
                    "partitionkey": "tok_1",
                    "body": body.as_str(),
                }
            })
            .collect();
        events.insert_many(docs).session(&mut session).await?;
        session.commit_transaction().await?;
        commits += 1;
    }
    Ok(commits)
}

/// The relay and a consumer group on backlogs of 100,000 events, each after the broker alone.
async fn backlogs() -> anyhow::Result<()> {
    let (_kafka, brokers) = servers::kafka();
    let kafka = KafkaSettings::new(&brokers);

    // 1. The relay drains a backlog. The backlog sits in the embedded store so that the figure is
    // the relay's and the broker's, not the MongoDB-wire test server's.
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(RedbStore::open(dir.path(), "backlog")?);
    for chunk in 0..BACKLOG / 1_000 {
        let events = (chunk * 1_000..(chunk + 1) * 1_000).map(event).collect();
        store
            .commit(Commit {
                expected_head: (chunk * 1_000) as u64,
                events,
                ..Commit::default()
            })
            .await?;
    }
    ensure_topics(&kafka, &["bench.relay", "bench.alone"]).await?;
    // The broker alone first: the ceiling the relay works under.
    let alone = producer_alone(&brokers, false).await?;
    println!(
        "the broker alone (bare idempotent producer): {:>8.0} events/s  ({alone:.2} s)",
        BACKLOG as f64 / alone
    );
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    tokio::spawn(Relay::new(&kafka, store.clone(), "bench.relay")?.run(stopped));
    while store.checkpoint("relay:bench.relay").await?.unwrap_or(0) < BACKLOG as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    println!(
        "relay drains a backlog of {BACKLOG} events:     {:>8.0} events/s  ({relay:.2} s)",
        BACKLOG as f64 / relay
    );
    // The broker alone again, on the topics as full as the relay found them: the ceiling is
    // the mean of the two.
    let after = producer_alone(&brokers, false).await?;
    println!(
        "the broker alone again:                      {:>8.0} events/s  ({after:.2} s)",
        BACKLOG as f64 / after
    );
    let ceiling = BACKLOG as f64 / ((alone + after) / 2.0);
    println!(
        "  relay / broker alone (mean of both):       {:>8.2}  (target >= 0.9)",
        BACKLOG as f64 / relay / ceiling
    );
    // What the relay sends that the bare producer does not: a content-type header per record.
    let headed = producer_alone(&brokers, true).await?;
    println!(
        "the broker alone, with the relay's header:   {:>8.0} events/s  ({headed:.2} s)",
        BACKLOG as f64 / headed
    );
    println!(
        "  relay / broker alone with the header:      {:>8.2}",
        headed / relay
    );

    // 2. A consumer group reads them back.
    let bus = KafkaBus::new(&kafka)?;
    let mut subscription = bus
        .subscribe("bench.relay", "bench-reader", &Default::default())
        .await?;
    let started = Instant::now();
    let mut read = 0;
    while read < BACKLOG {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next(10_000)).await {
            Ok(batch) => {
                let batch = batch?;
                read += batch.len();
                subscription.commit(&batch).await?;
            }
            Err(_) => break,
        }
    }
    let consume = started.elapsed().as_secs_f64();
    if read < BACKLOG {
        println!(
            "consumer group reads them back:              STALLED after {read} of {BACKLOG} events (30 s without one)"
        );
    } else {
        println!(
            "consumer group reads them back:              {:>8.0} events/s  ({consume:.2} s)",
            BACKLOG as f64 / consume
        );
    }

    // The broker alone again: a bare consumer reads the bare producer's 100,000 events.
    match consumer_alone(&brokers).await? {
        Ok(secs) => println!(
            "the broker alone (bare consumer):            {:>8.0} events/s  ({secs:.2} s)",
            BACKLOG as f64 / secs
        ),
        Err(read) => println!(
            "the broker alone (bare consumer):            STALLED after {read} of {BACKLOG} events (30 s without one)"
        ),
    }
    Ok(())
}

/// A bare rdkafka producer as the relay's: idempotent, `acks=all`, 2 ms linger.
fn bare_producer(brokers: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2");
    config
}

/// A bare rdkafka consumer in `group`, from the earliest offset, committing nothing.
fn bare_consumer(brokers: &str, group: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    config
}

/// Seconds to read `bench.alone` whole with a bare rdkafka consumer, or how far it got.
async fn consumer_alone(brokers: &str) -> anyhow::Result<Result<f64, usize>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = bare_consumer(brokers, "bench-alone-reader").create()?;
    consumer.subscribe(&["bench.alone"])?;
    let started = Instant::now();
    let mut read = 0;
    while read < BACKLOG {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(message) => {
                message?;
                read += 1;
            }
            Err(_) => return Ok(Err(read)),
        }
    }
    Ok(Ok(started.elapsed().as_secs_f64()))
}

/// Seconds for a bare producer to send `BACKLOG` records to `bench.alone`; `header` adds the
/// one header the relay puts on every record (its content type).
async fn producer_alone(brokers: &str, header: bool) -> anyhow::Result<f64> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = bare_producer(brokers).create()?;
    let payloads: Vec<Vec<u8>> = (0..BACKLOG).map(event).collect();
    let started = Instant::now();
    for chunk in payloads.chunks(2_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (i, p) in chunk.iter().enumerate() {
            let key = format!("tok_{}", i % 16);
            let mut record = FutureRecord::to("bench.alone").payload(p).key(&key);
            if header {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json"),
                }));
            }
            acks.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("{e}"))?,
            );
        }
        for ack in futures::future::join_all(acks).await {
            ack?.map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn steady(
    brokers: &str,
    mongodb_uri: &str,
    redis_url: &str,
    seconds: u64,
    rate: u64,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut settings = libertum_platform::config::Settings {
        log_filter: "error".into(),
        ..libertum_platform::config::Settings::for_test(dir.path())
    };
    settings.backends.kafka_brokers = Some(brokers.to_owned());
    settings.backends.mongodb_uri = Some(mongodb_uri.to_owned());
    settings.backends.redis_url = Some(redis_url.to_owned());
    settings.backends.mongodb_database_prefix = "bench".into();
    settings.backends.mongodb_write_concern = "majority".into();
    settings.backends.mongodb_read_concern = "majority".into();
    settings.backends.kafka_partitions = 3;
    settings.backends.kafka_replication = 1;
    settings.backends.cache_ttl_seconds = 300;
    let app = libertum::Application::build(settings).await?;
    let base = format!("http://{}", app.addr());
    let tokens = app.tokens.engine().store().clone();
    let ledger = app.ledger.engine().store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let fixture = crate::load::fixture(&base, 20).await?;
    // Wait until the ledger holds every event so far: from here on, the ledger's position
    // `offset + k` is the tokens service's event `k`.
    let deadline = Instant::now() + Duration::from_secs(60);
    let offset = loop {
        let (t, l) = (tokens.head().await?, ledger.head().await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if l >= t && ledger.head().await? == l && tokens.head().await? == t {
            break l - t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ledger did not catch up with the fixture"
        );
    };

    // The ledger's head over time, from its commits.
    let mut head = ledger.watch_head();
    let entered = Arc::new(parking_lot::Mutex::new(Vec::<(u64, Instant)>::new()));
    let recorder = {
        let entered = entered.clone();
        tokio::spawn(async move {
            while head.changed().await.is_ok() {
                let at = *head.borrow_and_update();
                entered.lock().push((at, Instant::now()));
            }
        })
    };

    // Where the stream is, every 5 s: committed by tokens, acknowledged by the broker, recorded
    // by the ledger. It tells which stage falls behind.
    let monitor = {
        let (tokens, ledger) = (tokens.clone(), ledger.clone());
        let relay = format!("relay:{}", libertum_events::TOKENS_TOPIC);
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let (t, r, l) = (
                    tokens.head().await.unwrap_or(0),
                    tokens.checkpoint(&relay).await.ok().flatten().unwrap_or(0),
                    ledger.head().await.unwrap_or(0),
                );
                println!(
                    "  at {:>3.0} s: tokens committed {t}, relayed {r}, ledger recorded {}",
                    started.elapsed().as_secs_f64(),
                    l.saturating_sub(offset)
                );
            }
        })
    };

    let http = libertum_testkit::client();
    let answered = Arc::new(parking_lot::Mutex::new(Vec::<(u64, Instant)>::new()));
    let total = seconds * rate;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = rate / 100;
    let mut sent = 0u64;
    let mut inflight = Vec::new();
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick {
            let (a, b) = (
                sent as usize % 20,
                (sent as usize + 1 + sent as usize / 20) % 20,
            );
            let b = if a == b { (b + 1) % 20 } else { b };
            let body = serde_json::json!({"from": fixture.investors[a], "to": fixture.investors[b], "amount": "1"});
            let (http, url, tokens, answered) = (
                http.clone(),
                format!("{base}/v1/tokens/{}/transfers", fixture.token_id),
                tokens.clone(),
                answered.clone(),
            );
            let key = format!("steady-{sent}");
            inflight.push(tokio::spawn(async move {
                let r = http
                    .post(url)
                    .header("idempotency-key", key)
                    .json(&body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success())
                    && let Ok(position) = tokens.head().await
                {
                    answered.lock().push((position, Instant::now()));
                }
            }));
            sent += 1;
        }
    }
    for task in inflight {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the ledger finish, then match each answer with the first ledger commit covering it.
    let last = tokens.head().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.head().await? < offset + last {
        anyhow::ensure!(Instant::now() < deadline, "the ledger did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    recorder.abort();
    monitor.abort();
    let entered = entered.lock().clone();
    let answered = answered.lock().clone();
    let mut delays: Vec<f64> = answered
        .iter()
        .filter_map(|(position, at)| {
            let i = entered.partition_point(|(h, _)| *h < offset + position);
            entered
                .get(i)
                .map(|(_, t)| t.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p) as usize];
    anyhow::ensure!(!delays.is_empty(), "no transfer was answered");
    println!(
        "steady HTTP transfers on MongoDB+Kafka+Redis: {:>7.0} /s for {elapsed:.0} s ({} ok of {total})",
        answered.len() as f64 / elapsed,
        answered.len()
    );
    println!(
        "  response to ledger entry: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        pct(0.50),
        pct(0.99),
        delays[delays.len() - 1]
    );
    for (service, store) in [("tokens", &tokens), ("ledger", &ledger)] {
        let sample = store
            .read(store.head().await?.saturating_sub(100), 100)
            .await?;
        println!(
            "  {service} events are {} bytes on average",
            sample.iter().map(|(_, b)| b.len()).sum::<usize>() / sample.len().max(1)
        );
    }
    // How long the services' commits took on the MongoDB-wire server, from their metrics.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    for service in ["tokens", "ledger"] {
        let value = |suffix: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "libertum_store_commit_duration_seconds_{suffix}{{"
                    )) && l.contains(&format!("service=\"{service}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (sum, count) = (value("sum"), value("count"));
        if count > 0.0 {
            println!(
                "  {service} commits on the MongoDB-wire server: {count:.0}, {:.1} ms each on average",
                sum / count * 1e3
            );
        }
    }
    let _ = stop.send(());
    let _ = served.await;
    Ok(())
}
