//! Security over HTTP, against the whole product in one process: every cell of the role matrix,
//! and the OWASP API Security Top 10 (2023) items that apply, each test named after its item.

mod common;

use std::time::Duration;

use common::{Product, code};
use libertum_platform::auth::{Operation, Role};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An approved, tokenized asset with a token, three verified investors and some holdings.
struct Fixture {
    asset: String,
    draft: String,
    token: String,
    alice: String,
    bob: String,
    /// A pending hold from alice to bob.
    hold: String,
}

async fn fixture(p: &Product) -> Fixture {
    let asset_body = json!({"name": "Keizersgracht 1", "kind": "real_estate", "legal_owner": "K1 BV",
        "location": {"address": "Keizersgracht 1", "city": "Amsterdam", "postal_code": "1015", "country": "NL"}});
    let asset = common::approved_asset(p, asset_body.clone()).await;
    let (status, draft) = p.post("/v1/assets", asset_body).await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let draft = draft["id"].as_str().expect("id").to_owned();
    let spec = json!({"asset_id": asset, "symbol": "KEIZ1", "name": "Keizersgracht 1 shares", "decimals": 0,
        "max_supply": "100000", "unit_price": "100", "currency": "EUR", "rules": {"allowed_countries": ["NL", "DE"]}});
    let deadline = tokio::time::Instant::now() + p.patience;
    let token = loop {
        let (status, body) = p.post("/v1/tokens", spec.clone()).await;
        if status == StatusCode::CREATED {
            break body["id"].as_str().expect("id").to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the approval never reached the tokens service: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut investors = Vec::new();
    for who in ["alice", "bob", "carol"] {
        let (status, body) = p
            .post(
                "/v1/tokens/investors",
                json!({"identity_ref": format!("idp|{who}"), "country": "NL", "kyc_status": "verified", "kyc_expires_on": "2099-12-31"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        investors.push(body["id"].as_str().expect("id").to_owned());
    }
    for who in &investors {
        let (status, body) = p
            .post(
                &format!("/v1/tokens/{token}/issuances"),
                json!({"to": who, "amount": "1000"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let expires_at = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (status, hold) = p
        .post(
            &format!("/v1/tokens/{token}/holds"),
            json!({"from": investors[0], "to": investors[1], "amount": "10", "expires_at": expires_at}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    Fixture {
        asset,
        draft,
        token,
        alice: investors[0].clone(),
        bob: investors[1].clone(),
        hold: hold["id"].as_str().expect("id").to_owned(),
    }
}

/// A request of one operation. `versioned` names the resource whose current version goes in
/// `If-Match`.
struct Call {
    op: Operation,
    method: Method,
    path: String,
    body: Option<Value>,
    versioned: Option<String>,
}

fn call(op: Operation, method: Method, path: String, body: Option<Value>) -> Call {
    Call {
        op,
        method,
        path,
        body,
        versioned: None,
    }
}

/// One well-formed request per operation, so that what is checked is who may send it. Where the
/// operation concerns one investor, it is alice.
fn calls(f: &Fixture) -> Vec<Call> {
    use Method as M;
    use Operation as O;
    let (a, d, t, alice, bob) = (&f.asset, &f.draft, &f.token, &f.alice, &f.bob);
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let in_an_hour = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let calls = vec![
        call(
            O::AssetRegister,
            M::POST,
            "/v1/assets".into(),
            Some(
                json!({"name": "Damrak 2", "kind": "real_estate", "legal_owner": "D2 BV",
            "location": {"address": "Damrak 2", "city": "Amsterdam", "postal_code": "1012", "country": "NL"}}),
            ),
        ),
        call(O::AssetRead, M::GET, format!("/v1/assets/{a}"), None),
        Call {
            versioned: Some(format!("/v1/assets/{d}")),
            ..call(
                O::AssetUpdate,
                M::PATCH,
                format!("/v1/assets/{d}"),
                Some(json!({"description": "canal house"})),
            )
        },
        call(
            O::AssetDocumentAdd,
            M::POST,
            format!("/v1/assets/{d}/documents"),
            Some(json!({"title": "Deed", "kind": "title_deed",
            "sha256": "b".repeat(64), "size_bytes": 100, "media_type": "application/pdf"})),
        ),
        call(
            O::AssetValuationAdd,
            M::POST,
            format!("/v1/assets/{d}/valuations"),
            Some(json!({"amount": "100000", "currency": "EUR",
            "effective_date": "2026-01-15", "appraiser": "Taxateurs BV"})),
        ),
        call(
            O::AssetSubmit,
            M::POST,
            format!("/v1/assets/{a}/transitions"),
            Some(json!({"action": "submit"})),
        ),
        call(
            O::AssetReview,
            M::POST,
            format!("/v1/assets/{d}/transitions"),
            Some(json!({"action": "approve"})),
        ),
        call(
            O::TokenCreate,
            M::POST,
            "/v1/tokens".into(),
            Some(
                json!({"asset_id": d, "symbol": "DAM2", "name": "Damrak", "decimals": 0,
            "max_supply": "10", "unit_price": "1", "currency": "EUR"}),
            ),
        ),
        call(O::TokenRead, M::GET, format!("/v1/tokens/{t}"), None),
        Call {
            versioned: Some(format!("/v1/tokens/{t}")),
            ..call(
                O::TokenRulesUpdate,
                M::PUT,
                format!("/v1/tokens/{t}/rules"),
                Some(json!({"allowed_countries": ["NL", "DE"]})),
            )
        },
        call(
            O::InvestorRegister,
            M::POST,
            "/v1/tokens/investors".into(),
            Some(json!({"identity_ref": "idp|new",
            "country": "DE", "kyc_status": "pending", "kyc_expires_on": "2099-12-31"})),
        ),
        call(O::InvestorList, M::GET, "/v1/tokens/investors".into(), None),
        call(
            O::InvestorRead,
            M::GET,
            format!("/v1/tokens/investors/{alice}"),
            None,
        ),
        Call {
            versioned: Some(format!("/v1/tokens/investors/{bob}")),
            ..call(
                O::InvestorUpdate,
                M::PATCH,
                format!("/v1/tokens/investors/{bob}"),
                Some(json!({"country": "DE"})),
            )
        },
        call(
            O::Issue,
            M::POST,
            format!("/v1/tokens/{t}/issuances"),
            Some(json!({"to": alice, "amount": "1"})),
        ),
        call(
            O::Transfer,
            M::POST,
            format!("/v1/tokens/{t}/transfers"),
            Some(json!({"from": alice, "to": bob, "amount": "1"})),
        ),
        call(
            O::TransferCheck,
            M::POST,
            format!("/v1/tokens/{t}/transfers/check"),
            Some(json!({"from": alice, "to": bob, "amount": "1"})),
        ),
        call(
            O::Redeem,
            M::POST,
            format!("/v1/tokens/{t}/redemptions"),
            Some(json!({"from": alice, "amount": "1"})),
        ),
        call(
            O::ForcedTransfer,
            M::POST,
            format!("/v1/tokens/{t}/forced-transfers"),
            Some(json!({"from": bob, "to": alice,
            "amount": "1", "reason": "court order"})),
        ),
        call(
            O::Freeze,
            M::POST,
            format!("/v1/tokens/{t}/freezes"),
            Some(json!({"investor_id": bob, "amount": "1"})),
        ),
        // Unpausing a token that is not paused: a refusal for those allowed, and nothing stops.
        call(
            O::Pause,
            M::POST,
            format!("/v1/tokens/{t}/unpause"),
            Some(json!({})),
        ),
        call(
            O::Batch,
            M::POST,
            format!("/v1/tokens/{t}/batches"),
            Some(json!({"operations": [{"op": "issue", "to": alice, "amount": "1"}]})),
        ),
        call(
            O::HoldersList,
            M::GET,
            format!("/v1/tokens/{t}/holders"),
            None,
        ),
        call(
            O::HoldingRead,
            M::GET,
            format!("/v1/tokens/{t}/holders/{alice}"),
            None,
        ),
        call(
            O::Distribute,
            M::POST,
            format!("/v1/tokens/{t}/distributions"),
            Some(json!({"total": "1000", "currency": "EUR",
            "record_date": now, "memo": "rent"})),
        ),
        call(
            O::DistributionsList,
            M::GET,
            format!("/v1/tokens/{t}/distributions"),
            None,
        ),
        call(
            O::HoldPlace,
            M::POST,
            format!("/v1/tokens/{t}/holds"),
            Some(json!({"from": alice, "to": bob, "amount": "1", "expires_at": in_an_hour})),
        ),
        // Who may post or confirm is checked before the hold is looked up: an unknown one
        // answers 404 to them, 403 to everyone else.
        call(
            O::HoldSettle,
            M::POST,
            format!("/v1/tokens/{t}/holds/hld_unknown/post"),
            Some(json!({})),
        ),
        call(
            O::HoldRead,
            M::GET,
            format!("/v1/tokens/{t}/holds/{}", f.hold),
            None,
        ),
        call(
            O::PaymentConfirm,
            M::POST,
            format!("/v1/tokens/{t}/holds/hld_unknown/payment-confirmation"),
            Some(json!({"confirmation": "wire 1"})),
        ),
        call(
            O::TransferApprove,
            M::GET,
            format!("/v1/tokens/{t}/transfer-approvals"),
            None,
        ),
        call(
            O::MovementRead,
            M::GET,
            format!("/v1/tokens/{t}/movements"),
            None,
        ),
        // Version 1 is the token's creation, which moved nothing: a refusal for those allowed.
        call(
            O::MovementReverse,
            M::POST,
            format!("/v1/tokens/{t}/movements/1/reversal"),
            Some(json!({"reason": "booked twice"})),
        ),
        // Redefining a class with the same rules changes nothing that matters to the others.
        call(
            O::ClassDefine,
            M::PUT,
            format!("/v1/tokens/{t}/classes/SEC"),
            Some(json!({"name": "Class SEC"})),
        ),
        // An unknown class: a refusal for those allowed.
        call(
            O::Convert,
            M::POST,
            format!("/v1/tokens/{t}/conversions"),
            Some(json!({"investor_id": alice, "to_class": "NONE", "amount": "1", "reason": "r"})),
        ),
        call(O::LedgerRead, M::GET, "/v1/ledger/entries".into(), None),
        call(
            O::EventsSubscribe,
            M::GET,
            "/v1/events/subscriptions".into(),
            None,
        ),
        call(
            O::BalanceRead,
            M::GET,
            format!("/v1/ledger/accounts/investor:{alice}/balance?unit={t}"),
            None,
        ),
        call(
            O::LedgerVerify,
            M::GET,
            "/v1/ledger/verification".into(),
            None,
        ),
    ];
    for op in Operation::ALL {
        assert!(
            calls.iter().any(|c| c.op == op),
            "no request for {}",
            op.name()
        );
    }
    calls
}

/// A token of `role`; an investor's is alice's.
fn token_of(role: Role, f: &Fixture) -> String {
    let investor = (role == Role::Investor).then_some(f.alice.as_str());
    libertum_testkit::token(&[role], investor)
}

async fn send(p: &Product, c: &Call, token: &str) -> (StatusCode, Value) {
    let mut request = p
        .http
        .request(c.method.clone(), p.url(&c.path))
        .bearer_auth(token);
    if let Some(resource) = &c.versioned {
        let version = p.get(resource).await.1["version"]
            .as_u64()
            .expect("a version");
        request = request.header("if-match", format!("\"{version}\""));
    }
    if let Some(body) = &c.body {
        request = request.json(body);
    }
    let r = request.send().await.expect("sent");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// API5:2023 Broken Function Level Authorization: each role x operation, as `docs/security.md`
/// writes it, over HTTP.
#[tokio::test]
async fn api5_every_cell_of_the_role_matrix_is_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let f = fixture(&p).await;
    let mut cells = 0;
    for c in calls(&f) {
        for role in Role::ALL {
            let (status, body) = send(&p, &c, &token_of(role, &f)).await;
            let allowed = c.op.roles().contains(&role);
            if allowed {
                assert!(
                    status != StatusCode::FORBIDDEN
                        && status != StatusCode::UNAUTHORIZED
                        && !status.is_server_error(),
                    "{} x {} is allowed, got {status}: {body}",
                    c.op.name(),
                    role.as_str()
                );
                if c.method == Method::GET {
                    assert_eq!(
                        status,
                        StatusCode::OK,
                        "{} x {} reads: {body}",
                        c.op.name(),
                        role.as_str()
                    );
                }
            } else {
                assert_eq!(
                    (status, code(&body)),
                    (StatusCode::FORBIDDEN, "forbidden"),
                    "{} x {} is refused: {body}",
                    c.op.name(),
                    role.as_str()
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, Operation::ALL.len() * Role::ALL.len());

    // A batch grants nothing by itself: each operation in it needs its own right.
    let batch = |ops: Value| {
        call(
            Operation::Batch,
            Method::POST,
            format!("/v1/tokens/{}/batches", f.token),
            Some(json!({ "operations": ops })),
        )
    };
    let agent = token_of(Role::TokenAgent, &f);
    for ops in [
        json!([{"op": "forced_transfer", "from": f.bob, "to": f.alice, "amount": "1", "reason": "x"}]),
        json!([{"op": "transfer", "from": f.bob, "to": f.alice, "amount": "1"}]),
        json!([{"op": "issue", "to": f.alice, "amount": "1"}, {"op": "freeze_amount", "investor_id": f.bob, "amount": "1"}]),
        json!([{"op": "reverse", "version": 2, "reason": "x"}]),
        json!([{"op": "issue", "to": f.alice, "amount": "1"}, {"op": "forced_transfer", "from": f.bob, "to": f.alice, "amount": "1", "reason": "x"}]),
    ] {
        let (status, body) = send(&p, &batch(ops.clone()), &agent).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "a token agent's batch {ops}: {body}"
        );
    }
    let (status, body) = send(
        &p,
        &batch(json!([{"op": "issue", "to": f.alice, "amount": "1"}])),
        &agent,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    p.stop().await;
}

/// API1:2023 Broken Object Level Authorization: an investor can never read or move another
/// investor's holdings, whatever id they put in the URL or the body.
#[tokio::test]
async fn api1_an_investor_never_reads_or_moves_another_investors_holdings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let f = fixture(&p).await;
    let t = &f.token;
    let alice = libertum_testkit::token(&[Role::Investor], Some(&f.alice));
    let before = p.get(&format!("/v1/tokens/{t}/holders")).await.1;
    let bobs = [
        (Method::GET, format!("/v1/tokens/investors/{}", f.bob), None),
        (
            Method::GET,
            format!("/v1/tokens/{t}/holders/{}", f.bob),
            None,
        ),
        (
            Method::GET,
            format!("/v1/ledger/accounts/investor:{}/balance?unit={t}", f.bob),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tokens/{t}/transfers"),
            Some(json!({"from": f.bob, "to": f.alice, "amount": "500"})),
        ),
        (
            Method::POST,
            format!("/v1/tokens/{t}/transfers/check"),
            Some(json!({"from": f.bob, "to": f.alice, "amount": "500"})),
        ),
    ];
    for (method, path, body) in bobs {
        let c = Call {
            op: Operation::Transfer,
            method,
            path: path.clone(),
            body,
            versioned: None,
        };
        let (status, problem) = send(&p, &c, &alice).await;
        assert_eq!(
            (status, code(&problem)),
            (StatusCode::FORBIDDEN, "not_your_holding"),
            "{path}: {problem}"
        );
    }
    // An investor token without an investor id owns nothing.
    let nobody = libertum_testkit::token(&[Role::Investor], None);
    let c = call(
        Operation::HoldingRead,
        Method::GET,
        format!("/v1/tokens/{t}/holders/{}", f.alice),
        None,
    );
    assert_eq!(send(&p, &c, &nobody).await.0, StatusCode::FORBIDDEN);
    // Her own: allowed.
    let c = call(
        Operation::Transfer,
        Method::POST,
        format!("/v1/tokens/{t}/transfers"),
        Some(json!({"from": f.alice, "to": f.bob, "amount": "5"})),
    );
    let (status, body) = send(&p, &c, &alice).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = p.get(&format!("/v1/tokens/{t}/holders")).await.1;
    let balance = |holders: &Value, who: &str| {
        holders["holders"]
            .as_array()
            .expect("holders")
            .iter()
            .find(|h| h["investor_id"] == who)
            .map(|h| h["balance"].clone())
    };
    assert_eq!(balance(&after, &f.alice), Some(json!("995")));
    assert_eq!(balance(&after, &f.bob), Some(json!("1005")));
    assert_eq!(
        before["total_supply"], after["total_supply"],
        "only her own transfer moved anything"
    );
    p.stop().await;
}

/// API2:2023 Broken Authentication: no token, a bad one, an expired one, one for another
/// audience: 401 with a challenge, and nothing changes. Only health, metrics and the API's
/// description and page are anonymous.
#[tokio::test]
async fn api2_requests_without_a_valid_token_get_401_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let anonymous = reqwest::Client::new();
    let body = json!({"identity_ref": "idp|x", "country": "NL", "kyc_status": "verified", "kyc_expires_on": "2099-12-31"});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signer = libertum_testkit::signer();
    let cases = [
        (None, "missing_token"),
        (Some("not-a-jwt".to_owned()), "invalid_token"),
        (
            Some(signer.token_at("x", &[Role::PlatformAdmin], None, now - 7200, now - 3600)),
            "token_expired",
        ),
        (
            Some(signer.token_at("x", &[Role::PlatformAdmin], None, now + 3600, now + 7200)),
            "token_not_yet_valid",
        ),
        (
            Some(
                libertum_platform::auth::DevSigner::new(
                    libertum_platform::auth::TEST_SECRET.as_bytes(),
                    libertum_platform::auth::DEV_ISSUER,
                    "another-api",
                )
                .token("x", &[Role::PlatformAdmin], None, Duration::from_secs(60)),
            ),
            "token_wrong_audience",
        ),
    ];
    for (token, expected) in cases {
        let mut request = anonymous.post(p.url("/v1/tokens/investors")).json(&body);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.expect("sent");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{expected}");
        assert!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Bearer")),
            "{expected}: a Bearer challenge"
        );
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let problem: Value = r.json().await.expect("json");
        assert_eq!(code(&problem), expected, "{problem}");
    }
    let investors = p.get("/v1/tokens/investors").await.1;
    assert_eq!(
        investors["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was created: {investors}"
    );
    // The API's description and page hold no data: a browser opens them without a token.
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"] {
        let r = anonymous.get(p.url(open)).send().await.expect("sent");
        assert_eq!(r.status(), StatusCode::OK, "{open} is anonymous");
    }
    for closed in ["/v1/ledger/head", "/v1/assets", "/v1/nowhere", "/nowhere"] {
        let r = anonymous.get(p.url(closed)).send().await.expect("sent");
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{closed} needs a token"
        );
    }
    p.stop().await;
}

/// API3:2023 Broken Object Property Level Authorization: unknown fields are refused (no mass
/// assignment of, say, a balance or a KYC status), and nothing is created.
#[tokio::test]
async fn api3_unknown_fields_are_refused_so_nothing_is_mass_assigned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let f = fixture(&p).await;
    let (status, body) = p
        .post(
            "/v1/tokens/investors",
            json!({"identity_ref": "idp|mallory", "country": "NL", "kyc_status": "pending",
                   "kyc_expires_on": "2099-12-31", "id": "inv_chosen", "roles": ["platform_admin"]}),
        )
        .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status}: {body}"
    );
    assert!(
        matches!(body["field"].as_str(), Some("id" | "roles")),
        "the problem names the unknown field: {body}"
    );
    let (_, listed) = p.get("/v1/tokens/investors").await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));
    let (status, body) = p
        .post(
            &format!("/v1/tokens/{}/transfers", f.token),
            json!({"from": f.alice, "to": f.bob, "amount": "1", "forced": true}),
        )
        .await;
    assert!(
        (status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY)
            && body["field"] == "forced",
        "{status}: {body}"
    );
    p.stop().await;
}

/// API9:2023 Improper Inventory Management: every operation the OpenAPI document describes
/// exists and needs a token.
#[tokio::test]
async fn api9_every_documented_route_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let (status, doc) = p.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the document declares bearer authentication"
    );
    let anonymous = reqwest::Client::new();
    let mut routes = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().expect("methods").keys() {
            let method: Method = method.to_uppercase().parse().expect("a method");
            let r = anonymous
                .request(method.clone(), p.url(&concrete))
                .send()
                .await
                .expect("sent");
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} answers without a token"
            );
            routes += 1;
        }
    }
    assert!(routes >= 30, "only {routes} documented operations");
    p.stop().await;
}

/// API4:2023 Unrestricted Resource Consumption: a principal and a client address over their
/// limits get 429 with `Retry-After`, and so do bodies, pages and strings over theirs (413, 422).
#[tokio::test]
async fn api4_limits_answer_429_with_retry_after_and_bound_bodies_pages_and_strings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = libertum_platform::config::Settings::for_test(dir.path());
    settings.rate_limit_per_principal = 5;
    settings.rate_limit_per_address = 8;
    // Counts are per minute: start early in one, so the whole check falls within it.
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if second > 45 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
    let p = Product::start_with(settings).await;
    let agent = libertum_testkit::token(&[Role::TokenAgent], None);
    let auditor = libertum_testkit::token(&[Role::Auditor], None);
    let get = |token: &str| {
        p.http
            .get(p.url("/v1/tokens"))
            .bearer_auth(token.to_owned())
            .send()
    };
    // Requests in the same minute: the window may turn over mid-test, so allow one retry.
    let mut limited = None;
    for _ in 0..2 {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(get(&agent).await.expect("sent"));
        }
        let last = statuses.pop().expect("six");
        if statuses.iter().all(|r| r.status() == StatusCode::OK)
            && last.status() == StatusCode::TOO_MANY_REQUESTS
        {
            limited = Some(last);
            break;
        }
    }
    let limited = limited.expect("the sixth request of a principal in a minute gets 429");
    let retry: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let problem: Value = limited.json().await.expect("json");
    assert_eq!(code(&problem), "rate_limited");
    // Another principal from the same address has its own count, until the address's runs out.
    let mut auditor_statuses = Vec::new();
    for _ in 0..4 {
        auditor_statuses.push(get(&auditor).await.expect("sent").status());
    }
    assert!(
        auditor_statuses.contains(&StatusCode::OK),
        "another principal is not limited by the first: {auditor_statuses:?}"
    );
    assert_eq!(
        auditor_statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "the address is over its limit of 8: {auditor_statuses:?}"
    );
    // Requests without a token count against the address too: guessing tokens is limited.
    let r = reqwest::Client::new()
        .get(p.url("/v1/tokens"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "an anonymous request from the same address"
    );
    // Health stays open to probes whatever the limits.
    let r = reqwest::get(p.url("/healthz")).await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    p.stop().await;

    // Bodies, pages and strings, on a product without rate limits.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    let huge = json!({"identity_ref": "x".repeat(2 * 1024 * 1024), "country": "NL",
        "kyc_status": "verified", "kyc_expires_on": "2099-12-31"});
    let (status, body) = p.post("/v1/tokens/investors", huge).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        "{body}"
    );
    let (status, body) = p.get("/v1/tokens/investors?limit=100000").await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("limit")),
        "{body}"
    );
    let long = json!({"identity_ref": "x".repeat(10_000), "country": "NL",
        "kyc_status": "verified", "kyc_expires_on": "2099-12-31"});
    let (status, body) = p.post("/v1/tokens/investors", long).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "identity_ref", "{body}");
    let (_, listed) = p.get("/v1/tokens/investors").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was created"
    );
    p.stop().await;
}

/// API8:2023 Security Misconfiguration: a failure inside answers a generic problem: no address,
/// no error text of a dependency, no stack; the cause stays in the log.
#[tokio::test]
async fn api8_a_failing_dependency_leaves_no_internal_detail_in_the_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = libertum_platform::config::Settings::for_test(dir.path());
    // Reconciliation asks the tokens service over HTTP: here, at an address nothing answers.
    // (On port 0 the product would ask itself.)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    settings.http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    settings.tokens_url = "http://127.0.0.1:9".into();
    let p = Product::start_with(settings).await;
    let auditor = libertum_testkit::token(&[Role::Auditor], None);
    let r = p
        .http
        .get(p.url("/v1/ledger/reconciliation"))
        .bearer_auth(auditor)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let text = r.text().await.expect("body");
    let problem: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(code(&problem), "unavailable");
    for detail in ["127.0.0.1", ":9", "error", "reqwest", "connect", "tokens"] {
        assert!(!text.contains(detail), "{detail:?} leaked: {text}");
    }
    let mut fields: Vec<&String> = problem.as_object().expect("object").keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["code", "detail", "status", "title", "type"],
        "only the problem's own fields"
    );
    p.stop().await;
}

/// API8:2023 Security Misconfiguration: every answer tells a browser to treat it as data (never
/// sniffed, framed, or leaked as a referrer), and JSON answers, problems included, run nothing and
/// are never stored by a cache; the Swagger UI gets a policy that lets its own scripts run, and no others.
#[tokio::test]
async fn api8_every_answer_carries_the_security_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Product::start(dir.path()).await;
    for (path, status, json) in [
        ("/v1/assets", StatusCode::OK, true),
        ("/v1/assets/ast_missing", StatusCode::NOT_FOUND, true),
        ("/nowhere", StatusCode::NOT_FOUND, true),
        ("/healthz", StatusCode::OK, true),
        ("/docs/", StatusCode::OK, false),
    ] {
        let r = p.http.get(p.url(path)).send().await.expect("sent");
        assert_eq!(r.status(), status, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(
            header("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path}"
        );
        if json {
            assert_eq!(
                header("content-security-policy").as_deref(),
                Some("default-src 'none'; frame-ancestors 'none'"),
                "{path}"
            );
            assert_eq!(
                header("cache-control").as_deref(),
                Some("no-store"),
                "{path}"
            );
        } else {
            let csp = header("content-security-policy").unwrap_or_default();
            assert!(
                csp.contains("default-src 'none'")
                    && csp.contains("script-src 'self'")
                    && csp.contains("frame-ancestors 'none'"),
                "{path}: the UI runs its own scripts only: {csp}"
            );
        }
    }
    p.stop().await;
}
