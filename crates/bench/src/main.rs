//! `libertum-bench`: prints, from one run, the figures docs/benchmarks.md records.
//!
//! 1. domain transfers per second on one core, every compliance rule on;
//! 2. durable HTTP transfers per second with 64 concurrent clients against the standalone product
//!    (each with an Idempotency-Key, committed with fsync before the response), p50/p99 latency,
//!    and how far the ledger lags;
//! 3. cached asset reads per second;
//! 4. a bare axum handler's rate, measured the same way, as the denominator;
//! 5. a minimal axum handler that group-commits each request into redb: this machine's ceiling
//!    for durable HTTP writes, as the denominator of the durable transfers.
//!
//! `BENCH_SECONDS` sets each HTTP phase's length (default 10); `BENCH_PHASES` (durable, bulk,
//! holders, holds, webhooks, ocf, dry, reads, comma-separated) runs only those; `LIBERTUM_STORE_CACHE_MIB` sets the product's page
//! cache per store as in production (32 by default).
//!
//! `libertum-bench production` prints the production-mode figures instead (see production.rs),
//! and `libertum-bench history` the history phase (see history.rs).

mod domain;
mod history;
mod holders;
mod holds;
mod load;
mod ocf;
mod production;
mod replicas;
mod webhooks;

use std::{sync::Arc, time::Duration};

use serde_json::json;

/// mimalloc: the request path allocates a lot of small, short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Whether `BENCH_PHASES` (a comma-separated list of durable, bulk, holders, holds, webhooks, ocf, dry and reads; all
/// when unset) asks for `phase`.
fn wanted(phase: &str) -> bool {
    std::env::var("BENCH_PHASES")
        .map_or(true, |phases| phases.split(',').any(|p| p.trim() == phase))
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("history") {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(history::run());
    }
    if std::env::args().nth(1).as_deref() == Some("replicas") {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(replicas::run());
    }
    if std::env::args().nth(1).as_deref() == Some("production") {
        let seconds = std::env::var("BENCH_PRODUCTION_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let rate = std::env::var("BENCH_PRODUCTION_RATE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2_000);
        // `production steady` skips the backlog phases.
        let backlog = std::env::args().nth(2).as_deref() != Some("steady");
        println!(
            "libertum-bench production: the local stack, steady transfers at {rate}/s for {seconds} s"
        );
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(production::run(seconds, rate, backlog));
    }
    let phase = Duration::from_secs(seconds());
    println!(
        "libertum-bench: {} cores, phases of {} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        phase.as_secs()
    );

    // 1. The domain, on this thread alone.
    let (applied, secs) = domain::run(3_000_000);
    println!(
        "domain transfers (one core, all rules): {:>12.0} /s  ({applied} in {secs:.2} s)",
        applied as f64 / secs
    );

    // The product runs on its own runtime; the load generator on another.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("bench-data-")
        .tempdir_in(".")?;
    let defaults = libertum_platform::config::Settings::for_test(dir.path());
    let settings = libertum_platform::config::Settings {
        log_filter: "error".into(),
        // The product's setting, so that its page cache can be measured at other sizes.
        store_cache_mib: std::env::var("LIBERTUM_STORE_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.store_cache_mib),
        ..defaults
    };
    println!("page cache per store: {} MiB", settings.store_cache_mib);
    let app = server.block_on(libertum::Application::build(settings))?;
    let base = format!("http://{}", app.addr());
    let tokens_store = app.tokens.engine().store().clone();
    let ledger_store = app.ledger.engine().store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = server.spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let bare = server.block_on(load::bare_server())?;

    let fixture = client.block_on(load::fixture(&base, 1_000))?;
    println!(
        "fixture: 1 asset, 1 token, {} investors holding 1,000,000 each; data in {}",
        fixture.investors.len(),
        dir.path().display()
    );

    // 2. Durable transfers, sampling the ledger's lag meanwhile.
    let sampled = |what: &str| -> anyhow::Result<load::Outcome> {
        let lag = Arc::new(load::LagSampler::default());
        let sampler = {
            let lag = lag.clone();
            let (tokens_store, ledger_store) = (tokens_store.clone(), ledger_store.clone());
            client.spawn(async move { lag.run(tokens_store, ledger_store).await })
        };
        let outcome = match what.split_once(' ') {
            Some((size, mode)) => {
                client.block_on(load::bulk(&base, &fixture, 4, size.parse()?, mode, phase))
            }
            None => load::wrk(
                &base,
                &load::transfer_script(&fixture, "transfers"),
                64,
                phase,
            ),
        };
        let catch_up = client.block_on(load::catch_up(tokens_store.clone(), ledger_store.clone()));
        lag.stop();
        let _ = client.block_on(sampler);
        let (outcome, catch_up) = (outcome?, catch_up?);
        match what.split_once(' ') {
            Some((size, mode)) => {
                outcome.print(&format!("bulk transfers, {size} per request, {mode}"))
            }
            None => outcome.print("durable HTTP transfers (64 clients)"),
        }
        println!(
            "  ledger lag during the run: max {:.3} s, p99 {:.3} s; caught up {:.3} s after the load stopped",
            lag.max(),
            lag.p99(),
            catch_up.as_secs_f64()
        );
        Ok(outcome)
    };
    let transfers = wanted("durable").then(|| sampled("single")).transpose()?;

    // Bulk transfers: batches of 1,000 and 8,000 from 4 clients, each transfer's outcome in the
    // answer (latencies are per request).
    if wanted("bulk") {
        for what in [
            "1000 independent",
            "8000 independent",
            "1000 all_or_nothing",
        ] {
            sampled(what)?;
        }
    }

    // Reads of a token with 100,000 holders (BENCH_HOLDERS) while transfers run.
    if wanted("holders") {
        holders::run(&client, &base, &fixture, phase)?;
    }

    // Holds expiring at a steady rate while transfers run: how late each expiry is recorded.
    if wanted("holds") {
        holds::run(&client, &base, &fixture, phase)?;
    }

    // The Open Cap Format export of a token with 10,000 holders and 100,000 movements.
    if wanted("ocf") {
        ocf::run(&client, &base)?;
    }

    // Webhooks to 10 subscribers at 1,000 events/s: how long after its event each arrived.
    if wanted("webhooks") {
        webhooks::run(&client, &base, &fixture, phase)?;
    }

    // The same requests to the dry run: HTTP, JSON and every rule, but no engine, commit or ledger.
    if wanted("dry") {
        let checks = load::wrk(
            &base,
            &load::transfer_script(&fixture, "transfers/check"),
            64,
            phase,
        )?;
        checks.print("dry-run transfer checks (no commit)");
    }

    // 3. Cached reads and 4. the bare handler.
    if wanted("reads") {
        let reads = load::wrk(
            &format!("{base}/v1/assets/{}", fixture.asset_id),
            &load::get_script(),
            64,
            phase,
        )?;
        reads.print("cached asset reads (64 clients)");
        let bare_rate = load::wrk(&format!("http://{bare}/"), &load::get_script(), 64, phase)?;
        bare_rate.print("bare axum handler (64 clients)");
        println!(
            "  cached reads / bare handler: {:.2}",
            reads.rate() / bare_rate.rate()
        );
    }

    // 5. The machine's ceiling for durable writes over HTTP: the same transfer requests to a
    // minimal group-commit handler (one redb insert per request, one fsync per group).
    if let Some(transfers) = transfers {
        let reference = server.block_on(load::group_commit_server(dir.path()))?;
        let ceiling = load::wrk(
            &format!("http://{reference}"),
            &load::transfer_script(&fixture, "transfers"),
            64,
            phase,
        )?;
        ceiling.print("minimal group-commit handler (64 clients)");
        println!(
            "  durable transfers / minimal group-commit handler: {:.2}",
            transfers.rate() / ceiling.rate()
        );
    }

    // The ledger matches the tokens service after all that.
    let check = client.block_on(async {
        let http = libertum_testkit::client();
        let r: serde_json::Value = http.get(format!("{base}/v1/ledger/reconciliation")).send().await?.json().await?;
        let v: serde_json::Value = http.get(format!("{base}/v1/ledger/verification")).send().await?.json().await?;
        anyhow::Ok(json!({"reconciled": r["matched"], "chain_valid": v["valid"], "entries": v["entries_checked"]}))
    })?;
    println!("after the run: {check}");
    println!("peak resident memory: {:.0} MiB", peak_rss_mib());
    let metrics = libertum_platform::http_metrics::recorder().render();
    for line in metrics.lines().filter(|l| {
        (l.starts_with("libertum_store_commit_duration_seconds_")
            || l.starts_with("libertum_store_commit_batch_size_"))
            && (l.contains("_sum") || l.contains("_count"))
    }) {
        println!("  {line}");
    }
    let _ = stop.send(());
    let _ = server.block_on(served);
    Ok(())
}
