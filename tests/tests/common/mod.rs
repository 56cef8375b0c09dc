//! Starting the product on port 0 and talking to it over HTTP.

#![allow(dead_code)]

use std::time::Duration;

use libertum_platform::config::Settings;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct Product {
    pub base: String,
    pub http: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Product {
    /// Builds the whole product on `dir` and serves it on a free loopback port.
    pub async fn start(dir: &std::path::Path) -> Product {
        let app = libertum::Application::build(Settings::for_test(dir))
            .await
            .expect("the product starts");
        let base = format!("http://{}", app.addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("the server runs");
        });
        Product {
            base,
            http: Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops serving and waits for in-flight requests to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server stops cleanly");
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn post_as(&self, actor: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("x-libertum-actor", actor)
                .json(&body),
        )
        .await
    }

    pub async fn put_if_match(&self, path: &str, version: u64, body: Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .header("if-match", format!("\"{version}\""))
                .json(&body),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = request.send().await.expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `ready` holds for its body, for at most five seconds.
    pub async fn eventually(&self, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = self.get(path).await;
            if status.is_success() && ready(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never became ready; last answer {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `code` of a problem+json answer.
pub fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("<no code>")
}
