//! The lifecycle, documents and valuations of an asset over HTTP.

mod common;

use std::{sync::Arc, time::Duration};

use common::{Server, asset, document, spawn};
use libertum_domain::{Amount, Currency, Id, token};
use libertum_events::{CloudEvent, TOKENS_SOURCE, TOKENS_TOPIC, Topics};
use libertum_store::{Commit, EventStore, InProcessBus, RedbStore};
use serde_json::{Value, json};

async fn move_by(s: &Server, id: &str, body: Value) -> common::Reply {
    common::send(
        s.http
            .post(s.url(&format!("/v1/assets/{id}/transitions")))
            .bearer_auth(libertum_testkit::signer().token(
                "reviewer-1",
                &[libertum_platform::auth::Role::PlatformAdmin],
                None,
                std::time::Duration::from_secs(60),
            ))
            .json(&body),
    )
    .await
}

/// Publishes a `token.created` event for `asset_id` on a tokens topic the assets service consumes,
/// as the tokens service would, and waits until the asset is tokenized.
async fn tokenize(s: &Server, asset_id: &str) -> Value {
    let tokens_store = Arc::new(RedbStore::open(s.dir.path(), "tokens").expect("tokens store"));
    let now = time::OffsetDateTime::now_utc();
    let event = token::Event {
        at: now,
        actor: Id::from("issuer-1"),
        change: token::Change::TokenCreated {
            spec: token::TokenSpec {
                id: Id::from("tok_test"),
                asset_id: Id::from(asset_id),
                symbol: "FRIED123".into(),
                name: "Friedrich 123".into(),
                decimals: 0,
                max_supply: Amount(1_000),
                unit_price: Amount(10_000),
                currency: "EUR".parse::<Currency>().expect("currency"),
                rules: token::Rules::default(),
            },
            created_at: None,
        },
    };
    let envelope = CloudEvent::new(
        "ev_token_created".into(),
        TOKENS_SOURCE,
        "token",
        "created",
        now,
        "tok_test",
        1,
        1,
        "issuer-1",
        &event,
    )
    .expect("envelope");
    tokens_store
        .commit(Commit {
            expected_head: 0,
            events: vec![envelope.to_bytes()],
            ..Commit::default()
        })
        .await
        .expect("commit");
    let bus = InProcessBus::new();
    bus.attach(TOKENS_TOPIC, tokens_store);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(
        s.assets
            .consumer(Arc::new(bus), &Topics::default())
            .run(stopped),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = s.get(&format!("/v1/assets/{asset_id}")).await;
        if got.ok(200)["status"] == "tokenized" {
            return got.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not tokenized in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_lifecycle_move_is_recorded_with_actor_and_reason() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    // (action, reason, expected status, expected version)
    let moves = [
        ("submit", None, "submitted", 2),
        ("reject", Some("appraisal missing"), "rejected", 3),
        ("reopen", None, "draft", 4),
        ("submit", None, "submitted", 5),
        ("approve", None, "approved", 6),
    ];
    for (action, reason, status, version) in moves {
        let reply = move_by(&s, &id, json!({"action": action, "reason": reason})).await;
        let body = reply.ok(200);
        assert_eq!(body["status"], status, "after {action}");
        assert_eq!(body["version"], version, "after {action}");
    }
    let tokenized = tokenize(&s, &id).await;
    assert_eq!(tokenized["token_id"], "tok_test");
    assert_eq!(tokenized["version"], 7);
    let moves = [
        ("suspend", "court order", "suspended", 8),
        ("reactivate", "order lifted", "tokenized", 9),
        ("suspend", "court order", "suspended", 10),
        ("retire", "building sold", "retired", 11),
    ];
    for (action, reason, status, version) in moves {
        let reply = move_by(&s, &id, json!({"action": action, "reason": reason})).await;
        assert_eq!(reply.ok(200)["status"], status, "after {action}");
        assert_eq!(reply.body["version"], version, "after {action}");
    }

    let got = s.get(&format!("/v1/assets/{id}")).await;
    let history = got.ok(200)["history"].as_array().expect("history").clone();
    let steps: Vec<(&str, &str)> = history
        .iter()
        .map(|h| (h["from"].as_str().unwrap(), h["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("draft", "submitted"),
            ("submitted", "rejected"),
            ("rejected", "draft"),
            ("draft", "submitted"),
            ("submitted", "approved"),
            ("approved", "tokenized"),
            ("tokenized", "suspended"),
            ("suspended", "tokenized"),
            ("tokenized", "suspended"),
            ("suspended", "retired"),
        ]
    );
    assert_eq!(history[0]["actor"], "reviewer-1");
    assert_eq!(history[0]["reason"], json!(null));
    assert_eq!(history[1]["reason"], "appraisal missing");
    assert_eq!(history[5]["actor"], "issuer-1");
    assert_eq!(history[9]["reason"], "building sold");
    assert_eq!(got.body["token_id"], "tok_test");
}

#[tokio::test]
async fn a_rejected_asset_can_be_retired_but_not_an_approved_one() {
    let s = spawn().await;
    let a = s.register(&asset("A", "real_estate", "Berlin")).await;
    s.transition(&a, "submit").await;
    s.transition(&a, "approve").await;
    // A token class may be on its way for an approved asset: retiring it could race with that.
    move_by(&s, &a, json!({"action": "retire", "reason": "sold"}))
        .await
        .problem(409, "illegal_transition", None);
    let b = s.register(&asset("B", "real_estate", "Berlin")).await;
    s.transition(&b, "submit").await;
    s.transition(&b, "reject").await;
    assert_eq!(s.transition(&b, "retire").await["status"], "retired");
}

#[tokio::test]
async fn an_illegal_move_is_409_and_changes_nothing() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    for action in [
        "approve",
        "reject",
        "reopen",
        "suspend",
        "reactivate",
        "retire",
    ] {
        move_by(&s, &id, json!({"action": action, "reason": "because"}))
            .await
            .problem(409, "illegal_transition", None);
    }
    s.transition(&id, "submit").await;
    move_by(&s, &id, json!({"action": "submit"}))
        .await
        .problem(409, "illegal_transition", None);
    let got = s.get(&format!("/v1/assets/{id}")).await;
    assert_eq!(got.ok(200)["status"], "submitted");
    assert_eq!(got.body["version"], 2);
    assert_eq!(got.body["history"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn moves_that_need_a_reason_are_refused_without_one() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    s.transition(&id, "submit").await;
    move_by(&s, &id, json!({"action": "reject"})).await.problem(
        422,
        "invalid_field",
        Some("reason"),
    );
    move_by(&s, &id, json!({"action": "reject", "reason": "   "}))
        .await
        .problem(422, "invalid_field", Some("reason"));
    let got = s.get(&format!("/v1/assets/{id}")).await;
    assert_eq!(got.ok(200)["status"], "submitted");
    // `tokenize` is not a move a person can ask for.
    move_by(&s, &id, json!({"action": "tokenize"}))
        .await
        .problem(422, "invalid_field", Some("action"));
}

#[tokio::test]
async fn documents_are_checked_and_only_drafts_take_them() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let path = format!("/v1/assets/{id}/documents");
    let reply = common::send(
        s.http
            .post(s.url(&path))
            .bearer_auth(libertum_testkit::signer().token(
                "clerk",
                &[libertum_platform::auth::Role::AssetManager],
                None,
                std::time::Duration::from_secs(60),
            ))
            .json(&document()),
    )
    .await;
    let body = reply.ok(201);
    assert_eq!(body["version"], 2);
    let docs = body["documents"].as_array().expect("documents");
    assert_eq!(docs.len(), 1);
    assert!(docs[0]["id"].as_str().unwrap().starts_with("doc_"));
    assert_eq!(docs[0]["sha256"], document()["sha256"]);
    assert_eq!(docs[0]["size_bytes"], 1024);
    assert_eq!(docs[0]["added_by"], "clerk");

    let bad = [
        ("sha256", json!("abc"), "sha256"),
        (
            "sha256",
            json!("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"),
            "sha256",
        ),
        (
            "sha256",
            json!("zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            "sha256",
        ),
        ("size_bytes", json!(0), "size_bytes"),
        ("media_type", json!("pdf"), "media_type"),
        ("kind", json!("Title Deed"), "kind"),
        ("title", json!(" "), "title"),
    ];
    for (key, value, field) in bad {
        let mut body = document();
        body[key] = value;
        s.post(&path, &body)
            .await
            .problem(422, "invalid_field", Some(field));
    }
    let mut negative = document();
    negative["size_bytes"] = json!(-1);
    s.post(&path, &negative)
        .await
        .problem(422, "invalid_field", Some("size_bytes"));

    s.transition(&id, "submit").await;
    s.post(&path, &document())
        .await
        .problem(409, "asset_not_draft", None);
    let got = s.get(&format!("/v1/assets/{id}")).await;
    assert_eq!(got.ok(200)["documents"].as_array().map(Vec::len), Some(1));
    s.post("/v1/assets/ast_missing/documents", &document())
        .await
        .problem(404, "asset_not_found", None);
}

fn valuation(amount: Value, date: &str) -> Value {
    json!({"amount": amount, "currency": "EUR", "effective_date": date, "appraiser": "Knight Frank"})
}

#[tokio::test]
async fn valuations_take_exact_amounts_and_past_dates() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let path = format!("/v1/assets/{id}/valuations");
    let big = "123456789012345678901234567890";
    let reply = s.post(&path, &valuation(json!(big), "2026-01-15")).await;
    let body = reply.ok(201);
    let v = &body["valuations"][0];
    assert_eq!(v["amount"], big, "amounts travel as exact strings");
    assert_eq!(v["currency"], "EUR");
    assert_eq!(v["effective_date"], "2026-01-15");
    assert_eq!(v["appraiser"], "Knight Frank");

    s.post(&path, &valuation(json!(250000000), "2026-01-15"))
        .await
        .problem(422, "invalid_field", Some("amount"));
    s.post(&path, &valuation(json!("2500.00"), "2026-01-15"))
        .await
        .problem(422, "invalid_field", Some("amount"));
    s.post(
        &path,
        &valuation(
            json!("340282366920938463463374607431768211456"),
            "2026-01-15",
        ),
    )
    .await
    .problem(422, "invalid_field", Some("amount"));
    s.post(&path, &valuation(json!("0"), "2026-01-15"))
        .await
        .problem(422, "invalid_field", Some("amount"));
    let future = time::OffsetDateTime::now_utc().date() + time::Duration::days(2);
    s.post(&path, &valuation(json!("1000"), &future.to_string()))
        .await
        .problem(422, "invalid_field", Some("effective_date"));
    s.post(&path, &valuation(json!("1000"), "15/01/2026"))
        .await
        .problem(422, "invalid_field", Some("effective_date"));
    let mut bad_currency = valuation(json!("1000"), "2026-01-15");
    bad_currency["currency"] = json!("euro");
    s.post(&path, &bad_currency)
        .await
        .problem(422, "invalid_field", Some("currency"));

    let got = s.get(&format!("/v1/assets/{id}")).await;
    assert_eq!(got.ok(200)["valuations"].as_array().map(Vec::len), Some(1));
    assert_eq!(got.body["version"], 2);

    // Unlike edits, valuations continue after submission, until the asset is retired.
    s.transition(&id, "submit").await;
    s.post(&path, &valuation(json!("1000"), "2026-01-16"))
        .await
        .ok(201);
    s.transition(&id, "reject").await;
    s.transition(&id, "retire").await;
    s.post(&path, &valuation(json!("1000"), "2026-01-17"))
        .await
        .problem(409, "asset_retired", None);
}
