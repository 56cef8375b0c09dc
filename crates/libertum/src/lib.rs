//! The whole product in one process: the three services on one address, on embedded defaults
//! (a redb store per service under the data directory, the in-process bus, an in-memory cache).

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::Router;
use libertum_assets::Assets;
use libertum_events::{ASSETS_TOPIC, TOKENS_TOPIC};
use libertum_ledger::Ledger;
use libertum_platform::{
    config::Settings,
    health::{self, Check, Probe},
    server,
};
use libertum_store::{EventBus, EventStore, InProcessBus, MemoryCache, RedbStore};
use libertum_tokens::Tokens;
use tokio::{net::TcpListener, sync::watch};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Libertum",
        description = "Tokenization of real-world assets: the asset registry, token classes with compliance, and the hash-chained ledger. Amounts are strings of digits in minor units. Errors are RFC 9457 problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "assets", description = "real-world assets, documents, valuations, lifecycle"),
        (name = "tokens", description = "token classes of approved assets and their rules"),
        (name = "investors", description = "investors and their eligibility"),
        (name = "movements", description = "issue, transfer, redeem, freeze, pause, forced transfer, batches, dry run"),
        (name = "holders", description = "cap tables, now or as of any moment"),
        (name = "distributions", description = "pro-rata payments to holders"),
        (name = "ledger", description = "the append-only double-entry record, verification and reconciliation")
    )
)]
struct ApiDoc;

/// The running product, built but not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    stop_consumers: watch::Sender<bool>,
    background: Vec<tokio::task::JoinHandle<()>>,
    pub assets: Assets,
    pub tokens: Tokens,
    pub ledger: Ledger,
}

impl Application {
    /// Opens the stores, rebuilds every service's state, starts the consumers and binds the address.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.http_addr).await?;
        let addr = listener.local_addr()?;
        let tokens_url = if settings.tokens_url.is_empty() || settings.http_addr.port() == 0 {
            format!("http://{addr}")
        } else {
            settings.tokens_url.clone()
        };
        let _ = libertum_platform::http_metrics::recorder();

        let cache = Arc::new(MemoryCache::new(settings.cache_entries));
        let assets_store: Arc<dyn EventStore> =
            Arc::new(RedbStore::open(&settings.data_dir, "assets")?);
        let tokens_store: Arc<dyn EventStore> =
            Arc::new(RedbStore::open(&settings.data_dir, "tokens")?);
        let ledger_store: Arc<dyn EventStore> =
            Arc::new(RedbStore::open(&settings.data_dir, "ledger")?);

        let bus = InProcessBus::new();
        bus.attach(ASSETS_TOPIC, assets_store.clone());
        bus.attach(TOKENS_TOPIC, tokens_store.clone());
        let bus: Arc<dyn EventBus> = Arc::new(bus);

        let assets = Assets::open(assets_store.clone(), cache.clone()).await?;
        let tokens = Tokens::open(tokens_store.clone(), cache).await?;
        let ledger = Ledger::open(ledger_store.clone(), tokens_url).await?;

        let (stop_consumers, stopped) = watch::channel(false);
        let mut probes: Vec<Probe> = Vec::new();
        probes.extend(assets.probes());
        probes.extend(tokens.probes());
        probes.extend(ledger.probes());
        let assets_consumer = assets.consumer(bus.clone());
        probes.push(lag_probe("assets.consumer", assets_consumer.lag()));
        let mut background = vec![tokio::spawn(assets_consumer.run(stopped.clone()))];
        let tokens_consumer = tokens.consumer(bus.clone());
        probes.push(lag_probe("tokens.consumer", tokens_consumer.lag()));
        background.push(tokio::spawn(tokens_consumer.run(stopped.clone())));
        for (i, consumer) in ledger.consumers(bus.clone()).into_iter().enumerate() {
            probes.push(lag_probe(
                if i == 0 {
                    "ledger.assets_consumer"
                } else {
                    "ledger.tokens_consumer"
                },
                consumer.lag(),
            ));
            background.push(tokio::spawn(consumer.run(stopped.clone())));
        }
        let retention = Duration::from_secs(settings.idempotency_retention_hours * 3600);
        background.push(tokio::spawn(prune_idempotency(
            vec![assets_store, tokens_store],
            retention,
            stopped,
        )));

        let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .nest("/v1/assets", assets.router())
            .nest("/v1/tokens", tokens.router())
            .nest("/v1/ledger", ledger.router())
            .split_for_parts();
        let router = server::stack(
            api.merge(health::routes(probes))
                .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi)),
        );
        tracing::info!(%addr, data_dir = %settings.data_dir.display(), "libertum built");
        Ok(Application {
            listener,
            router,
            stop_consumers,
            background,
            assets,
            tokens,
            ledger,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` completes, drains in-flight requests, stops the consumers, and
    /// waits for the writers to commit what is queued and release the stores.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let result = server::serve(self.listener, self.router, shutdown).await;
        let _ = self.stop_consumers.send(true);
        for task in self.background {
            let _ = task.await;
        }
        self.assets.close().await;
        self.tokens.close().await;
        self.ledger.close().await;
        result
    }
}

fn lag_probe(name: &'static str, lag: Arc<std::sync::atomic::AtomicU64>) -> Probe {
    Arc::new(move || {
        let lag = lag.load(Ordering::Relaxed);
        Box::pin(async move {
            Check {
                name: name.into(),
                state: if lag > 100_000 { "degraded" } else { "up" },
                detail: Some(format!("lag {lag} events")),
            }
        })
    })
}

async fn prune_idempotency(
    stores: Vec<Arc<dyn EventStore>>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let before = time::OffsetDateTime::now_utc().unix_timestamp() - retention.as_secs() as i64;
        for store in &stores {
            match store.prune_idempotency(before).await {
                Ok(n) if n > 0 => {
                    tracing::info!(store = %store.describe(), removed = n, "idempotency records pruned")
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(store = %store.describe(), %error, "pruning idempotency records failed")
                }
            }
        }
    }
}
