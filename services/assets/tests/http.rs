//! What the HTTP layer guarantees: strict bodies, size and type limits, idempotency keys,
//! problem+json for every error, health and metrics.

mod common;

use common::{asset, send, spawn};
use serde_json::json;

#[tokio::test]
async fn an_unknown_field_is_refused_and_named() {
    let s = spawn().await;
    let mut body = asset("House", "real_estate", "Berlin");
    body["colour"] = json!("red");
    let reply = s.post("/v1/assets", &body).await;
    let problem = reply.problem(422, "invalid_field", Some("colour"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`")
    );

    let mut nested = asset("House", "real_estate", "Berlin");
    nested["location"]["planet"] = json!("Earth");
    s.post("/v1/assets", &nested)
        .await
        .problem(422, "invalid_field", Some("location.planet"));
    assert_eq!(s.count().await, 0);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = spawn().await;
    let reply = send(
        s.http
            .post(s.url("/v1/assets"))
            .header("content-type", "application/json")
            .body("{\"name\": "),
    )
    .await;
    // The field is where the parser stopped.
    reply.problem(400, "invalid_json", Some("name"));
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let s = spawn().await;
    let body = asset("House", "real_estate", "Berlin").to_string();
    let reply = send(
        s.http
            .post(s.url("/v1/assets"))
            .header("content-type", "text/plain")
            .body(body.clone()),
    )
    .await;
    reply.problem(415, "unsupported_media_type", None);
    let reply = send(s.http.post(s.url("/v1/assets")).body(body.clone())).await;
    reply.problem(415, "unsupported_media_type", None);
    // Parameters of the media type are fine.
    let reply = send(
        s.http
            .post(s.url("/v1/assets"))
            .header("content-type", "application/json; charset=utf-8")
            .body(body),
    )
    .await;
    reply.ok(201);
    assert_eq!(s.count().await, 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let s = spawn().await;
    let mut body = asset("House", "real_estate", "Berlin");
    let limit = libertum_platform::extract::MAX_BODY;
    body["description"] = json!("x".repeat(limit + 1024));
    let reply = s.post("/v1/assets", &body).await;
    let problem = reply.problem(413, "body_too_large", None);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains(&limit.to_string()), "{detail}");
    assert_eq!(s.count().await, 0);
}

#[tokio::test]
async fn a_retry_with_the_same_key_replays_the_first_response() {
    let s = spawn().await;
    let body = asset("House", "real_estate", "Berlin");
    let post = |body: serde_json::Value, key: &'static str| {
        send(
            s.http
                .post(s.url("/v1/assets"))
                .header("idempotency-key", key)
                .json(&body),
        )
    };
    let first = post(body.clone(), "key-1").await;
    let created = first.ok(201).clone();
    assert_eq!(first.header("idempotent-replayed"), None);

    let retry = post(body.clone(), "key-1").await;
    assert_eq!(retry.ok(201), &created, "the same response, the same id");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(s.count().await, 1, "nothing new was created");

    let mut other = body.clone();
    other["name"] = json!("Another house");
    post(other, "key-1")
        .await
        .problem(422, "idempotency_key_reused", Some("Idempotency-Key"));
    assert_eq!(s.count().await, 1);

    // Another key is another request.
    let second = post(body, "key-2").await;
    assert_ne!(second.ok(201)["id"], created["id"]);
    assert_eq!(s.count().await, 2);

    // The replay still answers as the first time, even after the asset has moved on.
    let id = created["id"].as_str().expect("id");
    s.transition(id, "submit").await;
    let late = post(asset("House", "real_estate", "Berlin"), "key-1").await;
    assert_eq!(late.ok(201)["status"], "draft");
    assert_eq!(late.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn keys_are_scoped_to_the_path_and_must_be_visible_ascii() {
    let s = spawn().await;
    let a = s.register(&asset("A", "real_estate", "Berlin")).await;
    let b = s.register(&asset("B", "real_estate", "Berlin")).await;
    let submit = |id: String| {
        send(
            s.http
                .post(s.url(&format!("/v1/assets/{id}/transitions")))
                .header("idempotency-key", "submit-1")
                .json(&json!({"action": "submit"})),
        )
    };
    assert_eq!(submit(a.clone()).await.ok(200)["status"], "submitted");
    let other = submit(b.clone()).await;
    assert_eq!(other.ok(200)["id"], b.as_str());
    assert_eq!(other.header("idempotent-replayed"), None);
    // A replayed move is not a second, illegal, move.
    let replay = submit(a).await;
    assert_eq!(replay.ok(200)["version"], 2);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));

    for key in ["has space".to_owned(), "k".repeat(256)] {
        send(
            s.http
                .post(s.url("/v1/assets"))
                .header("idempotency-key", key)
                .json(&asset("C", "real_estate", "Berlin")),
        )
        .await
        .problem(400, "invalid_idempotency_key", Some("Idempotency-Key"));
    }
    assert_eq!(s.count().await, 2);
}

#[tokio::test]
async fn the_token_subject_is_recorded_as_the_actor() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    let token = libertum_testkit::signer().token(
        "manager-7",
        &[libertum_platform::auth::Role::AssetManager],
        None,
        std::time::Duration::from_secs(60),
    );
    let reply = send(
        s.http
            .post(s.url(&format!("/v1/assets/{id}/transitions")))
            .bearer_auth(token)
            .json(&json!({"action": "submit"})),
    )
    .await;
    assert_eq!(reply.ok(200)["history"][0]["actor"], "manager-7");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let s = spawn().await;
    s.get("/v1/nothing-here")
        .await
        .problem(404, "route_not_found", None);
    s.get("/v1/assets/ast_1/unknown")
        .await
        .problem(404, "route_not_found", None);
    send(s.http.delete(s.url("/v1/assets")))
        .await
        .problem(405, "method_not_allowed", None);
    s.get("/v1/assets/%FF")
        .await
        .problem(400, "invalid_path", None);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let s = spawn().await;
    let reply = s.get("/v1/assets").await;
    let id = reply.header("x-request-id").expect("a request id");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let reply = send(
        s.http
            .get(s.url("/healthz"))
            .header("x-request-id", "abc-123"),
    )
    .await;
    assert_eq!(reply.header("x-request-id"), Some("abc-123"));
}

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let s = spawn().await;
    let health = s.get("/healthz").await;
    assert_eq!(health.status.as_u16(), 200);
    assert_eq!(health.body, json!({"status": "ok"}));
    let ready = s.get("/readyz").await;
    assert_eq!(ready.status.as_u16(), 200);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["checks"][0]["name"], "assets.store");
    assert_eq!(ready.body["checks"][0]["state"], "up");
}

#[tokio::test]
async fn metrics_count_requests_by_matched_route() {
    let s = spawn().await;
    let id = s.register(&asset("House", "real_estate", "Berlin")).await;
    s.get(&format!("/v1/assets/{id}")).await.ok(200);
    s.get("/v1/assets/ast_missing")
        .await
        .problem(404, "asset_not_found", None);
    let metrics = s.get("/metrics").await;
    assert_eq!(metrics.status.as_u16(), 200);
    let text = &metrics.text;
    let count = |status: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("libertum_http_requests_total{")
                    && l.contains("method=\"GET\"")
                    && l.contains("route=\"/v1/assets/{id}\"")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .unwrap_or_else(|| panic!("no counter for GET /v1/assets/{{id}} {status} in:\n{text}"));
        line.rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count")
    };
    assert!(count("200") >= 1.0);
    assert!(count("404") >= 1.0);
    assert!(!text.contains(&id), "a raw path never becomes a label");
    assert!(
        !text.contains("ast_missing"),
        "a raw path never becomes a label"
    );
}
