//! Compliance rules, idempotent movements and concurrent requests over HTTP.

mod common;

use common::{Reply, Server, investor_body, send, spawn};
use serde_json::{Value, json};

fn transfer(from: &str, to: &str, amount: &str) -> Value {
    json!({"from": from, "to": to, "amount": amount})
}

async fn post(s: &Server, token: &str, what: &str, body: Value) -> Reply {
    s.post(&format!("/v1/tokens/{token}/{what}"), &body).await
}

#[tokio::test]
async fn lockup_blocks_voluntary_transfers_but_not_redemption_or_recovery() {
    let s = spawn().await;
    let token = s
        .token("ast_1", "LOCK1", json!({"lockup_seconds": 3600}))
        .await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let issued = s.issue(&token, &a, "100").await;
    assert!(issued["events"][0]["locked_until"].is_string());
    let holding = s.get(&format!("/v1/tokens/{token}/holders/{a}")).await;
    assert_eq!(holding.ok(200)["locked"], "100");
    assert_eq!(holding.body["transferable"], "0");

    post(&s, &token, "transfers", transfer(&a, &b, "1"))
        .await
        .problem(409, "lockup_active", Some("amount"));
    post(
        &s,
        &token,
        "redemptions",
        json!({"from": a, "amount": "10"}),
    )
    .await
    .ok(200);
    let recovery = json!({"from": a, "to": b, "amount": "20", "reason": "lost keys"});
    post(&s, &token, "forced-transfers", recovery).await.ok(200);
    assert_eq!(s.balance(&token, &a).await, "70");
    assert_eq!(s.balance(&token, &b).await, "20");
    let holding = s.get(&format!("/v1/tokens/{token}/holders/{a}")).await;
    assert_eq!(holding.ok(200)["locked"], "70");
}

#[tokio::test]
async fn eligibility_rules_refuse_receivers_with_their_code() {
    let s = spawn().await;
    let token = s
        .token(
            "ast_1",
            "RULES1",
            json!({"allowed_countries": ["DE", "FR"], "denied_countries": ["FR"], "require_accreditation": true}),
        )
        .await;
    let mut accredited = investor_body("DE", "verified");
    accredited["accredited"] = json!(true);
    let a = s.post("/v1/tokens/investors", &accredited).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = s.investor("DE", "verified").await;
    accredited["country"] = json!("FR");
    accredited["identity_ref"] = json!("idp-accredited-fr");
    let french = s.post("/v1/tokens/investors", &accredited).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    accredited["country"] = json!("US");
    accredited["identity_ref"] = json!("idp-accredited-us");
    let american = s.post("/v1/tokens/investors", &accredited).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    accredited["country"] = json!("DE");
    accredited["identity_ref"] = json!("idp-accredited-expired");
    accredited["kyc_expires_on"] = json!("2020-01-01");
    let expired = s.post("/v1/tokens/investors", &accredited).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let refusals = [
        (&plain, "accreditation_required"),
        (&french, "country_not_allowed"),
        (&american, "country_not_allowed"),
        (&expired, "kyc_expired"),
    ];
    for (to, code) in refusals {
        post(&s, &token, "issuances", json!({"to": to, "amount": "1"}))
            .await
            .problem(409, code, Some("to"));
    }
    s.issue(&token, &a, "10").await;
    assert_eq!(s.cap_table(&token).await.1, "10");
}

#[tokio::test]
async fn limits_on_balance_holders_and_daily_sending_apply() {
    let s = spawn().await;
    let rules = json!({"max_balance": "150", "max_holders": 2, "daily_transfer_limit": "50"});
    let token = s.token("ast_1", "LIMIT1", rules).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("DE", "verified").await;
    let c = s.investor("DE", "verified").await;
    s.issue(&token, &a, "100").await;
    s.issue(&token, &b, "40").await;
    post(&s, &token, "issuances", json!({"to": c, "amount": "1"}))
        .await
        .problem(409, "max_holders_reached", Some("to"));
    // b sends everything to c: b leaves as c joins, so there are still two holders.
    post(&s, &token, "transfers", transfer(&b, &c, "40"))
        .await
        .ok(200);
    post(&s, &token, "issuances", json!({"to": a, "amount": "51"}))
        .await
        .problem(409, "max_balance_exceeded", Some("amount"));

    post(&s, &token, "transfers", transfer(&a, &c, "30"))
        .await
        .ok(200);
    post(&s, &token, "transfers", transfer(&a, &c, "21"))
        .await
        .problem(409, "transfer_limit_exceeded", Some("amount"));
    let holding = s.get(&format!("/v1/tokens/{token}/holders/{a}")).await;
    assert_eq!(holding.ok(200)["sent_today"], "30");
    post(&s, &token, "transfers", transfer(&a, &b, "1"))
        .await
        .problem(409, "max_holders_reached", Some("to"));

    let (rows, supply) = s.cap_table(&token).await;
    assert_eq!(supply, "140");
    let mut expected = vec![
        (a.clone(), "70".to_owned(), "50.0000".to_owned()),
        (c.clone(), "70".to_owned(), "50.0000".to_owned()),
    ];
    expected.sort();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn a_retried_issuance_mints_once() {
    let s = spawn().await;
    let token = s.token("ast_1", "RETRY1", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let url = s.url(&format!("/v1/tokens/{token}/issuances"));
    let body = json!({"to": a, "amount": "100"});
    let mut handles = Vec::new();
    for _ in 0..8 {
        let request = s
            .http
            .post(&url)
            .header("idempotency-key", "mint-1")
            .json(&body);
        handles.push(tokio::spawn(send(request)));
    }
    let mut replies = Vec::new();
    for handle in handles {
        replies.push(handle.await.expect("joined"));
    }
    let first = replies[0].ok(200).clone();
    for reply in &replies {
        assert_eq!(reply.ok(200), &first);
    }
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 7, "all but one are replays");
    assert_eq!(first["total_supply"], "100");
    assert_eq!(s.balance(&token, &a).await, "100");
}

#[tokio::test]
async fn concurrent_transfers_never_overdraw() {
    let s = spawn().await;
    let token = s.token("ast_1", "RACE1", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    s.issue(&token, &a, "300").await;
    let url = s.url(&format!("/v1/tokens/{token}/transfers"));
    let mut handles = Vec::new();
    for _ in 0..10 {
        let request = s.http.post(&url).json(&transfer(&a, &b, "50"));
        handles.push(tokio::spawn(send(request)));
    }
    let (mut done, mut refused) = (0, 0);
    for handle in handles {
        let reply = handle.await.expect("joined");
        if reply.status.as_u16() == 200 {
            done += 1;
        } else {
            reply.problem(409, "insufficient_balance", Some("amount"));
            refused += 1;
        }
    }
    assert_eq!((done, refused), (6, 4));
    assert_eq!(s.balance(&token, &a).await, "0");
    assert_eq!(s.balance(&token, &b).await, "300");
    let view = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(view.ok(200)["version"], 8, "created, issued, six transfers");
    assert_eq!(view.body["holders"], 1);
}
