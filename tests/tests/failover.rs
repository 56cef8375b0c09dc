//! Replicas and failover: three replicas of tokens and two each of assets and ledger, as
//! separate processes behind one HAProxy front per service, on Kafka (tansu), MongoDB
//! (nx-27017) and Redis. The tests of this file share MongoDB and Redis (one cluster at a time,
//! each with its own databases); each cluster has a broker of its own, so that what one test
//! does to its broker (stopping it, loading its SQLite file) cannot reach the next test.
//!
//! Each test runs a stream of 2,000 transfers over 30 tokens from 8 parallel clients through
//! the fronts, breaks something in the middle of it, and then proves: every acknowledged
//! transfer applied exactly once; supply equal to the sum of balances, in tokens and in the
//! ledger, token by token; the ledger's chain verifies and reconciles with tokens; and an
//! independent Kafka reader sees each subject's events in order (a repeat of the tail after a
//! failover is allowed, a gap or a step back is not).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    process::{Child, Command},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Backends, free_port, service_command};
use libertum_testkit::servers::{self, Server};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TOKENS: usize = 30;
const TRANSFERS: usize = 2_000;
const CLIENTS: usize = 8;
const ISSUED: u128 = 1_000_000;
/// Partitions of the assets and tokens services with MongoDB.
const PARTITIONS: usize = libertum_store::partition::PARTITIONS;

/// The servers every test of this file uses; killed when the test binary exits.
struct Stack {
    _redis: Server,
    mongo: Server,
    redis_url: String,
    mongodb_uri: String,
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let (redis, redis_url) = servers::redis_standin();
        let (mongo, mongodb_uri) = servers::mongo_standin();
        for server in [&redis, &mongo] {
            server.die_with_this_process();
        }
        Stack {
            _redis: redis,
            mongo,
            redis_url,
            mongodb_uri,
        }
    })
}

/// One cluster runs at a time: the machine's cores are shared.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Replica {
    service: &'static str,
    name: String,
    port: u16,
    command: Command,
    child: Option<Child>,
}

impl Replica {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the replica runs").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
        if signal == "STOP" {
            // The signal is queued when kill returns; the test goes on once every thread of
            // the replica has stopped, as /proc says.
            let stopped = || {
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    return false;
                };
                tasks.flatten().all(|task| {
                    let stat =
                        std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                    let state = stat
                        .rsplit(')')
                        .next()
                        .and_then(|s| s.split_whitespace().next());
                    state == Some("T")
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !stopped() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} has not stopped 10 s after SIGSTOP",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct Cluster {
    name: String,
    replicas: Vec<Replica>,
    /// The fronts' ports: assets, tokens, ledger.
    fronts: [u16; 3],
    haproxy: Child,
    /// This cluster's Kafka broker, restarted if it stops serving (see `servers::Supervised`).
    kafka: servers::Supervised,
    kafka_brokers: String,
    http: Client,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.kafka.restarts() > 0 {
            eprintln!(
                "{}: the Kafka broker was restarted {} times",
                self.name,
                self.kafka.restarts()
            );
        }
        if std::thread::panicking() {
            // What the broker said last, and whether it still runs: a failed check after the
            // broker died or hung reads very differently. Its whole log outlives the test.
            let kept = std::env::temp_dir().join(format!("{}-kafka.log", self.name));
            let (state, tail) = self.kafka.with(|kafka| {
                let _ = std::fs::copy(kafka.log_path(), &kept);
                let state = if kafka.running() { "running" } else { "exited" };
                (state, kafka.log_tail())
            });
            eprintln!(
                "{}: the Kafka broker ({state}, restarted {} times; its log kept in {}) said last:\n{tail}",
                self.name,
                self.kafka.restarts(),
                kept.display(),
            );
        }
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
    }
}

fn haproxy() -> String {
    let found = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    found
        .expect(
            "haproxy is not installed: run scripts/stack install, which scripts/test runs first",
        )
        .to_owned()
}

impl common::Api for Cluster {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Cluster::post(self, path, body).await
    }
}

impl Cluster {
    /// Starts 2 assets, 3 tokens and 2 ledger replicas (their own databases and topics under
    /// `name`) behind one front per service, and waits until every one is ready.
    async fn start(name: &str) -> Cluster {
        let stack = stack();
        let dir = tempfile::tempdir().unwrap();
        let (kafka, kafka_brokers) = servers::kafka_standin();
        kafka.die_with_this_process();
        let kafka = servers::Supervised::new(kafka, "UnableToSend");
        let backends = Backends {
            kafka_brokers: kafka_brokers.clone(),
            mongodb_uri: stack.mongodb_uri.clone(),
            redis_url: stack.redis_url.clone(),
            database_prefix: name.to_owned(),
        };
        let fronts = [free_port(), free_port(), free_port()];
        let tokens_url = format!("http://127.0.0.1:{}", fronts[1]);
        let mut replicas = Vec::new();
        for (service, count) in [("assets", 2), ("tokens", 3), ("ledger", 2)] {
            for i in 1..=count {
                let port = free_port();
                let replica = format!("{service}-{i}");
                let mut command = service_command(
                    service,
                    port,
                    &dir.path().join(&replica),
                    &backends,
                    &tokens_url,
                );
                command
                    .env("LIBERTUM_KAFKA_ASSETS_TOPIC", format!("{name}.assets"))
                    .env("LIBERTUM_KAFKA_TOKENS_TOPIC", format!("{name}.tokens"));
                replicas.push(Replica {
                    service,
                    name: replica,
                    port,
                    command,
                    child: None,
                });
            }
        }
        let config = front_config(&replicas, fronts);
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let haproxy = Command::new(haproxy())
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            // It says each replica going down and up: expected here.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let mut cluster = Cluster {
            name: name.to_owned(),
            replicas,
            fronts,
            haproxy,
            kafka,
            kafka_brokers,
            http: libertum_testkit::client(),
            _dir: dir,
        };
        for i in 0..cluster.replicas.len() {
            cluster.replicas[i].child = Some(cluster.replicas[i].command.spawn().unwrap());
        }
        for i in 0..cluster.replicas.len() {
            cluster.wait_ready(i).await;
        }
        for front in fronts {
            cluster
                .wait_until(&format!("http://127.0.0.1:{front}/readyz"))
                .await;
        }
        cluster
    }

    async fn wait_until(&self, url: &str) {
        wait_ready_at(&self.http, url, || None).await;
    }

    async fn wait_ready(&mut self, i: usize) {
        let url = format!("{}/readyz", self.replicas[i].base());
        let http = self.http.clone();
        let replica = &mut self.replicas[i];
        wait_ready_at(&http, &url, || {
            match replica.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => {
                    Some(format!("{} exited at start: {status}", replica.name))
                }
                _ => None,
            }
        })
        .await;
    }

    /// The URL of `path` at its service's front.
    fn url(&self, path: &str) -> String {
        let front = if path.starts_with("/v1/assets") {
            self.fronts[0]
        } else if path.starts_with("/v1/tokens") {
            self.fronts[1]
        } else {
            self.fronts[2]
        };
        format!("http://127.0.0.1:{front}{path}")
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("sent");
        (r.status(), json_or_text(r).await)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("sent");
        (r.status(), json_or_text(r).await)
    }

    /// The replica of `service` that owns the most of its partitions, once every partition
    /// is owned, from each replica's metrics.
    async fn owner(&self, service: &str) -> usize {
        self.owner_other_than(service, None).await
    }

    /// How many of `service`'s partitions each replica owns, `except` aside (a paused
    /// replica, whose last word is stale), from each replica's metrics.
    async fn ownership(&self, service: &str, except: Option<usize>) -> Vec<(usize, usize)> {
        let mut owned = Vec::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            if replica.service != service || replica.child.is_none() || except == Some(i) {
                continue;
            }
            let text = self
                .http
                .get(format!("{}/metrics", replica.base()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let Ok(text) = text else { continue };
            let text = text.text().await.unwrap_or_default();
            let count = text
                .lines()
                .filter(|l| l.starts_with("libertum_replica_owner{") && l.ends_with(" 1"))
                .count();
            owned.push((i, count));
        }
        owned
    }

    /// The replica of `service` that owns the most of its partitions, once the replicas but
    /// `except` own them all.
    async fn owner_other_than(&self, service: &str, except: Option<usize>) -> usize {
        let partitions = if service == "ledger" { 1 } else { PARTITIONS };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let owned = self.ownership(service, except).await;
            if owned.iter().map(|(_, n)| n).sum::<usize>() == partitions {
                let (most, _) = owned.iter().max_by_key(|(_, n)| *n).expect("a replica");
                return *most;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {service} replicas do not own its {partitions} partitions: {owned:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn start_again(&mut self, i: usize) {
        self.replicas[i].child = Some(self.replicas[i].command.spawn().unwrap());
        self.wait_ready(i).await;
    }

    /// SIGTERM, and waits for a clean exit.
    async fn terminate(&mut self, i: usize) {
        self.replicas[i].signal("TERM");
        let mut child = self.replicas[i].child.take().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            status.success(),
            "{} did not stop cleanly: {status}",
            self.replicas[i].name
        );
    }
}

/// Polls `url` until it answers 2xx (60 s at most), failing at once if `exited` says why.
async fn wait_ready_at(http: &Client, url: &str, mut exited: impl FnMut() -> Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(why) = exited() {
            panic!("{why}");
        }
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} was not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HAProxy: a ready replica answers (checked every 100 ms); a refused connection is tried on
/// another; nothing that reached a replica is sent twice.
fn front_config(replicas: &[Replica], fronts: [u16; 3]) -> String {
    let mut config = String::from(
        "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  option http-server-close\n  retries 3\n  option redispatch 1\n  retry-on conn-failure\n",
    );
    for (service, port) in ["assets", "tokens", "ledger"].into_iter().zip(fronts) {
        config.push_str(&format!(
            "frontend {service}\n  bind 127.0.0.1:{port}\n  default_backend {service}\nbackend {service}\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  timeout check 2s\n  default-server inter 250ms fall 2 rise 1\n"
        ));
        for replica in replicas.iter().filter(|r| r.service == service) {
            config.push_str(&format!(
                "  server {} 127.0.0.1:{} check\n",
                replica.name, replica.port
            ));
        }
    }
    config
}

struct Fixture {
    tokens: Vec<String>,
    alice: String,
    bob: String,
}

/// 30 approved assets with a token each; Alice holds every issue, Bob nothing.
async fn fixture(c: &Cluster) -> Fixture {
    let mut investors = Vec::new();
    for country in ["DE", "FR"] {
        let (status, body) = c
            .post(
                "/v1/tokens/investors",
                json!({"identity_ref": format!("idp|{}-{country}", c.name), "country": country, "kyc_status": "verified", "kyc_expires_on": "2099-12-31"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        investors.push(body["id"].as_str().unwrap().to_owned());
    }
    let mut tokens = Vec::new();
    for n in 0..TOKENS {
        let asset = common::approved_asset(
            c,
            json!({"name": format!("Failover {n}"), "kind": "real_estate", "legal_owner": "Failover SPV",
                   "location": {"address": format!("Main St {n}"), "city": "Berlin", "postal_code": "10117", "country": "DE"}}),
        )
        .await;
        tokens.push(asset);
    }
    let mut ids = Vec::new();
    for (n, asset) in tokens.iter().enumerate() {
        let spec = json!({"asset_id": asset, "symbol": format!("FO{n}"), "name": "Failover", "decimals": 0,
            "max_supply": ISSUED.to_string(), "unit_price": "100", "currency": "EUR"});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let token = loop {
            let (status, body) = c.post("/v1/tokens", spec.clone()).await;
            if status == StatusCode::CREATED {
                break body["id"].as_str().unwrap().to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the approval never reached the tokens service: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (status, body) = c
            .post(
                &format!("/v1/tokens/{token}/issuances"),
                json!({"to": investors[0], "amount": ISSUED.to_string()}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(token);
    }
    Fixture {
        tokens: ids,
        alice: investors[0].clone(),
        bob: investors[1].clone(),
    }
}

/// The stream: transfer `i` moves one unit of token `i % 30` from Alice to Bob with its own
/// Idempotency-Key, retried with the same key until it gets a 2xx answer. Counts the
/// acknowledged transfers and every answer that was not a success (`failed`).
struct Stream {
    done: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    started: tokio::time::Instant,
}

fn stream(c: &Cluster, f: &Fixture) -> Stream {
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let urls: Vec<String> = f
        .tokens
        .iter()
        .map(|t| c.url(&format!("/v1/tokens/{t}/transfers")))
        .collect();
    let body = json!({"from": f.alice, "to": f.bob, "amount": "1"});
    let (http, name) = (c.http.clone(), c.name.clone());
    let (counted, failures) = (done.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (urls, body, next, done, failed, http, name) = (
                    urls.clone(),
                    body.clone(),
                    next.clone(),
                    counted.clone(),
                    failures.clone(),
                    http.clone(),
                    name.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= TRANSFERS {
                            return;
                        }
                        let key = format!("{name}-transfer-{i}");
                        let misses =
                            common::post_until_accepted(&http, &urls[i % TOKENS], &key, &body)
                                .await;
                        failed.fetch_add(misses, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("a transfer client");
        }
    });
    Stream {
        done,
        failed,
        task,
        started: tokio::time::Instant::now(),
    }
}

impl Stream {
    async fn reached(&self, at_least: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while self.done.load(Ordering::SeqCst) < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the transfers stalled at {}",
                self.done.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the whole stream; returns how many answers were not a success.
    async fn finish(self) -> usize {
        tokio::time::timeout(Duration::from_secs(600), self.task)
            .await
            .expect("the stream ends within 10 minutes")
            .expect("every transfer went through");
        assert_eq!(self.done.load(Ordering::SeqCst), TRANSFERS);
        let took = self.started.elapsed();
        eprintln!(
            "{TRANSFERS} transfers in {took:.1?} ({:.0}/s)",
            TRANSFERS as f64 / took.as_secs_f64()
        );
        self.failed.load(Ordering::SeqCst)
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

/// Every transfer applied exactly once, token by token, in tokens and in the ledger; supply
/// equal to the sum of balances in both; the chain verifies; reconciliation matches; and the
/// tokens topic is in order for an outside reader.
async fn exactly_once(c: &Cluster, f: &Fixture) {
    for line in stack()
        .mongo
        .log_tail()
        .lines()
        .filter(|l| l.contains("rolled back"))
    {
        eprintln!("{line}");
    }
    for (n, token) in f.tokens.iter().enumerate() {
        let expected = (TRANSFERS / TOKENS + usize::from(n < TRANSFERS % TOKENS)) as u128;
        // A follower answers what it has applied: a few milliseconds behind the owner.
        let path = format!("/v1/tokens/{token}/holders");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let holders = loop {
            let (status, body) = c.get(&path).await;
            if (status.is_success() && balance_of(&body, &f.bob) == expected)
                || tokio::time::Instant::now() >= deadline
            {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let sum: u128 = holders["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| amount(&h["balance"]))
            .sum();
        assert_eq!(amount(&holders["total_supply"]), ISSUED, "{holders}");
        assert_eq!(
            sum, ISSUED,
            "tokens: supply is the sum of balances of {token}"
        );
        assert_eq!(
            balance_of(&holders, &f.bob),
            expected,
            "tokens: every transfer of {token} applied once"
        );
        let path = format!("/v1/ledger/tokens/{token}/cap-table");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let ledger = loop {
            let (status, body) = c.get(&path).await;
            if status.is_success() && balance_of(&body, &f.bob) == expected {
                break body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ledger never recorded every transfer of {token}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let sum: u128 = ledger["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| amount(&h["balance"]))
            .sum();
        assert_eq!(
            sum, ISSUED,
            "ledger: supply is the sum of balances of {token}"
        );
        assert_eq!(balance_of(&ledger, &f.alice), ISSUED - expected);
    }
    let (status, verification) = c.get("/v1/ledger/verification").await;
    assert_eq!(status, StatusCode::OK, "{verification}");
    assert_eq!(
        verification["valid"], true,
        "the chain is intact: {verification}"
    );
    // Each token reconciled on its own: one short request each, where a platform-wide one
    // over the loaded MongoDB-wire stand-in has outlasted the front's 60 s timeout.
    for token in &f.tokens {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, r) = c
                .get(&format!("/v1/ledger/reconciliation?token_id={token}"))
                .await;
            if r["matched"] == true && r["tokens"].as_array().is_some_and(|t| t.len() == 1) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reconciliation of {token} never matched: {status} {r}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    in_order(
        &c.kafka_brokers,
        &format!("{}.tokens", c.name),
        TRANSFERS + 2 * TOKENS,
    )
    .await;
}

/// A response's body as JSON, or as a JSON string when it is not JSON (a proxy's own error
/// page, say), so that a failure shows what came back.
async fn json_or_text(r: reqwest::Response) -> Value {
    let text = r.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Reads `topic` from the beginning with a plain rdkafka consumer (no group) until it has seen
/// at least `at_least` distinct events and nothing more comes, and checks each subject's
/// stream: `subjectversion` grows by one at a time, `sequence` only grows, and anything else
/// is an exact repeat of an event already seen.
async fn in_order(brokers: &str, topic: &str, at_least: usize) {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}.outside-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        // Per subject: the event id at each version, and the last sequence seen.
        let mut streams: HashMap<String, (BTreeMap<u64, String>, String)> = HashMap::new();
        let (mut distinct, mut repeats) = (0usize, 0usize);
        let mut quiet_since = std::time::Instant::now();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    quiet_since = std::time::Instant::now();
                    let event: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                    let subject = event["subject"].as_str().unwrap().to_owned();
                    let id = event["id"].as_str().unwrap().to_owned();
                    let sequence = event["sequence"].as_str().unwrap().to_owned();
                    let version: u64 = event["subjectversion"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("no subjectversion: {event}"));
                    let (seen, last) = streams.entry(subject.clone()).or_default();
                    let newest = seen.keys().next_back().copied().unwrap_or(0);
                    if version <= newest {
                        assert_eq!(
                            seen.get(&version),
                            Some(&id),
                            "{subject}: version {version} came again as another event"
                        );
                        repeats += 1;
                    } else {
                        assert_eq!(
                            version,
                            newest + 1,
                            "{subject}: a gap after version {newest} (partition {}, offset {})",
                            message.partition(),
                            message.offset()
                        );
                        assert!(
                            sequence > *last,
                            "{subject}: sequence {sequence} after {last}"
                        );
                        seen.insert(version, id);
                        *last = sequence;
                        distinct += 1;
                    }
                }
                Some(Err(e)) => panic!("the outside reader failed: {e}"),
                None => {
                    if distinct >= at_least && quiet_since.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the outside reader saw {distinct} of at least {at_least} events"
            );
        }
        eprintln!("{topic}: {distinct} events in order, {repeats} repeated after a failover");
    })
    .await
    .unwrap();
}

async fn started(name: &str) -> (Cluster, Fixture) {
    let begun = tokio::time::Instant::now();
    let cluster = Cluster::start(name).await;
    eprintln!(
        "{name}: the replicas are ready after {:.1?}",
        begun.elapsed()
    );
    let fixture = fixture(&cluster).await;
    eprintln!("{name}: the fixture is made after {:.1?}", begun.elapsed());
    (cluster, fixture)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_loses_and_duplicates_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, f) = started("failover-kill").await;
    let s = stream(&c, &f);
    s.reached(TRANSFERS / 4).await;
    // The replica owning the most partitions.
    let owner = c.owner("tokens").await;
    let taken = tokio::time::Instant::now();
    c.kill(owner);
    // The others own every partition again.
    let successor = c.owner("tokens").await;
    assert_ne!(successor, owner);
    eprintln!(
        "{} killed; {} owns the writes {:?} later",
        c.replicas[owner].name,
        c.replicas[successor].name,
        taken.elapsed()
    );
    assert!(
        taken.elapsed() < Duration::from_secs(10),
        "another replica took over within 10 s"
    );
    s.reached(TRANSFERS / 2).await;
    c.start_again(owner).await;
    s.finish().await;
    exactly_once(&c, &f).await;
    reads_see_their_writes(&c, &f).await;
    imports_reach_the_owner(&c, &f).await;
}

/// An import sent straight to each tokens replica, owner of the token or not, is run by the
/// owner (a non-owner streams it there and the progress back); sent again under its key to
/// another replica, every chunk is replayed, not applied again.
async fn imports_reach_the_owner(c: &Cluster, f: &Fixture) {
    let token = &f.tokens[1];
    let path = format!("/v1/tokens/{token}/holders");
    let before = balance_of(&c.get(&path).await.1, &f.bob);
    let line = json!({"op": "transfer", "from": f.alice, "to": f.bob, "amount": "1"}).to_string();
    let body = format!("{line}\n").repeat(5);
    let bases: Vec<String> = c
        .replicas
        .iter()
        .filter(|r| r.service == "tokens" && r.child.is_some())
        .map(Replica::base)
        .collect();
    assert!(bases.len() >= 2, "several tokens replicas");
    for (n, base) in bases.iter().enumerate() {
        let again = &bases[(n + 1) % bases.len()];
        for (to, replayed) in [(base, false), (again, true)] {
            let r = c
                .http
                .post(format!("{to}/v1/tokens/{token}/imports?chunk=2"))
                .header("content-type", "application/x-ndjson")
                .header("idempotency-key", format!("{}-import-{n}", c.name))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let text = r.text().await.unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let last = lines.last().expect("a last line");
            assert_eq!(
                (&last["done"], &last["applied"]),
                (&json!(true), &json!(5)),
                "{text}"
            );
            assert!(
                lines[..lines.len() - 1]
                    .iter()
                    .all(|chunk| chunk["replayed"] == json!(replayed)),
                "sent to {to} (replayed: {replayed}): {text}"
            );
        }
    }
    let expected = before + 5 * bases.len() as u128;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = balance_of(&c.get(&path).await.1, &f.bob);
        if now == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "each import applied once: bob holds {now}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A write's `Libertum-Position`, sent back as `Libertum-Min-Position`, makes every replica's
/// read include the write, whichever replica the front picks.
async fn reads_see_their_writes(c: &Cluster, f: &Fixture) {
    let token = &f.tokens[0];
    let path = format!("/v1/tokens/{token}/holders");
    let before = balance_of(&c.get(&path).await.1, &f.bob);
    for round in 1..=5u128 {
        let r = c
            .http
            .post(c.url(&format!("/v1/tokens/{token}/transfers")))
            .header("idempotency-key", format!("{}-ryw-{round}", c.name))
            .json(&json!({"from": f.alice, "to": f.bob, "amount": "1"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let position = r
            .headers()
            .get("libertum-position")
            .expect("a write says its position")
            .to_str()
            .unwrap()
            .to_owned();
        for _ in 0..3 {
            let read = c
                .http
                .get(c.url(&path))
                .header("libertum-min-position", &position)
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), StatusCode::OK);
            let body: Value = read.json().await.unwrap();
            assert_eq!(
                balance_of(&body, &f.bob),
                before + round,
                "a read at or after position {position} shows the write"
            );
        }
    }
    let r = c
        .http
        .get(c.url(&path))
        .header("libertum-min-position", "not-a-position")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, f) = started("failover-rolling").await;
    let s = stream(&c, &f);
    s.reached(TRANSFERS / 5).await;
    for i in 0..c.replicas.len() {
        c.terminate(i).await;
        c.start_again(i).await;
        // The front sees it ready again before the next one stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failed = s.finish().await;
    assert_eq!(failed, 0, "no request failed during the rolling restart");
    exactly_once(&c, &f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_writes_nothing_when_it_wakes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, f) = started("failover-pause").await;
    let s = stream(&c, &f);
    s.reached(TRANSFERS / 4).await;
    let owner = c.owner("tokens").await;
    c.replicas[owner].signal("STOP");
    // The lease is 2 s: another replica takes it while this one sleeps.
    let successor = c.owner_other_than("tokens", Some(owner)).await;
    assert_ne!(successor, owner, "another replica took the lease");
    s.reached(TRANSFERS / 2).await;
    c.replicas[owner].signal("CONT");
    // It wakes believing nothing happened: its renewals fail, and whatever it had decided is
    // refused by the store (fenced), so it forwards instead. (It may take partitions back
    // later, as a replica whose share is free.)
    let lost = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("libertum_lease_changes_total{") && l.contains("reason=\"lost\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Just woken, the replica may still refuse connections beyond its cap: asked again.
        let metrics = match c
            .http
            .get(format!("{}/metrics", c.replicas[owner].base()))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if lost(&metrics) > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the woken replica knows it lost the partitions it owned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.finish().await;
    exactly_once(&c, &f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_mid_backlog_is_resumed_by_another_replica() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, f) = started("failover-relay").await;
    let s = stream(&c, &f);
    s.reached(TRANSFERS / 5).await;
    // The broker stops answering: the owner keeps committing, its relay falls behind.
    c.kafka.with(|kafka| kafka.signal("STOP"));
    let before = s.done.load(Ordering::SeqCst);
    s.reached(before + 200).await;
    let owner = c.owner("tokens").await;
    c.kill(owner);
    c.kafka.with(|kafka| kafka.signal("CONT"));
    let successor = c.owner("tokens").await;
    assert_ne!(successor, owner);
    s.finish().await;
    exactly_once(&c, &f).await;
    c.start_again(owner).await;
}
