//! A closed-loop load generator: N clients, each sending its next request when the last answers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use libertum_store::EventStore;
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Fixture {
    pub asset_id: String,
    pub token_id: String,
    pub investors: Vec<String>,
}

pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    pub fn print(&self, what: &str) {
        println!(
            "{what:<40} {:>12.0} /s  p50 {:.2} ms  p99 {:.2} ms  ({} ok, {} failed)",
            self.rate(),
            self.p50_ms,
            self.p99_ms,
            self.ok,
            self.failed
        );
    }
}

/// The `q` quantile of `sorted` (nearest rank).
/// The number in environment variable `name`, or `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn at(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

pub async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let r = http.post(url).json(&body).send().await?;
    let status = r.status();
    let body: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status} {body}");
    Ok(body)
}

/// An approved asset and its token `symbol`, open to `max_holders` holders, every compliance
/// rule on; returns the asset's id and the token's.
pub async fn token(
    base: &str,
    symbol: &str,
    max_holders: usize,
) -> anyhow::Result<(String, String)> {
    let http = libertum_testkit::client();
    let asset = post(
        &http,
        &format!("{base}/v1/assets"),
        json!({"name": format!("Bench building {symbol}"), "kind": "real_estate", "legal_owner": "Bench SPV",
        "location": {"address": "Bench street 1", "city": "Berlin", "country": "DE"}}),
    )
    .await?;
    let asset_id = asset["id"].as_str().unwrap_or_default().to_owned();
    for action in ["submit", "approve"] {
        post(
            &http,
            &format!("{base}/v1/assets/{asset_id}/transitions"),
            json!({"action": action}),
        )
        .await?;
    }
    let spec = json!({"asset_id": asset_id, "symbol": symbol, "name": symbol, "decimals": 0, "max_supply": "1000000000000",
        "unit_price": "100", "currency": "EUR", "rules": {"allowed_countries": ["DE", "FR"], "denied_countries": ["US"],
        "max_holders": max_holders, "max_balance": "10000000000", "lockup_seconds": 1, "daily_transfer_limit": "1000000000", "monthly_transfer_limit": "10000000000",
        "min_transfer_by_country": {"DE": "1"}}});
    let token = loop {
        match post(&http, &format!("{base}/v1/tokens"), spec.clone()).await {
            Ok(token) => break token,
            Err(e) if e.to_string().contains("asset_not_approved") => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e),
        }
    };
    Ok((
        asset_id,
        token["id"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// An approved, tokenized asset and `n` investors holding 1,000,000 each.
pub async fn fixture(base: &str, n: usize) -> anyhow::Result<Fixture> {
    let http = libertum_testkit::client();
    let (asset_id, token_id) = token(base, "BENCH", n + 10).await?;
    let mut investors = Vec::with_capacity(n);
    let mut operations = Vec::with_capacity(n);
    for i in 0..n {
        let investor = post(
            &http,
            &format!("{base}/v1/tokens/investors"),
            json!({"identity_ref": format!("idp|bench-{i}"), "country": "DE",
            "kyc_status": "verified", "kyc_expires_on": "2099-12-31", "accredited": true}),
        )
        .await?;
        let id = investor["id"].as_str().unwrap_or_default().to_owned();
        operations.push(json!({"op": "issue", "to": id, "amount": "1000000"}));
        investors.push(id);
    }
    for chunk in operations.chunks(250) {
        post(
            &http,
            &format!("{base}/v1/tokens/{token_id}/batches"),
            json!({"operations": chunk}),
        )
        .await?;
    }
    // Past the one-second lock-up, so the rule is checked and passes.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    Ok(Fixture {
        asset_id,
        token_id,
        investors,
    })
}

/// Reports wrk's figures in a line the bench parses: requests, non-2xx, errors, p50, p99 (us), duration (us).
const DONE: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
"#;

/// A wrk script that transfers one unit between random investors, each request with its own
/// Idempotency-Key.
pub fn transfer_script(f: &Fixture, endpoint: &str) -> String {
    let investors: Vec<String> = f.investors.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        r#"
local investors = {{{}}}
local n = #investors
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function init(args)
  -- `id` is this thread's number, set by setup(); keys and random pairs differ per thread.
  math.randomseed(id * 7919)
end
function request()
  counter = counter + 1
  local a = math.random(n)
  local b = (a + math.random(n - 1) - 1) % n + 1
  local body = '{{"from":"' .. investors[a] .. '","to":"' .. investors[b] .. '","amount":"1"}}'
  -- The headers given here replace wrk's -H ones: the bearer token is passed on explicitly.
  return wrk.format("POST", "/v1/tokens/{}/{}", {{["Authorization"] = wrk.headers["Authorization"], ["Content-Type"] = "application/json", ["Idempotency-Key"] = "bench-" .. id .. "-" .. counter}}, body)
end
{DONE}"#,
        investors.join(","),
        f.token_id,
        endpoint
    )
}

/// Bulk transfers: `clients` clients, each sending its next batch of `size` transfers of one
/// unit between random pairs of the fixture's investors once the last is answered, in `mode`
/// (`independent` or `all_or_nothing`), for `duration`. Counts the transfers each answer says
/// were applied; a request not answered 200 counts as failed.
pub async fn bulk(
    base: &str,
    f: &Fixture,
    clients: usize,
    size: usize,
    mode: &str,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    #[derive(serde::Deserialize)]
    struct Applied {
        applied: Option<u64>,
    }
    let url = format!("{base}/v1/tokens/{}/batches", f.token_id);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        // A few different bodies per client, built before the clock starts mattering.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (client as u64 + 1);
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let n = f.investors.len();
        let bodies: Vec<bytes::Bytes> = (0..4)
            .map(|_| {
                let operations: Vec<Value> = (0..size)
                    .map(|_| {
                        let a = next(n);
                        let b = (a + 1 + next(n - 1)) % n;
                        json!({"op": "transfer", "from": f.investors[a], "to": f.investors[b], "amount": "1"})
                    })
                    .collect();
                bytes::Bytes::from(
                    serde_json::to_vec(&json!({"mode": mode, "operations": operations}))
                        .unwrap_or_default(),
                )
            })
            .collect();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let http = libertum_testkit::client();
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            let mut i = 0;
            while started.elapsed() < duration {
                let sent = Instant::now();
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await;
                i += 1;
                let applied = match answer {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(body) => serde_json::from_slice::<Applied>(&body)
                            .ok()
                            .map(|a| a.applied.unwrap_or(size as u64)),
                        Err(_) => None,
                    },
                    _ => None,
                };
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                match applied {
                    Some(applied) => {
                        ok += applied;
                        failed += size as u64 - applied;
                    }
                    None => failed += size as u64,
                }
            }
            (ok, failed, latencies)
        }));
    }
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (o, f, l) = task.await?;
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(ok > 0, "no bulk transfer was applied ({failed} failed)");
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    Ok(Outcome {
        ok,
        failed,
        seconds,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

pub fn get_script() -> String {
    DONE.to_owned()
}

/// Runs wrk with 2 threads and `connections` connections against `url` for `duration`.
pub fn wrk(
    url: &str,
    script: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("script.lua");
    std::fs::write(&path, script)?;
    let output = std::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs()), "--timeout", "10s"])
        // A platform admin's token on every request (wrk.format adds -H headers).
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", libertum_testkit::token(&[libertum_platform::auth::Role::PlatformAdmin], None)))
        .arg("-s")
        .arg(&path)
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("wrk could not run ({e}); install it with apt-get install -y wrk (scripts/bench does)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "wrk printed no result: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    anyhow::ensure!(n.len() == 6, "unexpected wrk result line {line:?}");
    let failed = n[1] + n[2];
    // A phase whose requests all failed measured nothing: say so rather than print 0/s.
    anyhow::ensure!(
        failed == 0 || n[0] > failed,
        "every one of the {failed} requests to {url} failed (status or socket errors)"
    );
    Ok(Outcome {
        ok: n[0].saturating_sub(failed),
        failed,
        seconds: n[5] as f64 / 1e6,
        p50_ms: n[3] as f64 / 1e3,
        p99_ms: n[4] as f64 / 1e3,
    })
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
            let done = ledger
                .checkpoint(LEDGER_CHECKPOINT)
                .await
                .ok()
                .flatten()
                .unwrap_or(0);
            // The first moment the tokens log held more than the ledger has consumed.
            let since = heads
                .iter()
                .find(|(_, h)| *h > done)
                .map_or(now, |(t, _)| *t);
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
        v.get(((v.len() as f64 - 1.0) * 0.99).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    }
}

/// Time from now until the ledger has consumed everything the tokens service has committed.
pub async fn catch_up(
    tokens: Arc<dyn EventStore>,
    ledger: Arc<dyn EventStore>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let head = tokens.head().await?;
    while ledger.checkpoint(LEDGER_CHECKPOINT).await?.unwrap_or(0) < head {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the ledger did not catch up in two minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

const REFERENCE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("writes");

/// The machine's ceiling for durable HTTP writes: a minimal axum handler that stores each
/// request's body under its Idempotency-Key and answers only after a group commit with fsync.
/// No routing prefixes, middleware, JSON, rules, events or consumers: what is left is HTTP,
/// one redb write per request and one fsync per group.
pub async fn group_commit_server(dir: &std::path::Path) -> anyhow::Result<SocketAddr> {
    type Write = (String, axum::body::Bytes, tokio::sync::oneshot::Sender<()>);
    let db = redb::Database::create(dir.join("reference.redb"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Write>();
    std::thread::Builder::new()
        .name("reference-writer".into())
        .spawn(move || -> anyhow::Result<()> {
            while let Some(first) = rx.blocking_recv() {
                let mut group = vec![first];
                while let Ok(next) = rx.try_recv() {
                    group.push(next);
                }
                let mut write = db.begin_write()?;
                write.set_durability(redb::Durability::Immediate);
                {
                    let mut table = write.open_table(REFERENCE)?;
                    for (key, body, _) in &group {
                        table.insert(key.as_str(), body.as_ref())?;
                    }
                }
                write.commit()?;
                for (_, _, done) in group {
                    let _ = done.send(());
                }
            }
            Ok(())
        })?;
    let handler = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let tx = tx.clone();
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let (done, committed) = tokio::sync::oneshot::channel();
            if tx.send((key, body, done)).is_err() || committed.await.is_err() {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            axum::http::StatusCode::CREATED
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route("/{*rest}", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}
