//! Starting the product on port 0 and talking to it over HTTP.

#![allow(dead_code)]

pub mod observability;

use std::time::Duration;

use libertum_platform::config::Settings;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub struct Product {
    /// Base URL of each path prefix: one for the whole product in one process, one per service
    /// when they run as separate processes.
    routes: Vec<(&'static str, String)>,
    pub http: Client,
    /// How long a change takes at most to travel through the bus.
    pub patience: Duration,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    processes: Vec<std::process::Child>,
    /// How each process was started, to start it again.
    commands: Vec<std::process::Command>,
}

/// The three services as separate processes, on the production backends.
pub struct Backends {
    pub kafka_brokers: String,
    pub mongodb_uri: String,
    pub redis_url: String,
    /// Databases are named `{prefix}_{service}`: one prefix per test keeps tests apart.
    pub database_prefix: String,
}

/// The directory of the workspace's binaries: the test runs from `target/<profile>/deps`.
fn binaries() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_owned()
}

/// The command that starts the service binary `name` on 127.0.0.1:`port` against `backends`,
/// with its data under `data`, as a deployment would (development signer, no rate limits,
/// frequent snapshots, a short lease).
pub fn service_command(
    name: &str,
    port: u16,
    data: &std::path::Path,
    backends: &Backends,
    tokens_url: &str,
) -> std::process::Command {
    let program = binaries().join(name);
    assert!(
        program.exists(),
        "{} is not built: run cargo build --workspace --bins first (scripts/test does)",
        program.display()
    );
    let mut command = std::process::Command::new(&program);
    command
        .env("LIBERTUM_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LIBERTUM_DATA_DIR", data)
        .env(
            "LIBERTUM_LOG",
            std::env::var("E2E_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("LIBERTUM_LOG_FORMAT", "text")
        .env("LIBERTUM_TOKENS_URL", tokens_url)
        .env(
            "LIBERTUM_AUTH_DEV_SECRET",
            libertum_platform::auth::TEST_SECRET,
        )
        .env("LIBERTUM_AUTH_INSECURE_DEV_SIGNER", "true")
        // The stories' webhook receivers listen on loopback.
        .env("LIBERTUM_WEBHOOK_PRIVATE_TARGETS", "true")
        // The tests send far more than a person would; the limits have their own test.
        .env("LIBERTUM_RATE_LIMIT_PER_PRINCIPAL", "0")
        .env("LIBERTUM_RATE_LIMIT_PER_ADDRESS", "0")
        // Snapshots all the time: every restart (a kill -9 among them) restores from a
        // snapshot and a tail, and a kill may land in the middle of one.
        .env("LIBERTUM_SNAPSHOT_EVERY_EVENTS", "20")
        .env("LIBERTUM_KAFKA_BROKERS", &backends.kafka_brokers)
        .env("LIBERTUM_MONGODB_URI", &backends.mongodb_uri)
        .env(
            "LIBERTUM_MONGODB_DATABASE_PREFIX",
            &backends.database_prefix,
        )
        .env("LIBERTUM_REDIS_URL", &backends.redis_url)
        // A restarted process waits for its predecessor's lease to expire.
        .env("LIBERTUM_LEASE_TTL_MILLIS", "2000");
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Product {
    /// Builds the whole product on `dir` and serves it on a free loopback port.
    pub async fn start(dir: &std::path::Path) -> Product {
        Self::start_with(Settings::for_test(dir)).await
    }

    /// The same with `settings`.
    pub async fn start_with(settings: Settings) -> Product {
        let app = libertum::Application::build(settings)
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
            routes: vec![("/", base)],
            http: libertum_testkit::client(),
            patience: Duration::from_secs(5),
            stop: Some(stop),
            task: Some(task),
            processes: Vec::new(),
            commands: Vec::new(),
        }
    }

    /// Starts the `assets`, `tokens` and `ledger` binaries as three processes sharing nothing
    /// but Kafka, MongoDB and Redis, and waits until each is ready.
    pub async fn processes(dir: &std::path::Path, backends: &Backends) -> Product {
        Self::processes_with(dir, backends, &[]).await
    }

    /// The same, with `env` added to each process's settings.
    pub async fn processes_with(
        dir: &std::path::Path,
        backends: &Backends,
        env: &[(&str, &str)],
    ) -> Product {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let tokens_url = format!("http://127.0.0.1:{}", ports[1]);
        let mut commands = Vec::new();
        let mut routes = Vec::new();
        for (name, port) in ["assets", "tokens", "ledger"].into_iter().zip(&ports) {
            let mut command = service_command(name, *port, &dir.join(name), backends, &tokens_url);
            command.envs(env.iter().copied());
            commands.push(command);
            routes.push((
                match name {
                    "assets" => "/v1/assets",
                    "tokens" => "/v1/tokens",
                    _ => "/v1/ledger",
                },
                format!("http://127.0.0.1:{port}"),
            ));
        }
        // The ledger also serves the events to outside consumers (after the three, whose
        // places are their processes').
        routes.push(("/v1/events", format!("http://127.0.0.1:{}", ports[2])));
        let mut product = Product {
            routes,
            http: libertum_testkit::client(),
            // A restarted service waits for its predecessor's lease to expire, then catches up.
            patience: Duration::from_secs(60),
            stop: None,
            task: None,
            processes: Vec::new(),
            commands,
        };
        for i in 0..3 {
            let child = product.commands[i].spawn().expect("a service starts");
            product.processes.push(child);
        }
        for i in 0..3 {
            product.wait_ready(i).await;
        }
        product
    }

    async fn wait_ready(&self, i: usize) {
        let base = &self.routes[i].1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{base} was not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the service process behind `prefix` again, after `kill`, and waits until it is ready.
    pub async fn restart(&mut self, prefix: &str) {
        let i = self.index(prefix);
        self.processes[i] = self.commands[i].spawn().expect("the service starts again");
        self.wait_ready(i).await;
    }

    fn index(&self, prefix: &str) -> usize {
        self.routes
            .iter()
            .position(|(p, _)| *p == prefix)
            .expect("a service process")
    }

    /// The base URL that serves `path`.
    pub fn url(&self, path: &str) -> String {
        let base = self
            .routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|(_, base)| base)
            .unwrap_or_else(|| panic!("no service serves {path}"));
        format!("{base}{path}")
    }

    /// The base URL of the service behind `prefix` (`/v1/tokens`...).
    pub fn base(&self, prefix: &str) -> String {
        self.url(prefix).trim_end_matches(prefix).to_owned()
    }

    /// Sends SIGKILL to the service process behind `prefix` (`/v1/tokens`...).
    pub fn kill(&mut self, prefix: &str) {
        let i = self.index(prefix);
        let _ = self.processes[i].kill();
        let _ = self.processes[i].wait();
    }

    /// Stops serving and waits for in-flight requests to drain.
    pub async fn stop(mut self) {
        for child in &mut self.processes {
            // SIGTERM: each service drains and stops its consumers and relay.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.processes {
            let status = child.wait().expect("the service exits");
            assert!(status.success(), "a service did not stop cleanly: {status}");
        }
        self.processes.clear();
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
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    /// POSTs with a token for `actor` (its subject) holding the role its name says:
    /// `asset-manager`, `compliance` or `token-agent`.
    pub async fn post_as(&self, actor: &str, path: &str, body: Value) -> (StatusCode, Value) {
        use libertum_platform::auth::Role;
        let role = match actor {
            "asset-manager" => Role::AssetManager,
            "compliance" => Role::ComplianceOfficer,
            "token-agent" => Role::TokenAgent,
            "bank" => Role::PaymentAgent,
            other => panic!("no role for actor {other}"),
        };
        let token =
            libertum_testkit::signer().token(actor, &[role], None, Duration::from_secs(3600));
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    pub async fn put_if_match(&self, path: &str, version: u64, body: Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .put(self.url(path))
                .header("if-match", format!("\"{version}\""))
                .json(&body),
        )
        .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = request.send().await.expect("request sent");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `ready` holds for its body, for at most `patience`.
    pub async fn eventually(&self, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + self.patience;
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

/// POSTs `body` to `url` with `Idempotency-Key: key` until it is answered 2xx, as a client
/// that retries with the same key does; a 4xx fails the test (nothing a retry can mend), and so
/// does no success within 120 s. Returns how many answers before it were not a success (a 5xx,
/// or no answer at all), each printed.
pub async fn post_until_accepted(http: &Client, url: &str, key: &str, body: &Value) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut failed = 0;
    loop {
        let sent = http
            .post(url)
            .header("idempotency-key", key)
            .timeout(Duration::from_secs(20))
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return failed,
            Ok(r) if r.status().is_client_error() => panic!(
                "{key} refused: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Ok(r) => {
                failed += 1;
                eprintln!(
                    "{key}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("{key}: {e}");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never went through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `code` of a problem+json answer.
pub fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("<no code>")
}

impl Drop for Product {
    fn drop(&mut self) {
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the tests post JSON to: the product in one process or as services, or the replicas'
/// fronts.
pub trait Api {
    fn post(
        &self,
        path: &str,
        body: Value,
    ) -> impl std::future::Future<Output = (StatusCode, Value)>;
}

impl Api for Product {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Product::post(self, path, body).await
    }
}

/// Registers the asset `body` describes, submits it and approves it; returns its id.
pub async fn approved_asset(api: &impl Api, body: Value) -> String {
    let (status, asset) = api.post("/v1/assets", body).await;
    assert_eq!(status, StatusCode::CREATED, "{asset}");
    let asset = asset["id"].as_str().expect("an asset id").to_owned();
    for action in ["submit", "approve"] {
        let (status, body) = api
            .post(
                &format!("/v1/assets/{asset}/transitions"),
                json!({"action": action}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    asset
}

/// An approved asset tokenized as `symbol`, its whole issue of `supply` held by Alice; Bob,
/// verified too, holds nothing.
pub struct Issued {
    pub asset: String,
    pub token: String,
    pub alice: String,
    pub bob: String,
}

/// Makes [`Issued`]: `name` names the asset and the investors' identity refs.
pub async fn issued(p: &Product, name: &str, symbol: &str, supply: u128) -> Issued {
    let asset = approved_asset(
        p,
        json!({"name": name, "kind": "real_estate", "legal_owner": format!("{name} SPV"),
               "location": {"address": "Main St 1", "city": "Berlin", "postal_code": "10117", "country": "DE"}}),
    )
    .await;
    let spec = json!({"asset_id": asset, "symbol": symbol, "name": name, "decimals": 0,
        "max_supply": supply.to_string(), "unit_price": "100", "currency": "EUR"});
    let deadline = tokio::time::Instant::now() + p.patience;
    let token = loop {
        let (status, body) = p.post("/v1/tokens", spec.clone()).await;
        if status == StatusCode::CREATED {
            break body["id"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the approval never reached the tokens service: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut investors = Vec::new();
    for country in ["DE", "FR"] {
        let (status, body) = p
            .post(
                "/v1/tokens/investors",
                json!({"identity_ref": format!("idp|{}-{country}", name.to_lowercase()), "country": country, "kyc_status": "verified", "kyc_expires_on": "2099-12-31"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        investors.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = p
        .post(
            &format!("/v1/tokens/{token}/issuances"),
            json!({"to": investors[0], "amount": supply.to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bob = investors.pop().unwrap();
    let alice = investors.pop().unwrap();
    Issued {
        asset,
        token,
        alice,
        bob,
    }
}
