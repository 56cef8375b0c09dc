//! Token classes and investors over HTTP.

mod common;

use common::{investor_body, send, spawn, token_body};
use serde_json::json;

#[tokio::test]
async fn a_token_is_created_for_an_approved_asset() {
    let s = spawn().await;
    s.approve("ast_1").await;
    let mut body = token_body("ast_1", "FRIED123");
    body["rules"] = json!({"allowed_countries": ["DE", "FR"], "max_holders": 10});
    let reply = s.post("/v1/tokens", &body).await;
    let created = reply.ok(201).clone();
    let id = created["id"].as_str().expect("id");
    assert!(id.starts_with("tok_"), "{id}");
    assert_eq!(created["asset_id"], "ast_1");
    assert_eq!(created["symbol"], "FRIED123");
    assert_eq!(created["decimals"], 0);
    assert_eq!(created["max_supply"], "1000000");
    assert_eq!(created["unit_price"], "10000");
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["total_supply"], "0");
    assert_eq!(created["holders"], 0);
    assert_eq!(created["paused"], false);
    assert_eq!(created["version"], 1);
    assert_eq!(created["rules"]["allowed_countries"], json!(["DE", "FR"]));
    assert_eq!(created["rules"]["max_holders"], 10);
    assert_eq!(created["rules"]["lockup_seconds"], 0);

    let got = s.get(&format!("/v1/tokens/{id}")).await;
    assert_eq!(got.ok(200), &created);
    assert_eq!(got.header("etag"), Some("\"1\""));
    let list = s.get("/v1/tokens").await;
    assert_eq!(list.ok(200)["items"], json!([created]));
    assert_eq!(list.body["next_cursor"], json!(null));
    s.get("/v1/tokens/tok_missing")
        .await
        .problem(404, "token_not_found", None);

    // The asset now has its token class.
    s.post("/v1/tokens", &token_body("ast_1", "OTHER1"))
        .await
        .problem(409, "asset_already_tokenized", Some("asset_id"));
}

#[tokio::test]
async fn a_token_for_an_asset_not_approved_is_refused() {
    let s = spawn().await;
    s.post("/v1/tokens", &token_body("ast_unknown", "FRIED123"))
        .await
        .problem(409, "asset_not_approved", Some("asset_id"));
    assert_eq!(s.get("/v1/tokens").await.ok(200)["items"], json!([]));
}

#[tokio::test]
async fn a_symbol_is_unique() {
    let s = spawn().await;
    s.token("ast_1", "FRIED123", json!({})).await;
    s.approve("ast_2").await;
    s.post("/v1/tokens", &token_body("ast_2", "FRIED123"))
        .await
        .problem(409, "symbol_taken", Some("symbol"));
    // The refusal left the asset free for a token with another symbol.
    s.post("/v1/tokens", &token_body("ast_2", "FRIED124"))
        .await
        .ok(201);
}

#[tokio::test]
async fn invalid_token_specs_name_the_field() {
    let s = spawn().await;
    s.approve("ast_1").await;
    let cases = [
        ("decimals", json!(19), "decimals"),
        ("symbol", json!("fried"), "symbol"),
        ("symbol", json!("1FRIED"), "symbol"),
        ("name", json!("  "), "name"),
        ("max_supply", json!("0"), "max_supply"),
        ("max_supply", json!(1000), "max_supply"),
        (
            "max_supply",
            json!("1000000000000000000000000000000000001"),
            "max_supply",
        ),
        ("currency", json!("eur"), "currency"),
        ("decimals", json!(256), "decimals"),
    ];
    for (key, value, field) in cases {
        let mut body = token_body("ast_1", "FRIED123");
        body[key] = value;
        s.post("/v1/tokens", &body)
            .await
            .problem(422, "invalid_field", Some(field));
    }
    let mut body = token_body("ast_1", "FRIED123");
    body["rules"] = json!({"max_holders": 0});
    s.post("/v1/tokens", &body)
        .await
        .problem(422, "invalid_field", Some("rules.max_holders"));
    body["rules"] = json!({"max_holdrs": 5});
    s.post("/v1/tokens", &body)
        .await
        .problem(422, "invalid_field", Some("rules.max_holdrs"));
    assert_eq!(s.get("/v1/tokens").await.ok(200)["items"], json!([]));
}

#[tokio::test]
async fn rules_are_replaced_with_if_match() {
    let s = spawn().await;
    let id = s.token("ast_1", "FRIED123", json!({})).await;
    let path = format!("/v1/tokens/{id}/rules");
    let rules = json!({"denied_countries": ["US"], "lockup_seconds": 3600});
    let reply = send(s.http.put(s.url(&path)).json(&rules)).await;
    reply.problem(428, "if_match_required", Some("If-Match"));
    let reply = send(
        s.http
            .put(s.url(&path))
            .header("if-match", "\"1\"")
            .json(&rules),
    )
    .await;
    let body = reply.ok(200);
    assert_eq!(body["version"], 2);
    assert_eq!(body["rules"]["denied_countries"], json!(["US"]));
    assert_eq!(body["rules"]["lockup_seconds"], 3600);
    let reply = send(
        s.http
            .put(s.url(&path))
            .header("if-match", "\"1\"")
            .json(&json!({})),
    )
    .await;
    reply.problem(412, "version_mismatch", None);
    let got = s.get(&format!("/v1/tokens/{id}")).await;
    assert_eq!(got.ok(200)["rules"]["lockup_seconds"], 3600);
    assert_eq!(got.header("etag"), Some("\"2\""));
}

#[tokio::test]
async fn investors_are_registered_read_and_listed() {
    let s = spawn().await;
    let mut body = investor_body("DE", "verified");
    body["identity_ref"] = json!("  idp-123  ");
    body["accredited"] = json!(true);
    body["wallet"] = json!("0xabc");
    let reply = s.post("/v1/tokens/investors", &body).await;
    let created = reply.ok(201).clone();
    let id = created["id"].as_str().expect("id");
    assert!(id.starts_with("inv_"), "{id}");
    assert_eq!(created["identity_ref"], "idp-123");
    assert_eq!(created["country"], "DE");
    assert_eq!(created["kyc_status"], "verified");
    assert_eq!(created["kyc_expires_on"], "2099-12-31");
    assert_eq!(created["accredited"], true);
    assert_eq!(created["wallet"], "0xabc");
    assert_eq!(created["version"], 1);

    let got = s.get(&format!("/v1/tokens/investors/{id}")).await;
    assert_eq!(got.ok(200), &created);
    assert_eq!(got.header("etag"), Some("\"1\""));
    s.get("/v1/tokens/investors/inv_missing")
        .await
        .problem(404, "investor_not_found", None);

    let b = s.investor("FR", "pending").await;
    let c = s.investor("IT", "rejected").await;
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let first = s.get("/v1/tokens/investors?limit=2").await;
    assert_eq!(ids(first.ok(200)), [id, b.as_str()]);
    assert_eq!(first.body["next_cursor"], "2");
    let second = s.get("/v1/tokens/investors?limit=2&cursor=2").await;
    assert_eq!(ids(second.ok(200)), [c.as_str()]);
    assert_eq!(second.body["next_cursor"], json!(null));
    s.get("/v1/tokens/investors?limit=500")
        .await
        .problem(422, "invalid_field", Some("limit"));
}

#[tokio::test]
async fn a_verified_kyc_needs_an_expiry_date() {
    let s = spawn().await;
    let mut body = investor_body("DE", "verified");
    body["kyc_expires_on"] = json!(null);
    s.post("/v1/tokens/investors", &body).await.problem(
        422,
        "invalid_field",
        Some("kyc_expires_on"),
    );
    body["kyc_status"] = json!("approved");
    s.post("/v1/tokens/investors", &body)
        .await
        .problem(422, "invalid_field", Some("kyc_status"));
    let mut body = investor_body("DE", "pending");
    body["identity_ref"] = json!("");
    s.post("/v1/tokens/investors", &body)
        .await
        .problem(422, "invalid_field", Some("identity_ref"));
    assert_eq!(
        s.get("/v1/tokens/investors").await.ok(200)["items"],
        json!([])
    );
}

#[tokio::test]
async fn an_investor_is_changed_with_if_match() {
    let s = spawn().await;
    let id = s.investor("DE", "pending").await;
    let path = format!("/v1/tokens/investors/{id}");

    s.patch(&path, "\"1\"", &json!({"kyc_status": "verified"}))
        .await
        .problem(422, "invalid_field", Some("kyc_expires_on"));
    let reply = send(
        s.http
            .patch(s.url(&path))
            .json(&json!({"accredited": true})),
    )
    .await;
    reply.problem(428, "if_match_required", Some("If-Match"));

    let reply = s
        .patch(
            &path,
            "\"1\"",
            &json!({"kyc_status": "verified", "kyc_expires_on": "2030-06-30", "accredited": true}),
        )
        .await;
    let updated = reply.ok(200).clone();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["kyc_status"], "verified");
    assert_eq!(updated["kyc_expires_on"], "2030-06-30");
    assert_eq!(updated["accredited"], true);
    assert_eq!(updated["country"], "DE", "absent fields keep their value");

    s.patch(&path, "\"1\"", &json!({"country": "FR"}))
        .await
        .problem(412, "version_mismatch", None);
    let got = s.get(&path).await;
    assert_eq!(got.ok(200), &updated);
    assert_eq!(got.header("etag"), Some("\"2\""));
    s.patch("/v1/tokens/investors/inv_missing", "\"1\"", &json!({}))
        .await
        .problem(404, "investor_not_found", None);
}
