//! Production mode under faults: the three services as separate processes on Kafka (tansu),
//! MongoDB (nx-27017) and Redis, with a stream of transfers running while something breaks.
//!
//! Every test ends with the same proof: every transfer the client sent (retrying with the same
//! Idempotency-Key until it got an answer) is applied exactly once, in the tokens service and in
//! the ledger, and total supply equals the sum of balances in both.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Backends, Product};
use libertum_testkit::servers::{self, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUED: u128 = 1_000_000;

struct Stack {
    redis: Server,
    kafka: Server,
    _mongo: Server,
    backends: Backends,
}

fn stack(name: &str) -> Stack {
    let (redis, redis_url) = servers::redis_standin();
    let (kafka, kafka_brokers) = servers::kafka_standin();
    let (mongo, mongodb_uri) = servers::mongo_standin();
    Stack {
        redis,
        kafka,
        _mongo: mongo,
        backends: Backends {
            kafka_brokers,
            mongodb_uri,
            redis_url,
            database_prefix: name.into(),
        },
    }
}

type Fixture = common::Issued;

/// An approved, tokenized asset; Alice holds the whole issue, Bob nothing.
async fn fixture(p: &Product) -> Fixture {
    common::issued(p, "Faults", "FAULT1", ISSUED).await
}

/// Sends `n` transfers of one unit from Alice to Bob, four at a time, each with its own
/// Idempotency-Key, retrying each with the same key until it gets a 2xx answer. Returns the
/// count of acknowledged ones and the task sending them.
fn transfers(
    p: &Product,
    f: &Fixture,
    n: usize,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let url = p.url(&format!("/v1/tokens/{}/transfers", f.token));
    let done = Arc::new(AtomicUsize::new(0));
    let count = done.clone();
    let body = json!({"from": f.alice, "to": f.bob, "amount": "1"});
    let next = Arc::new(AtomicUsize::new(0));
    let http = p.http.clone();
    let task = tokio::spawn(async move {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (url, body, next, done, http) = (
                    url.clone(),
                    body.clone(),
                    next.clone(),
                    done.clone(),
                    http.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            return;
                        }
                        let key = format!("fault-transfer-{i}");
                        common::post_until_accepted(&http, &url, &key, &body).await;
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a transfer worker");
        }
    });
    (count, task)
}

/// The stack, the three services on it and the fixture; the directory holds their data.
async fn started(name: &str) -> (Stack, tempfile::TempDir, Product, Fixture) {
    let stack = stack(name);
    let dir = tempfile::tempdir().unwrap();
    let p = Product::processes(dir.path(), &stack.backends).await;
    let f = fixture(&p).await;
    (stack, dir, p, f)
}

async fn wait_for(done: &AtomicUsize, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transfers stalled at {}",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn amount(v: &Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an amount: {v}"))
}

fn balance_of(holders: &Value, investor: &str) -> u128 {
    holders["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .find(|h| h["investor_id"] == investor)
        .map_or(0, |h| amount(&h["balance"]))
}

/// Every one of the `n` transfers applied exactly once, in the tokens service and in the ledger,
/// and supply equal to the sum of balances in both.
async fn exactly_once(p: &Product, f: &Fixture, n: usize) {
    let n = n as u128;
    let tokens = p.get(&format!("/v1/tokens/{}/holders", f.token)).await.1;
    let sum: u128 = tokens["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| amount(&h["balance"]))
        .sum();
    assert_eq!(amount(&tokens["total_supply"]), ISSUED, "{tokens}");
    assert_eq!(
        sum, ISSUED,
        "tokens: total supply equals the sum of balances"
    );
    assert_eq!(
        balance_of(&tokens, &f.bob),
        n,
        "tokens: every transfer applied once, none lost, none twice"
    );
    assert_eq!(balance_of(&tokens, &f.alice), ISSUED - n);

    let cap_table = format!("/v1/ledger/tokens/{}/cap-table", f.token);
    let ledger = p
        .eventually(&cap_table, |c| {
            c["holders"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|x| x["investor_id"] == f.bob.as_str() && x["balance"] == n.to_string())
            })
        })
        .await;
    let sum: u128 = ledger["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| amount(&h["balance"]))
        .sum();
    assert_eq!(amount(&ledger["total_supply"]), ISSUED, "{ledger}");
    assert_eq!(
        sum, ISSUED,
        "ledger: total supply equals the sum of balances"
    );
    assert_eq!(balance_of(&ledger, &f.alice), ISSUED - n, "{ledger}");
    let reconciliation = p
        .eventually("/v1/ledger/reconciliation", |r| r["matched"] == true)
        .await;
    assert_eq!(reconciliation["matched"], true);
    assert_eq!(
        p.get("/v1/ledger/verification").await.1["valid"],
        true,
        "the chain is intact"
    );
    lag_settles_at_zero(p).await;
}

/// The `/metrics` page of the service behind `prefix`.
async fn metrics_text(p: &Product, prefix: &str) -> String {
    p.http
        .get(format!("{}/metrics", p.base(prefix)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every consumer's `libertum_consumer_lag_events`, from each service's `/metrics`.
async fn lags(p: &Product) -> Vec<(String, f64)> {
    let mut all = Vec::new();
    for prefix in ["/v1/assets", "/v1/tokens", "/v1/ledger"] {
        let text = metrics_text(p, prefix).await;
        all.extend(
            text.lines()
                .filter(|l| l.starts_with("libertum_consumer_lag_events{"))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                }),
        );
    }
    all
}

/// Once the traffic is over, every consumer reports the lag the broker shows now (none), not
/// the figure it measured during the burst.
async fn lag_settles_at_zero(p: &Product) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let lags = lags(p).await;
        // A restarted service's consumers start once it owns the writes, and report soon after.
        if lags.len() >= 4 && lags.iter().all(|(_, lag)| *lag == 0.0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "four consumers do not all report zero lag 15 s after the traffic stopped: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const N: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_stream_loses_and_duplicates_nothing() {
    let (_stack, _dir, mut p, f) = started("kill").await;
    let (done, stream) = transfers(&p, &f, N);

    wait_for(&done, N / 4).await;
    p.kill("/v1/tokens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.restart("/v1/tokens").await;

    wait_for(&done, N / 2).await;
    p.kill("/v1/ledger");
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.restart("/v1/ledger").await;

    stream.await.expect("every transfer acknowledged");
    exactly_once(&p, &f, N).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopped_and_restarted_while_transfers_continue() {
    let (mut stack, _dir, p, f) = started("broker").await;
    let (done, stream) = transfers(&p, &f, N);

    wait_for(&done, N / 4).await;
    stack.kafka.kill();
    // Transfers go on without the broker: they are committed to MongoDB; the relay waits.
    let during = done.load(Ordering::SeqCst);
    wait_for(&done, during + 20).await;
    // The service stays ready, and says Kafka is degraded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, state, ready) = readiness(&p, "tokens.kafka").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a broker outage is not a reason to stop serving"
        );
        if state == Some(json!("degraded")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never noticed the broker down: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.kafka.restart();

    stream.await.expect("every transfer acknowledged");
    exactly_once(&p, &f, N).await;
    p.stop().await;
}

/// The tokens service's `/readyz`: its status, the state of `check`, and the whole answer.
async fn readiness(p: &Product, check: &str) -> (StatusCode, Option<Value>, Value) {
    let r = p
        .http
        .get(format!("{}/readyz", p.base("/v1/tokens")))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ready: Value = r.json().await.unwrap();
    let state = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check)
        .map(|c| c["state"].clone());
    (status, state, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_reads_and_writes_go_on_and_readiness_says_degraded() {
    let (mut stack, _dir, p, f) = started("redis").await;
    let (done, stream) = transfers(&p, &f, N);

    wait_for(&done, N / 4).await;
    stack.redis.kill();
    let (status, state, ready) = readiness(&p, "tokens.redis").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "Redis down is not a reason to stop serving"
    );
    assert_eq!(state, Some(json!("degraded")), "{ready}");
    // Reads fall back to the service's state and see the latest writes.
    let before = done.load(Ordering::SeqCst);
    wait_for(&done, before + 20).await;
    let token = p.get(&format!("/v1/tokens/{}", f.token)).await;
    assert_eq!(token.0, StatusCode::OK, "{}", token.1);
    stack.redis.restart();

    stream.await.expect("every transfer acknowledged");
    exactly_once(&p, &f, N).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_changes_nothing() {
    let (stack, _dir, p, f) = started("duplicate").await;
    transfers(&p, &f, 50).1.await.expect("transfers");
    exactly_once(&p, &f, 50).await;
    let head = p.get("/v1/ledger/head").await.1;

    // How many events the ledger's consumer has taken so far: it must take every copy, and
    // record nothing new.
    let consumed = || consumed(&p, "/v1/ledger", "ledger", libertum_events::TOKENS_TOPIC);
    let before = consumed().await;
    // Every event of the tokens topic, delivered a second time by another producer.
    let copied = republish(&stack.backends.kafka_brokers, libertum_events::TOKENS_TOPIC).await;
    assert!(copied >= 50, "the transfers' events were copied: {copied}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while consumed().await < before + copied {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger never consumed the {copied} copies"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        p.get("/v1/ledger/head").await.1,
        head,
        "duplicates added no entry"
    );
    exactly_once(&p, &f, 50).await;
    p.stop().await;
}

/// Publishes every event of `topic` once more, in order, as a relay re-publishing its backlog
/// would; returns how many.
async fn republish(brokers: &str, topic: &str) -> u64 {
    use rdkafka::{
        ClientConfig, Message,
        consumer::{Consumer, StreamConsumer},
        producer::{FutureProducer, FutureRecord},
    };
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("republisher-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[topic]).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    // Read to the end first, then copy: the copies must not be copied again.
    let mut originals = Vec::new();
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), reader.recv()).await {
        originals.push((
            message.key().unwrap().to_vec(),
            message.payload().unwrap().to_vec(),
        ));
    }
    let mut copied = 0;
    for (key, payload) in &originals {
        let record = FutureRecord::to(topic).payload(payload).key(key);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("a copy sent");
        copied += 1;
    }
    copied
}

/// How many events of `topic` the service behind `prefix` has consumed, from its `/metrics`.
async fn consumed(p: &Product, prefix: &str, consumer: &str, topic: &str) -> u64 {
    metrics_text(p, prefix)
        .await
        .lines()
        .find(|l| {
            l.starts_with("libertum_events_consumed_total{")
                && l.contains(&format!(r#"consumer="{consumer}""#))
                && l.contains(topic)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// A relay that publishes its whole backlog again (both topics, every event since the first)
/// after the asset was suspended: the older `approved` and `tokenized` events do not bring the
/// asset back, the ledger records nothing twice, and every balance stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_backlog_leaves_every_state_where_it_was() {
    let (stack, _dir, p, f) = started("backlog").await;
    transfers(&p, &f, 20).1.await.expect("transfers");
    exactly_once(&p, &f, 20).await;
    let (status, body) = p
        .post(
            &format!("/v1/assets/{}/transitions", f.asset),
            json!({"action": "suspend", "reason": "title dispute"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let transfer = format!("/v1/tokens/{}/transfers", f.token);
    let one = json!({"from": f.alice, "to": f.bob, "amount": "1"});
    // The suspension reaches the tokens service through the assets topic.
    let check = format!("{transfer}/check");
    let deadline = tokio::time::Instant::now() + p.patience;
    loop {
        let (status, body) = p.post(&check, one.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["code"] == "asset_suspended" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the suspension never reached the tokens service: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every consumer has caught up (the ledger has recorded the suspension too): no lag, and
    // the ledger's head stays put for a second.
    lag_settles_at_zero(&p).await;
    let mut head = p.get("/v1/ledger/head").await.1;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = p.get("/v1/ledger/head").await.1;
        if now == head {
            break;
        }
        head = now;
    }
    let brokers = &stack.backends.kafka_brokers;
    let topics = libertum_events::Topics::default();
    let before = (
        consumed(&p, "/v1/tokens", "tokens", &topics.assets).await,
        consumed(&p, "/v1/ledger", "ledger", &topics.tokens).await,
    );
    let copies = (
        republish(brokers, &topics.assets).await,
        republish(brokers, &topics.tokens).await,
    );
    assert!(
        copies.0 >= 4 && copies.1 >= 20,
        "the backlog was copied: {copies:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = (
            consumed(&p, "/v1/tokens", "tokens", &topics.assets).await,
            consumed(&p, "/v1/ledger", "ledger", &topics.tokens).await,
        );
        if now.0 >= before.0 + copies.0 && now.1 >= before.1 + copies.1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog was not consumed: {now:?} of {before:?} + {copies:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = p.post(&transfer, one).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("asset_suspended")),
        "the re-published approval did not reactivate the asset: {body}"
    );
    assert_eq!(
        p.get("/v1/ledger/head").await.1,
        head,
        "the ledger recorded nothing twice"
    );
    exactly_once(&p, &f, 20).await;
    p.stop().await;
}

/// API10:2023 Unsafe Consumption of APIs, for events: whatever reaches the tokens topic that is
/// not a well-formed event of the tokens service (another source, malformed bytes, a subject that
/// is not its data's key) goes to the dead-letter topic with its origin, and never into
/// balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api10_forged_and_malformed_events_go_to_the_dead_letter_topic_never_into_balances() {
    use rdkafka::{
        ClientConfig, Message,
        consumer::{Consumer, StreamConsumer},
        message::Headers,
        producer::{FutureProducer, FutureRecord},
    };
    let (stack, _dir, p, f) = started("forged").await;
    transfers(&p, &f, 10).1.await.expect("transfers");
    exactly_once(&p, &f, 10).await;
    // Every event of the story recorded (the asset's `tokenized` comes last, through the assets
    // service): the ledger's head no longer moves.
    let mut head = p.get("/v1/ledger/head").await.1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = p.get("/v1/ledger/head").await.1;
        if now == head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger's head still moves after 30 s"
        );
        head = now;
    }
    let brokers = &stack.backends.kafka_brokers;

    // A genuine event to forge from.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "forger")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[libertum_events::TOKENS_TOPIC]).unwrap();
    let genuine: Value = loop {
        let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("an event on the tokens topic")
            .unwrap();
        let event: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        if event["type"] == "libertum.token.transferred.v1" {
            break event;
        }
    };
    let mut other_source = genuine.clone();
    other_source["id"] = json!("forged-1");
    other_source["source"] = json!("/evil");
    let mut other_subject = genuine.clone();
    other_subject["id"] = json!("forged-2");
    other_subject["subject"] = json!("tok_someone_else");
    let forgeries: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&other_source).unwrap(),
        serde_json::to_vec(&other_subject).unwrap(),
        b"{not json".to_vec(),
    ];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for payload in &forgeries {
        producer
            .send(
                FutureRecord::to(libertum_events::TOKENS_TOPIC)
                    .payload(payload)
                    .key(genuine["partitionkey"].as_str().unwrap()),
                Duration::from_secs(10),
            )
            .await
            .expect("a forgery sent");
    }

    // The ledger sets each aside on the dead-letter topic, with its origin and the reason.
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dlq-auditor")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{}.dlq", libertum_events::TOKENS_TOPIC)])
        .unwrap();
    let mut set_aside = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while set_aside.len() < forgeries.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} forgeries reached the ledger's dead letters",
            set_aside.len(),
            forgeries.len()
        );
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), dlq.recv()).await else {
            continue;
        };
        let header = |name: &str| {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if header("dlq.group").is_some_and(|g| g.starts_with("ledger")) {
            assert_eq!(
                header("dlq.topic").as_deref(),
                Some(libertum_events::TOKENS_TOPIC)
            );
            assert!(header("dlq.error").is_some_and(|e| !e.is_empty()));
            set_aside.push(message.payload().unwrap().to_vec());
        }
    }
    set_aside.sort();
    let mut expected = forgeries.clone();
    expected.sort();
    assert_eq!(set_aside, expected, "byte for byte, each once");
    let now = p.get("/v1/ledger/head").await.1;
    if now != head {
        let next = head["seq"].as_u64().unwrap() + 1;
        let entry = p.get(&format!("/v1/ledger/entries/{next}")).await.1;
        panic!(
            "no forgery became a ledger entry: the head moved from {head} to {now}; entry {next}: {entry}"
        );
    }
    exactly_once(&p, &f, 10).await;
    p.stop().await;
}
