//! The monitoring shipped in `deploy/observability` against the running services: every metric
//! name its dashboards and alert rules use is one the services export, and a real Prometheus
//! scrapes the three services and evaluates the alert rules without error.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::Product;

const SERVICES: [(&str, &str); 3] = [
    ("assets", "/v1/assets"),
    ("tokens", "/v1/tokens"),
    ("ledger", "/v1/ledger"),
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_owned()
}

/// The metric names in a Prometheus text exposition.
fn names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn check(p: &Product) {
    let mut exported = BTreeSet::new();
    for (service, prefix) in SERVICES {
        let text = p
            .http
            .get(format!("{}/metrics", p.base(prefix)))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("{service}'s /metrics: {e}"))
            .text()
            .await
            .expect("the exposition");
        if service == "ledger" {
            // The ledger verified its chain when it started: whole.
            assert!(
                text.lines().any(|l| l == "libertum_ledger_chain_valid 1"),
                "the ledger reports its chain valid:\n{text}"
            );
        }
        exported.extend(names(&text));
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("exported.txt");
    std::fs::write(
        &list,
        exported.iter().fold(String::new(), |s, n| s + n + "\n"),
    )
    .expect("the list of exported names");
    let python = libertum_testkit::servers::tools_dir().join("deploy/bin/python");
    assert!(
        python.exists(),
        "{} not found: scripts/check-deploy installs the deployment tools (scripts/test runs it)",
        python.display()
    );
    let checked = Command::new(&python)
        .arg(repository().join("deploy/observability/check-metric-names.py"))
        .arg(&list)
        .output()
        .expect("the metric-name check runs");
    assert!(
        checked.status.success(),
        "the dashboards and alert rules use metric names the services do not export:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    scrape_with_prometheus(p, dir.path()).await;
}

/// A real Prometheus with the shipped alert rules, scraping the three services every second.
async fn scrape_with_prometheus(p: &Product, dir: &Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut targets = String::new();
    for (service, prefix) in SERVICES {
        let address = p.base(prefix).trim_start_matches("http://").to_owned();
        targets += &format!(
            "      - targets: [\"{address}\"]\n        labels: {{ service: {service} }}\n"
        );
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: libertum\n    static_configs:\n{targets}",
            repository()
                .join("deploy/observability/prometheus/alerts.yml")
                .display()
        ),
    )
    .expect("prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("prometheus could not start ({e}): scripts/check-deploy installs it (apt prometheus)")
        });
    let _running = Running(child);
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let get = |path: String| {
        let http = p.http.clone();
        async move {
            let reply = http.get(path).send().await.ok()?;
            reply.json::<Value>().await.ok()
        }
    };

    // Every target scraped and up, a query over the services' own series, and every rule
    // evaluated without error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let targets = get(format!("{api}/targets")).await;
        let up = targets.as_ref().map_or(0, |t| {
            t["data"]["activeTargets"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|t| t["health"] == "up").count())
        });
        let requests = get(format!(
            "{api}/query?query=sum(libertum_http_requests_total)"
        ))
        .await;
        let counted = requests
            .as_ref()
            .and_then(|r| r["data"]["result"][0]["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let rules = get(format!("{api}/rules")).await;
        let evaluated: Vec<&Value> = rules
            .as_ref()
            .and_then(|r| r["data"]["groups"].as_array())
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let broken: Vec<String> = evaluated
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(
            broken.is_empty(),
            "alert rules fail to evaluate: {broken:?}"
        );
        let all_evaluated = !evaluated.is_empty() && evaluated.iter().all(|r| r["health"] == "ok");
        if up == 3 && counted > 0.0 && all_evaluated {
            let firing = get(format!("{api}/alerts")).await;
            let critical: Vec<&Value> = firing
                .as_ref()
                .and_then(|f| f["data"]["alerts"].as_array())
                .into_iter()
                .flatten()
                // Pending is normal at start: the first evaluation may come before the first
                // scrape of every target (LibertumServiceMissing); a firing one is not.
                .filter(|a| a["labels"]["severity"] == "critical" && a["state"] == "firing")
                .collect();
            assert!(
                critical.is_empty(),
                "a healthy product raises critical alerts: {critical:?}"
            );
            eprintln!(
                "prometheus scraped 3 targets ({counted} requests counted) and evaluated {} rules",
                evaluated.len()
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus did not scrape the services and evaluate the rules within 60 s: \
             {up} targets up, {counted} requests counted, rules: {rules:?}\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
