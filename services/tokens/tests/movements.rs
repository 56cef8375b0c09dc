//! Issuance, transfers, redemptions, the dry run, freezes, pauses and forced transfers over HTTP.

mod common;

use common::{Server, spawn};
use serde_json::{Value, json};

/// A token with two verified investors `a` and `b` and a pending one `p`; `a` holds 300, `b` 100.
async fn setup(s: &Server) -> (String, String, String, String) {
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let p = s.investor("DE", "pending").await;
    s.issue(&token, &a, "300").await;
    s.issue(&token, &b, "100").await;
    (token, a, b, p)
}

fn transfer(from: &str, to: &str, amount: &str) -> Value {
    json!({"from": from, "to": to, "amount": amount})
}

#[tokio::test]
async fn issue_transfer_and_redeem_move_balances_and_supply() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;

    let issued = s.issue(&token, &a, "300").await;
    assert_eq!(issued["token_id"], token.as_str());
    assert_eq!(issued["total_supply"], "300");
    assert_eq!(issued["version"], 2);
    assert_eq!(issued["events"][0]["change"], "issued");
    assert_eq!(issued["events"][0]["amount"], "300");

    let reply = s
        .post(
            &format!("/v1/tokens/{token}/transfers"),
            &transfer(&a, &b, "100"),
        )
        .await;
    let moved = reply.ok(200);
    assert_eq!(moved["total_supply"], "300");
    assert_eq!(moved["events"][0]["change"], "transferred");
    assert_eq!(moved["events"][0]["forced"], false);

    let reply = s
        .post(
            &format!("/v1/tokens/{token}/redemptions"),
            &json!({"from": a, "amount": "50"}),
        )
        .await;
    assert_eq!(reply.ok(200)["total_supply"], "250");
    assert_eq!(reply.body["events"][0]["change"], "redeemed");

    let (rows, supply) = s.cap_table(&token).await;
    assert_eq!(supply, "250");
    let mut expected = vec![
        (a.clone(), "150".to_owned(), "60.0000".to_owned()),
        (b.clone(), "100".to_owned(), "40.0000".to_owned()),
    ];
    expected.sort();
    assert_eq!(rows, expected, "sorted by investor, with shares of supply");

    let holding = s.get(&format!("/v1/tokens/{token}/holders/{a}")).await;
    let h = holding.ok(200);
    assert_eq!(h["balance"], "150");
    assert_eq!(h["transferable"], "150");
    assert_eq!(h["locked"], "0");
    assert_eq!(h["frozen"], false);
    assert_eq!(h["sent_today"], "100");
    assert_eq!(h["sent_this_month"], "100");
    let token_view = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(token_view.ok(200)["holders"], 2);
    assert_eq!(token_view.body["version"], 4);

    s.get(&format!("/v1/tokens/{token}/holders/inv_missing"))
        .await
        .problem(404, "investor_not_found", None);
    s.get("/v1/tokens/tok_missing/holders")
        .await
        .problem(404, "token_not_found", None);
}

#[tokio::test]
async fn the_dry_run_answers_and_changes_nothing() {
    let s = spawn().await;
    let (token, a, b, p) = setup(&s).await;
    let check = format!("/v1/tokens/{token}/transfers/check");
    let before = s.get(&format!("/v1/tokens/{token}")).await.ok(200).clone();

    let yes = s.post(&check, &transfer(&a, &b, "300")).await;
    assert_eq!(
        yes.ok(200),
        &json!({"allowed": true, "code": null, "message": null, "field": null})
    );
    let no = s.post(&check, &transfer(&a, &p, "10")).await;
    let body = no.ok(200);
    assert_eq!(body["allowed"], false);
    assert_eq!(body["code"], "kyc_not_verified");
    assert_eq!(body["field"], "to");
    assert!(body["message"].is_string());
    let too_much = s.post(&check, &transfer(&a, &b, "301")).await;
    assert_eq!(too_much.ok(200)["code"], "insufficient_balance");
    assert_eq!(too_much.body["field"], "amount");
    let unknown = s.post(&check, &transfer(&a, "inv_missing", "1")).await;
    assert_eq!(unknown.ok(200)["code"], "investor_not_found");
    s.post(
        "/v1/tokens/tok_missing/transfers/check",
        &transfer(&a, &b, "1"),
    )
    .await
    .problem(404, "token_not_found", None);

    // The allowed one was not carried out.
    assert_eq!(s.get(&format!("/v1/tokens/{token}")).await.ok(200), &before);
    assert_eq!(s.balance(&token, &a).await, "300");
    assert_eq!(s.balance(&token, &b).await, "100");
}

#[tokio::test]
async fn a_refused_transfer_is_a_409_problem_and_moves_nothing() {
    let s = spawn().await;
    let (token, a, b, p) = setup(&s).await;
    let path = format!("/v1/tokens/{token}/transfers");
    s.post(&path, &transfer(&a, &p, "10"))
        .await
        .problem(409, "kyc_not_verified", Some("to"));
    s.post(&path, &transfer(&p, &a, "10"))
        .await
        .problem(409, "kyc_not_verified", Some("from"));
    s.post(&path, &transfer(&b, &a, "101")).await.problem(
        409,
        "insufficient_balance",
        Some("amount"),
    );
    s.post(&path, &transfer(&a, &a, "1"))
        .await
        .problem(422, "invalid_field", Some("to"));
    s.post(&path, &transfer(&a, &b, "0"))
        .await
        .problem(422, "invalid_field", Some("amount"));
    s.post(&path, &transfer(&a, "inv_missing", "1"))
        .await
        .problem(404, "investor_not_found", Some("to"));
    s.post(
        &format!("/v1/tokens/{token}/issuances"),
        &json!({"to": p, "amount": "5"}),
    )
    .await
    .problem(409, "kyc_not_verified", Some("to"));
    s.post(
        &format!("/v1/tokens/{token}/issuances"),
        &json!({"to": a, "amount": "999601"}),
    )
    .await
    .problem(409, "supply_cap_exceeded", Some("amount"));

    assert_eq!(s.balance(&token, &a).await, "300");
    assert_eq!(s.balance(&token, &b).await, "100");
    assert_eq!(s.balance(&token, &p).await, "0");
    let view = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(view.ok(200)["total_supply"], "400");
    assert_eq!(view.body["version"], 3);
}

#[tokio::test]
async fn amounts_beyond_u128_or_not_strings_are_refused() {
    let s = spawn().await;
    let (token, a, b, _) = setup(&s).await;
    let huge = "340282366920938463463374607431768211456";
    for (path, body) in [
        ("issuances", json!({"to": a, "amount": huge})),
        ("transfers", transfer(&a, &b, huge)),
        ("redemptions", json!({"from": a, "amount": huge})),
        ("transfers", json!({"from": a, "to": b, "amount": 10})),
        ("transfers", transfer(&a, &b, "-1")),
        ("transfers", transfer(&a, &b, "010")),
    ] {
        s.post(&format!("/v1/tokens/{token}/{path}"), &body)
            .await
            .problem(422, "invalid_field", Some("amount"));
    }
    // 2^128 - 1 parses, and is then over the cap.
    s.post(
        &format!("/v1/tokens/{token}/issuances"),
        &json!({"to": a, "amount": u128::MAX.to_string()}),
    )
    .await
    .problem(409, "supply_cap_exceeded", Some("amount"));
    assert_eq!(s.cap_table(&token).await.1, "400");
}

#[tokio::test]
async fn freezing_an_investor_or_an_amount_blocks_movements_until_lifted() {
    let s = spawn().await;
    let (token, a, b, _) = setup(&s).await;
    let t = |p: &str| format!("/v1/tokens/{token}/{p}");

    let reply = s.post(&t("freezes"), &json!({"investor_id": b})).await;
    assert_eq!(reply.ok(200)["events"][0]["change"], "investor_frozen");
    s.post(&t("freezes"), &json!({"investor_id": b}))
        .await
        .problem(409, "already_frozen", None);
    s.post(&t("transfers"), &transfer(&a, &b, "10"))
        .await
        .problem(409, "receiver_frozen", Some("to"));
    s.post(&t("transfers"), &transfer(&b, &a, "10"))
        .await
        .problem(409, "sender_frozen", Some("from"));
    let holders = s.get(&t("holders")).await;
    let row = holders.ok(200)["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["investor_id"] == b.as_str())
        .cloned()
        .expect("b is listed");
    assert_eq!(row["frozen"], true);
    s.post(&t("unfreezes"), &json!({"investor_id": b}))
        .await
        .ok(200);
    s.post(&t("unfreezes"), &json!({"investor_id": b}))
        .await
        .problem(409, "not_frozen", None);
    s.post(&t("transfers"), &transfer(&a, &b, "10"))
        .await
        .ok(200);

    // Freeze 250 of a's 290: only 40 can move.
    let reply = s
        .post(&t("freezes"), &json!({"investor_id": a, "amount": "250"}))
        .await;
    assert_eq!(reply.ok(200)["events"][0]["change"], "amount_frozen");
    let holding = s.get(&t(&format!("holders/{a}"))).await;
    assert_eq!(holding.ok(200)["frozen_amount"], "250");
    assert_eq!(holding.body["transferable"], "40");
    assert_eq!(holding.body["frozen"], false);
    s.post(&t("transfers"), &transfer(&a, &b, "41"))
        .await
        .problem(409, "insufficient_unfrozen_balance", Some("amount"));
    s.post(&t("freezes"), &json!({"investor_id": a, "amount": "41"}))
        .await
        .problem(409, "insufficient_unfrozen_balance", Some("amount"));
    s.post(&t("unfreezes"), &json!({"investor_id": a, "amount": "251"}))
        .await
        .problem(409, "insufficient_frozen_amount", Some("amount"));
    s.post(&t("transfers"), &transfer(&a, &b, "40"))
        .await
        .ok(200);
    s.post(&t("unfreezes"), &json!({"investor_id": a, "amount": "250"}))
        .await
        .ok(200);
    let holding = s.get(&t(&format!("holders/{a}"))).await;
    assert_eq!(holding.ok(200)["frozen_amount"], "0");
    assert_eq!(holding.body["transferable"], "250");
    assert_eq!(s.balance(&token, &b).await, "150");
}

#[tokio::test]
async fn a_paused_token_moves_only_by_forced_transfer() {
    let s = spawn().await;
    let (token, a, b, p) = setup(&s).await;
    let t = |p: &str| format!("/v1/tokens/{token}/{p}");

    let reply = s.post(&t("pause"), &json!({})).await;
    assert_eq!(reply.ok(200)["events"][0]["change"], "paused");
    let view = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(view.ok(200)["paused"], true);
    s.post(&t("pause"), &json!({}))
        .await
        .problem(409, "already_paused", None);
    s.post(&t("transfers"), &transfer(&a, &b, "10"))
        .await
        .problem(409, "token_paused", None);
    s.post(&t("issuances"), &json!({"to": a, "amount": "1"}))
        .await
        .problem(409, "token_paused", None);

    // The agent's forced transfer ignores the pause, but not the receiver's eligibility.
    let forced = json!({"from": a, "to": b, "amount": "120", "reason": "lost keys recovered"});
    let reply = s.post(&t("forced-transfers"), &forced).await;
    let event = &reply.ok(200)["events"][0];
    assert_eq!(event["change"], "transferred");
    assert_eq!(event["forced"], true);
    assert_eq!(event["reason"], "lost keys recovered");
    let to_pending = json!({"from": a, "to": p, "amount": "1", "reason": "recovery"});
    s.post(&t("forced-transfers"), &to_pending)
        .await
        .problem(409, "kyc_not_verified", Some("to"));
    let no_reason = json!({"from": a, "to": b, "amount": "1", "reason": " "});
    s.post(&t("forced-transfers"), &no_reason)
        .await
        .problem(422, "invalid_field", Some("reason"));

    s.post(&t("unpause"), &json!({})).await.ok(200);
    s.post(&t("unpause"), &json!({}))
        .await
        .problem(409, "not_paused", None);
    s.post(&t("pause"), &json!({"now": true}))
        .await
        .problem(422, "invalid_field", Some("now"));
    s.post(&t("transfers"), &transfer(&a, &b, "10"))
        .await
        .ok(200);
    assert_eq!(s.balance(&token, &a).await, "170");
    assert_eq!(s.balance(&token, &b).await, "230");
    // A forced transfer is not counted against the sender's own sending.
    let holding = s.get(&t(&format!("holders/{a}"))).await;
    assert_eq!(holding.ok(200)["sent_today"], "10");
}
