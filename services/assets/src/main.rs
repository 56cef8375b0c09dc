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
    telemetry::init(&settings);
    let backends = wire::backends(&settings, "assets").await?;
    let (store, cache, snapshots) = (backends.store.clone(), backends.cache, backends.snapshots);
    let service = if backends.ownership.is_some() {
        libertum_assets::Assets::open_replica(store, cache, snapshots).await?
    } else {
        libertum_assets::Assets::open(store, cache, snapshots).await?
    };
    let mut background = Background::replicated(backends.ownership.clone());
    let retention = std::time::Duration::from_secs(settings.idempotency_retention_hours * 3600);
    background.prune_idempotency(vec![backends.store.clone()], retention);
    match wire::kafka(&settings).await? {
        Some((kafka, bus)) => {
            background
                .probes
                .push(wire::kafka_probe("assets.kafka", &kafka)?);
            background.relay(
                "assets.relay",
                &kafka,
                backends.store.clone(),
                &settings.backends.topics.assets,
            )?;
            background.consumer(
                "assets.consumer",
                service.consumer(bus, &settings.backends.topics),
            );
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
