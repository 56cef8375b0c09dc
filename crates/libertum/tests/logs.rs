//! What the product writes to its log, read from the real binary at `debug`: requests are logged,
//! bearer tokens and the signing secret never are, and `/metrics` can live on an address of its
//! own, away from the API.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("addr").port()
}

const SECRET: &str = "logs-test-signing-secret-0123456789abcdef";

#[tokio::test]
async fn tokens_and_secrets_never_reach_the_log_and_metrics_can_have_their_own_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_libertum"))
        .env("LIBERTUM_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LIBERTUM_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("LIBERTUM_DATA_DIR", dir.path())
        .env("LIBERTUM_AUTH_DEV_SECRET", SECRET)
        .env("LIBERTUM_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the libertum binary starts");
    // Read both pipes as the process writes, so that a full pipe never blocks it.
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    })
    .collect();
    let token = Command::new(env!("CARGO_BIN_EXE_libertum"))
        .args(["token", "--role", "auditor"])
        .env("LIBERTUM_AUTH_DEV_SECRET", SECRET)
        .env("LIBERTUM_DATA_DIR", dir.path())
        .output()
        .expect("libertum token runs");
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the product never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ok = http
        .get(format!("{base}/v1/ledger/head"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(ok.status(), 200);
    // A token signed with another secret: refused, and the refusal is logged without it.
    let forged = format!("{token}x");
    let refused = http
        .get(format!("{base}/v1/ledger/head"))
        .bearer_auth(&forged)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 401);

    // Metrics on their own address only.
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("text")
            .contains("libertum_http_requests_total"),
        "the API's requests are counted"
    );
    // Not on the API's address: there it is an unknown route, behind the guard like any.
    let on_api = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        on_api.status(),
        401,
        "not on the API's address, anonymously"
    );
    let on_api = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(on_api.status(), 404, "not on the API's address");

    // SIGTERM, then read everything it wrote.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("it exits");
    assert!(status.success(), "{status:?}");
    let log: String = readers
        .into_iter()
        .map(|r| r.join().expect("read"))
        .collect();
    assert!(
        log.contains("/v1/ledger/head"),
        "requests are logged at debug: {log}"
    );
    assert!(
        log.contains("bearer token refused"),
        "the refusal is logged: {log}"
    );
    for secret in [token.as_str(), forged.as_str(), SECRET] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    // Not even the token's signature alone.
    let signature = token.rsplit('.').next().expect("a JWT");
    assert!(
        !log.contains(signature),
        "a token's signature reached the log"
    );
}
