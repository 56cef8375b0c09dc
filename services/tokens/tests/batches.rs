//! Batches, distributions and cap tables as of an earlier moment, over HTTP.

mod common;

use std::time::Duration;

use common::{rows, send, spawn};
use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

/// A moment strictly between what happened before and what happens after.
async fn a_moment_between() -> OffsetDateTime {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(5)).await;
    t
}

#[tokio::test]
async fn a_batch_applies_everything_or_nothing_and_names_the_failing_item() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let p = s.investor("DE", "pending").await;
    let path = format!("/v1/tokens/{token}/batches");

    let failing = json!({"operations": [
        {"op": "issue", "to": a, "amount": "100"},
        {"op": "transfer", "from": a, "to": p, "amount": "10"},
        {"op": "issue", "to": b, "amount": "100"}
    ]});
    let reply = s.post(&path, &failing).await;
    let problem = reply.problem(409, "kyc_not_verified", Some("operations[1].to"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("operation 1:")
    );
    let (holders, supply) = s.cap_table(&token).await;
    assert_eq!(
        (holders.len(), supply.as_str()),
        (0, "0"),
        "nothing was applied"
    );
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["version"],
        1
    );

    // Later items see the effect of earlier ones.
    let fine = json!({"operations": [
        {"op": "issue", "to": a, "amount": "100"},
        {"op": "transfer", "from": a, "to": b, "amount": "60"},
        {"op": "freeze_amount", "investor_id": b, "amount": "10"},
        {"op": "redeem", "from": a, "amount": "40"}
    ]});
    let reply = s.post(&path, &fine).await;
    let body = reply.ok(200);
    let changes: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        ["issued", "transferred", "amount_frozen", "redeemed"]
    );
    assert_eq!(body["total_supply"], "60");
    assert_eq!(body["version"], 5);
    assert_eq!(s.balance(&token, &a).await, "0");
    assert_eq!(s.balance(&token, &b).await, "60");

    let over = json!({"operations": [
        {"op": "transfer", "from": b, "to": a, "amount": "50"},
        {"op": "transfer", "from": b, "to": a, "amount": "1"}
    ]});
    s.post(&path, &over).await.problem(
        409,
        "insufficient_unfrozen_balance",
        Some("operations[1].amount"),
    );
    s.post(&path, &json!({"operations": []})).await.problem(
        422,
        "invalid_field",
        Some("operations"),
    );
    let malformed = json!({"operations": [{"op": "pause"}, {"op": "melt", "amount": "1"}]});
    s.post(&path, &malformed)
        .await
        .problem(422, "invalid_field", Some("operations[1].op"));
    assert_eq!(s.balance(&token, &b).await, "60");
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["paused"],
        false
    );
}

#[tokio::test]
async fn a_distribution_splits_exactly_by_the_largest_remainder() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let mut investors = Vec::new();
    for country in ["DE", "FR", "IT"] {
        let id = s.investor(country, "verified").await;
        s.issue(&token, &id, "10").await;
        investors.push(id);
    }
    investors.sort();
    let record_date = a_moment_between().await;
    let body = json!({"total": "100", "currency": "EUR", "record_date": rfc3339(record_date), "memo": "Q1 rent"});
    let path = format!("/v1/tokens/{token}/distributions");
    let reply = send(
        s.http
            .post(s.url(&path))
            .header("idempotency-key", "q1")
            .json(&body),
    )
    .await;
    let paid = reply.ok(201).clone();
    assert!(paid["id"].as_str().unwrap().starts_with("dst_"));
    assert_eq!(paid["total"], "100");
    assert_eq!(paid["memo"], "Q1 rent");
    let allocations: Vec<(String, String, String)> = paid["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["investor_id"].as_str().unwrap().to_owned(),
                a["balance"].as_str().unwrap().to_owned(),
                a["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = investors
        .iter()
        .zip(["34", "33", "33"])
        .map(|(id, amount)| (id.clone(), "10".to_owned(), amount.to_owned()))
        .collect();
    assert_eq!(allocations, expected, "ties go to the lowest investor id");

    // A retry is the same distribution, not a second payment.
    let retry = send(
        s.http
            .post(s.url(&path))
            .header("idempotency-key", "q1")
            .json(&body),
    )
    .await;
    assert_eq!(retry.ok(201), &paid);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let mut other = body.clone();
    other["total"] = json!("200");
    send(
        s.http
            .post(s.url(&path))
            .header("idempotency-key", "q1")
            .json(&other),
    )
    .await
    .problem(422, "idempotency_key_reused", Some("Idempotency-Key"));
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["version"],
        5
    );
}

#[tokio::test]
async fn invalid_distributions_are_refused() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let before_any = a_moment_between().await;
    let a = s.investor("DE", "verified").await;
    s.issue(&token, &a, "10").await;
    let path = format!("/v1/tokens/{token}/distributions");
    let now = rfc3339(OffsetDateTime::now_utc());
    let body = |total: serde_json::Value, at: &str| json!({"total": total, "currency": "EUR", "record_date": at});
    s.post(&path, &body(json!("0"), &now))
        .await
        .problem(422, "invalid_field", Some("total"));
    s.post(&path, &body(json!(100), &now))
        .await
        .problem(422, "invalid_field", Some("total"));
    let future = rfc3339(OffsetDateTime::now_utc() + time::Duration::days(1));
    s.post(&path, &body(json!("100"), &future)).await.problem(
        422,
        "invalid_field",
        Some("record_date"),
    );
    s.post(&path, &body(json!("100"), "2026-01-01"))
        .await
        .problem(422, "invalid_field", Some("record_date"));
    s.post(&path, &body(json!("100"), &rfc3339(before_any)))
        .await
        .problem(409, "no_holders", Some("record_date"));
    s.post(
        "/v1/tokens/tok_missing/distributions",
        &body(json!("100"), &now),
    )
    .await
    .problem(404, "token_not_found", None);
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["version"],
        2
    );
}

#[tokio::test]
async fn holders_as_of_an_earlier_moment_show_the_balances_then() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let before_issue = a_moment_between().await;
    s.issue(&token, &a, "100").await;
    let after_issue = a_moment_between().await;
    s.post(
        &format!("/v1/tokens/{token}/transfers"),
        &json!({"from": a, "to": b, "amount": "25"}),
    )
    .await
    .ok(200);
    s.issue(&token, &b, "100").await;

    let at = |t: OffsetDateTime| {
        let url = s.url(&format!("/v1/tokens/{token}/holders"));
        send(s.http.get(url).query(&[("as_of", rfc3339(t))]))
    };
    let then = at(after_issue).await;
    let body = then.ok(200).clone();
    assert_eq!(rows(&body), [(a.clone(), "100".into(), "100.0000".into())]);
    assert_eq!(body["total_supply"], "100");
    assert_eq!(body["version"], json!(null));
    assert!(body["as_of"].is_string());
    let empty = at(before_issue).await;
    assert_eq!(empty.ok(200)["holders"], json!([]));
    assert_eq!(empty.body["total_supply"], "0");

    let (now, supply) = s.cap_table(&token).await;
    assert_eq!(supply, "200");
    let mut expected = vec![
        (a.clone(), "75".to_owned(), "37.5000".to_owned()),
        (b.clone(), "125".to_owned(), "62.5000".to_owned()),
    ];
    expected.sort();
    assert_eq!(now, expected);
    let latest = at(OffsetDateTime::now_utc()).await;
    assert_eq!(rows(latest.ok(200)), expected);

    s.get(&format!("/v1/tokens/{token}/holders?as_of=yesterday"))
        .await
        .problem(422, "invalid_field", Some("as_of"));
    s.get(&format!("/v1/tokens/{token}/holders?when=now"))
        .await
        .problem(400, "invalid_query", None);
}
