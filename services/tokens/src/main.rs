//! The tokens service as its own process. With `LIBERTUM_KAFKA_BROKERS` set it publishes its events and learns from the assets service's which assets are approved;
//! without it, on embedded defaults, it cannot hear the assets service, so no asset is known approved. The `libertum` binary runs all
//! three services together.

use std::sync::Arc;

use libertum_adapters::wire::{self, Background};
use libertum_platform::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One line, never a backtrace: what is wrong and which setting.
    libertum_platform::exit("tokens", run().await)
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let _telemetry = telemetry::init(&settings, "tokens");
    // With MongoDB its writes are partitioned (a log per partition, each owned by one replica
    // at a time); on embedded defaults it is one log with one writer.
    let backends =
        wire::backends(&settings, "tokens", libertum_store::partition::PARTITIONS).await?;
    let (stores, cache, snapshots) = (backends.stores.clone(), backends.cache, backends.snapshots);
    let partitions = stores.len();
    let service = if backends.ownership.is_some() {
        libertum_tokens::Tokens::open_partitioned(stores, cache, snapshots, true).await?
    } else {
        libertum_tokens::Tokens::open(stores[0].clone(), cache, snapshots).await?
    };
    let retention = std::time::Duration::from_secs(settings.idempotency_retention_hours * 3600);
    let mut background = Background::replicated(backends.ownership.clone());
    background.prune_idempotency(backends.stores.clone(), retention);
    match wire::kafka(&settings).await? {
        Some((kafka, bus)) => {
            background
                .probes
                .push(wire::kafka_probe("tokens.kafka", &kafka)?);
            background.relay(
                "tokens.relay",
                &kafka,
                &backends.stores,
                &settings.backends.topics.tokens,
            )?;
            background.consumer(
                "tokens.consumer",
                service.consumer(bus, &settings.backends.topics),
            );
        }
        None => tracing::warn!(
            service = "tokens",
            "no LIBERTUM_KAFKA_BROKERS: running alone, no asset is known approved"
        ),
    }
    let mut probes = service.probes();
    probes.extend(backends.probes);
    probes.append(&mut background.probes);
    let (routes, openapi) = utoipa_axum::router::OpenApiRouter::with_openapi(
        libertum_platform::openapi::base(
            "Libertum tokens",
            "Token classes of approved assets, investors and their eligibility, issuance, transfers, redemptions, freezes, compliance rules, cap tables and distributions.",
        ),
    )
    .nest("/v1/tokens", service.router())
    .split_for_parts();
    background.route_writes(libertum_tokens::Tokens::route(partitions));
    background.lead(Arc::new(service.engine().clone()));
    let served = background
        .serve(
            &settings,
            "tokens",
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
