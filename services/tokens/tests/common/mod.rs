//! Shared helpers: the tokens service on a real socket over a fresh store, assets made known to
//! it through its engine, and assertions on its answers.
#![allow(dead_code)]

use std::sync::Arc;

use libertum_domain::token;
use reqwest::{Client, RequestBuilder, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A running tokens service. Dropping it removes its data directory.
pub struct Server {
    pub base: String,
    pub http: Client,
    pub tokens: libertum_tokens::Tokens,
    _dir: TempDir,
}

/// Starts the service the way `services/tokens/src/main.rs` does, on 127.0.0.1:0.
pub async fn spawn() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(libertum_store::RedbStore::open(dir.path(), "tokens").expect("store"));
    let cache = Arc::new(libertum_store::MemoryCache::new(1000));
    let tokens = libertum_tokens::Tokens::open(store, cache)
        .await
        .expect("tokens service");
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .nest("/v1/tokens", tokens.router())
        .split_for_parts();
    let router = libertum_platform::server::stack(
        router.merge(libertum_platform::health::routes(tokens.probes())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    Server {
        base: format!("http://{addr}"),
        http: Client::new(),
        tokens,
        _dir: dir,
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

    /// Tells the service that `asset_id` is approved, as the assets service's event would.
    pub async fn approve(&self, asset_id: &str) {
        self.tokens
            .engine()
            .submit(libertum_store::Submission {
                command: Some(libertum_tokens::Command {
                    actor: "test".into(),
                    command: token::Command::ObserveAsset {
                        asset_id: asset_id.into(),
                        state: token::AssetState::Approved,
                    },
                }),
                idempotency: None,
                checkpoint: None,
                reply: Box::new(|_, _| libertum_store::Reply {
                    status: 200,
                    body: Default::default(),
                    replayed: false,
                }),
            })
            .await
            .expect("asset observed");
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

pub fn investor_body(country: &str, kyc: &str) -> Value {
    let expires = (kyc == "verified").then_some("2099-12-31");
    json!({
        "identity_ref": format!("idp-{country}-{kyc}"),
        "country": country,
        "kyc_status": kyc,
        "kyc_expires_on": expires,
        "accredited": false
    })
}
