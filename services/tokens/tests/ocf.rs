//! The Open Cap Format export over HTTP: every file valid against the official OCF 1.2.0
//! schemas (vendored in tests/ocf, checked by the `jsonschema` package from PyPI), and the
//! securities it describes adding up to the cap table, now and as of an earlier moment.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Server, send, spawn};
use libertum_platform::auth::Role;
use serde_json::{Value, json};

/// Validates `bundle` with tests/ocf/validate.py; its report, or `Err` with it.
fn validate(bundle: &Value) -> Result<String, String> {
    libertum_testkit::servers::python_check(
        "jsonschema",
        "jsonschema",
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/ocf/validate.py"
        )),
        bundle,
    )
}

/// What the export's securities leave each stakeholder: every security issued, less those a
/// transfer or cancellation consumed.
fn holdings(bundle: &Value) -> BTreeMap<String, u128> {
    let text = bundle["files"]["Transactions.ocf.json"].as_str().unwrap();
    let transactions: Value = serde_json::from_str(text).unwrap();
    let mut live: HashMap<String, (String, u128)> = HashMap::new();
    for t in transactions["items"].as_array().unwrap() {
        let quantity = |t: &Value| t["quantity"].as_str().unwrap().parse::<u128>().unwrap();
        match t["object_type"].as_str().unwrap() {
            "TX_STOCK_ISSUANCE" => {
                let owner = t["stakeholder_id"].as_str().unwrap().to_owned();
                live.insert(
                    t["security_id"].as_str().unwrap().to_owned(),
                    (owner, quantity(t)),
                );
            }
            "TX_STOCK_TRANSFER" | "TX_STOCK_CANCELLATION" => {
                let gone = live.remove(t["security_id"].as_str().unwrap());
                assert!(
                    gone.is_some(),
                    "a security consumed twice or never issued: {t}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    let mut out = BTreeMap::new();
    for (owner, quantity) in live.into_values() {
        *out.entry(owner).or_default() += quantity;
    }
    out.retain(|_, q| *q > 0);
    out
}

async fn cap_table(s: &Server, token: &str, query: &str) -> BTreeMap<String, u128> {
    let table = s.get(&format!("/v1/tokens/{token}/holders{query}")).await;
    table.ok(200)["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["investor_id"].as_str().unwrap().to_owned(),
                h["balance"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_export_is_valid_ocf_and_its_securities_add_up_to_the_cap_table() {
    let s = spawn().await;
    let token = s.token("ast_ocf", "OCF1", json!({})).await;
    // Without the asset's registration, the issuer is not known.
    s.get(&format!("/v1/tokens/{token}/ocf"))
        .await
        .problem(409, "issuer_not_known", None);
    s.register_issuer("ast_ocf", "F123 SPV GmbH", "DE").await;
    let (a, b, c) = (
        s.investor("DE", "verified").await,
        s.investor("FR", "verified").await,
        s.investor("DE", "verified").await,
    );
    s.issue(&token, &a, "300").await;
    s.issue(&token, &b, "100").await;
    let post = |what: &str, body: Value| s.post(&format!("/v1/tokens/{token}/{what}"), &body);
    post("transfers", json!({"from": a, "to": b, "amount": "50"}))
        .await
        .ok(200);
    post("redemptions", json!({"from": b, "amount": "120"}))
        .await
        .ok(200);
    let middle = time::OffsetDateTime::now_utc();
    let middle_table = cap_table(&s, &token, "").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let hold = post(
        "holds",
        json!({"from": a, "to": c, "amount": "20", "expires_at": soon}),
    )
    .await;
    let hold = hold.ok(201)["id"].as_str().unwrap().to_owned();
    s.post(
        &format!("/v1/tokens/{token}/holds/{hold}/post"),
        &json!({"amount": "15"}),
    )
    .await
    .ok(200);
    let sent = post("transfers", json!({"from": a, "to": c, "amount": "30"})).await;
    let sent = sent.ok(200)["version"].as_u64().unwrap();
    s.post(
        &format!("/v1/tokens/{token}/movements/{sent}/reversal"),
        &json!({"reason": "wrong investor"}),
    )
    .await
    .ok(200);

    let bundle = s.get(&format!("/v1/tokens/{token}/ocf")).await;
    let bundle = bundle.ok(200).clone();
    let report = validate(&bundle).unwrap_or_else(|r| panic!("{r}"));
    assert!(report.contains("valid OCF 1.2.0"), "{report}");
    assert_eq!(bundle["manifest"]["issuer"]["legal_name"], "F123 SPV GmbH");
    assert_eq!(bundle["manifest"]["issuer"]["country_of_formation"], "DE");
    assert_eq!(holdings(&bundle), cap_table(&s, &token, "").await);
    let stakeholders: Value =
        serde_json::from_str(bundle["files"]["Stakeholders.ocf.json"].as_str().unwrap()).unwrap();
    assert_eq!(stakeholders["items"].as_array().map(Vec::len), Some(3));

    // As of the middle: the hold and the reversal are not in it yet.
    let at = middle
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let earlier = s.get(&format!("/v1/tokens/{token}/ocf?as_of={at}")).await;
    let earlier = earlier.ok(200).clone();
    validate(&earlier).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(holdings(&earlier), middle_table);

    // A tampered file no longer matches its md5; a broken one no longer validates.
    let mut tampered = bundle.clone();
    let text = tampered["files"]["Stakeholders.ocf.json"]
        .as_str()
        .unwrap()
        .replace("INDIVIDUAL", "INSTITUTION");
    tampered["files"]["Stakeholders.ocf.json"] = json!(text);
    assert!(validate(&tampered).unwrap_err().contains("md5"));
    let mut broken = bundle.clone();
    broken["manifest"]["issuer"]["country_of_formation"] = json!("Germany");
    assert!(
        validate(&broken)
            .unwrap_err()
            .contains("country_of_formation")
    );

    // Bad input and roles.
    s.get(&format!("/v1/tokens/{token}/ocf?as_of=yesterday"))
        .await
        .problem(422, "invalid_field", Some("as_of"));
    s.get("/v1/tokens/tok_missing/ocf")
        .await
        .problem(404, "token_not_found", None);
    let investor = libertum_testkit::token(&[Role::Investor], Some(&a));
    send(
        s.http
            .get(s.url(&format!("/v1/tokens/{token}/ocf")))
            .bearer_auth(investor),
    )
    .await
    .problem(403, "forbidden", None);
}
