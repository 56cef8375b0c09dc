//! Shared helpers: the assets service on a real socket over a fresh store, and assertions on
//! its answers.
#![allow(dead_code)]

use std::{ops::Deref, sync::Arc};

use libertum_testkit::Http;
use reqwest::RequestBuilder;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A reply from the service.
pub use libertum_testkit::Reply;

/// A running assets service. Dropping it removes its data directory.
pub struct Server {
    pub api: Http,
    pub assets: libertum_assets::Assets,
    pub dir: TempDir,
}

impl Deref for Server {
    type Target = Http;

    fn deref(&self) -> &Self::Target {
        &self.api
    }
}

/// Starts the service the way `services/assets/src/main.rs` does, on 127.0.0.1:0.
pub async fn spawn() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(libertum_store::RedbStore::open(dir.path(), "assets").expect("store"));
    let cache = Arc::new(libertum_store::MemoryCache::new(1000));
    let assets = libertum_assets::Assets::open(store, cache, Default::default())
        .await
        .expect("assets service");
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/assets", assets.router())
        .split_for_parts();
    let router = libertum_platform::server::service_router(
        router,
        assets.probes(),
        libertum_testkit::guard(),
    );
    Server {
        api: Http::new(libertum_testkit::serve(router).await),
        assets,
        dir,
    }
}

pub async fn send(request: RequestBuilder) -> Reply {
    libertum_testkit::send(request).await
}

impl Server {
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
