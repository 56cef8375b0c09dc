//! What using and attacking the product from outside found (issue 12), each as a test that failed
//! before its fix: unbounded metric labels, refusals that told an investor about others, slow
//! clients holding connections, anonymous readiness details, double distributions, movements on
//! suspended or retired assets, duplicate identities, and the API page behind a token.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{Product, code};
use libertum_platform::{auth::Role, config::Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An approved, tokenized asset with a token capped at 5,000 per holder, and three verified
/// investors: alice holds 1,000, bob 4,500, carol nothing.
struct World {
    asset: String,
    token: String,
    alice: String,
    bob: String,
    carol: String,
}

async fn world(p: &Product, tag: &str) -> World {
    let asset = common::approved_asset(
        p,
        json!({"name": format!("Herengracht {tag}"), "kind": "real_estate", "legal_owner": "H BV",
            "location": {"address": "Herengracht 1", "city": "Amsterdam", "country": "NL"}}),
    )
    .await;
    let spec = json!({"asset_id": asset, "symbol": format!("HG{tag}"), "name": "Herengracht shares",
        "decimals": 0, "max_supply": "100000", "unit_price": "100", "currency": "EUR",
        "rules": {"max_balance": "5000"}});
    let deadline = Instant::now() + p.patience;
    let token = loop {
        let (status, body) = p.post("/v1/tokens", spec.clone()).await;
        if status == StatusCode::CREATED {
            break body["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "no token: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    p.eventually(&format!("/v1/assets/{asset}"), |a| {
        a["status"] == "tokenized"
    })
    .await;
    let mut ids = Vec::new();
    for who in ["alice", "bob", "carol"] {
        let (status, body) = p
            .post(
                "/v1/tokens/investors",
                json!({"identity_ref": format!("idp|{who}-{tag}"), "country": "NL",
                    "kyc_status": "verified", "kyc_expires_on": "2099-12-31"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    for (who, amount) in [(&ids[0], "1000"), (&ids[1], "4500")] {
        let (status, body) = p
            .post(
                &format!("/v1/tokens/{token}/issuances"),
                json!({"to": who, "amount": amount}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    World {
        asset,
        token,
        alice: ids[0].clone(),
        bob: ids[1].clone(),
        carol: ids[2].clone(),
    }
}

async fn post_with(p: &Product, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let r = p
        .http
        .post(p.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn metrics_text(p: &Product) -> String {
    p.http
        .get(p.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text")
}

/// Made-up methods are one metric label, and unknown routes and methods count against the
/// client address's limit like any request: 5,000 of them no longer grow `/metrics` without
/// bound, nor go unlimited.
#[tokio::test]
async fn made_up_methods_are_one_label_and_unmatched_requests_are_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::for_test(dir.path());
    settings.rate_limit_per_address = 40;
    let p = Product::start_with(settings).await;
    let anonymous = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let method = Method::from_bytes(format!("XFOO{i}").as_bytes()).expect("a method");
        let path = if i % 2 == 0 {
            "/v1/tokens"
        } else {
            "/no/such/route"
        };
        let r = anonymous
            .request(method, p.url(path))
            .send()
            .await
            .expect("sent");
        statuses.push(r.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "60 unmatched requests from one address within a minute, limit 40: {statuses:?}"
    );
    assert!(!statuses.iter().any(|s| s.is_success()), "{statuses:?}");
    let metrics = metrics_text(&p).await;
    assert!(!metrics.contains("XFOO"), "a made-up method became a label");
    assert!(
        metrics.contains(r#"method="other""#),
        "made-up methods are counted as other"
    );
    p.stop().await;
}

/// An investor's dry run or transfer to another investor learns nothing of the receiver: not
/// their balance against the maximum, their KYC, an AML freeze, or whether they exist. Staff
/// keep the detailed codes.
#[tokio::test]
async fn refusals_tell_an_investor_nothing_about_the_receiver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let w = world(&p, "R1").await;
    let alice = libertum_testkit::token(&[Role::Investor], Some(&w.alice));
    let check = format!("/v1/tokens/{}/transfers/check", w.token);
    let transfer = format!("/v1/tokens/{}/transfers", w.token);

    // Bob holds 4,500 of a 5,000 maximum; 600 more is over it.
    let over = json!({"from": w.alice, "to": w.bob, "amount": "600"});
    let (status, staff) = p.post(&check, over.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(staff["code"], "max_balance_exceeded", "staff see the rule");
    let (status, seen) = post_with(&p, &alice, &check, over.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["allowed"], false);
    assert_eq!(seen["code"], "receiver_not_eligible", "{seen}");
    assert_eq!(seen["field"], "to");
    assert!(
        !seen.to_string().contains("4500") && !seen.to_string().contains("5100"),
        "no figure of bob's: {seen}"
    );
    let (status, refused) = post_with(&p, &alice, &transfer, over).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&refused), "receiver_not_eligible", "{refused}");
    assert!(!refused.to_string().contains("5100"), "{refused}");

    // A frozen receiver (an AML freeze must not be tipped off) and one who does not exist.
    let (status, body) = p
        .post(
            &format!("/v1/tokens/{}/freezes", w.token),
            json!({"investor_id": w.carol}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for to in [w.carol.as_str(), "inv_does_not_exist"] {
        let body = json!({"from": w.alice, "to": to, "amount": "1"});
        let (_, staff) = p.post(&check, body.clone()).await;
        assert_ne!(staff["code"], "receiver_not_eligible", "staff: {staff}");
        let (status, seen) = post_with(&p, &alice, &check, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen["code"], "receiver_not_eligible", "{to}: {seen}");
        assert!(!seen.to_string().contains("frozen"), "{seen}");
        let (status, refused) = post_with(&p, &alice, &transfer, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{refused}");
        assert_eq!(code(&refused), "receiver_not_eligible", "{refused}");
    }
    // The sender's own refusals stay as they are: they are hers to know.
    let (_, seen) = post_with(
        &p,
        &alice,
        &check,
        json!({"from": w.alice, "to": w.bob, "amount": "999999"}),
    )
    .await;
    assert_eq!(seen["code"], "insufficient_balance", "{seen}");
    // Nothing moved.
    let (_, holders) = p.get(&format!("/v1/tokens/{}/holders", w.token)).await;
    let balances: Vec<&str> = holders["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .filter_map(|h| h["balance"].as_str())
        .collect();
    assert_eq!(balances, ["1000", "4500", "0"], "{holders}");
    p.stop().await;
}

/// A connection that trickles its request head, one that sits idle, and a body that trickles
/// are all closed within their deadlines; past the connection cap, new connections are closed
/// at once.
#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::for_test(dir.path());
    settings.connection_limits.header_timeout = Duration::from_secs(1);
    settings.connection_limits.body_timeout = Duration::from_secs(1);
    settings.connection_limits.max_connections = 4;
    let p = Product::start_with(settings).await;
    let addr = p
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let connect = || {
        let s = TcpStream::connect(&addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };
    // Closed: a read returns 0 bytes (EOF) or a reset.
    let closed_within = |mut s: TcpStream, limit: Duration| {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let mut answer = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let took = started.elapsed();
        assert!(took < limit, "open for {took:?}");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let trickle = tokio::task::spawn_blocking({
        let s = connect();
        move || {
            let mut writer = s.try_clone().expect("clone");
            // One byte every 300 ms: the head would take far longer than the 1 s allowed.
            let started = Instant::now();
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
                if writer.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
                if started.elapsed() > Duration::from_secs(4) {
                    break;
                }
            }
            started.elapsed()
        }
    });
    let idle = tokio::task::spawn_blocking({
        let s = connect();
        move || closed_within(s, Duration::from_secs(4))
    });
    let body = tokio::task::spawn_blocking({
        let mut s = connect();
        move || {
            let token = libertum_testkit::token(&[Role::PlatformAdmin], None);
            let head = format!(
                "POST /v1/assets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{"
            );
            s.write_all(head.as_bytes()).expect("head");
            let reader = s.try_clone().expect("clone");
            std::thread::spawn(move || {
                for _ in 0..10 {
                    if s.write_all(b" ").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(400));
                }
            });
            closed_within(reader, Duration::from_secs(4))
        }
    });
    let took = trickle.await.expect("trickle");
    assert!(
        took < Duration::from_secs(4),
        "a head trickled at a byte per 300 ms was still read after {took:?}"
    );
    idle.await.expect("idle");
    let answer = body.await.expect("body");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a trickled body: {answer:?}"
    );
    assert!(answer.contains("request_timeout"), "{answer}");

    // Four connections held open: a fifth is closed at once, and served again once one ends.
    let held: Vec<TcpStream> = (0..4).map(|_| connect()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = connect();
    let answer = tokio::task::spawn_blocking(move || {
        let mut extra = extra;
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        closed_within(extra, Duration::from_secs(1))
    })
    .await
    .expect("extra");
    assert!(answer.is_empty(), "over the cap yet served: {answer}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(r) = reqwest::get(p.url("/healthz")).await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics_text(&p)
        .await
        .lines()
        .any(|l| l.starts_with("libertum_http_connections_refused_total") && !l.ends_with(" 0")));
    p.stop().await;
}

/// `/readyz` tells an anonymous caller the status and nothing else (no paths, hosts or driver
/// errors); staff with a token see every check, the signer among them, as `/metrics` does.
#[tokio::test]
async fn readiness_details_and_the_signer_need_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let r = reqwest::get(p.url("/readyz")).await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let anonymous: Value = r.json().await.expect("json");
    assert_eq!(anonymous, json!({"status": "ready"}));
    let (status, staff) = p.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let checks = staff["checks"].as_array().expect("checks for staff");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "auth" && c["detail"] == "development signer"),
        "{staff}"
    );
    assert!(staff.to_string().contains(&*dir.path().to_string_lossy()));
    let investor = libertum_testkit::token(&[Role::Investor], Some("inv_x"));
    let r = p
        .http
        .get(p.url("/readyz"))
        .bearer_auth(investor)
        .send()
        .await
        .expect("sent");
    let seen: Value = r.json().await.expect("json");
    assert_eq!(seen, json!({"status": "ready"}), "an investor is not staff");
    let metrics = metrics_text(&p).await;
    assert!(
        metrics.contains(r#"libertum_auth_signer{kind="development"} 1"#),
        "the signer in use is a metric"
    );
    p.stop().await;
}

/// Distributions: refused on a paused token and on a suspended asset, only in the token's
/// currency, never twice for the same record date and currency, and a fully frozen holder's
/// share is computed but withheld.
#[tokio::test]
async fn distributions_are_paid_once_in_the_tokens_currency_and_withheld_from_frozen_holders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let w = world(&p, "D1").await;
    let path = format!("/v1/tokens/{}/distributions", w.token);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let record_date = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("whole seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let pay = |currency: &str| json!({"total": "100000", "currency": currency, "record_date": record_date});

    let (status, body) = p.post(&path, pay("USD")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        (code(&body), body["field"].as_str()),
        ("currency_mismatch", Some("currency"))
    );

    let (status, _) = p
        .post(&format!("/v1/tokens/{}/pause", w.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = p.post(&path, pay("EUR")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "token_paused"),
        "{body}"
    );
    let (status, _) = p
        .post(&format!("/v1/tokens/{}/unpause", w.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = p
        .post(
            &format!("/v1/tokens/{}/freezes", w.token),
            json!({"investor_id": w.bob}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, paid) = p.post(&path, pay("EUR")).await;
    assert_eq!(status, StatusCode::CREATED, "{paid}");
    let allocations = paid["allocations"].as_array().expect("allocations");
    let of = |id: &str| {
        allocations
            .iter()
            .find(|a| a["investor_id"] == id)
            .cloned()
            .expect("an allocation")
    };
    assert_eq!(of(&w.alice)["amount"], "18182");
    assert_eq!(of(&w.alice)["withheld"], false);
    assert_eq!(of(&w.bob)["amount"], "81818", "bob's share is computed");
    assert_eq!(of(&w.bob)["withheld"], true, "and withheld");

    // The same body again, without an Idempotency-Key: not a second payment.
    let (status, body) = p.post(&path, pay("EUR")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "duplicate_distribution"),
        "{body}"
    );
    let (_, list) = p.get(&path).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    // The ledger holds bob's share apart.
    let entries = p
        .eventually(&format!("/v1/ledger/entries?token_id={}", w.token), |e| {
            e.to_string().contains("withheld:")
        })
        .await;
    assert!(entries.to_string().contains(&format!("withheld:{}", w.bob)));
    p.stop().await;
}

/// Suspending the asset halts its token's movements; reactivating it resumes them; retiring it
/// leaves only redemption.
#[tokio::test]
async fn a_suspended_assets_token_does_not_move_and_a_retired_ones_can_only_be_redeemed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let w = world(&p, "S1").await;
    let transitions = format!("/v1/assets/{}/transitions", w.asset);
    let issue = format!("/v1/tokens/{}/issuances", w.token);
    let transfer = format!("/v1/tokens/{}/transfers", w.token);
    let redeem = format!("/v1/tokens/{}/redemptions", w.token);
    let (status, body) = p
        .post(
            &transitions,
            json!({"action": "suspend", "reason": "title dispute"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = |code_wanted: &'static str, path: String, body: Value| {
        let p = &p;
        async move {
            let deadline = Instant::now() + p.patience;
            loop {
                let (status, answer) = p.post(&path, body.clone()).await;
                if code(&answer) == code_wanted {
                    assert_eq!(status, StatusCode::CONFLICT);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{path}: {status} {answer}, not {code_wanted}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let small = json!({"from": w.alice, "to": w.bob, "amount": "1"});
    refused("asset_suspended", transfer.clone(), small.clone()).await;
    refused(
        "asset_suspended",
        issue.clone(),
        json!({"to": w.alice, "amount": "1"}),
    )
    .await;
    refused(
        "asset_suspended",
        redeem.clone(),
        json!({"from": w.alice, "amount": "1"}),
    )
    .await;
    let (status, body) = p.post(&transitions, json!({"action": "reactivate"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = Instant::now() + p.patience;
    loop {
        let (status, body) = p.post(&transfer, small.clone()).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never resumed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = p
        .post(&transitions, json!({"action": "retire", "reason": "sold"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    refused(
        "asset_retired",
        issue,
        json!({"to": w.alice, "amount": "1"}),
    )
    .await;
    refused("asset_retired", transfer, small).await;
    let (status, body) = p
        .post(&redeem, json!({"from": w.alice, "amount": "10"}))
        .await;
    assert_eq!(status, StatusCode::OK, "redemption stays open: {body}");
    p.stop().await;
}

/// One person is one investor; a country must be a country; names cannot hide or reorder text;
/// and a malformed body never names a `?` field.
#[tokio::test]
async fn identities_countries_names_and_malformed_bodies_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let investor = |identity: &str, country: &str| json!({"identity_ref": identity, "country": country, "kyc_status": "verified", "kyc_expires_on": "2099-12-31"});
    let (status, body) = p
        .post("/v1/tokens/investors", investor("idp|dana", "DE"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = p
        .post("/v1/tokens/investors", investor(" idp|dana ", "FR"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        (code(&body), body["field"].as_str()),
        ("duplicate_identity_ref", Some("identity_ref"))
    );
    let (status, body) = p
        .post("/v1/tokens/investors", investor("idp|erin", "XX"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "country");
    let (_, list) = p.get("/v1/tokens/investors").await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "nothing else registered: {list}"
    );

    for name in ["Evil\u{202E}fdp.exe", "\u{200B}\u{200B}\u{2060}"] {
        let (status, body) = p
            .post(
                "/v1/assets",
                json!({"name": name, "kind": "real_estate", "legal_owner": "X",
                    "location": {"address": "a", "city": "b", "country": "DE"}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {body}");
        assert_eq!(body["field"], "name", "{body}");
    }
    for malformed in [r#"{"name": "#, r#"{"location": {"city": "#, r#"{"name" 5}"#] {
        let r = p
            .http
            .post(p.url("/v1/assets"))
            .header("content-type", "application/json")
            .body(malformed)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.expect("json");
        assert!(
            !body["field"].as_str().unwrap_or_default().contains('?'),
            "{malformed}: {body}"
        );
    }
    p.stop().await;
}

/// The API page and its description open without a token (they hold no data), under the
/// product's security headers; every other route still needs one. A client's request id is
/// echoed only when it is short and plain.
#[tokio::test]
async fn the_api_page_opens_without_a_token_and_request_ids_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let anonymous = reqwest::Client::new();
    let doc: Value = anonymous
        .get(p.url("/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("the description, anonymously");
    let batch = &doc["components"]["schemas"]["BatchOperation"];
    assert!(
        batch["oneOf"].as_array().is_some_and(|o| o.len() == 20),
        "the batch operations have their schema: {batch}"
    );
    let page = anonymous.get(p.url("/docs/")).send().await.expect("sent");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.expect("html").contains("swagger-ui"));
    let r = anonymous
        .get(p.url("/v1/assets"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let long = "a".repeat(8 * 1024);
    for (sent, echoed) in [
        ("req-42.a:b_c", true),
        (long.as_str(), false),
        ("a b<script>", false),
    ] {
        let r = anonymous
            .get(p.url("/healthz"))
            .header("x-request-id", sent)
            .send()
            .await
            .expect("sent");
        let back = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(back == sent, echoed, "{sent:.20}: {back:.40}");
        assert!(!back.is_empty() && back.len() <= 128);
    }
    p.stop().await;
}
