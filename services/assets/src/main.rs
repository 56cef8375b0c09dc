//! The assets service as its own process. With `LIBERTUM_KAFKA_BROKERS` set it publishes its events and learns from the tokens service's which assets are tokenized;
//! without it, on embedded defaults, it cannot hear the tokens service, so assets are never marked tokenized. The `libertum` binary runs all
//! three services together.

use std::sync::Arc;

use libertum_adapters::wire::{self, Background};
use libertum_platform::{config::Settings, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One line, never a backtrace: what is wrong and which setting.
    libertum_platform::exit("assets", run().await)
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let _telemetry = telemetry::init(&settings, "assets");
    // With MongoDB its writes are partitioned (a log per partition, each owned by one replica
    // at a time); on embedded defaults it is one log with one writer.
    let backends =
        wire::backends(&settings, "assets", libertum_store::partition::PARTITIONS).await?;
    let (stores, cache, snapshots) = (backends.stores.clone(), backends.cache, backends.snapshots);
    let partitions = stores.len();
    let service = if backends.ownership.is_some() {
        libertum_assets::Assets::open_partitioned(stores, cache, snapshots, true).await?
    } else {
        libertum_assets::Assets::open(stores[0].clone(), cache, snapshots).await?
    };
    let mut background = Background::replicated(backends.ownership.clone());
    let retention = std::time::Duration::from_secs(settings.idempotency_retention_hours * 3600);
    background.prune_idempotency(backends.stores.clone(), retention);
    match wire::kafka(&settings).await? {
        Some((kafka, bus)) => {
            background
                .probes
                .push(wire::kafka_probe("assets.kafka", &kafka)?);
            background.relay(
                "assets.relay",
                &kafka,
                &backends.stores,
                &settings.backends.topics.assets,
            )?;
            // One per partition, on its owner, each applying its own assets' news.
            background.consumer_per_partition("assets.consumer", |_| {
                service.consumer(bus.clone(), &settings.backends.topics)
            });
        }
        None => tracing::warn!(
            service = "assets",
            "no LIBERTUM_KAFKA_BROKERS: running alone, assets are never marked tokenized"
        ),
    }
    let mut probes = service.probes();
    probes.extend(backends.probes);
    probes.append(&mut background.probes);
    let (routes, openapi) =
        utoipa_axum::router::OpenApiRouter::with_openapi(libertum_platform::openapi::base(
            "Libertum assets",
            "The registry of real-world assets: documents, valuations and the approval lifecycle.",
        ))
        .nest("/v1/assets", service.router())
        .split_for_parts();
    background.route_writes(libertum_assets::Assets::route(partitions));
    background.lead(Arc::new(service.engine().clone()));
    let served = background
        .serve(
            &settings,
            "assets",
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
