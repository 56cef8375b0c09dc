//! Write throughput against the number of replicas (`scripts/bench replicas`).
//!
//! On one machine the replicas share its cores, so what a replica adds in production (its own
//! CPU, its own round trips to the store) is simulated: every commit to the store is delayed
//! by 5 ms (`BENCH_COMMIT_DELAY_MILLIS`), a cross-zone MongoDB round trip. The tokens service
//! runs as 1, then 3 replicas in this process, each with its own engine, leases, follower,
//! HTTP server and forwarding, over the same partitioned logs (one redb file per partition,
//! shared as the replicas share MongoDB's databases). The same 30 clients, one per token,
//! send transfers through the replicas in turn (as a load balancer would) for
//! `BENCH_REPLICAS_SECONDS` (default 10) after a warm-up; the figure is acknowledged transfers
//! per second.
//!
//! Why not the MongoDB-wire test server: it runs every command under one interpreter lock, so
//! its commits are the limit for one replica and three alike (`scripts/bench production`
//! measures it alone); the simulation is of the replicas, not of the store.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use libertum_store::{
    Commit, EventStore, IdempotencyRecord, Lease, LeaseSettings, MemoryCache, RedbStore,
    SnapshotPolicy, StoreError, ownership::Partitions, partition::PARTITIONS,
};
use libertum_tokens::Tokens;
use serde_json::{Value, json};
use tokio::sync::watch;

const TOKENS: usize = 30;

/// A store whose commits take `delay` longer: a store farther away.
struct Distant {
    inner: RedbStore,
    delay: Duration,
}

#[async_trait]
impl EventStore for Distant {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.commit(commit).await
    }
    async fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
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
    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        self.inner.lease().await
    }
    async fn acquire_lease(
        &self,
        holder: &str,
        address: &str,
        epoch: Option<u64>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
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
    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }
    fn describe(&self) -> String {
        format!(
            "{} (+{} ms per commit)",
            self.inner.describe(),
            self.delay.as_millis()
        )
    }
}

/// One replica: its service, its leases, its server.
struct Replica {
    tokens: Tokens,
    partitions: Partitions,
    leading: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    base: String,
}

async fn start_replica(n: usize, stores: &[Arc<dyn EventStore>]) -> anyhow::Result<Replica> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let tokens = Tokens::open_partitioned(
        stores.to_vec(),
        Arc::new(MemoryCache::new(10_000)),
        SnapshotPolicy::NEVER,
        true,
    )
    .await?;
    let partitions = Partitions::new(
        "tokens",
        &format!("bench-replica-{n}"),
        &addr.to_string(),
        stores,
        LeaseSettings::with_ttl(Duration::from_secs(2)),
    );
    let leading = partitions.run(Arc::new(tokens.engine().clone()), Vec::new());
    let (routes, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/tokens", tokens.router())
        .split_for_parts();
    let mut guard = libertum_testkit::guard();
    guard.forward = Some(libertum_platform::replica::Forwarder::new(
        partitions.clone(),
        Tokens::route(stores.len()),
    ));
    let router = libertum_platform::server::service_router(routes, Vec::new(), guard);
    let (stop, mut stopped) = watch::channel(false);
    let served = tokio::spawn(libertum_platform::server::serve(
        listener,
        router,
        libertum_platform::server::ConnectionLimits::default(),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Ok(Replica {
        tokens,
        partitions,
        leading,
        stop,
        served,
        base: format!("http://{addr}"),
    })
}

/// Transfers per second through `replicas` replicas, each commit delayed by `delay`.
async fn phase(replicas: usize, delay: Duration, seconds: u64) -> anyhow::Result<(f64, String)> {
    let dir = tempfile::tempdir()?;
    let stores: Vec<Arc<dyn EventStore>> = (0..PARTITIONS)
        .map(|p| -> anyhow::Result<Arc<dyn EventStore>> {
            Ok(Arc::new(Distant {
                inner: RedbStore::open(dir.path(), &format!("tokens-p{p}"))?,
                delay,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut running = Vec::new();
    for n in 0..replicas {
        running.push(start_replica(n, &stores).await?);
    }
    // Every partition owned, spread evenly.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned: Vec<usize> = running.iter().map(|r| r.partitions.owned()).collect();
        let (least, most) = (
            owned.iter().min().copied().unwrap_or(0),
            owned.iter().max().copied().unwrap_or(0),
        );
        if owned.iter().sum::<usize>() == PARTITIONS && most - least <= 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the partitions did not spread over the replicas: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spread: Vec<usize> = running.iter().map(|r| r.partitions.owned()).collect();

    // The fixture: two investors, 30 approved assets with a token each, issued to Alice.
    let http = libertum_testkit::client();
    let bases: Vec<String> = running.iter().map(|r| r.base.clone()).collect();
    let investor = |country: &str| json!({"identity_ref": format!("bench|{country}"), "country": country, "kyc_status": "verified", "kyc_expires_on": "2099-12-31"});
    let mut people = Vec::new();
    for country in ["DE", "FR"] {
        let r = post(
            &http,
            &format!("{}/v1/tokens/investors", bases[0]),
            &investor(country),
        )
        .await?;
        people.push(r["id"].as_str().unwrap_or_default().to_owned());
    }
    let registry = running
        .iter()
        .find(|r| r.tokens.engine().is_writer(0))
        .ok_or_else(|| anyhow::anyhow!("no replica owns the registry"))?;
    let mut tokens = Vec::new();
    for n in 0..TOKENS {
        let asset = format!("ast_bench_{n}");
        registry
            .tokens
            .engine()
            .submit(libertum_store::Submission {
                command: Some(libertum_tokens::Command {
                    actor: "bench".into(),
                    command: libertum_domain::token::Command::ObserveAsset {
                        asset_id: asset.as_str().into(),
                        state: libertum_domain::token::AssetState::Approved,
                        sequence: 0,
                    },
                }),
                idempotency: None,
                checkpoint: None,
                reply: Box::new(|_, _| libertum_store::Reply::new(200, Default::default())),
                partition: None,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("approving {asset}: {e}"))?;
        let body = json!({"asset_id": asset, "symbol": format!("BENCH{n}"), "name": format!("Bench {n}"),
            "decimals": 0, "max_supply": "100000000", "unit_price": "100", "currency": "EUR"});
        let token = post(&http, &format!("{}/v1/tokens", bases[n % replicas]), &body).await?;
        let token = token["id"].as_str().unwrap_or_default().to_owned();
        post(
            &http,
            &format!("{}/v1/tokens/{token}/issuances", bases[n % replicas]),
            &json!({"to": people[0], "amount": "10000000"}),
        )
        .await?;
        tokens.push(token);
    }

    // 30 clients, one per token, each sending its next transfer once the last was answered,
    // to the replicas in turn; counted after a 2 s warm-up.
    let counted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (measuring, ending) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let mut clients = Vec::new();
    for (c, token) in tokens.iter().enumerate() {
        let (http, bases, counted, failed, measuring, ending) = (
            http.clone(),
            bases.clone(),
            counted.clone(),
            failed.clone(),
            measuring.clone(),
            ending.clone(),
        );
        let body = json!({"from": people[0], "to": people[1], "amount": "1"});
        let token = token.clone();
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while !ending.load(Ordering::Relaxed) {
                let url = format!("{}/v1/tokens/{token}/transfers", bases[i % bases.len()]);
                let ok = http
                    .post(url)
                    .header("idempotency-key", format!("bench-{c}-{i}"))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        counted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu_before) / elapsed;
    ending.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let (ok, bad) = (
        counted.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    anyhow::ensure!(
        bad == 0,
        "{bad} transfers failed with {replicas} replica(s)"
    );
    let rate = ok as f64 / elapsed;
    let detail = format!(
        "partitions owned {spread:?}, {ok} transfers in {elapsed:.1} s, {:.0}% of one core for the replicas and the clients",
        cpu * 100.0
    );

    for replica in &running {
        replica.partitions.leave().await;
    }
    for replica in running {
        let _ = replica.leading.await;
        let _ = replica.stop.send(true);
        let _ = replica.served.await;
        replica.tokens.close().await;
    }
    Ok((rate, detail))
}

/// This process's CPU time so far (user and system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let r = http.post(url).json(body).send().await?;
    let status = r.status();
    let value: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "POST {url}: {status} {value}");
    Ok(value)
}

pub async fn run() -> anyhow::Result<()> {
    let seconds = std::env::var("BENCH_REPLICAS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let delay = Duration::from_millis(
        std::env::var("BENCH_COMMIT_DELAY_MILLIS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    println!(
        "libertum-bench replicas: the tokens service as 1, then 3 replicas over {PARTITIONS} partitions, every commit delayed {} ms, {TOKENS} clients (one per token) for {seconds} s",
        delay.as_millis()
    );
    let (one, detail) = phase(1, delay, seconds).await?;
    println!("1 replica:  {one:>7.0} transfers/s ({detail})");
    let (three, detail) = phase(3, delay, seconds).await?;
    println!("3 replicas: {three:>7.0} transfers/s ({detail})");
    println!(
        "3 replicas / 1 replica: {:.2}x (target: at least 2.4x)",
        three / one
    );
    Ok(())
}
