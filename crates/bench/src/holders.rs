//! Reads under write load (issue 16): a token with 100,000 holders, its balances and pages of
//! its cap table read while transfers of another token run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::{self, Fixture, at};

/// How many investors hold the big token.
pub fn holders() -> usize {
    std::env::var("BENCH_HOLDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A token held by `n` investors, one unit each, made through the API: investors registered
/// by 32 clients at once, then issued to in batches of 8,000.
pub async fn big_token(base: &str, n: usize) -> anyhow::Result<(String, Vec<String>)> {
    let started = Instant::now();
    let (_, token) = load::token(base, "BIG", n + 10).await?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (next, base) = (next.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let http = libertum_testkit::client();
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(ids);
                }
                let investor: Value = load::post(
                    &http,
                    &format!("{base}/v1/tokens/investors"),
                    json!({"identity_ref": format!("idp|big-{i}"), "country": "DE",
                    "kyc_status": "verified", "kyc_expires_on": "2099-12-31", "accredited": true}),
                )
                .await?;
                ids.push(investor["id"].as_str().unwrap_or_default().to_owned());
            }
        }));
    }
    let mut investors = Vec::with_capacity(n);
    for task in tasks {
        investors.extend(task.await??);
    }
    let http = libertum_testkit::client();
    for chunk in investors.chunks(8_000) {
        let operations: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"op": "issue", "to": id, "amount": "1"}))
            .collect();
        load::post(
            &http,
            &format!("{base}/v1/tokens/{token}/batches"),
            json!({"mode": "independent", "operations": operations}),
        )
        .await?;
    }
    println!(
        "  a token with {} holders made in {:.1} s",
        investors.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((token, investors))
}

/// Latencies (ms) of `GET url` by one client, one request after the other, for `duration`.
async fn read_for(urls: Vec<String>, duration: Duration) -> anyhow::Result<Vec<f64>> {
    let http = libertum_testkit::client();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0;
    while started.elapsed() < duration {
        let url = &urls[i % urls.len()];
        i += 1;
        let sent = Instant::now();
        let answer = http.get(url).send().await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "GET {url}: {}",
            answer.status()
        );
        answer.bytes().await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    anyhow::ensure!(!latencies.is_empty(), "no read answered");
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Reads the big token's balances and cap table while `wrk` posts transfers of the fixture's
/// token, and prints p50/p99 of each.
pub fn run(
    client: &tokio::runtime::Runtime,
    base: &str,
    fixture: &Fixture,
    phase: Duration,
) -> anyhow::Result<()> {
    let (token, investors) = client.block_on(big_token(base, holders()))?;
    let writes = {
        let (base, script) = (base.to_owned(), load::transfer_script(fixture, "transfers"));
        std::thread::spawn(move || load::wrk(&base, &script, 64, phase))
    };
    // The transfers start before the reads are counted.
    std::thread::sleep(Duration::from_millis(500));
    let balances: Vec<String> = investors
        .iter()
        .step_by((investors.len() / 1_000).max(1))
        .map(|id| format!("{base}/v1/tokens/{token}/holders/{id}"))
        .collect();
    let mut sorted = investors.clone();
    sorted.sort();
    let pages: Vec<String> = sorted
        .iter()
        .step_by((sorted.len() / 1_000).max(1))
        .map(|after| format!("{base}/v1/tokens/{token}/holders?limit=100&after={after}"))
        .collect();
    let window = phase.saturating_sub(Duration::from_secs(2));
    // The floor under the same load: a request the product answers without reading anything.
    let floor = vec![format!("{base}/healthz")];
    let (balance, table, floor) = client.block_on(async {
        let balance = tokio::spawn(read_for(balances, window));
        let table = tokio::spawn(read_for(pages, window));
        let floor = tokio::spawn(read_for(floor, window));
        anyhow::Ok((balance.await??, table.await??, floor.await??))
    })?;
    let writes = writes
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
    writes.print("  transfers meanwhile (64 clients)");
    println!(
        "balance reads, {} holders, under transfers: p50 {:.2} ms  p99 {:.2} ms  ({} reads; target p99 < 5 ms)",
        investors.len(),
        at(&balance, 0.5),
        at(&balance, 0.99),
        balance.len()
    );
    println!(
        "cap table pages (100 of {} holders) under transfers: p50 {:.2} ms  p99 {:.2} ms  ({} reads; target p99 < 5 ms)",
        investors.len(),
        at(&table, 0.5),
        at(&table, 0.99),
        table.len()
    );
    println!(
        "  GET /healthz under the same transfers (the floor): p50 {:.2} ms  p99 {:.2} ms  ({} reads)",
        at(&floor, 0.5),
        at(&floor, 0.99),
        floor.len()
    );
    // The whole table, for scale (no load): every holder in one answer.
    let whole = client.block_on(read_for(
        vec![format!("{base}/v1/tokens/{token}/holders")],
        Duration::from_secs(2),
    ))?;
    println!(
        "  the whole cap table ({} rows) alone: p50 {:.2} ms  p99 {:.2} ms  ({} reads)",
        investors.len(),
        at(&whole, 0.5),
        at(&whole, 0.99),
        whole.len()
    );
    Ok(())
}
