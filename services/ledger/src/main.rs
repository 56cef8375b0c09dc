//! The ledger service as its own process. With `LIBERTUM_KAFKA_BROKERS` set it records every event of the assets and tokens topics;
//! without it, on embedded defaults, it receives no events. The `libertum` binary runs all
//! three services together.

use std::time::Duration;

use std::sync::Arc;

use libertum_adapters::wire::{self, Background};
use libertum_platform::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One line, never a backtrace: what is wrong and which setting.
    libertum_platform::exit("ledger", run().await)
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let _telemetry = telemetry::init(&settings, "ledger");
    // One partition: the ledger's chain is one sequence (see docs/ARCHITECTURE.md).
    let backends = wire::backends(&settings, "ledger", 1).await?;
    let (store, tokens_url) = (backends.store.clone(), settings.tokens_url.clone());
    let service = if backends.ownership.is_some() {
        libertum_ledger::Ledger::open_replica(store, tokens_url, backends.snapshots).await?
    } else {
        libertum_ledger::Ledger::open(store, tokens_url, backends.snapshots).await?
    };
    let mut background = Background::replicated(backends.ownership.clone());
    match wire::kafka(&settings).await? {
        Some((kafka, bus)) => {
            background
                .probes
                .push(wire::kafka_probe("ledger.kafka", &kafka)?);
            for (name, consumer) in ["ledger.assets_consumer", "ledger.tokens_consumer"]
                .into_iter()
                .zip(service.consumers(bus, &settings.backends.topics))
            {
                background.consumer(name, consumer);
            }
        }
        None => tracing::warn!(
            service = "ledger",
            "no LIBERTUM_KAFKA_BROKERS: running alone, it receives no events"
        ),
    }
    if settings.ledger_verify_interval_seconds > 0 {
        let (ledger, every) = (service.clone(), settings.ledger_verify_interval_seconds);
        background.periodic(Duration::from_secs(every), move || ledger.clone().audit());
    }
    let mut probes = service.probes();
    probes.extend(backends.probes);
    probes.append(&mut background.probes);
    let (routes, openapi) = utoipa_axum::router::OpenApiRouter::with_openapi(
        libertum_platform::openapi::base(
            "Libertum ledger",
            "The append-only, hash-chained double-entry record of every event: balances at any point, verification and reconciliation; every event for outside consumers as webhooks and a stream.",
        ),
    )
    .nest("/v1/ledger", service.router())
    .nest("/v1/events", service.events_router(settings.webhooks))
    .split_for_parts();
    background.owned_task(service.dispatcher(settings.webhooks));
    background.lead(Arc::new(service.engine().clone()));
    let served = background
        .serve(
            &settings,
            "ledger",
            routes,
            openapi,
            probes,
            backends.limiter.clone(),
        )
        .await;
    background.stop().await;
    service.close().await;
    served?;
    Ok(())
}
