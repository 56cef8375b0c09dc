//! Registering, reading, listing and editing assets over HTTP.

mod common;

use common::{asset, spawn};
use serde_json::json;

#[tokio::test]
async fn register_creates_a_draft_at_version_1_readable_with_its_etag() {
    let s = spawn().await;
    let mut body = asset("  Friedrichstrasse 123  ", "real_estate", "Berlin");
    body["description"] = json!(null);
    let reply = s.post("/v1/assets", &body).await;
    let created = reply.ok(201).clone();
    let id = created["id"].as_str().expect("id");
    assert!(id.starts_with("ast_"), "{id}");
    assert_eq!(created["status"], "draft");
    assert_eq!(created["version"], 1);
    assert_eq!(created["name"], "Friedrichstrasse 123", "names are trimmed");
    assert_eq!(created["kind"], "real_estate");
    assert_eq!(created["location"]["country"], "DE");
    assert_eq!(created["location"]["postal_code"], "10117");
    assert_eq!(created["description"], json!(null));
    assert_eq!(created["token_id"], json!(null));
    assert_eq!(created["documents"], json!([]));
    assert_eq!(created["valuations"], json!([]));
    assert_eq!(created["history"], json!([]));
    assert_eq!(created["created_at"], created["updated_at"]);

    let got = s.get(&format!("/v1/assets/{id}")).await;
    assert_eq!(got.ok(200), &created);
    assert_eq!(got.header("etag"), Some("\"1\""));
}

#[tokio::test]
async fn an_unknown_asset_is_a_404_problem() {
    let s = spawn().await;
    s.get("/v1/assets/ast_missing")
        .await
        .problem(404, "asset_not_found", None);
    s.patch("/v1/assets/ast_missing", "\"1\"", &json!({"name": "x"}))
        .await
        .problem(404, "asset_not_found", None);
    s.post(
        "/v1/assets/ast_missing/transitions",
        &json!({"action": "submit"}),
    )
    .await
    .problem(404, "asset_not_found", None);
}

#[tokio::test]
async fn invalid_registrations_name_the_field_and_create_nothing() {
    let s = spawn().await;
    let cases = [
        ("kind", json!("Real Estate"), "kind"),
        ("name", json!("   "), "name"),
        ("legal_owner", json!(""), "legal_owner"),
    ];
    for (key, value, field) in cases {
        let mut body = asset("Tower", "real_estate", "Berlin");
        body[key] = value;
        s.post("/v1/assets", &body)
            .await
            .problem(422, "invalid_field", Some(field));
    }
    let mut body = asset("Tower", "real_estate", "Berlin");
    body["location"]["country"] = json!("de");
    s.post("/v1/assets", &body)
        .await
        .problem(422, "invalid_field", Some("location.country"));
    body["location"]["country"] = json!("DE");
    body["location"]["city"] = json!("");
    s.post("/v1/assets", &body)
        .await
        .problem(422, "invalid_field", Some("location.city"));
    assert_eq!(s.count().await, 0);
}

#[tokio::test]
async fn listing_filters_by_status_kind_and_text_and_pages_with_a_cursor() {
    let s = spawn().await;
    let a = s
        .register(&asset("Alpha House", "real_estate", "Berlin"))
        .await;
    let b = s
        .register(&asset("Bravo Vineyard", "farmland", "Bordeaux"))
        .await;
    let c = s
        .register(&asset("Charlie Tower", "real_estate", "Munich"))
        .await;
    let d = s
        .register(&asset("Delta Loft", "real_estate", "Berlin"))
        .await;
    let e = s.register(&asset("Echo Fields", "farmland", "Lyon")).await;
    s.transition(&b, "submit").await;
    s.transition(&d, "submit").await;

    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let all = s.get("/v1/assets").await;
    assert_eq!(
        ids(all.ok(200)),
        [a.as_str(), b.as_str(), c.as_str(), d.as_str(), e.as_str()],
        "registration order"
    );
    assert_eq!(all.body["next_cursor"], json!(null));

    let submitted = s.get("/v1/assets?status=submitted").await;
    assert_eq!(ids(submitted.ok(200)), [b.as_str(), d.as_str()]);
    let farmland = s.get("/v1/assets?kind=farmland").await;
    assert_eq!(ids(farmland.ok(200)), [b.as_str(), e.as_str()]);
    let berlin = s.get("/v1/assets?text=bERLIN").await;
    assert_eq!(
        ids(berlin.ok(200)),
        [a.as_str(), d.as_str()],
        "text matches the city, any case"
    );
    let tower = s.get("/v1/assets?text=tower").await;
    assert_eq!(ids(tower.ok(200)), [c.as_str()], "text matches the name");
    let both = s.get("/v1/assets?kind=real_estate&status=draft").await;
    assert_eq!(ids(both.ok(200)), [a.as_str(), c.as_str()]);
    let none = s.get("/v1/assets?kind=farmland&text=berlin").await;
    assert_eq!(ids(none.ok(200)), Vec::<String>::new());

    // Pages of two: every asset once, in order, then no cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/assets?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = s.get(&path).await;
        let body = page.ok(200);
        pages += 1;
        seen.extend(ids(body));
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/assets?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [a.as_str(), b.as_str(), c.as_str(), d.as_str(), e.as_str()]
    );

    // A filtered listing pages over the matches only.
    let first = s.get("/v1/assets?kind=real_estate&limit=2").await;
    assert_eq!(ids(first.ok(200)), [a.as_str(), c.as_str()]);
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let second = s
        .get(&format!(
            "/v1/assets?kind=real_estate&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(ids(second.ok(200)), [d.as_str()]);
    assert_eq!(second.body["next_cursor"], json!(null));
}

#[tokio::test]
async fn bad_listing_parameters_are_problems() {
    let s = spawn().await;
    s.get("/v1/assets?limit=0")
        .await
        .problem(422, "invalid_field", Some("limit"));
    s.get("/v1/assets?limit=201")
        .await
        .problem(422, "invalid_field", Some("limit"));
    s.get("/v1/assets?cursor=abc")
        .await
        .problem(422, "invalid_field", Some("cursor"));
    s.get("/v1/assets?status=sold")
        .await
        .problem(400, "invalid_query", None);
    s.get("/v1/assets?colour=red")
        .await
        .problem(400, "invalid_query", None);
}

#[tokio::test]
async fn patch_with_if_match_changes_the_draft_and_bumps_the_version() {
    let s = spawn().await;
    let id = s
        .register(&asset("Old name", "real_estate", "Berlin"))
        .await;
    let path = format!("/v1/assets/{id}");
    // Read first, so the cached representation must be invalidated by the edit.
    assert_eq!(s.get(&path).await.ok(200)["name"], "Old name");

    let reply = s
        .patch(
            &path,
            "\"1\"",
            &json!({"name": "New name", "description": "Renovated"}),
        )
        .await;
    let updated = reply.ok(200).clone();
    assert_eq!(reply.header("etag"), Some("\"2\""));
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["name"], "New name");
    assert_eq!(updated["description"], "Renovated");
    assert_eq!(
        updated["kind"], "real_estate",
        "absent fields keep their value"
    );
    assert_eq!(updated["location"]["city"], "Berlin");

    let got = s.get(&path).await;
    assert_eq!(got.ok(200), &updated);
    assert_eq!(got.header("etag"), Some("\"2\""));

    // A weak ETag is accepted too.
    let again = s
        .patch(&path, "W/\"2\"", &json!({"kind": "mixed_use"}))
        .await;
    assert_eq!(again.ok(200)["version"], 3);
    assert_eq!(again.body["kind"], "mixed_use");
}

#[tokio::test]
async fn patch_without_if_match_is_428() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let reply = common::send(
        s.http
            .patch(s.url(&format!("/v1/assets/{id}")))
            .json(&json!({"name": "Other"})),
    )
    .await;
    reply.problem(428, "if_match_required", Some("If-Match"));
    s.patch(
        &format!("/v1/assets/{id}"),
        "three",
        &json!({"name": "Other"}),
    )
    .await
    .problem(400, "invalid_if_match", Some("If-Match"));
    let got = s.get(&format!("/v1/assets/{id}")).await;
    assert_eq!(got.ok(200)["name"], "House");
    assert_eq!(got.body["version"], 1);
}

#[tokio::test]
async fn a_stale_if_match_is_412_and_leaves_the_asset_unchanged() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let path = format!("/v1/assets/{id}");
    s.patch(&path, "\"1\"", &json!({"name": "First edit"}))
        .await
        .ok(200);
    let before = s.get(&path).await.ok(200).clone();

    s.patch(&path, "\"1\"", &json!({"name": "Lost update"}))
        .await
        .problem(412, "version_mismatch", None);
    s.patch(&path, "\"7\"", &json!({"name": "From the future"}))
        .await
        .problem(412, "version_mismatch", None);

    let after = s.get(&path).await;
    assert_eq!(after.ok(200), &before);
    assert_eq!(after.body["name"], "First edit");
    assert_eq!(after.header("etag"), Some("\"2\""));
}

#[tokio::test]
async fn an_invalid_edit_is_422_and_changes_nothing() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let path = format!("/v1/assets/{id}");
    s.patch(&path, "\"1\"", &json!({"kind": "Bad Kind"}))
        .await
        .problem(422, "invalid_field", Some("kind"));
    assert_eq!(s.get(&path).await.ok(200)["version"], 1);
}

#[tokio::test]
async fn a_submitted_asset_cannot_be_edited() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let submitted = s.transition(&id, "submit").await;
    assert_eq!(submitted["version"], 2);
    let path = format!("/v1/assets/{id}");
    s.patch(&path, "\"2\"", &json!({"name": "Too late"}))
        .await
        .problem(409, "asset_not_draft", None);
    let got = s.get(&path).await;
    assert_eq!(got.ok(200)["name"], "House");
    assert_eq!(got.body["status"], "submitted");
}
