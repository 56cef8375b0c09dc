//! The product killed with SIGKILL in the middle of a stream of writes loses nothing it
//! acknowledged: after a restart every acknowledged request is there (a retry with its key is a
//! replay), supply equals the sum of balances, and the ledger catches up, verified and reconciled.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("addr").port()
}

fn start(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_libertum"))
        .env("LIBERTUM_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LIBERTUM_DATA_DIR", dir)
        .env("LIBERTUM_LOG", "warn")
        .env("LIBERTUM_RATE_LIMIT_PER_PRINCIPAL", "0")
        // A snapshot every second while anything happens: the kill may land in one, and the
        // restart reads the latest snapshot and the events after it.
        .env("LIBERTUM_SNAPSHOT_EVERY_EVENTS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the libertum binary starts")
}

async fn ready(http: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became ready");
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let r = http.post(&url).json(&body).send().await.expect("sent");
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(&url)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);
    // Once the product has started (and made its key): a token from `libertum token`, which
    // signs with the development key kept in the same data directory as the running product.
    ready(&reqwest::Client::new(), &base).await;
    let token = Command::new(env!("CARGO_BIN_EXE_libertum"))
        .args([
            "token",
            "--role",
            "platform_admin",
            "--subject",
            "kill-test",
        ])
        .env("LIBERTUM_DATA_DIR", dir.path())
        .output()
        .expect("libertum token runs");
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).expect("utf-8");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.trim()).parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    ready(&http, &base).await;

    let asset = post(
        &http,
        format!("{base}/v1/assets"),
        json!({"name": "Kill test", "kind": "real_estate", "legal_owner": "SPV",
        "location": {"address": "Street 1", "city": "Berlin", "country": "DE"}}),
    )
    .await;
    let asset_id = asset["id"].as_str().expect("id").to_owned();
    for action in ["submit", "approve"] {
        post(
            &http,
            format!("{base}/v1/assets/{asset_id}/transitions"),
            json!({"action": action}),
        )
        .await;
    }
    let spec = json!({"asset_id": asset_id, "symbol": "KILL", "name": "Kill", "decimals": 0, "max_supply": "1000000000", "unit_price": "1", "currency": "EUR"});
    let token = loop {
        let r = http
            .post(format!("{base}/v1/tokens"))
            .json(&spec)
            .send()
            .await
            .expect("sent");
        if r.status().is_success() {
            break r.json::<Value>().await.expect("json");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let token_id = token["id"].as_str().expect("id").to_owned();
    let mut investors = Vec::new();
    for who in ["alice", "bob"] {
        let investor = post(&http, format!("{base}/v1/tokens/investors"), json!({"identity_ref": format!("idp|{who}"), "country": "DE", "kyc_status": "verified", "kyc_expires_on": "2099-01-01"})).await;
        investors.push(investor["id"].as_str().expect("id").to_owned());
    }

    // 16 clients issue one unit at a time, each request with its own key, until the kill.
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let url = format!("{base}/v1/tokens/{token_id}/issuances");
    let mut clients = Vec::new();
    for c in 0..16 {
        // Half the clients issue to alice, half to bob.
        let to = investors[c % 2].clone();
        let (http, url, acknowledged) = (http.clone(), url.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("kill-{c}-{i}");
                let body = json!({"to": to, "amount": "1"});
                let sent = http
                    .post(&url)
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        acknowledged.lock().expect("lock").push((key, body))
                    }
                    _ => break,
                }
            }
        }));
    }
    // Long enough for snapshots to be taken during the stream (one a second).
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for client in clients {
        client.await.expect("client ends");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 50,
        "the stream was under way when killed ({} acknowledged)",
        acknowledged.len()
    );

    let mut child = start(dir.path(), port);
    ready(&http, &base).await;
    let holders = get(&http, format!("{base}/v1/tokens/{token_id}/holders")).await;
    let supply: u64 = holders["total_supply"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("supply");
    let rows = holders["holders"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "both investors hold tokens");
    let balances: u64 = rows
        .iter()
        .map(|h| {
            h["balance"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .expect("balance")
        })
        .sum();
    assert_eq!(supply, balances, "supply equals the sum of balances");
    assert!(
        supply >= acknowledged.len() as u64,
        "every acknowledged issuance survived: {supply} < {}",
        acknowledged.len()
    );
    // At most the requests in flight at the kill were committed without an answer.
    assert!(
        supply <= acknowledged.len() as u64 + 16,
        "nothing was applied twice"
    );
    for (key, body) in &acknowledged {
        let r = http
            .post(&url)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("sent");
        let status = r.status();
        let replayed = r.headers().get("idempotent-replayed").cloned();
        assert!(
            status.is_success(),
            "{key} retried after the restart: {status} {}",
            r.text().await.unwrap_or_default()
        );
        assert_eq!(
            replayed.as_ref().map(|v| v.as_bytes()),
            Some(&b"true"[..]),
            "{key} was durable with its response"
        );
    }
    let after = get(&http, format!("{base}/v1/tokens/{token_id}/holders")).await;
    assert_eq!(
        after["total_supply"], holders["total_supply"],
        "replays applied nothing"
    );
    // The history on disk came through too: the cap table as of now, read from the index,
    // is the one in memory.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let past = get(
        &http,
        format!("{base}/v1/tokens/{token_id}/holders?as_of={now}"),
    )
    .await;
    let balances = |v: &Value| -> Vec<(Value, Value)> {
        v["holders"]
            .as_array()
            .expect("holders")
            .iter()
            .map(|h| (h["investor_id"].clone(), h["balance"].clone()))
            .collect()
    };
    assert_eq!(balances(&past), balances(&after), "{past}");

    let mut reconciled = Value::Null;
    for _ in 0..100 {
        reconciled = get(&http, format!("{base}/v1/ledger/reconciliation")).await;
        if reconciled["matched"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reconciled["matched"], true, "{reconciled}");
    let verification = get(&http, format!("{base}/v1/ledger/verification")).await;
    assert_eq!(verification["valid"], true, "{verification}");
    child.kill().expect("stopped");
    child.wait().expect("reaped");
}
