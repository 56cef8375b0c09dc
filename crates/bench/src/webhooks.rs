//! Webhook delivery (issue 17): 10 subscribers, each subscribed to every event, while transfers
//! are recorded at 1,000 events/s (batches of 100 transfers, ten a second); how long after its
//! event (the entry's `timestamp`, the time the tokens service decided it) each delivery reached
//! its subscriber, over every delivery of the phase.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::Path, routing::post};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::load::{self, Fixture, at};

const SUBSCRIBERS: usize = 10;
/// Events a second (`BENCH_WEBHOOK_RATE`, default 1,000), in batches of 100 transfers.
fn rate() -> usize {
    load::setting("BENCH_WEBHOOK_RATE", 1_000)
}

pub fn run(
    client: &tokio::runtime::Runtime,
    base: &str,
    fixture: &Fixture,
    phase: Duration,
) -> anyhow::Result<()> {
    let rate = rate();
    // Each delivery: its subscriber, its sequence number, and how late it came in ms.
    let got: Arc<Mutex<Vec<(usize, u64, f64)>>> = Default::default();
    let receiver = {
        let got = got.clone();
        let app = axum::Router::new().route(
            "/s/{n}",
            post(move |Path(n): Path<usize>, body: Bytes| {
                let got = got.clone();
                async move {
                    let now = OffsetDateTime::now_utc();
                    let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let at = payload["timestamp"]
                        .as_str()
                        .and_then(|t| {
                            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or(now);
                    let seq = payload["data"]["seq"].as_u64().unwrap_or_default();
                    got.lock()
                        .unwrap()
                        .push((n, seq, (now - at).as_seconds_f64() * 1e3));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        client.block_on(async { libertum_testkit::serve(app).await })
    };
    let first_seq = client.block_on(async {
        let http = libertum_testkit::client();
        for n in 0..SUBSCRIBERS {
            load::post(
                &http,
                &format!("{base}/v1/events/subscriptions"),
                json!({"url": format!("{receiver}/s/{n}")}),
            )
            .await?;
        }
        let head: Value = http
            .get(format!("{base}/v1/ledger/head"))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(head["seq"].as_u64().unwrap_or_default() + 1)
    })?;
    // The dispatcher looks for new subscriptions every second.
    std::thread::sleep(Duration::from_millis(1_500));
    let sent = client.block_on(async {
        let http = libertum_testkit::client();
        let investors = &fixture.investors;
        let batches = (phase.as_secs_f64() * rate as f64 / 100.0).round() as usize;
        let every = Duration::from_secs_f64(100.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut sent = 0;
        for b in 0..batches {
            tokio::time::sleep_until(start + every * b as u32).await;
            let operations: Vec<Value> = (0..100)
                .map(|i| {
                    let a = (b * 100 + i) % investors.len();
                    json!({"op": "transfer", "from": investors[a],
                        "to": investors[(a + 1) % investors.len()], "amount": "1"})
                })
                .collect();
            let answer = load::post(
                &http,
                &format!("{base}/v1/tokens/{}/batches", fixture.token_id),
                json!({"operations": operations}),
            )
            .await?;
            sent += answer["events"].as_array().map_or(0, Vec::len);
        }
        anyhow::Ok(sent)
    })?;
    let expected = sent * SUBSCRIBERS;
    let waiting = Instant::now();
    loop {
        let delivered = got
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.1 >= first_seq)
            .count();
        if delivered >= expected || waiting.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let deliveries = got.lock().unwrap().clone();
    let mut late: Vec<f64> = deliveries
        .iter()
        .filter(|d| d.1 >= first_seq)
        .map(|d| d.2)
        .collect();
    anyhow::ensure!(!late.is_empty(), "no webhook was delivered");
    late.sort_by(f64::total_cmp);
    let within = late.iter().filter(|ms| **ms <= 1_000.0).count();
    println!(
        "webhooks, {SUBSCRIBERS} subscribers, {sent} events over {} s ({:.0}/s): {} of {expected} delivered; after their event p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms; {:.2}% within 1 s (target: within 1 s)",
        phase.as_secs(),
        sent as f64 / phase.as_secs_f64(),
        late.len(),
        at(&late, 0.5),
        at(&late, 0.99),
        late[late.len() - 1],
        100.0 * within as f64 / late.len() as f64,
    );
    Ok(())
}
