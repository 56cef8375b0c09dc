//! Share classes over HTTP: defining them, movements and holds naming their class, each
//! class's own rules, conversions, what the holder, cap table and class list show, roles, bad
//! input, and the Open Cap Format export with one stock class per share class.

mod common;

use common::{Server, send, spawn};
use libertum_platform::auth::Role;
use serde_json::{Value, json};

async fn put(s: &Server, path: &str, body: Value) -> common::Reply {
    send(s.http.put(s.url(path)).json(&body)).await
}

/// `(balance, held)` of each class the holder view shows.
async fn classes_of(s: &Server, token: &str, investor: &str) -> Value {
    let reply = s
        .get(&format!("/v1/tokens/{token}/holders/{investor}"))
        .await;
    reply.ok(200)["classes"].clone()
}

#[tokio::test]
async fn movements_stay_in_their_class_under_its_own_rules() {
    let s = spawn().await;
    let token = s.token("ast_cls", "CLS1", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let tokens = |what: &str| format!("/v1/tokens/{token}/{what}");

    let defined = put(
        &s,
        &tokens("classes/A"),
        json!({"name": "Class A ordinary shares"}),
    )
    .await;
    assert_eq!(defined.ok(200)["events"][0]["change"], "class_defined");
    put(
        &s,
        &tokens("classes/PREF"),
        json!({"name": "Preferred", "rules": {"denied_countries": ["FR"], "max_supply": "350"}}),
    )
    .await
    .ok(200);

    s.issue(&token, &a, "100").await;
    let issued = s
        .post(
            &tokens("issuances"),
            &json!({"to": a, "amount": "300", "class": "A"}),
        )
        .await;
    assert_eq!(issued.ok(200)["events"][0]["class"], "A");
    s.post(
        &tokens("issuances"),
        &json!({"to": a, "amount": "200", "class": "PREF"}),
    )
    .await
    .ok(200);
    // The class's own rules, with the token's codes.
    s.post(
        &tokens("issuances"),
        &json!({"to": b, "amount": "1", "class": "PREF"}),
    )
    .await
    .problem(409, "country_not_allowed", Some("to"));
    s.post(
        &tokens("issuances"),
        &json!({"to": a, "amount": "301", "class": "PREF"}),
    )
    .await
    .problem(409, "supply_cap_exceeded", Some("amount"));

    // Transfers name their class; the class's balance is what counts.
    s.post(
        &tokens("transfers"),
        &json!({"from": a, "to": b, "amount": "50", "class": "A"}),
    )
    .await
    .ok(200);
    s.post(
        &tokens("transfers"),
        &json!({"from": a, "to": b, "amount": "101", "class": "default"}),
    )
    .await
    .problem(409, "insufficient_balance", Some("amount"));
    let check = s
        .post(
            &tokens("transfers/check"),
            &json!({"from": a, "to": b, "amount": "251", "class": "A"}),
        )
        .await;
    assert_eq!(check.ok(200)["code"], "insufficient_balance");
    s.post(
        &tokens("transfers"),
        &json!({"from": a, "to": b, "amount": "1", "class": "Z"}),
    )
    .await
    .problem(404, "class_not_found", Some("class"));

    // A conversion keeps the total and moves the class supplies.
    let converted = s
        .post(
            &tokens("conversions"),
            &json!({"investor_id": a, "from_class": "A", "to_class": "PREF", "amount": "100", "reason": "board resolution"}),
        )
        .await;
    assert_eq!(converted.ok(200)["events"][0]["change"], "converted");
    s.post(
        &tokens("conversions"),
        &json!({"investor_id": a, "to_class": "PREF", "amount": "51", "reason": "over the cap"}),
    )
    .await
    .problem(409, "supply_cap_exceeded", Some("amount"));

    assert_eq!(
        classes_of(&s, &token, &a).await,
        json!({
            "default": {"balance": "100", "held": "0"},
            "A": {"balance": "150", "held": "0"},
            "PREF": {"balance": "300", "held": "0"},
        })
    );
    assert_eq!(s.balance(&token, &a).await, "550");
    let list = s.get(&tokens("classes")).await;
    let list = list.ok(200);
    assert_eq!(list["default_supply"], "100");
    let supplies: Vec<(&str, &str)> = list["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["supply"].as_str().unwrap()))
        .collect();
    assert_eq!(supplies, [("A", "200"), ("PREF", "300")]);
    let table = s.get(&tokens("holders")).await;
    let rows = table.ok(200)["holders"].as_array().unwrap().clone();
    let of_b = rows
        .iter()
        .find(|r| r["investor_id"] == b.as_str())
        .unwrap();
    assert_eq!(
        of_b["classes"],
        json!({"A": {"balance": "50", "held": "0"}})
    );
    let token_view = s.get(&format!("/v1/tokens/{token}")).await;
    assert_eq!(
        token_view.ok(200)["classes"][1]["rules"]["max_supply"],
        "350"
    );

    // Movements record their classes; a conversion is not reversed but converted back.
    let movements = s.get(&tokens("movements")).await;
    let items = movements.ok(200)["items"].as_array().unwrap().clone();
    let conversion = items.iter().find(|m| m["kind"] == "converted").unwrap();
    assert_eq!(
        (&conversion["class"], &conversion["to_class"]),
        (&json!("A"), &json!("PREF"))
    );
    let version = conversion["version"].as_u64().unwrap();
    s.post(
        &tokens(&format!("movements/{version}/reversal")),
        &json!({"reason": "undo"}),
    )
    .await
    .problem(409, "conversion_not_reversible", Some("version"));

    // A hold reserves units of its class.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let hold = s
        .post(
            &tokens("holds"),
            &json!({"from": a, "to": b, "amount": "140", "expires_at": soon, "class": "A"}),
        )
        .await;
    assert_eq!(hold.ok(201)["class"], "A");
    s.post(
        &tokens("transfers"),
        &json!({"from": a, "to": b, "amount": "11", "class": "A"}),
    )
    .await
    .problem(409, "insufficient_unheld_balance", Some("amount"));
    assert_eq!(
        classes_of(&s, &token, &a).await["A"],
        json!({"balance": "150", "held": "140"})
    );
}

#[tokio::test]
async fn classes_are_defined_and_converted_by_their_roles_only_and_bad_input_changes_nothing() {
    let s = spawn().await;
    let token = s.token("ast_cls2", "CLS2", json!({})).await;
    let a = s.investor("DE", "verified").await;
    s.issue(&token, &a, "10").await;
    let tokens = |what: &str| format!("/v1/tokens/{token}/{what}");
    let as_role = |role: Role| libertum_testkit::token(&[role], None);

    let agent_defines = send(
        s.http
            .put(s.url(&tokens("classes/A")))
            .bearer_auth(as_role(Role::TokenAgent))
            .json(&json!({"name": "A"})),
    )
    .await;
    agent_defines.problem(403, "forbidden", None);
    let officer_defines = send(
        s.http
            .put(s.url(&tokens("classes/A")))
            .bearer_auth(as_role(Role::ComplianceOfficer))
            .json(&json!({"name": "A", "rules": {"locked_until": "2100-01-01T00:00:00Z"}})),
    )
    .await;
    officer_defines.ok(200);
    let conversion = json!({"investor_id": a, "to_class": "A", "amount": "4", "reason": "r"});
    send(
        s.http
            .post(s.url(&tokens("conversions")))
            .bearer_auth(as_role(Role::ComplianceOfficer))
            .json(&conversion),
    )
    .await
    .problem(403, "forbidden", None);
    send(
        s.http
            .post(s.url(&tokens("conversions")))
            .bearer_auth(as_role(Role::TokenAgent))
            .json(&conversion),
    )
    .await
    .ok(200);
    // The class is locked up: the holder's own transfer of it is refused.
    let b = s.investor("DE", "verified").await;
    send(
        s.http
            .post(s.url(&tokens("transfers")))
            .bearer_auth(libertum_testkit::token(&[Role::Investor], Some(&a)))
            .json(&json!({"from": a, "to": b, "amount": "1", "class": "A"})),
    )
    .await
    .problem(409, "lockup_active", Some("class"));

    let before = s.get(&format!("/v1/tokens/{token}")).await.ok(200).clone();
    for (path, body, status, code, field) in [
        (
            "classes/default",
            json!({"name": "x"}),
            422,
            "invalid_field",
            "class",
        ),
        (
            "classes/a%7Cb",
            json!({"name": "x"}),
            422,
            "invalid_field",
            "class",
        ),
        (
            "classes/B",
            json!({"name": ""}),
            422,
            "invalid_field",
            "name",
        ),
        (
            "classes/B",
            json!({"name": "B", "rules": {"max_supply": "0"}}),
            422,
            "invalid_field",
            "rules.max_supply",
        ),
        (
            "classes/A",
            json!({"name": "A", "rules": {"max_supply": "3"}}),
            409,
            "class_supply_above_cap",
            "rules.max_supply",
        ),
        (
            "classes/B",
            json!({"name": "B", "colour": "red"}),
            422,
            "invalid_field",
            "colour",
        ),
    ] {
        let reply = put(&s, &tokens(path), body).await;
        reply.problem(status, code, Some(field));
    }
    for (body, status, code, field) in [
        (
            json!({"investor_id": a, "to_class": "A", "amount": "0", "reason": "r"}),
            422,
            "invalid_field",
            "amount",
        ),
        (
            json!({"investor_id": a, "from_class": "A", "to_class": "A", "amount": "1", "reason": "r"}),
            422,
            "invalid_field",
            "to_class",
        ),
        (
            json!({"investor_id": a, "to_class": "Q", "amount": "1", "reason": "r"}),
            404,
            "class_not_found",
            "to_class",
        ),
        (
            json!({"investor_id": "inv_nobody", "to_class": "A", "amount": "1", "reason": "r"}),
            404,
            "investor_not_found",
            "investor_id",
        ),
        (
            json!({"investor_id": a, "to_class": "A", "amount": "7", "reason": "r"}),
            409,
            "insufficient_balance",
            "amount",
        ),
        (
            json!({"investor_id": a, "to_class": "A", "amount": "1", "reason": ""}),
            422,
            "invalid_field",
            "reason",
        ),
    ] {
        let reply = s.post(&tokens("conversions"), &body).await;
        reply.problem(status, code, Some(field));
    }
    let after = s.get(&format!("/v1/tokens/{token}")).await.ok(200).clone();
    assert_eq!(before, after, "refused requests change nothing");

    // Investors see the classes and their rules, not how much of each exists.
    let seen = send(
        s.http
            .get(s.url(&tokens("classes")))
            .bearer_auth(libertum_testkit::token(&[Role::Investor], Some(&a))),
    )
    .await;
    let seen = seen.ok(200);
    assert_eq!(seen["classes"][0]["id"], "A");
    assert!(
        seen.get("default_supply").is_none() && seen["classes"][0].get("supply").is_none(),
        "{seen}"
    );
    let staff = s.get(&tokens("classes")).await;
    assert_eq!(staff.ok(200)["classes"][0]["supply"], "4");

    // Batches take classes and the new operations too, each under its own role.
    let batch = s
        .post(
            &tokens("batches"),
            &json!({"operations": [
                {"op": "define_class", "class": "B", "name": "Class B", "rules": null},
                {"op": "issue", "to": a, "amount": "5", "class": "B"},
                {"op": "issue", "to": a, "amount": "1", "class": "Default"},
                {"op": "convert", "investor_id": a, "from_class": "B", "amount": "2", "reason": "r"},
            ]}),
        )
        .await;
    assert_eq!(batch.ok(200)["total_supply"], "16");
    assert_eq!(
        classes_of(&s, &token, &a).await,
        json!({"default": {"balance": "9", "held": "0"}, "A": {"balance": "4", "held": "0"}, "B": {"balance": "3", "held": "0"}})
    );
    send(
        s.http
            .post(s.url(&tokens("batches")))
            .bearer_auth(as_role(Role::TokenAgent))
            .json(&json!({"operations": [{"op": "define_class", "class": "C", "name": "C"}]})),
    )
    .await
    .problem(403, "forbidden", None);
}

#[tokio::test]
async fn the_ocf_export_has_a_stock_class_per_share_class() {
    let s = spawn().await;
    let token = s.token("ast_cls3", "CLS3", json!({})).await;
    s.register_issuer("ast_cls3", "CLS3 SPV GmbH", "DE").await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("DE", "verified").await;
    let tokens = |what: &str| format!("/v1/tokens/{token}/{what}");
    put(&s, &tokens("classes/A"), json!({"name": "Class A"}))
        .await
        .ok(200);
    s.issue(&token, &a, "100").await;
    s.post(
        &tokens("issuances"),
        &json!({"to": a, "amount": "60", "class": "A"}),
    )
    .await
    .ok(200);
    s.post(
        &tokens("transfers"),
        &json!({"from": a, "to": b, "amount": "25", "class": "A"}),
    )
    .await
    .ok(200);
    s.post(
        &tokens("conversions"),
        &json!({"investor_id": a, "to_class": "A", "amount": "30", "reason": "r"}),
    )
    .await
    .ok(200);

    let bundle = s.get(&tokens("ocf")).await.ok(200).clone();
    let report = libertum_testkit::servers::python_check(
        "jsonschema",
        "jsonschema",
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/ocf/validate.py"
        )),
        &bundle,
    )
    .unwrap_or_else(|r| panic!("{r}"));
    assert!(report.contains("valid OCF 1.2.0"), "{report}");
    let file = |name: &str| -> Value {
        serde_json::from_str(bundle["files"][name].as_str().unwrap()).unwrap()
    };
    let classes: Vec<String> = file("StockClasses.ocf.json")["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(classes, [token.clone(), format!("{token}.A")]);
    // What the securities leave each holder in each stock class is the holder's class balance.
    let mut live: std::collections::HashMap<String, (String, String, u128)> = Default::default();
    let mut conversions = 0;
    for t in file("Transactions.ocf.json")["items"].as_array().unwrap() {
        match t["object_type"].as_str().unwrap() {
            "TX_STOCK_ISSUANCE" => {
                live.insert(
                    t["security_id"].as_str().unwrap().to_owned(),
                    (
                        t["stakeholder_id"].as_str().unwrap().to_owned(),
                        t["stock_class_id"].as_str().unwrap().to_owned(),
                        t["quantity"].as_str().unwrap().parse().unwrap(),
                    ),
                );
            }
            kind => {
                conversions += usize::from(kind == "TX_STOCK_CONVERSION");
                assert!(
                    live.remove(t["security_id"].as_str().unwrap()).is_some(),
                    "{t}"
                );
            }
        }
    }
    assert_eq!(conversions, 1);
    let mut positions: std::collections::BTreeMap<(String, String), u128> = Default::default();
    for (owner, class, quantity) in live.into_values() {
        *positions.entry((owner, class)).or_default() += quantity;
    }
    positions.retain(|_, q| *q > 0);
    let expected: std::collections::BTreeMap<(String, String), u128> = [
        ((a.clone(), token.clone()), 70),
        ((a.clone(), format!("{token}.A")), 65),
        ((b.clone(), format!("{token}.A")), 25),
    ]
    .into_iter()
    .collect();
    assert_eq!(positions, expected);
}
