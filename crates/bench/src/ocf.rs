//! The Open Cap Format export (issue 17): a token with `BENCH_OCF_HOLDERS` holders (10,000)
//! and `BENCH_OCF_MOVEMENTS` movements in all (100,000: an issuance to each holder, then
//! transfers between them), exported whole with `GET /v1/tokens/{id}/ocf` three times; the
//! median time of one export and its size.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::{self, setting};

pub fn run(client: &tokio::runtime::Runtime, base: &str) -> anyhow::Result<()> {
    let holders = setting("BENCH_OCF_HOLDERS", 10_000);
    let movements = setting("BENCH_OCF_MOVEMENTS", 100_000).max(holders);
    let setup = Instant::now();
    let token_id = client.block_on(async {
        let http = libertum_testkit::client();
        let (_, token_id) = load::token(base, "OCFBENCH", holders + 10).await?;
        let mut investors = Vec::with_capacity(holders);
        for i in 0..holders {
            let investor = load::post(
                &http,
                &format!("{base}/v1/tokens/investors"),
                json!({"identity_ref": format!("idp|ocf-{i}"), "country": "DE",
                "kyc_status": "verified", "kyc_expires_on": "2099-12-31", "accredited": true}),
            )
            .await?;
            investors.push(investor["id"].as_str().unwrap_or_default().to_owned());
        }
        let batches = format!("{base}/v1/tokens/{token_id}/batches");
        for chunk in investors.chunks(1_000) {
            let operations: Vec<Value> = chunk
                .iter()
                .map(|id| json!({"op": "issue", "to": id, "amount": "1000000"}))
                .collect();
            load::post(&http, &batches, json!({"operations": operations})).await?;
        }
        // Past the one-second lock-up.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let transfers = movements - holders;
        let mut done = 0;
        while done < transfers {
            let operations: Vec<Value> = (done..(done + 1_000).min(transfers))
                .map(|i| {
                    let a = (i * 7_919) % holders;
                    let b = (a + 1 + i % (holders - 1)) % holders;
                    json!({"op": "transfer", "from": investors[a], "to": investors[b], "amount": "1"})
                })
                .collect();
            done += operations.len();
            load::post(&http, &batches, json!({"mode": "independent", "operations": operations}))
                .await?;
        }
        anyhow::Ok(token_id)
    })?;
    let setup = setup.elapsed();
    let mut runs = Vec::new();
    let mut size = 0;
    let mut transactions = 0;
    for _ in 0..3 {
        let (took, bytes, count) = client.block_on(async {
            let http = libertum_testkit::client();
            let started = Instant::now();
            let response = http
                .get(format!("{base}/v1/tokens/{token_id}/ocf"))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "the export answered {}",
                response.status()
            );
            let body = response.bytes().await?;
            let took = started.elapsed();
            let bundle: Value = serde_json::from_slice(&body)?;
            let text = bundle["files"]["Transactions.ocf.json"]
                .as_str()
                .unwrap_or_default();
            let count = text.matches("\"object_type\"").count();
            anyhow::Ok((took, body.len(), count))
        })?;
        runs.push(took.as_secs_f64());
        size = bytes;
        transactions = count;
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "OCF export, {holders} holders, {movements} movements ({transactions} OCF transactions, {:.1} MB): median {:.2} s (runs {:.2} / {:.2} / {:.2} s; set up in {:.0} s) (target: under 2 s)",
        size as f64 / 1e6,
        runs[1],
        runs[0],
        runs[1],
        runs[2],
        setup.as_secs_f64()
    );
    Ok(())
}
