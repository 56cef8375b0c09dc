//! The whole story over HTTP: an asset registered, approved and tokenized, investors onboarded,
//! tokens issued and moved, one refusal per rule, freezes, redemption, a distribution, and the
//! ledger verified and reconciled, before and after a restart. With the services as three
//! processes, the shipped monitoring is checked against them too (`common/observability.rs`).

mod common;

use std::time::Duration;

use common::{Backends, Product, code};
use libertum_testkit::servers;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn amount(v: &Value) -> u128 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an amount: {v}"))
}

/// A number not given before in this process: one identity_ref is one investor.
fn next() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn investor(p: &Product, country: &str, kyc: &str, expires: &str) -> String {
    let (status, body) = p
        .post(
            "/v1/tokens/investors",
            json!({"identity_ref": format!("idp|{country}-{kyc}-{}", next()), "country": country, "kyc_status": kyc, "kyc_expires_on": expires}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("an id").to_owned()
}

/// Posts a movement that a rule must refuse, and checks the code and that nothing moved.
async fn refused(p: &Product, token: &str, path: &str, body: Value, expected: &str) {
    let before = p.get(&format!("/v1/tokens/{token}/holders")).await.1;
    let (status, problem) = p.post(&format!("/v1/tokens/{token}/{path}"), body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{expected}: {problem}");
    assert_eq!(code(&problem), expected, "{problem}");
    let after = p.get(&format!("/v1/tokens/{token}/holders")).await.1;
    assert_eq!(
        before["holders"], after["holders"],
        "a refused {expected} moved nothing"
    );
    assert_eq!(before["total_supply"], after["total_supply"]);
}

/// What the story leaves behind, for the checks after a restart.
pub struct Ending {
    pub token: String,
    pub holders: Value,
    pub ledger_head: Value,
}

/// The whole story, against `p` however it runs.
async fn story(p: &Product) -> Ending {
    // An outside system subscribes to every event from the first on: each is delivered to its
    // webhook, signed, in the ledger's order.
    let hooks = libertum_testkit::webhooks::Receiver::start().await;
    let (status, subscription) = p
        .post(
            "/v1/events/subscriptions",
            json!({"url": format!("{}/ok", hooks.base), "from_seq": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{subscription}");
    let secret = subscription["secret"]
        .as_str()
        .expect("a secret")
        .to_owned();

    // An asset manager registers the building with its title deed and an appraisal.
    let (status, asset) = p
        .post_as(
            "asset-manager",
            "/v1/assets",
            json!({"name": "Friedrichstrasse 123", "kind": "real_estate", "legal_owner": "F123 SPV GmbH",
                   "location": {"address": "Friedrichstrasse 123", "city": "Berlin", "postal_code": "10117", "country": "DE"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{asset}");
    let asset_id = asset["id"].as_str().expect("id").to_owned();
    let (status, _) = p
        .post(
            &format!("/v1/assets/{asset_id}/documents"),
            json!({"title": "Title deed", "kind": "title_deed", "sha256": "a".repeat(64), "size_bytes": 48213, "media_type": "application/pdf"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = p
        .post(
            &format!("/v1/assets/{asset_id}/valuations"),
            json!({"amount": "250000000", "currency": "EUR", "effective_date": "2026-01-15", "appraiser": "Appraisers AG"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // The asset manager submits it; compliance approves it.
    for (actor, action) in [("asset-manager", "submit"), ("compliance", "approve")] {
        let (status, body) = p
            .post_as(
                actor,
                &format!("/v1/assets/{asset_id}/transitions"),
                json!({"action": action}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }

    // The token class: the tokens service learns of the approval through an event.
    let spec = json!({"asset_id": asset_id, "symbol": "FRIED123", "name": "Friedrichstrasse 123 shares", "decimals": 0,
        "max_supply": "2000", "unit_price": "25000000", "currency": "EUR",
        "rules": {"allowed_countries": ["DE", "FR", "NL"], "max_holders": 3, "max_balance": "450", "daily_transfer_limit": "300"}});
    let deadline = tokio::time::Instant::now() + p.patience;
    let token = loop {
        let (status, body) = p.post_as("token-agent", "/v1/tokens", spec.clone()).await;
        if status == StatusCode::CREATED {
            break body;
        }
        assert_eq!(code(&body), "asset_not_approved", "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the approval never reached the tokens service"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let t = token["id"].as_str().expect("id").to_owned();
    let asset = p
        .eventually(&format!("/v1/assets/{asset_id}"), |a| {
            a["status"] == "tokenized"
        })
        .await;
    assert_eq!(asset["token_id"], t.as_str());

    // Investors.
    let alice = investor(p, "DE", "verified", "2099-12-31").await;
    let bob = investor(p, "FR", "verified", "2099-12-31").await;
    let carol = investor(p, "NL", "verified", "2099-12-31").await;
    let dave = investor(p, "US", "verified", "2099-12-31").await;
    let erin = investor(p, "DE", "pending", "2099-12-31").await;
    let frank = investor(p, "DE", "verified", "2020-01-01").await;
    let grace = investor(p, "DE", "verified", "2099-12-31").await;

    // Issuance.
    for (who, n) in [(&alice, "400"), (&bob, "300"), (&carol, "100")] {
        let (status, body) = p
            .post(
                &format!("/v1/tokens/{t}/issuances"),
                json!({"to": who, "amount": n}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    refused(
        p,
        &t,
        "issuances",
        json!({"to": carol, "amount": "1201"}),
        "supply_cap_exceeded",
    )
    .await;
    refused(
        p,
        &t,
        "issuances",
        json!({"to": alice, "amount": "51"}),
        "max_balance_exceeded",
    )
    .await;

    // A transfer, then one refusal per rule.
    let (status, body) = p
        .post(
            &format!("/v1/tokens/{t}/transfers"),
            json!({"from": alice, "to": bob, "amount": "100"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tr = |from: &str, to: &str, n: &str| json!({"from": from, "to": to, "amount": n});
    refused(
        p,
        &t,
        "transfers",
        tr(&alice, &erin, "1"),
        "kyc_not_verified",
    )
    .await;
    refused(p, &t, "transfers", tr(&alice, &frank, "1"), "kyc_expired").await;
    refused(
        p,
        &t,
        "transfers",
        tr(&alice, &dave, "1"),
        "country_not_allowed",
    )
    .await;
    refused(
        p,
        &t,
        "transfers",
        tr(&alice, &grace, "1"),
        "max_holders_reached",
    )
    .await;
    refused(
        p,
        &t,
        "transfers",
        tr(&carol, &bob, "100"),
        "max_balance_exceeded",
    )
    .await;
    refused(
        p,
        &t,
        "transfers",
        tr(&alice, &carol, "250"),
        "transfer_limit_exceeded",
    )
    .await;
    refused(
        p,
        &t,
        "transfers",
        tr(&carol, &alice, "101"),
        "insufficient_balance",
    )
    .await;

    // The dry run says the same without moving anything.
    let (status, check) = p
        .post(
            &format!("/v1/tokens/{t}/transfers/check"),
            tr(&alice, &dave, "1"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["allowed"], false);
    assert_eq!(check["code"], "country_not_allowed");
    let (_, check) = p
        .post(
            &format!("/v1/tokens/{t}/transfers/check"),
            tr(&alice, &carol, "1"),
        )
        .await;
    assert_eq!(check["allowed"], true, "{check}");

    // Freezes: partial, then full.
    let (status, body) = p
        .post(
            &format!("/v1/tokens/{t}/freezes"),
            json!({"investor_id": carol, "amount": "80"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    refused(
        p,
        &t,
        "transfers",
        tr(&carol, &alice, "50"),
        "insufficient_unfrozen_balance",
    )
    .await;
    let (status, _) = p
        .post(
            &format!("/v1/tokens/{t}/freezes"),
            json!({"investor_id": bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    refused(p, &t, "transfers", tr(&bob, &alice, "10"), "sender_frozen").await;
    refused(
        p,
        &t,
        "transfers",
        tr(&alice, &bob, "10"),
        "receiver_frozen",
    )
    .await;
    let (status, _) = p
        .post(
            &format!("/v1/tokens/{t}/unfreezes"),
            json!({"investor_id": bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Pause.
    let (status, _) = p.post(&format!("/v1/tokens/{t}/pause"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    refused(p, &t, "transfers", tr(&alice, &bob, "10"), "token_paused").await;
    let (status, _) = p.post(&format!("/v1/tokens/{t}/unpause"), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // Lock-up: a new rule set (If-Match), then a fresh issuance that cannot move yet.
    let version = p.get(&format!("/v1/tokens/{t}")).await.1["version"]
        .as_u64()
        .expect("version");
    let rules = json!({"allowed_countries": ["DE", "FR", "NL"], "max_holders": 3, "max_balance": "450", "daily_transfer_limit": "300", "lockup_seconds": 86400});
    let (status, body) = p
        .put_if_match(&format!("/v1/tokens/{t}/rules"), version - 1, rules.clone())
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PRECONDITION_FAILED, "version_mismatch")
    );
    let (status, body) = p
        .put_if_match(&format!("/v1/tokens/{t}/rules"), version, rules)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = p
        .post(
            &format!("/v1/tokens/{t}/issuances"),
            json!({"to": carol, "amount": "10"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // carol: 110, 80 frozen, 10 locked: 20 may move.
    refused(
        p,
        &t,
        "transfers",
        tr(&carol, &alice, "25"),
        "lockup_active",
    )
    .await;

    // Forced transfer by an agent, recorded as such.
    let (status, body) = p
        .post_as(
            "compliance",
            &format!("/v1/tokens/{t}/forced-transfers"),
            json!({"from": bob, "to": alice, "amount": "50", "reason": "court order 2026/17"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"][0]["forced"], true);

    // Redemption, and an atomic batch whose second item fails.
    let (status, _) = p
        .post(
            &format!("/v1/tokens/{t}/redemptions"),
            json!({"from": alice, "amount": "100"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = p
        .post(&format!("/v1/tokens/{t}/batches"), json!({"operations": [
            {"op": "issue", "to": alice, "amount": "5"}, {"op": "issue", "to": dave, "amount": "5"}]}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "country_not_allowed")
    );
    assert_eq!(body["field"], "operations[1].to");
    let (status, body) = p
        .post(&format!("/v1/tokens/{t}/batches"), json!({"operations": [
            {"op": "issue", "to": alice, "amount": "5"}, {"op": "issue", "to": bob, "amount": "5"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The cap table: alice 400-100+50-100+5, bob 300+100-50+5, carol 110.
    let holders = p.get(&format!("/v1/tokens/{t}/holders")).await.1;
    let balance = |who: &str| {
        holders["holders"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|h| h["investor_id"] == who)
            .map_or(0, |h| amount(&h["balance"]))
    };
    assert_eq!(
        (balance(&alice), balance(&bob), balance(&carol)),
        (255, 355, 110)
    );
    assert_eq!(amount(&holders["total_supply"]), 720);

    // Bob sells 55 to alice against payment: a hold with a cash leg, moved only when the
    // payment agent confirms the wire. A hold of 5 stays pending: the cap table shows it held,
    // the ledger in bob's held account, and both still reconcile.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (status, hold) = p
        .post_as(
            "token-agent",
            &format!("/v1/tokens/{t}/holds"),
            json!({"from": bob, "to": alice, "amount": "55", "expires_at": soon,
                   "payment": {"currency": "EUR", "amount": "1375000", "reference": "wire 2026-11-17"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let hold = hold["id"].as_str().expect("a hold id").to_owned();
    let (status, body) = p
        .post_as(
            "bank",
            &format!("/v1/tokens/{t}/holds/{hold}/payment-confirmation"),
            json!({"confirmation": "camt.054 0042"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"][0]["change"], "hold_posted");
    let (status, body) = p
        .post(
            &format!("/v1/tokens/{t}/holds"),
            json!({"from": bob, "to": carol, "amount": "5", "expires_at": soon}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Closed, it is read back from the index of its partition.
    let record = p.get(&format!("/v1/tokens/{t}/holds/{hold}")).await.1;
    assert_eq!(
        (&record["status"], &record["payment_confirmation"]),
        (&json!("posted"), &json!("camt.054 0042")),
        "{record}"
    );
    let holders = p.get(&format!("/v1/tokens/{t}/holders")).await.1;
    let row = |who: &str| {
        holders["holders"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|h| h["investor_id"] == who)
            .map(|h| (amount(&h["balance"]), amount(&h["held"])))
    };
    assert_eq!((row(&alice), row(&bob)), (Some((310, 0)), Some((300, 5))));

    // Alice sends carol 10 by mistake; the compliance officer reverses it, once, and the
    // movements list says so.
    let (status, sent) = p
        .post(
            &format!("/v1/tokens/{t}/transfers"),
            json!({"from": alice, "to": carol, "amount": "10"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let mistaken = sent["version"].as_u64().expect("the transfer's version");
    let reversal_path = format!("/v1/tokens/{t}/movements/{mistaken}/reversal");
    let (status, reversed) = p
        .post_as(
            "compliance",
            &reversal_path,
            json!({"reason": "sent to the wrong investor"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reversed}");
    assert_eq!(reversed["events"][0]["change"], "reversed");
    let (status, again) = p
        .post_as("compliance", &reversal_path, json!({"reason": "again"}))
        .await;
    assert_eq!(
        (status, code(&again)),
        (StatusCode::CONFLICT, "already_reversed")
    );
    let listed = p
        .get(&format!("/v1/tokens/{t}/movements?reversed=true"))
        .await
        .1;
    assert_eq!(listed["items"][0]["version"], mistaken, "{listed}");
    assert_eq!(
        listed["items"][0]["reversed_by"], reversed["version"],
        "{listed}"
    );

    // A class B: alice converts 10 of her units into it and sends bob 4 of them. Totals do
    // not move; the ledger keeps each class in an account of its own.
    let (status, classed) = p
        .post(
            &format!("/v1/tokens/{t}/batches"),
            json!({"operations": [
                {"op": "define_class", "class": "B", "name": "Class B shares"},
                {"op": "convert", "investor_id": alice, "to_class": "B", "amount": "10", "reason": "shareholder resolution"},
                {"op": "transfer", "from": alice, "to": bob, "amount": "4", "class": "B"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{classed}");
    let mut in_b = Vec::new();
    for who in [&alice, &bob] {
        let holding = p.get(&format!("/v1/tokens/{t}/holders/{who}")).await.1;
        in_b.push(holding["classes"]["B"]["balance"].clone());
    }
    assert_eq!(in_b, [json!("6"), json!("4")]);
    // What a restart must keep, classes included.
    let holders = p.get(&format!("/v1/tokens/{t}/holders")).await.1;

    // A distribution of 1,000.00 EUR, pro rata, exact to the cent.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (status, paid) = p
        .post(&format!("/v1/tokens/{t}/distributions"), json!({"total": "100000", "currency": "EUR", "record_date": now, "memo": "rent 2026-11"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    let parts: Vec<u128> = paid["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| amount(&a["amount"]))
        .collect();
    assert_eq!(parts.iter().sum::<u128>(), 100_000);
    assert_eq!(parts.len(), 3);
    let listed = p.get(&format!("/v1/tokens/{t}/distributions")).await.1;
    assert_eq!(
        listed["items"][0]["id"], paid["id"],
        "the distribution is listed with its allocations"
    );
    assert_eq!(listed["items"][0]["allocations"], paid["allocations"]);

    // The ledger: every event recorded, the chain intact, the balances those of the tokens service.
    let reconciliation = p
        .eventually("/v1/ledger/reconciliation", |r| r["matched"] == true)
        .await;
    assert_eq!(
        reconciliation["tokens"][0]["status"], "matched",
        "{reconciliation}"
    );
    let verification = p.get("/v1/ledger/verification").await.1;
    assert_eq!(verification["valid"], true, "{verification}");
    let cap = p.get(&format!("/v1/ledger/tokens/{t}/cap-table")).await.1;
    assert_eq!(amount(&cap["total_supply"]), 720);
    let forced = p
        .get(&format!("/v1/ledger/entries?token_id={t}&limit=200"))
        .await
        .1;
    let forced_entry =
        forced["items"].as_array().expect("items").iter().find(|e| {
            e["event_type"] == "libertum.token.transferred.v1" && e["actor"] == "compliance"
        });
    assert!(
        forced_entry.is_some(),
        "the forced transfer is in the ledger with its actor"
    );
    // The reversing entry names the entry of the transfer it reverses.
    let entries = forced["items"].as_array().expect("items");
    let reversing = entries
        .iter()
        .find(|e| e["event_type"] == "libertum.token.reversed.v1")
        .expect("the reversal is in the ledger");
    let original = entries
        .iter()
        .find(|e| e["seq"] == reversing["reverses"]["seq"])
        .expect("the reversed entry is named by its seq");
    assert_eq!(original["event_type"], "libertum.token.transferred.v1");
    assert_eq!(original["postings"][0]["to"], format!("investor:{carol}"));
    assert_eq!(
        reversing["postings"][0]["from"],
        format!("investor:{carol}")
    );
    let converted = entries
        .iter()
        .find(|e| e["event_type"] == "libertum.token.converted.v1")
        .expect("the conversion is in the ledger");
    assert_eq!(
        (
            &converted["postings"][0]["from"],
            &converted["postings"][0]["to"]
        ),
        (
            &json!(format!("investor:{alice}")),
            &json!(format!("investor:{alice}:B"))
        )
    );
    let head = p.get("/v1/ledger/head").await.1;
    assert_eq!(head["seq"], verification["entries_checked"]);
    // Every entry reached the webhook, in order, each signature good to an implementation of
    // Standard Webhooks nobody here wrote (at least once: a repeat is allowed, a gap is not).
    let last = head["seq"].as_u64().expect("a head");
    let delivered = hooks
        .until("/ok", last as usize, Duration::from_secs(30))
        .await;
    let mut seen: Vec<u64> = delivered.iter().map(|d| d.seq()).collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "in order: {seen:?}");
    seen.dedup();
    assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "every entry");
    let report = libertum_testkit::webhooks::verify(&secret, &delivered)
        .unwrap_or_else(|report| panic!("{report}"));
    assert!(report.contains("deliveries verified"), "{report}");
    Ending {
        token: t,
        holders,
        ledger_head: head,
    }
}

/// After a restart everything is as it was.
async fn unchanged(p: &Product, ending: &Ending) {
    let again = p
        .get(&format!("/v1/tokens/{}/holders", ending.token))
        .await
        .1;
    assert_eq!(again["holders"], ending.holders["holders"]);
    assert_eq!(p.get("/v1/ledger/head").await.1, ending.ledger_head);
    assert_eq!(p.get("/v1/ledger/verification").await.1["valid"], true);
    let reconciliation = p
        .eventually("/v1/ledger/reconciliation", |r| r["matched"] == true)
        .await;
    assert_eq!(reconciliation["tokens"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_story_from_asset_to_verified_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let ending = story(&p).await;
    p.stop().await;
    let p = Product::start(dir.path()).await;
    unchanged(&p, &ending).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_story_with_each_service_its_own_process_on_kafka_mongodb_and_redis() {
    let (_redis, redis_url) = servers::redis();
    let (_kafka, kafka_brokers) = servers::kafka();
    let (_mongo, mongodb_uri) = servers::mongo();
    let backends = Backends {
        kafka_brokers,
        mongodb_uri,
        redis_url,
        database_prefix: "story".into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::processes(dir.path(), &backends).await;

    // Each service reports each dependency by name.
    for (prefix, names) in [
        (
            "/v1/assets",
            vec![
                "assets.mongodb",
                "assets.kafka",
                "assets.redis",
                "assets.relay",
                "assets.consumer",
            ],
        ),
        (
            "/v1/tokens",
            vec![
                "tokens.mongodb",
                "tokens.kafka",
                "tokens.redis",
                "tokens.relay",
                "tokens.consumer",
            ],
        ),
        (
            "/v1/ledger",
            vec![
                "ledger.mongodb",
                "ledger.kafka",
                "ledger.redis",
                "ledger.tokens_consumer",
            ],
        ),
    ] {
        // A service is ready with Redis degraded (its first connection attempt may time out on
        // a loaded machine, and the next comes a second later): wait for every check to be up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready: Value = p
                .http
                .get(format!("{}/readyz", p.base(prefix)))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let state = |name: &str| {
                ready["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == name)
                    .map(|c| c["state"].clone())
            };
            let down: Vec<&str> = names
                .iter()
                .copied()
                .filter(|name| state(name) != Some(json!("up")))
                .collect();
            if down.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{down:?} not up within 30 s: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Each service, as deployed, serves its own API description and page, without a token:
    // its own operations, and only those.
    let anonymous = reqwest::Client::new();
    for prefix in ["/v1/assets", "/v1/tokens", "/v1/ledger"] {
        let doc: Value = anonymous
            .get(format!("{}/openapi.json", p.base(prefix)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
        // The ledger also serves the events to outside consumers.
        let own = |path: &str| {
            path.starts_with(prefix) || (prefix == "/v1/ledger" && path.starts_with("/v1/events"))
        };
        assert!(
            !paths.is_empty() && paths.iter().all(|path| own(path)),
            "{prefix}: {paths:?}"
        );
        let page = anonymous
            .get(format!("{}/docs/", p.base(prefix)))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{prefix}/docs/");
    }

    let ending = story(&p).await;
    common::observability::check(&p).await;

    // An independent Kafka client reads both topics: every event is a well-formed CloudEvent,
    // keyed by its partition key, in order per key, and there are as many as the ledger recorded.
    let recorded = ending.ledger_head["seq"]
        .as_u64()
        .expect("the ledger's head");
    let events = read_topics(&backends.kafka_brokers, recorded).await;
    assert_eq!(
        events.len() as u64,
        recorded,
        "the topics hold exactly the events the ledger recorded"
    );

    p.stop().await;
    let p = Product::processes(dir.path(), &backends).await;
    unchanged(&p, &ending).await;
    p.stop().await;
}

/// Reads `libertum.assets.events` and `libertum.tokens.events` from the start with a group of its
/// own, until `expected` distinct events arrived, checking each.
async fn read_topics(brokers: &str, expected: u64) -> std::collections::BTreeMap<String, Value> {
    use rdkafka::{
        ClientConfig, Message,
        consumer::{Consumer, StreamConsumer},
    };
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "e2e-independent-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka consumer");
    reader
        .subscribe(&[libertum_events::ASSETS_TOPIC, libertum_events::TOKENS_TOPIC])
        .expect("subscribe");
    let mut events = std::collections::BTreeMap::new();
    let mut last_sequence: std::collections::HashMap<(String, String), u64> = Default::default();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while (events.len() as u64) < expected {
        let message = tokio::time::timeout_at(deadline, reader.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {expected} events on the topics after 60 s",
                    events.len()
                )
            })
            .expect("a message");
        let event: Value =
            serde_json::from_slice(message.payload().expect("a payload")).expect("JSON");
        for attribute in [
            "id",
            "source",
            "type",
            "subject",
            "time",
            "partitionkey",
            "sequence",
        ] {
            assert!(
                event[attribute].as_str().is_some_and(|v| !v.is_empty()),
                "{attribute} missing in {event}"
            );
        }
        assert_eq!(event["specversion"], "1.0", "{event}");
        assert_eq!(event["datacontenttype"], "application/json", "{event}");
        assert!(event["data"].is_object(), "{event}");
        assert!(
            event["type"].as_str().unwrap().starts_with("libertum."),
            "{event}"
        );
        time::OffsetDateTime::parse(
            event["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time is RFC 3339");
        let key = std::str::from_utf8(message.key().expect("a key")).expect("UTF-8");
        assert_eq!(
            key, event["partitionkey"],
            "the message key is the partition key"
        );
        let sequence: u64 = event["sequence"]
            .as_str()
            .unwrap()
            .parse()
            .expect("sequence");
        let id = event["id"].as_str().unwrap().to_owned();
        if !events.contains_key(&id) {
            let previous =
                last_sequence.insert((message.topic().to_owned(), key.to_owned()), sequence);
            assert!(
                previous.is_none_or(|p| p < sequence),
                "events of {key} out of order: {previous:?} then {sequence}"
            );
        }
        events.insert(id, event);
    }
    events
}
