//! Hold expiry (issue 17): holds placed ahead through the API, their deadlines spread evenly
//! over the phase, expiring while transfers of the same token run; how late after its
//! deadline each expiry was recorded (the `closed_at` of its record, read back afterwards).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::load::{self, Fixture, at};

/// How many holds expire during the phase (`BENCH_EXPIRING_HOLDS`, default 5,000).
fn expiring() -> usize {
    load::setting("BENCH_EXPIRING_HOLDS", 5_000)
}

fn time_of(v: &Value) -> anyhow::Result<OffsetDateTime> {
    let text = v
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("not a time: {v}"))?;
    Ok(OffsetDateTime::parse(text, &Rfc3339)?)
}

pub fn run(
    client: &tokio::runtime::Runtime,
    base: &str,
    fixture: &Fixture,
    phase: Duration,
) -> anyhow::Result<()> {
    let n = expiring();
    // Placing them takes a moment; the first deadline is after it.
    let lead = Duration::from_secs(5);
    let first = OffsetDateTime::now_utc() + lead;
    let step = phase.as_secs_f64() / n as f64;
    let placed_at = Instant::now();
    let holds: Vec<String> = client.block_on(async {
        let http = libertum_testkit::client();
        let investors = &fixture.investors;
        let mut ids = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let operations: Vec<Value> = chunk
                .iter()
                .map(|&i| {
                    let deadline = first + time::Duration::seconds_f64(i as f64 * step);
                    json!({"op": "place_hold",
                        "from": investors[i % investors.len()],
                        "to": investors[(i + 1) % investors.len()],
                        "amount": "1",
                        "expires_at": deadline.format(&Rfc3339).unwrap_or_default()})
                })
                .collect();
            let answer = load::post(
                &http,
                &format!("{base}/v1/tokens/{}/batches", fixture.token_id),
                json!({"operations": operations}),
            )
            .await?;
            for event in answer["events"].as_array().into_iter().flatten() {
                ids.push(event["hold"]["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        anyhow::Ok(ids)
    })?;
    anyhow::ensure!(holds.len() == n, "{} holds placed of {n}", holds.len());
    let placing = placed_at.elapsed();
    anyhow::ensure!(
        placing < lead,
        "placing {n} holds took {:.1} s, past the first deadline",
        placing.as_secs_f64()
    );
    // Transfers of the same token from the first deadline to the last, and a second after.
    std::thread::sleep(lead - placing);
    let writes = load::wrk(
        base,
        &load::transfer_script(fixture, "transfers"),
        64,
        phase + Duration::from_secs(1),
    )?;
    writes.print("  transfers meanwhile (64 clients)");
    // Every record read back: expired, and how late.
    let (mut late_ms, pending) = client.block_on(async {
        let mut tasks = Vec::new();
        for part in holds.chunks(holds.len().div_ceil(8)) {
            let urls: Vec<String> = part
                .iter()
                .map(|id| format!("{base}/v1/tokens/{}/holds/{id}", fixture.token_id))
                .collect();
            tasks.push(tokio::spawn(async move {
                let http = libertum_testkit::client();
                let (mut late, mut pending) = (Vec::new(), 0usize);
                for url in urls {
                    let record: Value = http.get(&url).send().await?.json().await?;
                    if record["status"] != "expired" {
                        pending += 1;
                        continue;
                    }
                    let lateness = time_of(&record["closed_at"])? - time_of(&record["expires_at"])?;
                    late.push(lateness.as_seconds_f64() * 1e3);
                }
                anyhow::Ok((late, pending))
            }));
        }
        let (mut late, mut pending) = (Vec::new(), 0);
        for task in tasks {
            let (l, p) = task.await??;
            late.extend(l);
            pending += p;
        }
        anyhow::Ok((late, pending))
    })?;
    anyhow::ensure!(!late_ms.is_empty(), "no hold expired");
    late_ms.sort_by(f64::total_cmp);
    println!(
        "hold expiry, {n} holds due over {} s ({:.0}/s) under transfers: late by p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms; {} not expired (target: within 1 s)",
        phase.as_secs(),
        n as f64 / phase.as_secs_f64(),
        at(&late_ms, 0.5),
        at(&late_ms, 0.99),
        late_ms[late_ms.len() - 1],
        pending
    );
    Ok(())
}
