//! ERC-3643 compliance modules over HTTP: holders per country, minimum transfer per country,
//! conditional transfers with agents' approvals, and agent restrictions.

mod common;

use std::time::Duration;

use common::{Server, send, spawn};
use libertum_platform::auth::Role;
use serde_json::{Value, json};

/// A bearer token for `subject` with `roles`.
fn bearer(subject: &str, roles: &[Role], investor: Option<&str>) -> String {
    libertum_testkit::signer().token(subject, roles, investor, Duration::from_secs(600))
}

async fn post_as(s: &Server, bearer: &str, path: &str, body: &Value) -> common::Reply {
    send(s.http.post(s.url(path)).bearer_auth(bearer).json(body)).await
}

#[tokio::test]
async fn country_caps_and_minimums_refuse_with_their_codes_and_the_rules_read_back() {
    let s = spawn().await;
    let rules =
        json!({"max_holders_by_country": {"DE": 1}, "min_transfer_by_country": {"FR": "50"}});
    let token = s.token("ast_m1", "MOD1", rules).await;
    let got = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(
        got.ok(200)["rules"]["max_holders_by_country"],
        json!({"DE": 1})
    );
    assert_eq!(
        got.body["rules"]["min_transfer_by_country"],
        json!({"FR": "50"})
    );
    let de1 = s.investor("DE", "verified").await;
    let de2 = s.investor("DE", "verified").await;
    let fr = s.investor("FR", "verified").await;
    s.issue(&token, &de1, "100").await;
    let issue = |to: &str, amount: &str| {
        s.post(
            &format!("/v1/tokens/{token}/issuances"),
            &json!({"to": to, "amount": amount}),
        )
    };
    issue(&de2, "10")
        .await
        .problem(409, "country_holders_reached", Some("to"));
    issue(&fr, "49")
        .await
        .problem(409, "below_country_minimum", Some("amount"));
    issue(&fr, "50").await.ok(200);
    // Malformed module rules name the field.
    let version = s.get(&format!("/v1/tokens/{token}")).await.body["version"]
        .as_u64()
        .unwrap();
    let put_rules = |rules: Value| {
        send(
            s.http
                .put(s.url(&format!("/v1/tokens/{token}/rules")))
                .header("if-match", format!("\"{version}\""))
                .json(&rules),
        )
    };
    put_rules(json!({"max_holders_by_country": {"DE": 0}}))
        .await
        .problem(
            422,
            "invalid_field",
            Some("rules.max_holders_by_country.DE"),
        );
    let bad = put_rules(json!({"max_holders_by_country": {"XX1": 3}})).await;
    assert_eq!(
        (bad.status.as_u16(), &bad.body["code"]),
        (422, &json!("invalid_field")),
        "{bad:?}"
    );
    put_rules(json!({"agent_restrictions": {"agent-2": ["mint"]}}))
        .await
        .problem(
            422,
            "invalid_field",
            Some("rules.agent_restrictions.agent-2"),
        );
    let got = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(
        got.ok(200)["version"],
        version,
        "refused rules change nothing"
    );
}

#[tokio::test]
async fn an_approved_transfer_passes_once_where_approval_is_required() {
    let s = spawn().await;
    let token = s
        .token(
            "ast_m2",
            "MOD2",
            json!({"transfer_approval_required": true}),
        )
        .await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    s.issue(&token, &a, "100").await;
    let investor = bearer("alice", &[Role::Investor], Some(&a));
    let transfers = format!("/v1/tokens/{token}/transfers");
    let body = json!({"from": a, "to": b, "amount": "30"});
    post_as(&s, &investor, &transfers, &body)
        .await
        .problem(409, "transfer_not_approved", None);
    // An investor cannot approve their own transfer.
    let approvals = format!("/v1/tokens/{token}/transfer-approvals");
    post_as(&s, &investor, &approvals, &body)
        .await
        .problem(403, "forbidden", None);
    let agent = bearer("agent-1", &[Role::TokenAgent], None);
    let approval = post_as(&s, &agent, &approvals, &body).await;
    let id = approval.ok(201)["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("apr_"), "{}", approval.body);
    let waiting = s.get(&approvals).await;
    assert_eq!(waiting.ok(200)["items"][0]["id"], id.as_str());
    let sent = post_as(&s, &investor, &transfers, &body).await;
    assert_eq!(sent.ok(200)["events"][0]["approval_id"], id.as_str());
    post_as(&s, &investor, &transfers, &body)
        .await
        .problem(409, "transfer_not_approved", None);
    assert_eq!(s.get(&approvals).await.body["items"], json!([]));
    // Revoking: an approval waiting, once; bad input changes nothing.
    let approval = post_as(
        &s,
        &agent,
        &approvals,
        &json!({"from": a, "to": b, "amount": "5"}),
    )
    .await;
    let id = approval.ok(201)["id"].as_str().unwrap().to_owned();
    let revoke = format!("{approvals}/{id}/revocation");
    post_as(&s, &agent, &revoke, &json!({})).await.ok(200);
    post_as(&s, &agent, &revoke, &json!({})).await.problem(
        404,
        "approval_not_found",
        Some("approval_id"),
    );
    post_as(
        &s,
        &agent,
        &approvals,
        &json!({"from": a, "to": b, "amount": "0"}),
    )
    .await
    .problem(422, "invalid_field", Some("amount"));
    post_as(&s, &agent, &approvals, &json!({"from": a, "to": b}))
        .await
        .problem(422, "invalid_field", Some("amount"));
    assert_eq!(s.get(&approvals).await.body["items"], json!([]));
    assert_eq!(s.balance(&token, &b).await, "30");
}

#[tokio::test]
async fn a_restricted_agent_is_refused_what_the_token_does_not_list_for_them() {
    let s = spawn().await;
    let token = s
        .token(
            "ast_m3",
            "MOD3",
            json!({"agent_restrictions": {"agent-2": ["issue", "redeem"]}}),
        )
        .await;
    let a = s.investor("DE", "verified").await;
    let restricted = bearer("agent-2", &[Role::TokenAgent], None);
    let other = bearer("agent-1", &[Role::TokenAgent], None);
    post_as(
        &s,
        &restricted,
        &format!("/v1/tokens/{token}/issuances"),
        &json!({"to": a, "amount": "10"}),
    )
    .await
    .ok(200);
    let pause = format!("/v1/tokens/{token}/pause");
    let refused = post_as(&s, &restricted, &pause, &json!({})).await;
    refused.problem(403, "agent_restricted", None);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("issue, redeem")
    );
    let batch = format!("/v1/tokens/{token}/batches");
    post_as(
        &s,
        &restricted,
        &batch,
        &json!({"operations": [{"op": "issue", "to": a, "amount": "1"}, {"op": "pause"}]}),
    )
    .await
    .problem(403, "agent_restricted", Some("operations[1]"));
    assert_eq!(s.balance(&token, &a).await, "10");
    // Another agent of the same role is not restricted.
    post_as(&s, &other, &pause, &json!({})).await.ok(200);
}
