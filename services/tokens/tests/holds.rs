//! Holds and settlements against payment over HTTP: placing, posting, voiding, expiry (also
//! across a restart), roles, bulk posting, and what balances and the cap table say meanwhile.

mod common;

use std::time::Duration;

use common::{Server, in_a_life_of_its_own, send, spawn};
use libertum_platform::auth::Role;
use serde_json::{Value, json};
use time::OffsetDateTime;

fn in_seconds(seconds: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A token where `a` holds 300 and `b` nothing yet.
async fn setup(s: &Server) -> (String, String, String) {
    let token = s.token("ast_1", "HOLD1", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    s.issue(&token, &a, "300").await;
    (token, a, b)
}

async fn as_role(
    s: &Server,
    roles: &[Role],
    investor: Option<&str>,
    path: &str,
    body: &Value,
) -> common::Reply {
    send(
        s.http
            .post(s.url(path))
            .bearer_auth(libertum_testkit::token(roles, investor))
            .json(body),
    )
    .await
}

/// Places a hold on `token` as the platform admin; its id.
async fn place(s: &Server, token: &str, body: &Value) -> String {
    let reply = s.post(&format!("/v1/tokens/{token}/holds"), body).await;
    reply.ok(201)["id"].as_str().expect("a hold id").to_owned()
}

async fn holding(s: &Server, token: &str, investor: &str) -> Value {
    s.get(&format!("/v1/tokens/{token}/holders/{investor}"))
        .await
        .ok(200)
        .clone()
}

#[tokio::test]
async fn a_hold_reserves_then_posts_in_part_and_its_record_stays_readable() {
    let s = spawn().await;
    let (token, a, b) = setup(&s).await;
    let reply = s
        .post(
            &format!("/v1/tokens/{token}/holds"),
            &json!({"from": a, "to": b, "amount": "120", "expires_at": in_seconds(600)}),
        )
        .await;
    let hold = reply.ok(201).clone();
    let id = hold["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("hld_"), "{hold}");
    assert_eq!(hold["status"], "pending");
    assert_eq!(hold["amount"], "120");

    // One consistent answer: the balance still includes what is held.
    let h = holding(&s, &token, &a).await;
    assert_eq!(
        (
            &h["balance"],
            &h["held"],
            &h["available"],
            &h["transferable"]
        ),
        (&json!("300"), &json!("120"), &json!("180"), &json!("180"))
    );
    let table = s.get(&format!("/v1/tokens/{token}/holders")).await;
    assert_eq!(table.ok(200)["holders"][0]["held"], "120");
    s.post(
        &format!("/v1/tokens/{token}/transfers"),
        &json!({"from": a, "to": b, "amount": "181"}),
    )
    .await
    .problem(409, "insufficient_unheld_balance", Some("amount"));
    let listed = s.get(&format!("/v1/tokens/{token}/holds")).await;
    assert_eq!(listed.ok(200)["items"][0]["id"], id.as_str());

    let post_once = || {
        send(
            s.http
                .post(s.url(&format!("/v1/tokens/{token}/holds/{id}/post")))
                .header("idempotency-key", "post-h1")
                .json(&json!({"amount": "100"})),
        )
    };
    let posted = post_once().await;
    let events = &posted.ok(200)["events"];
    // A retry under the same key gets the first answer back, though the hold is closed now.
    let again = post_once().await;
    assert_eq!(again.ok(200), &posted.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(events[0]["change"], "hold_posted");
    assert_eq!(events[0]["released"], "20");
    assert_eq!(s.balance(&token, &a).await, "200");
    assert_eq!(s.balance(&token, &b).await, "100");
    assert_eq!(holding(&s, &token, &a).await["held"], "0");

    // Closed: read back from the index, and not postable again.
    let record = s.get(&format!("/v1/tokens/{token}/holds/{id}")).await;
    let record = record.ok(200);
    assert_eq!(
        (&record["status"], &record["posted"], &record["released"]),
        (&json!("posted"), &json!("100"), &json!("20"))
    );
    assert!(record["closed_at"].is_string());
    s.post(
        &format!("/v1/tokens/{token}/holds/{id}/void"),
        &json!({"reason": "late"}),
    )
    .await
    .problem(409, "hold_not_pending", Some("hold_id"));
    s.get(&format!("/v1/tokens/{token}/holds/hld_missing"))
        .await
        .problem(404, "hold_not_found", None);
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}/holds")).await.ok(200)["items"],
        json!([])
    );
}

#[tokio::test]
async fn bad_holds_are_refused_naming_the_field_and_change_nothing() {
    let s = spawn().await;
    let (token, a, b) = setup(&s).await;
    let path = format!("/v1/tokens/{token}/holds");
    for (body, status, code, field) in [
        (
            json!({"from": a, "to": b, "amount": "10", "expires_at": in_seconds(-1)}),
            422,
            "invalid_field",
            "expires_at",
        ),
        (
            json!({"from": a, "to": b, "amount": "10", "expires_at": "tomorrow"}),
            422,
            "invalid_field",
            "expires_at",
        ),
        (
            json!({"from": a, "to": b, "amount": "0", "expires_at": in_seconds(60)}),
            422,
            "invalid_field",
            "amount",
        ),
        (
            json!({"from": a, "to": b, "amount": "301", "expires_at": in_seconds(60)}),
            409,
            "insufficient_balance",
            "amount",
        ),
        (
            json!({"from": a, "to": b, "amount": "10", "expires_at": in_seconds(60), "payment": {"currency": "EUR", "amount": "0", "reference": "x"}}),
            422,
            "invalid_field",
            "payment.amount",
        ),
        (
            json!({"from": a, "to": b, "amount": "10", "expires_at": in_seconds(60), "extra": 1}),
            422,
            "invalid_field",
            "extra",
        ),
    ] {
        let reply = s.post(&path, &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.body["code"], code, "{body}: {}", reply.body);
        assert!(
            reply.body["field"]
                .as_str()
                .is_some_and(|f| f.contains(field)),
            "{body}: {}",
            reply.body
        );
    }
    let h = holding(&s, &token, &a).await;
    assert_eq!((&h["held"], &h["balance"]), (&json!("0"), &json!("300")));
    assert_eq!(s.get(&path).await.ok(200)["items"], json!([]));
}

#[tokio::test]
async fn a_settlement_moves_tokens_only_when_the_payment_agent_confirms() {
    let s = spawn().await;
    let (token, a, b) = setup(&s).await;
    let hold = s
        .post(
            &format!("/v1/tokens/{token}/holds"),
            &json!({"from": a, "to": b, "amount": "50", "expires_at": in_seconds(600),
                    "payment": {"currency": "EUR", "amount": "500000", "reference": "wire 7"}}),
        )
        .await
        .ok(201)
        .clone();
    let id = hold["id"].as_str().unwrap();
    assert_eq!(hold["payment"]["reference"], "wire 7");
    let base = format!("/v1/tokens/{token}/holds/{id}");
    // Not by hand, and not by a token agent.
    s.post(&format!("{base}/post"), &json!({}))
        .await
        .problem(409, "payment_not_confirmed", None);
    as_role(
        &s,
        &[Role::TokenAgent],
        None,
        &format!("{base}/payment-confirmation"),
        &json!({"confirmation": "x"}),
    )
    .await
    .problem(403, "forbidden", None);
    // A payment agent cannot post or place holds either.
    as_role(
        &s,
        &[Role::PaymentAgent],
        None,
        &format!("{base}/post"),
        &json!({}),
    )
    .await
    .problem(403, "forbidden", None);
    let confirmed = as_role(
        &s,
        &[Role::PaymentAgent],
        None,
        &format!("{base}/payment-confirmation"),
        &json!({"confirmation": "camt.054 7781"}),
    )
    .await;
    let event = &confirmed.ok(200)["events"][0];
    assert_eq!(event["change"], "hold_posted");
    assert_eq!(event["payment"]["amount"], "500000");
    assert_eq!(event["payment"]["confirmation"], "camt.054 7781");
    assert_eq!(s.balance(&token, &b).await, "50");
    let record = s.get(&base).await;
    assert_eq!(record.ok(200)["payment_confirmation"], "camt.054 7781");

    // A rejected payment voids the settlement.
    let second = place(
        &s,
        &token,
        &json!({"from": a, "to": b, "amount": "20", "expires_at": in_seconds(600),
                    "payment": {"currency": "EUR", "amount": "200000", "reference": "wire 8"}}),
    )
    .await;
    as_role(
        &s,
        &[Role::PaymentAgent],
        None,
        &format!("/v1/tokens/{token}/holds/{second}/payment-rejection"),
        &json!({"reason": "returned by the bank"}),
    )
    .await
    .ok(200);
    let record = s.get(&format!("/v1/tokens/{token}/holds/{second}")).await;
    assert_eq!(record.ok(200)["status"], "voided");
    assert_eq!(holding(&s, &token, &a).await["held"], "0");
}

#[tokio::test]
async fn investors_place_holds_on_their_own_holdings_and_read_only_their_own() {
    let s = spawn().await;
    let (token, a, b) = setup(&s).await;
    let c = s.investor("DE", "verified").await;
    let path = format!("/v1/tokens/{token}/holds");
    let body = json!({"from": a, "to": b, "amount": "10", "expires_at": in_seconds(600)});
    as_role(&s, &[Role::Investor], Some(&b), &path, &body)
        .await
        .problem(403, "not_your_holding", None);
    let placed = as_role(&s, &[Role::Investor], Some(&a), &path, &body).await;
    let id = placed.ok(201)["id"].as_str().unwrap().to_owned();
    let read = |investor: String| {
        send(
            s.http
                .get(s.url(&format!("{path}/{id}")))
                .bearer_auth(libertum_testkit::token(&[Role::Investor], Some(&investor))),
        )
    };
    read(a.clone()).await.ok(200);
    read(b.clone()).await.ok(200);
    read(c.clone()).await.problem(403, "not_your_holding", None);
    // The list is staff only; an investor cannot post their own hold.
    send(
        s.http
            .get(s.url(&path))
            .bearer_auth(libertum_testkit::token(&[Role::Investor], Some(&a))),
    )
    .await
    .problem(403, "forbidden", None);
    as_role(
        &s,
        &[Role::Investor],
        Some(&a),
        &format!("{path}/{id}/post"),
        &json!({}),
    )
    .await
    .problem(403, "forbidden", None);
}

#[tokio::test]
async fn holds_post_and_void_in_bulk_each_on_its_own() {
    let s = spawn().await;
    let (token, a, b) = setup(&s).await;
    let placed = s
        .post(
            &format!("/v1/tokens/{token}/batches"),
            &json!({"operations": [
                {"op": "place_hold", "from": a, "to": b, "amount": "10", "expires_at": in_seconds(600)},
                {"op": "place_hold", "from": a, "to": b, "amount": "20", "expires_at": in_seconds(600)},
                {"op": "place_hold", "from": a, "to": b, "amount": "30", "expires_at": in_seconds(600)},
            ]}),
        )
        .await;
    let ids: Vec<String> = placed.ok(200)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["hold"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.iter().all(|id| id.starts_with("hld_")),
        "named by the service: {ids:?}"
    );
    let settled = s
        .post(
            &format!("/v1/tokens/{token}/batches"),
            &json!({"mode": "independent", "operations": [
                {"op": "post_hold", "hold_id": ids[0]},
                {"op": "void_hold", "hold_id": ids[1], "reason": "cancelled"},
                {"op": "post_hold", "hold_id": ids[0]},
                {"op": "post_hold", "hold_id": ids[2], "amount": "5"},
            ]}),
        )
        .await;
    let results = &settled.ok(200)["results"];
    let statuses: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["applied", "applied", "refused", "applied"]);
    assert_eq!(results[2]["code"], "hold_not_pending");
    assert_eq!(s.balance(&token, &b).await, "15");
    assert_eq!(s.balance(&token, &a).await, "285");
    assert_eq!(holding(&s, &token, &a).await["held"], "0");
}

/// Waits up to `within` for the hold to be expired by the service's own clock.
async fn expired(s: &Server, token: &str, hold: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let record = s.get(&format!("/v1/tokens/{token}/holds/{hold}")).await;
        if record.ok(200)["status"] == "expired" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_hold_expires_without_a_request_and_gives_the_amount_back() {
    let s = spawn().await;
    let (token, a, b) = setup(&s).await;
    let id = place(
        &s,
        &token,
        &json!({"from": a, "to": b, "amount": "70", "expires_at": in_seconds(1)}),
    )
    .await;
    assert!(
        expired(&s, &token, &id, Duration::from_secs(10)).await,
        "expired on its own"
    );
    let record = s.get(&format!("/v1/tokens/{token}/holds/{id}")).await;
    assert_eq!(record.ok(200)["closed_by"], "system:hold-expiry");
    let h = holding(&s, &token, &a).await;
    assert_eq!((&h["held"], &h["available"]), (&json!("0"), &json!("300")));
}

#[tokio::test]
async fn a_hold_due_while_the_service_was_down_expires_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (token, a, id) = in_a_life_of_its_own(async move {
        let s = common::serve(
            common::open_partitioned(&path, 4).await,
            tempfile::tempdir().unwrap(),
        )
        .await;
        let (token, a, b) = setup(&s).await;
        let id = place(
            &s,
            &token,
            &json!({"from": a, "to": b, "amount": "70", "expires_at": in_seconds(2)}),
        )
        .await;
        (token, a, id)
    });
    // Down past the deadline.
    std::thread::sleep(Duration::from_millis(2_500));
    let s = common::serve(
        common::open_partitioned(dir.path(), 4).await,
        tempfile::tempdir().unwrap(),
    )
    .await;
    assert!(
        expired(&s, &token, &id, Duration::from_secs(10)).await,
        "expired after the restart"
    );
    assert_eq!(holding(&s, &token, &a).await["held"], "0");
}
