//! A closed-loop load generator: N clients, each sending its next request when the last answers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use libertum_store::EventStore;
use parking_lot_free::Samples;
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Fixture {
    pub asset_id: String,
    pub token_id: String,
    pub investors: Vec<String>,
}

pub enum Request {
    Transfer(Arc<Fixture>, String),
    Get(String),
}

pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn print(&self, what: &str) {
        println!(
            "{what:<40} {:>12.0} /s  p50 {:.2} ms  p99 {:.2} ms  ({} ok, {} failed)",
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.ok,
            self.failed
        );
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let r = http.post(url).json(&body).send().await?;
    let status = r.status();
    let body: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status} {body}");
    Ok(body)
}

/// An approved, tokenized asset and `n` investors holding 1,000,000 each.
pub async fn fixture(base: &str, n: usize) -> anyhow::Result<Fixture> {
    let http = reqwest::Client::new();
    let asset = post(&http, &format!("{base}/v1/assets"), json!({"name": "Bench building", "kind": "real_estate", "legal_owner": "Bench SPV",
        "location": {"address": "Bench street 1", "city": "Berlin", "country": "DE"}})).await?;
    let asset_id = asset["id"].as_str().unwrap_or_default().to_owned();
    for action in ["submit", "approve"] {
        post(&http, &format!("{base}/v1/assets/{asset_id}/transitions"), json!({"action": action})).await?;
    }
    let spec = json!({"asset_id": asset_id, "symbol": "BENCH", "name": "Bench", "decimals": 0, "max_supply": "1000000000000",
        "unit_price": "100", "currency": "EUR", "rules": {"allowed_countries": ["DE", "FR"], "denied_countries": ["US"],
        "max_holders": n + 10, "max_balance": "10000000000", "daily_transfer_limit": "1000000000", "monthly_transfer_limit": "10000000000"}});
    let token = loop {
        match post(&http, &format!("{base}/v1/tokens"), spec.clone()).await {
            Ok(token) => break token,
            Err(e) if e.to_string().contains("asset_not_approved") => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => return Err(e),
        }
    };
    let token_id = token["id"].as_str().unwrap_or_default().to_owned();
    let mut investors = Vec::with_capacity(n);
    let mut operations = Vec::with_capacity(n);
    for i in 0..n {
        let investor = post(&http, &format!("{base}/v1/tokens/investors"), json!({"identity_ref": format!("idp|bench-{i}"), "country": "DE",
            "kyc_status": "verified", "kyc_expires_on": "2099-12-31", "accredited": true})).await?;
        let id = investor["id"].as_str().unwrap_or_default().to_owned();
        operations.push(json!({"op": "issue", "to": id, "amount": "1000000"}));
        investors.push(id);
    }
    for chunk in operations.chunks(250) {
        post(&http, &format!("{base}/v1/tokens/{token_id}/batches"), json!({"operations": chunk})).await?;
    }
    Ok(Fixture { asset_id, token_id, investors })
}

/// Runs `clients` closed loops for `duration`.
pub async fn run(clients: usize, duration: Duration, request: Request) -> anyhow::Result<Outcome> {
    let request = Arc::new(request);
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let (http, request, counter) = (http.clone(), request.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut n: u64 = client as u64 * 7919;
            while Instant::now() < deadline {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let sent = Instant::now();
                let result = match request.as_ref() {
                    Request::Get(url) => http.get(url).send().await,
                    Request::Transfer(f, base) => {
                        let len = f.investors.len() as u64;
                        let a = (n >> 33) % len;
                        let b = (a + 1 + (n >> 13) % (len - 1)) % len;
                        let key = format!("bench-{}", counter.fetch_add(1, Ordering::Relaxed));
                        http.post(format!("{base}/v1/tokens/{}/transfers", f.token_id))
                            .header("idempotency-key", key)
                            .json(&json!({"from": f.investors[a as usize], "to": f.investors[b as usize], "amount": "1"}))
                            .send()
                            .await
                    }
                };
                let ok = match result {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                samples.record(ok, sent.elapsed());
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies_us = all.latencies_us;
    latencies_us.sort_unstable();
    Ok(Outcome { ok: all.ok, failed: all.failed, seconds, latencies_us })
}

mod parking_lot_free {
    use std::time::Duration;

    #[derive(Default)]
    pub struct Samples {
        pub ok: u64,
        pub failed: u64,
        pub latencies_us: Vec<u32>,
    }

    impl Samples {
        pub fn record(&mut self, ok: bool, latency: Duration) {
            if ok {
                self.ok += 1;
                self.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
            } else {
                self.failed += 1;
            }
        }

        pub fn merge(&mut self, other: Samples) {
            self.ok += other.ok;
            self.failed += other.failed;
            self.latencies_us.extend(other.latencies_us);
        }
    }
}

/// A bare axum handler on its own port, served by the same runtime as the product.
pub async fn bare_server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

const LEDGER_CHECKPOINT: &str = "ledger:libertum.tokens.events";

/// Samples every 20 ms how long ago the tokens service's log was where the ledger now is.
#[derive(Default)]
pub struct LagSampler {
    stop: AtomicBool,
    lags_ms: parking_lot::Mutex<Vec<u64>>,
}

impl LagSampler {
    pub async fn run(&self, tokens: Arc<dyn EventStore>, ledger: Arc<dyn EventStore>) {
        let started = Instant::now();
        let mut heads: Vec<(u64, u64)> = Vec::new(); // (ms since start, tokens head)
        while !self.stop.load(Ordering::Relaxed) {
            let now = started.elapsed().as_millis() as u64;
            let head = tokens.head().await.unwrap_or(0);
            heads.push((now, head));
            let done = ledger.checkpoint(LEDGER_CHECKPOINT).await.ok().flatten().unwrap_or(0);
            // The first moment the tokens log held more than the ledger has consumed.
            let since = heads.iter().find(|(_, h)| *h > done).map_or(now, |(t, _)| *t);
            self.lags_ms.lock().push(now - since);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn max(&self) -> f64 {
        self.lags_ms.lock().iter().copied().max().unwrap_or(0) as f64 / 1000.0
    }

    pub fn p99(&self) -> f64 {
        let mut v = self.lags_ms.lock().clone();
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * 0.99).round() as usize).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// Time from now until the ledger has consumed everything the tokens service has committed.
pub async fn catch_up(tokens: Arc<dyn EventStore>, ledger: Arc<dyn EventStore>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let head = tokens.head().await?;
    while ledger.checkpoint(LEDGER_CHECKPOINT).await?.unwrap_or(0) < head {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "the ledger did not catch up in two minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}
