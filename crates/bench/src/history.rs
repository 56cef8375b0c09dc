//! The history phase: does memory stay flat as history grows, is a restart quick, are past
//! moments quick to read?
//!
//! The one-process product runs as its own process (`libertum`, next to this binary) on its
//! embedded store, with default settings (snapshots every 50,000 events). It is fed transfers
//! of one unit between 100 investors, in batches of 1,000 (`POST /v1/tokens/{id}/batches`),
//! four batches in flight, until `BENCH_HISTORY_TRANSFERS` (default 5,000,000). At each
//! checkpoint (`BENCH_HISTORY_CHECKPOINTS`, default `1000000`, and the end), once the ledger has
//! caught up, it prints the process's resident memory and the data files' size per transfer.
//! Then it reads the cap table as of 20 past moments, from the tokens service and from the
//! ledger (which must agree), restarts the process and times it until `/readyz` answers 200 and
//! a cap table is served, and prints the memory after the restart. `BENCH_HISTORY_KEEP=1` keeps
//! the data directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::load;

const INVESTORS: usize = 100;
const BATCH: usize = 1_000;
const IN_FLIGHT: usize = 4;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The product's process.
struct Product {
    child: Child,
    base: String,
    program: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Product {
    fn start(program: &Path, data: &Path, port: u16) -> anyhow::Result<Product> {
        let child = Command::new(program)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("LIBERTUM_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("LIBERTUM_DATA_DIR", data)
            .env("LIBERTUM_LOG", "warn")
            .env(
                "LIBERTUM_AUTH_DEV_SECRET",
                libertum_platform::auth::TEST_SECRET,
            )
            .env("LIBERTUM_RATE_LIMIT_PER_PRINCIPAL", "0")
            .env("LIBERTUM_RATE_LIMIT_PER_ADDRESS", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Product {
            child,
            base: format!("http://127.0.0.1:{port}"),
            program: program.to_owned(),
            data: data.to_owned(),
            port,
        })
    }

    /// Waits until `/readyz` answers 200; returns how long that took.
    async fn ready(&self, http: &reqwest::Client) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the product was not ready within 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// Stops the process the way Kubernetes does (SIGTERM) and waits for it.
    fn stop(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        *self = Product::start(&self.program, &self.data, self.port)?;
        Ok(())
    }
}

impl Drop for Product {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes the files hold on disk (allocated blocks: redb grows its files ahead of use, and
/// what is not written yet takes no space).
fn used(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| used(&m))
                .sum()
        })
        .unwrap_or(0)
}

fn file_sizes(dir: &Path) -> String {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    Some((e.file_name().into_string().ok()?, used(&e.metadata().ok()?)))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|(name, len)| format!("{name} {:.0} MiB", *len as f64 / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = http.get(url).send().await?;
    let status = r.status();
    let body: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// Waits until the ledger has recorded every event the tokens service wrote: its head stops
/// moving and its consumer reports no lag.
async fn ledger_caught_up(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let mut last = u64::MAX;
    loop {
        let head = get(http, &format!("{base}/v1/ledger/head")).await?["seq"]
            .as_u64()
            .unwrap_or(0);
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let lagging = metrics
            .lines()
            .filter(|l| l.starts_with("libertum_consumer_lag_events{"))
            .any(|l| !l.ends_with(" 0"));
        if head == last && !lagging {
            return Ok(head);
        }
        last = head;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn holders(v: &Value) -> Vec<(String, String)> {
    v["holders"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["investor_id"].as_str().unwrap_or_default().to_owned(),
                        h["balance"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run() -> anyhow::Result<()> {
    let total = env_number("BENCH_HISTORY_TRANSFERS", 5_000_000);
    let mut checkpoints: Vec<u64> = std::env::var("BENCH_HISTORY_CHECKPOINTS")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .filter(|c| *c < total)
        .collect();
    checkpoints.push(total);
    let program = std::env::current_exe()?
        .parent()
        .context("the bench's directory")?
        .join("libertum");
    anyhow::ensure!(
        program.exists(),
        "{} is not built: scripts/bench builds it",
        program.display()
    );
    // On the real disk, next to the build, not on a tmpfs.
    let scratch = tempfile::tempdir_in(program.parent().context("target directory")?)?;
    let data = scratch.path().join("data");
    let port = libertum_testkit::servers::free_port();
    let mut product = Product::start(&program, &data, port)?;
    let http = libertum_testkit::client();
    product.ready(&http).await?;
    let base = product.base.clone();
    println!(
        "history: {total} transfers in batches of {BATCH}, {IN_FLIGHT} in flight, {INVESTORS} investors; data in {}",
        data.display()
    );
    let fixture = load::fixture(&base, INVESTORS).await?;
    let token = fixture.token_id.clone();
    let baseline_rss = product.rss_mib();
    println!("  before the feed: resident {baseline_rss:.0} MiB");

    // Moments to read the past at, taken while feeding.
    let mut moments: Vec<(u64, OffsetDateTime)> = Vec::new();
    let mut sent = 0u64;
    let mut batch_no = 0u64;
    let url = format!("{base}/v1/tokens/{token}/batches");
    let started = Instant::now();
    let mut rss_at: Vec<(u64, f64)> = Vec::new();
    for checkpoint in &checkpoints {
        while sent < *checkpoint {
            let mut inflight = Vec::with_capacity(IN_FLIGHT);
            for _ in 0..IN_FLIGHT {
                if sent >= *checkpoint {
                    break;
                }
                let n = (*checkpoint - sent).min(BATCH as u64) as usize;
                let operations: Vec<Value> = (0..n)
                    .map(|j| {
                        let from = (batch_no as usize + j) % INVESTORS;
                        let to = (from + 1 + batch_no as usize % (INVESTORS - 1)) % INVESTORS;
                        json!({"op": "transfer", "from": fixture.investors[from],
                               "to": fixture.investors[to], "amount": "1"})
                    })
                    .collect();
                let (http, url) = (http.clone(), url.clone());
                inflight.push(tokio::spawn(async move {
                    let r = http
                        .post(&url)
                        .json(&json!({"operations": operations}))
                        .send()
                        .await?;
                    let status = r.status();
                    anyhow::ensure!(status.is_success(), "batch: {status} {}", r.text().await?);
                    Ok(())
                }));
                sent += n as u64;
                batch_no += 1;
            }
            for task in inflight {
                task.await??;
            }
            if batch_no.is_multiple_of(100) {
                moments.push((sent, OffsetDateTime::now_utc()));
            }
        }
        let fed = started.elapsed();
        let entries = ledger_caught_up(&http, &base).await?;
        let rss = product.rss_mib();
        rss_at.push((*checkpoint, rss));
        let disk = bytes_on_disk(&data);
        println!(
            "  after {checkpoint:>9} transfers: fed in {:.0} s ({:.0}/s), ledger {entries} entries; resident {rss:.0} MiB; data {:.2} GiB, {:.0} bytes per transfer ({})",
            fed.as_secs_f64(),
            *checkpoint as f64 / fed.as_secs_f64(),
            disk as f64 / 1073741824.0,
            disk as f64 / *checkpoint as f64,
            file_sizes(&data),
        );
    }
    if let [first, .., last] = rss_at.as_slice() {
        println!(
            "  resident memory after {} and after {} transfers differs by {:.0} MiB (target < 150 MiB)",
            first.0,
            last.0,
            last.1 - first.1
        );
    }

    // The past, from both services: they must agree.
    let mut reads = Vec::new();
    let step = (moments.len() / 20).max(1);
    for (done, at) in moments.iter().step_by(step).take(20) {
        let as_of = at
            .format(&time::format_description::well_known::Rfc3339)?
            .replace('+', "%2B");
        let mut timed = async |url: String| -> anyhow::Result<Value> {
            let t = Instant::now();
            let body = get(&http, &url).await?;
            reads.push(t.elapsed());
            Ok(body)
        };
        let ours = timed(format!("{base}/v1/tokens/{token}/holders?as_of={as_of}")).await?;
        let ledger = timed(format!(
            "{base}/v1/ledger/tokens/{token}/cap-table?as_of={as_of}"
        ))
        .await?;
        anyhow::ensure!(
            holders(&ours) == holders(&ledger),
            "the tokens service and the ledger disagree about the cap table as of {at} (after about {done} transfers)"
        );
    }
    reads.sort();
    if let (Some(p50), Some(max)) = (reads.get(reads.len() / 2), reads.last()) {
        println!(
            "  cap table as of a past moment ({} reads, tokens and ledger agreeing): p50 {:.1} ms, max {:.1} ms (target < 50 ms)",
            reads.len(),
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }

    // A restart on the whole history.
    let t = Instant::now();
    product.restart()?;
    let ready = product.ready(&http).await?;
    get(&http, &format!("{base}/v1/tokens/{token}/holders")).await?;
    let served = t.elapsed();
    println!(
        "  restart (SIGTERM, start): ready after {:.2} s, cap table served {:.2} s after the stop began (target < 5 s); resident {:.0} MiB",
        ready.as_secs_f64(),
        served.as_secs_f64(),
        product.rss_mib()
    );
    let verified = get(&http, &format!("{base}/v1/ledger/verification")).await?;
    println!(
        "  after the restart: chain valid {} over {} entries",
        verified["valid"], verified["entries_checked"]
    );
    product.stop()?;
    for service in ["tokens", "ledger"] {
        println!(
            "  {service}.redb content per transfer: {}",
            content(&data.join(format!("{service}.redb")), total)?
        );
    }
    if std::env::var_os("BENCH_HISTORY_KEEP").is_some() {
        println!("  data kept in {}", scratch.keep().display());
    }
    Ok(())
}

/// What a store file holds, per transfer: keys and values of each table, and of each kind of
/// index row (the key's first letter), without the B-tree's own overhead.
fn content(path: &Path, transfers: u64) -> anyhow::Result<String> {
    use redb::{ReadableTable, TableDefinition};
    const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
    const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index_rows");
    const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
    let db = redb::Database::open(path)?;
    let tx = db.begin_read()?;
    let mut parts: Vec<(String, u64, u64)> = Vec::new();
    let (mut n, mut bytes) = (0u64, 0u64);
    for row in tx.open_table(EVENTS)?.iter()? {
        let (_, v) = row?;
        n += 1;
        bytes += 8 + v.value().len() as u64;
    }
    parts.push(("events".into(), n, bytes));
    let (mut n, mut bytes) = (0u64, 0u64);
    for row in tx.open_table(IDEMPOTENCY)?.iter()? {
        let (k, v) = row?;
        n += 1;
        bytes += (k.value().len() + v.value().len()) as u64;
    }
    parts.push(("idempotency".into(), n, bytes));
    let mut kinds: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for row in tx.open_table(INDEX)?.iter()? {
        let (k, v) = row?;
        let key = k.value();
        let kind = key.chars().next().unwrap_or_default().to_string();
        let e = kinds.entry(format!("index {kind}")).or_default();
        e.0 += 1;
        e.1 += (key.len() + v.value().len()) as u64;
    }
    parts.extend(kinds.into_iter().map(|(k, (n, b))| (k, n, b)));
    let total: u64 = parts.iter().map(|p| p.2).sum();
    let mut out = format!("{:.0} bytes (", total as f64 / transfers as f64);
    out.push_str(
        &parts
            .iter()
            .filter(|p| p.1 > 0)
            .map(|(name, n, b)| {
                format!(
                    "{name}: {:.1} rows, {:.0} bytes",
                    *n as f64 / transfers as f64,
                    *b as f64 / transfers as f64
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    out.push(')');
    Ok(out)
}
