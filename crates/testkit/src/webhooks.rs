//! A webhook receiver on loopback that keeps what it gets, and the verification of what it got
//! with the `standardwebhooks` package from PyPI (an implementation of the Standard Webhooks
//! specification nobody here wrote), installed by `scripts/stack install`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::HeaderMap, routing::post};
use serde_json::{Value, json};

/// A delivery as the receiver got it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `/ok`, `/other` or `/fail`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Delivery {
    /// The ledger entry's sequence number it carries.
    pub fn seq(&self) -> u64 {
        serde_json::from_str::<Value>(&self.body).unwrap_or_default()["data"]["seq"]
            .as_u64()
            .unwrap_or_default()
    }
}

/// The receiver: `/ok` answers 204, `/other` 200, `/fail` 500.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<Delivery>>> = Default::default();
        let keep = |path: &'static str, status: u16| {
            let got = got.clone();
            post(move |headers: HeaderMap, body: Bytes| {
                let got = got.clone();
                async move {
                    got.lock().unwrap().push(Delivery {
                        path: path.into(),
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            })
        };
        let app = axum::Router::new()
            .route("/ok", keep("/ok", 204))
            .route("/other", keep("/other", 200))
            .route("/fail", keep("/fail", 500));
        Receiver {
            base: crate::serve(app).await,
            got,
        }
    }

    /// What came to `path` so far, in order.
    pub fn on(&self, path: &str) -> Vec<Delivery> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.path == path)
            .cloned()
            .collect()
    }

    /// Waits up to `patience` until `path` got `n` deliveries; what it got.
    pub async fn until(&self, path: &str, n: usize, patience: Duration) -> Vec<Delivery> {
        let start = Instant::now();
        loop {
            let now = self.on(path);
            if now.len() >= n {
                return now;
            }
            assert!(
                start.elapsed() < patience,
                "{n} deliveries to {path} did not come within {patience:?}: {now:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Verifies `deliveries` against `secret` with the `standardwebhooks` package; its report, or
/// `Err` with it if one does not verify.
pub fn verify(secret: &str, deliveries: &[Delivery]) -> Result<String, String> {
    let list: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            let headers: serde_json::Map<String, Value> =
                ["webhook-id", "webhook-timestamp", "webhook-signature"]
                    .iter()
                    .map(|h| {
                        let value = d.headers.get(*h).and_then(|v| v.to_str().ok());
                        (h.to_string(), json!(value))
                    })
                    .collect();
            json!({"secret": secret, "headers": headers, "body": d.body})
        })
        .collect();
    crate::servers::python_check(
        "webhooks",
        "standardwebhooks",
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/verify_webhooks.py"
        )),
        &Value::Array(list),
    )
}
