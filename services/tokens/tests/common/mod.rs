//! Shared helpers: the tokens service on a real socket over a fresh store, assets made known to
//! it through its engine, and assertions on its answers.
#![allow(dead_code)]

use std::{ops::Deref, sync::Arc};

use libertum_domain::token;
use libertum_testkit::Http;
use reqwest::RequestBuilder;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A reply from the service.
pub use libertum_testkit::Reply;

/// A running tokens service. Dropping it removes its data directory.
pub struct Server {
    pub api: Http,
    pub tokens: libertum_tokens::Tokens,
    _dir: TempDir,
}

impl Deref for Server {
    type Target = Http;

    fn deref(&self) -> &Self::Target {
        &self.api
    }
}

/// Starts the service the way `services/tokens/src/main.rs` does, on 127.0.0.1:0.
pub async fn spawn() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(libertum_store::RedbStore::open(dir.path(), "tokens").expect("store"));
    let cache = Arc::new(libertum_store::MemoryCache::new(1000));
    let tokens = libertum_tokens::Tokens::open(store, cache, Default::default())
        .await
        .expect("tokens service");
    serve(tokens, dir).await
}

/// The service over `partitions` logs (one redb file each) as their sole writer: the
/// partitioned engine with one process, as the replicas run it with MongoDB.
pub async fn spawn_partitioned(partitions: usize) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = open_partitioned(dir.path(), partitions).await;
    serve(tokens, dir).await
}

pub async fn open_partitioned(dir: &std::path::Path, partitions: usize) -> libertum_tokens::Tokens {
    let stores = (0..partitions)
        .map(|p| {
            Arc::new(libertum_store::RedbStore::open(dir, &format!("tokens-p{p}")).expect("store"))
                as Arc<dyn libertum_store::EventStore>
        })
        .collect();
    let cache = Arc::new(libertum_store::MemoryCache::new(1000));
    libertum_tokens::Tokens::open_partitioned(stores, cache, Default::default(), false)
        .await
        .expect("tokens service")
}

/// Serves `tokens` on 127.0.0.1:0.
pub async fn serve(tokens: libertum_tokens::Tokens, dir: TempDir) -> Server {
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/tokens", tokens.router())
        .split_for_parts();
    let router = libertum_platform::server::service_router(
        router,
        tokens.probes(),
        libertum_testkit::guard(),
    );
    Server {
        api: Http::new(libertum_testkit::serve(router).await),
        tokens,
        _dir: dir,
    }
}

pub async fn send(request: RequestBuilder) -> Reply {
    libertum_testkit::send(request).await
}

impl Server {
    /// Applies `command` as the assets service's events would make the consumer do.
    async fn observe(&self, command: token::Command) {
        self.tokens
            .engine()
            .submit(libertum_store::Submission {
                command: Some(libertum_tokens::Command {
                    actor: "test".into(),
                    command,
                }),
                idempotency: None,
                checkpoint: None,
                reply: Box::new(|_, _| libertum_store::Reply::new(200, Default::default())),
                partition: None,
                span: tracing::Span::current(),
            })
            .await
            .expect("observed");
    }

    /// Tells the service that `asset_id` is approved, as the assets service's event would.
    pub async fn approve(&self, asset_id: &str) {
        self.observe(token::Command::ObserveAsset {
            asset_id: asset_id.into(),
            state: token::AssetState::Approved,
            sequence: 0,
        })
        .await
    }

    /// Tells the service who issues `asset_id`'s tokens, as the assets service's registration
    /// event would.
    pub async fn register_issuer(&self, asset_id: &str, legal_owner: &str, country: &str) {
        self.observe(token::Command::ObserveAssetIssuer {
            asset_id: asset_id.into(),
            issuer: token::AssetIssuer {
                legal_owner: legal_owner.into(),
                country: country.parse().expect("a country"),
                name: format!("asset {asset_id}"),
            },
            sequence: 0,
        })
        .await
    }

    /// Approves `asset_id` and creates its token class with `rules`; returns the token id.
    pub async fn token(&self, asset_id: &str, symbol: &str, rules: Value) -> String {
        self.approve(asset_id).await;
        let mut body = token_body(asset_id, symbol);
        body["rules"] = rules;
        let reply = self.post("/v1/tokens", &body).await;
        reply.ok(201)["id"].as_str().expect("id").to_owned()
    }

    /// Registers an investor; returns the id.
    pub async fn investor(&self, country: &str, kyc: &str) -> String {
        let reply = self
            .post("/v1/tokens/investors", &investor_body(country, kyc))
            .await;
        reply.ok(201)["id"].as_str().expect("id").to_owned()
    }

    pub async fn issue(&self, token: &str, to: &str, amount: &str) -> Value {
        let reply = self
            .post(
                &format!("/v1/tokens/{token}/issuances"),
                &json!({"to": to, "amount": amount}),
            )
            .await;
        reply.ok(200).clone()
    }

    /// The investor's balance, as the holding endpoint shows it.
    pub async fn balance(&self, token: &str, investor: &str) -> String {
        let reply = self
            .get(&format!("/v1/tokens/{token}/holders/{investor}"))
            .await;
        reply.ok(200)["balance"]
            .as_str()
            .expect("balance")
            .to_owned()
    }

    /// The current cap table as `(investor, balance, percentage)`, and the total supply.
    pub async fn cap_table(&self, token: &str) -> (Vec<(String, String, String)>, String) {
        let reply = self.get(&format!("/v1/tokens/{token}/holders")).await;
        let body = reply.ok(200);
        (
            rows(body),
            body["total_supply"].as_str().expect("supply").to_owned(),
        )
    }
}

pub fn rows(table: &Value) -> Vec<(String, String, String)> {
    table["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| {
            (
                h["investor_id"].as_str().expect("investor").to_owned(),
                h["balance"].as_str().expect("balance").to_owned(),
                h["percentage"].as_str().expect("percentage").to_owned(),
            )
        })
        .collect()
}

pub fn token_body(asset_id: &str, symbol: &str) -> Value {
    json!({
        "asset_id": asset_id,
        "symbol": symbol,
        "name": "Friedrichstrasse 123",
        "decimals": 0,
        "max_supply": "1000000",
        "unit_price": "10000",
        "currency": "EUR"
    })
}

/// A new investor's body: each call is another person (one identity_ref is one investor).
pub fn investor_body(country: &str, kyc: &str) -> Value {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let expires = (kyc == "verified").then_some("2099-12-31");
    json!({
        "identity_ref": format!("idp-{country}-{kyc}-{n}"),
        "country": country,
        "kyc_status": kyc,
        "kyc_expires_on": expires,
        "accredited": false
    })
}

/// Runs `life` on a runtime of its own, on another thread: when it returns, the servers it
/// started are gone and let their files go.
pub fn in_a_life_of_its_own<
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
>(
    life: F,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(life)
    })
    .join()
    .unwrap()
}
