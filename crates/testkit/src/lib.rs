//! What the services' API tests share: a router served on a real socket, requests to it, and
//! assertions on its answers.

pub mod servers;
pub mod webhooks;

use std::{sync::Arc, time::Duration};

use libertum_platform::auth::{
    Authenticator, DEV_AUDIENCE, DEV_ISSUER, DevSigner, Role, TEST_SECRET,
};
use reqwest::{
    Client, RequestBuilder, StatusCode,
    header::{AUTHORIZATION, HeaderMap, HeaderValue},
};
use serde_json::Value;

/// What the services check in tests: the development signer with [`TEST_SECRET`], as
/// `Settings::for_test` configures it.
pub fn authenticator() -> Arc<Authenticator> {
    Arc::new(Authenticator::development(
        TEST_SECRET.as_bytes(),
        DEV_ISSUER,
        DEV_AUDIENCE,
    ))
}

/// The guard of a service under test: [`authenticator`], no rate limits.
pub fn guard() -> libertum_platform::server::Guard {
    libertum_platform::server::Guard {
        forward: None,
        auth: authenticator(),
        limits: libertum_platform::limit::RateLimits::off(),
        body_timeout: std::time::Duration::from_secs(30),
    }
}

/// The signer of test tokens.
pub fn signer() -> DevSigner {
    DevSigner::new(TEST_SECRET.as_bytes(), DEV_ISSUER, DEV_AUDIENCE)
}

/// A test token for `roles` (and `investor`, for the investor role), valid for an hour.
pub fn token(roles: &[Role], investor: Option<&str>) -> String {
    let subject = match investor {
        Some(investor) => format!("user-{investor}"),
        None => format!("user-{}", roles.first().map_or("nobody", |r| r.as_str())),
    };
    signer().token(&subject, roles, investor, Duration::from_secs(3600))
}

/// An HTTP client that sends a platform admin's token with every request unless the request
/// sets its own `Authorization`.
pub fn client() -> Client {
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {}", token(&[Role::PlatformAdmin], None));
    if let Ok(value) = HeaderValue::from_str(&bearer) {
        headers.insert(AUTHORIZATION, value);
    }
    Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// Serves `router` in the background on 127.0.0.1, on a port the system picks; returns its base
/// URL, `http://127.0.0.1:<port>`.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    format!("http://{addr}")
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

    /// Asserts an RFC 9457 problem with this status, code and field, its `type`, `title` and
    /// `detail` as the platform writes them; returns the body.
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

/// Sends `request` and reads the whole response.
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

/// Requests to one running service. A service's test `Server` derefs to it.
pub struct Http {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// For requests built by hand; named so that `server.http` reads as before. It sends a
    /// platform admin's token unless a request sets its own.
    pub http: Client,
}

impl Http {
    /// Requests to the service at `base`, as [`serve`] returns it.
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path`. Like the other requests here, the future holds no borrow, so callers can
    /// build paths on the fly.
    pub fn get(&self, path: &str) -> impl Future<Output = Reply> + use<> {
        send(self.http.get(self.url(path)))
    }

    pub fn post(&self, path: &str, body: &Value) -> impl Future<Output = Reply> + use<> {
        send(self.http.post(self.url(path)).json(body))
    }

    pub fn patch(
        &self,
        path: &str,
        if_match: &str,
        body: &Value,
    ) -> impl Future<Output = Reply> + use<> {
        send(
            self.http
                .patch(self.url(path))
                .header("if-match", if_match)
                .json(body),
        )
    }
}
