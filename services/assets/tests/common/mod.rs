//! Shared helpers: the assets service on a real socket over a fresh store, and assertions on
//! its answers.
#![allow(dead_code)]

use std::sync::Arc;

use reqwest::{Client, RequestBuilder, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A running assets service. Dropping it removes its data directory.
pub struct Server {
    pub base: String,
    pub http: Client,
    pub assets: libertum_assets::Assets,
    pub dir: TempDir,
}

/// Starts the service the way `services/assets/src/main.rs` does, on 127.0.0.1:0.
pub async fn spawn() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(libertum_store::RedbStore::open(dir.path(), "assets").expect("store"));
    let cache = Arc::new(libertum_store::MemoryCache::new(1000));
    let assets = libertum_assets::Assets::open(store, cache)
        .await
        .expect("assets service");
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/assets", assets.router())
        .split_for_parts();
    let router = libertum_platform::server::stack(
        router.merge(libertum_platform::health::routes(assets.probes())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    Server {
        base: format!("http://{addr}"),
        http: Client::new(),
        assets,
        dir,
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON, `Null` when it is not JSON.
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and a JSON content type; returns the body.
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        &self.body
    }

    /// Asserts an RFC 9457 problem with this status, code and field; returns the body.
    pub fn problem(&self, status: u16, code: &str, field: Option<&str>) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        assert_eq!(self.body["status"], status, "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["field"].as_str(), field, "{self:?}");
        assert_eq!(
            self.body["type"],
            format!("https://docs.libertum.dev/problems/{code}"),
            "{self:?}"
        );
        assert!(self.body["title"].is_string(), "{self:?}");
        assert!(self.body["detail"].is_string(), "{self:?}");
        &self.body
    }
}

pub async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body read");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        body,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn patch(&self, path: &str, if_match: &str, body: &Value) -> Reply {
        send(
            self.http
                .patch(self.url(path))
                .header("if-match", if_match)
                .json(body),
        )
        .await
    }

    /// Registers an asset and returns its id.
    pub async fn register(&self, body: &Value) -> String {
        let reply = self.post("/v1/assets", body).await;
        reply.ok(201)["id"].as_str().expect("id").to_owned()
    }

    /// Moves an asset by `action`, with a reason; asserts it worked and returns the asset.
    pub async fn transition(&self, id: &str, action: &str) -> Value {
        let reply = self
            .post(
                &format!("/v1/assets/{id}/transitions"),
                &json!({"action": action, "reason": format!("test {action}")}),
            )
            .await;
        reply.ok(200).clone()
    }

    /// The number of assets the unfiltered listing shows.
    pub async fn count(&self) -> usize {
        let reply = self.get("/v1/assets?limit=200").await;
        reply.ok(200)["items"].as_array().expect("items").len()
    }
}

/// A valid registration body.
pub fn asset(name: &str, kind: &str, city: &str) -> Value {
    json!({
        "name": name,
        "kind": kind,
        "location": {
            "address": "Friedrichstrasse 123",
            "city": city,
            "postal_code": "10117",
            "country": "DE"
        },
        "legal_owner": "Friedrich 123 SPV GmbH",
        "description": "Residential building with 24 flats"
    })
}

/// A valid document body.
pub fn document() -> Value {
    json!({
        "title": "Title deed",
        "kind": "title_deed",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "size_bytes": 1024,
        "media_type": "application/pdf"
    })
}
