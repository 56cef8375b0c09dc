//! Movements and their reversal over HTTP: the movements list and its filters, reversal by an
//! authorised role, once, idempotently, under today's rules, in a batch, and in a partitioned
//! service.

mod common;

use common::{Server, send, spawn, spawn_partitioned};
use libertum_platform::auth::Role;
use serde_json::{Value, json};

async fn as_role(s: &Server, roles: &[Role], path: &str, body: &Value) -> common::Reply {
    send(
        s.http
            .post(s.url(path))
            .bearer_auth(libertum_testkit::token(roles, None))
            .json(body),
    )
    .await
}

/// A token where `a` was issued 300 and sent 100 to `b`; the versions of both movements.
async fn setup(s: &Server, symbol: &str) -> (String, String, String, u64, u64) {
    let token = s.token(&format!("ast_{symbol}"), symbol, json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let issued = s.issue(&token, &a, "300").await["version"]
        .as_u64()
        .unwrap();
    let sent = s
        .post(
            &format!("/v1/tokens/{token}/transfers"),
            &json!({"from": a, "to": b, "amount": "100"}),
        )
        .await;
    let sent = sent.ok(200)["version"].as_u64().unwrap();
    (token, a, b, issued, sent)
}

/// The versions of a page of movements, and its next cursor.
async fn versions(s: &Server, token: &str, query: &str) -> (Vec<u64>, Value) {
    let page = s.get(&format!("/v1/tokens/{token}/movements{query}")).await;
    let page = page.ok(200);
    let versions = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_u64().unwrap())
        .collect();
    (versions, page["next_cursor"].clone())
}

#[tokio::test]
async fn a_transfer_is_reversed_once_by_a_compliance_officer_and_the_lists_say_so() {
    let s = spawn().await;
    let (token, a, b, issued, sent) = setup(&s, "REV1").await;
    let m = s.get(&format!("/v1/tokens/{token}/movements/{sent}")).await;
    let m = m.ok(200);
    assert_eq!(
        (&m["kind"], &m["from"], &m["to"], &m["amount"]),
        (&json!("transferred"), &json!(a), &json!(b), &json!("100"))
    );
    assert_eq!(m["reversed_by"], Value::Null);

    // Who may not: the token agent who makes movements, an investor, an auditor.
    let path = format!("/v1/tokens/{token}/movements/{sent}/reversal");
    let body = json!({"reason": "sent to the wrong investor"});
    for role in [Role::TokenAgent, Role::Auditor, Role::PaymentAgent] {
        as_role(&s, &[role], &path, &body)
            .await
            .problem(403, "forbidden", None);
    }
    assert_eq!(s.balance(&token, &b).await, "100");

    let reverse = || {
        send(
            s.http
                .post(s.url(&path))
                .bearer_auth(libertum_testkit::token(&[Role::ComplianceOfficer], None))
                .header("idempotency-key", "reverse-1")
                .json(&body),
        )
    };
    let reversed = reverse().await;
    let result = reversed.ok(200);
    let event = &result["events"][0];
    assert_eq!(event["change"], "reversed");
    assert_eq!(event["original"]["version"], sent);
    assert_eq!((&event["from"], &event["to"]), (&json!(b), &json!(a)));
    assert_eq!(event["reason"], "sent to the wrong investor");
    let reversal = result["version"].as_u64().unwrap();
    assert_eq!(
        (s.balance(&token, &a).await, s.balance(&token, &b).await),
        ("300".into(), "0".into())
    );

    // Once: a retry under the key gets the first answer; another request is refused.
    let again = reverse().await;
    assert_eq!(again.ok(200), &reversed.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    as_role(&s, &[Role::ComplianceOfficer], &path, &body)
        .await
        .problem(409, "already_reversed", Some("version"));
    as_role(
        &s,
        &[Role::PlatformAdmin],
        &format!("/v1/tokens/{token}/movements/{reversal}/reversal"),
        &body,
    )
    .await
    .problem(409, "reversal_not_reversible", Some("version"));
    assert_eq!(s.balance(&token, &a).await, "300");

    // Each names the other, and the lists filter on it.
    let m = s.get(&format!("/v1/tokens/{token}/movements/{sent}")).await;
    assert_eq!(m.ok(200)["reversed_by"], reversal);
    let r = s
        .get(&format!("/v1/tokens/{token}/movements/{reversal}"))
        .await;
    let r = r.ok(200);
    assert_eq!(
        (&r["kind"], &r["reverses"]),
        (&json!("reversed"), &json!(sent))
    );
    assert_eq!(versions(&s, &token, "").await.0, [issued, sent, reversal]);
    assert_eq!(versions(&s, &token, "?reversed=true").await.0, [sent]);
    assert_eq!(
        versions(&s, &token, "?reversed=false").await.0,
        [issued, reversal]
    );
}

#[tokio::test]
async fn bad_input_is_named_and_a_reversal_breaking_a_rule_changes_nothing() {
    let s = spawn().await;
    let (token, a, b, _, sent) = setup(&s, "REV2").await;
    let path = format!("/v1/tokens/{token}/movements/{sent}/reversal");
    s.post(&path, &json!({}))
        .await
        .problem(422, "invalid_field", Some("reason"));
    for reason in ["", "   "] {
        s.post(&path, &json!({"reason": reason})).await.problem(
            422,
            "invalid_field",
            Some("reason"),
        );
    }
    s.post(&path, &json!({"reason": "x", "amount": "1"}))
        .await
        .problem(422, "invalid_field", Some("amount"));
    // Version 1 is the token's creation: nothing moved.
    s.post(
        &format!("/v1/tokens/{token}/movements/1/reversal"),
        &json!({"reason": "x"}),
    )
    .await
    .problem(404, "movement_not_found", Some("version"));
    s.get(&format!("/v1/tokens/{token}/movements/999"))
        .await
        .problem(404, "movement_not_found", None);
    s.post(
        "/v1/tokens/tok_missing/movements/2/reversal",
        &json!({"reason": "x"}),
    )
    .await
    .problem(404, "token_not_found", None);
    s.get(&format!("/v1/tokens/{token}/movements?cursor=abc"))
        .await
        .problem(422, "invalid_field", Some("cursor"));
    s.get(&format!("/v1/tokens/{token}/movements?limit=0"))
        .await
        .problem(422, "invalid_field", Some("limit"));

    // Bob spent what he got: the reversal would break the balance rule, and changes nothing.
    let c = s.investor("DE", "verified").await;
    s.post(
        &format!("/v1/tokens/{token}/transfers"),
        &json!({"from": b, "to": c, "amount": "60"}),
    )
    .await
    .ok(200);
    let before = versions(&s, &token, "").await.0;
    s.post(&path, &json!({"reason": "x"})).await.problem(
        409,
        "insufficient_balance",
        Some("amount"),
    );
    s.post(
        &format!("/v1/tokens/{token}/freezes"),
        &json!({"investor_id": a}),
    )
    .await
    .ok(200);
    assert_eq!(versions(&s, &token, "").await.0, before);
    assert_eq!(s.balance(&token, &b).await, "40");
    assert_eq!(
        versions(&s, &token, "?reversed=true").await.0,
        Vec::<u64>::new()
    );
}

#[tokio::test]
async fn reversals_in_a_batch_need_both_rights_and_pages_follow_the_cursor() {
    let s = spawn().await;
    let (token, a, b, issued, sent) = setup(&s, "REV3").await;
    let mut made = vec![issued, sent];
    for _ in 0..4 {
        let reply = s
            .post(
                &format!("/v1/tokens/{token}/transfers"),
                &json!({"from": a, "to": b, "amount": "1"}),
            )
            .await;
        made.push(reply.ok(200)["version"].as_u64().unwrap());
    }
    let batch = format!("/v1/tokens/{token}/batches");
    let body = json!({"operations": [
        {"op": "reverse", "version": made[2], "reason": "duplicate booking"},
        {"op": "reverse", "version": made[3], "reason": "duplicate booking"},
    ]});
    // A token agent may batch but not reverse; a compliance officer may reverse but not batch.
    for role in [Role::TokenAgent, Role::ComplianceOfficer] {
        as_role(&s, &[role], &batch, &body)
            .await
            .problem(403, "forbidden", None);
    }
    let done = s.post(&batch, &body).await;
    let done = done.ok(200);
    assert_eq!(done["events"].as_array().map(Vec::len), Some(2));
    made.extend([
        done["version"].as_u64().unwrap() - 1,
        done["version"].as_u64().unwrap(),
    ]);
    assert_eq!(s.balance(&token, &b).await, "102");

    // Independent mode: a movement reversed already is refused alone, with its code.
    let independent = json!({"mode": "independent", "operations": [
        {"op": "reverse", "version": made[2], "reason": "again"},
        {"op": "reverse", "version": made[4], "reason": "late"},
    ]});
    let outcome = s.post(&batch, &independent).await;
    let results = &outcome.ok(200)["results"];
    assert_eq!(results[0]["code"], "already_reversed");
    assert_eq!(results[1]["status"], "applied");
    made.push(results[1]["version"].as_u64().unwrap());

    // Two at a time, in order, to the end.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let (page, next) = versions(&s, &token, &query).await;
        assert!(page.len() <= 2);
        seen.extend(page);
        match next.as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, made);
    assert_eq!(
        versions(&s, &token, "?reversed=true&limit=2").await.0,
        [made[2], made[3]]
    );
}

#[tokio::test]
async fn a_partitioned_service_reverses_from_the_token_partition_index() {
    let s = spawn_partitioned(4).await;
    let mut reversed = Vec::new();
    for n in 0..3 {
        let (token, a, _, _, sent) = setup(&s, &format!("REVP{n}")).await;
        s.post(
            &format!("/v1/tokens/{token}/movements/{sent}/reversal"),
            &json!({"reason": "partitioned"}),
        )
        .await
        .ok(200);
        assert_eq!(s.balance(&token, &a).await, "300");
        reversed.push((token, sent));
    }
    for (token, sent) in reversed {
        assert_eq!(versions(&s, &token, "?reversed=true").await.0, [sent]);
    }
}
