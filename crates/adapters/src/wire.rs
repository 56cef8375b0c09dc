//! Picks each port's adapter from the settings, the production one where its variable is set and
//! the embedded one otherwise, and runs a service's background tasks (consumers, the relay,
//! pruning) until shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use libertum_platform::{
    config::Settings,
    health::{Check, Probe},
    limit::{MemoryLimiter, RateLimiter},
};
use libertum_store::{
    Cache, Consumer, EventBus, EventStore, LeaseSettings, MemoryCache, OwnedWork, Ownership,
    RedbStore, SnapshotPolicy, StateMachine,
    ownership::{Partitions, Writer},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{KafkaBus, KafkaSettings, MongoSettings, MongoStore, RedisCache, Relay};

/// One service's stores and cache, with the probes of what it depends on.
pub struct Backends {
    /// The registry's store (the only one of an unpartitioned service).
    pub store: Arc<dyn EventStore>,
    /// One store per partition, the registry's first.
    pub stores: Vec<Arc<dyn EventStore>>,
    pub cache: Arc<dyn Cache>,
    /// Rate-limit counters: in Redis with the cache, or in memory.
    pub limiter: Arc<dyn RateLimiter>,
    pub probes: Vec<Probe>,
    /// When the service snapshots its state.
    pub snapshots: SnapshotPolicy,
    /// With a shared store (MongoDB) the service runs as one of several replicas, and this
    /// says which partitions' writes each of them owns; `None` for the embedded store's sole
    /// writer.
    pub ownership: Option<Partitions>,
}

/// The snapshot policy the settings give.
pub fn snapshot_policy(settings: &Settings) -> SnapshotPolicy {
    SnapshotPolicy {
        every_events: settings.snapshot_every_events,
        interval: Duration::from_secs(settings.snapshot_interval_seconds),
    }
}

/// Opens `service`'s stores (with MongoDB, `partitions` databases: `{prefix}_{service}` for the
/// registry and `{prefix}_{service}_p{n}` for the others; on embedded defaults one file,
/// `{data_dir}/{service}.redb`, whatever `partitions` says) and its cache (Redis under the key
/// prefix `libertum:{service}`, or in memory).
pub async fn backends(
    settings: &Settings,
    service: &'static str,
    partitions: usize,
) -> anyhow::Result<Backends> {
    // The adapters start their series at zero: the recorder must exist before they do.
    let _ = libertum_platform::http_metrics::recorder();
    let b = &settings.backends;
    let mut probes = Vec::new();
    let replicated = b.mongodb_uri.is_some();
    let stores: Vec<Arc<dyn EventStore>> = match &b.mongodb_uri {
        Some(uri) => {
            let registry = format!("{}_{service}", b.mongodb_database_prefix);
            let databases: Vec<String> = (0..partitions.max(1))
                .map(|p| match p {
                    0 => registry.clone(),
                    p => format!("{registry}_p{p}"),
                })
                .collect();
            let mongo = MongoSettings {
                uri: uri.clone(),
                database: registry,
                write_concern: b.mongodb_write_concern.clone(),
                read_concern: b.mongodb_read_concern.clone(),
            };
            let stores = MongoStore::open_all(&mongo, &databases).await?;
            probes.push(mongo_probe(format!("{service}.mongodb"), stores[0].clone()));
            stores
                .into_iter()
                .map(|store| Arc::new(store) as Arc<dyn EventStore>)
                .collect()
        }
        None => vec![Arc::new(RedbStore::open_with_cache(
            &settings.data_dir,
            service,
            usize::try_from(settings.store_cache_mib << 20).unwrap_or(usize::MAX),
        )?)],
    };
    let (cache, limiter): (Arc<dyn Cache>, Arc<dyn RateLimiter>) = match &b.redis_url {
        Some(url) => {
            let cache = Arc::new(RedisCache::new(
                url,
                &format!("libertum:{service}"),
                Duration::from_secs(b.cache_ttl_seconds),
            )?);
            probes.push(redis_probe(format!("{service}.redis"), cache.clone()));
            (cache.clone(), cache)
        }
        None => (
            Arc::new(MemoryCache::new(settings.cache_entries)),
            Arc::new(MemoryLimiter::default()),
        ),
    };
    let ownership = replicated.then(|| {
        let ttl = if b.lease_ttl.is_zero() {
            LeaseSettings::default().ttl
        } else {
            b.lease_ttl
        };
        Partitions::new(
            service,
            &replica_id(service),
            &b.advertise_addr,
            &stores,
            LeaseSettings::with_ttl(ttl),
        )
    });
    if let Some(ownership) = &ownership {
        probes.push(libertum_platform::replica::ownership_probe(
            &format!("{service}.ownership"),
            ownership.clone(),
        ));
    }
    Ok(Backends {
        store: stores[0].clone(),
        stores,
        cache,
        limiter,
        probes,
        snapshots: snapshot_policy(settings),
        ownership,
    })
}

/// A replica's id, unique per process start: the host's name (a pod's), the process id and a
/// random suffix, so a restarted process never passes for its predecessor.
fn replica_id(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{service}@{host}:{}:{}", std::process::id(), &nonce[..8])
}

/// The Kafka bus when `LIBERTUM_KAFKA_BROKERS` is set, with the services' topics created if
/// missing.
pub async fn kafka(
    settings: &Settings,
) -> anyhow::Result<Option<(KafkaSettings, Arc<dyn EventBus>)>> {
    let Some(brokers) = &settings.backends.kafka_brokers else {
        return Ok(None);
    };
    let kafka = KafkaSettings {
        brokers: brokers.clone(),
        partitions: settings.backends.kafka_partitions,
        replication: settings.backends.kafka_replication,
    };
    crate::ensure_topics(&kafka, &settings.backends.topics.all()).await?;
    let bus: Arc<dyn EventBus> = Arc::new(KafkaBus::new(&kafka)?);
    Ok(Some((kafka, bus)))
}

fn mongo_probe(name: String, store: MongoStore) -> Probe {
    Arc::new(move || {
        let (name, store) = (name.clone(), store.clone());
        Box::pin(async move {
            let ping = tokio::time::timeout(
                Duration::from_secs(2),
                store
                    .database()
                    .run_command(mongodb::bson::doc! {"ping": 1}),
            )
            .await;
            let (state, detail) = match ping {
                Ok(Ok(_)) => ("up", store.describe()),
                Ok(Err(e)) => ("down", e.to_string()),
                Err(_) => ("down", "no answer within 2 s".into()),
            };
            Check {
                name,
                state,
                detail: Some(detail),
            }
        })
    })
}

fn redis_probe(name: String, cache: Arc<RedisCache>) -> Probe {
    Arc::new(move || {
        let (name, cache) = (name.clone(), cache.clone());
        Box::pin(async move {
            // Without Redis reads come from the service's state: slower, still correct.
            let (state, detail) =
                match tokio::time::timeout(Duration::from_secs(1), cache.ping()).await {
                    Ok(Ok(())) => ("up", cache.describe()),
                    Ok(Err(e)) => ("degraded", e),
                    Err(_) => ("degraded", "no answer within 1 s".into()),
                };
            Check {
                name,
                state,
                detail: Some(detail),
            }
        })
    })
}

/// A probe of the Kafka cluster: degraded when no broker answers, since the service still takes
/// writes (its log is the outbox) and the relay catches up once the brokers are back.
pub fn kafka_probe(name: &str, settings: &KafkaSettings) -> anyhow::Result<Probe> {
    let ping = Arc::new(crate::kafka::KafkaPing::new(settings)?);
    let (name, brokers) = (name.to_owned(), settings.brokers.clone());
    Ok(Arc::new(move || {
        let (name, brokers, ping) = (name.clone(), brokers.clone(), ping.clone());
        Box::pin(async move {
            let (state, detail) = match ping.ping().await {
                Ok(n) => ("up", format!("{brokers}: {n} broker(s)")),
                Err(e) => ("degraded", format!("{brokers}: {e}")),
            };
            Check {
                name,
                state,
                detail: Some(detail),
            }
        })
    }))
}

/// A probe that reports a background task's lag: degraded past `limit`.
pub fn lag_probe(name: &str, lag: Arc<AtomicU64>, what: &'static str, limit: u64) -> Probe {
    let name = name.to_owned();
    Arc::new(move || {
        let (name, lag) = (name.clone(), lag.load(Ordering::Relaxed));
        Box::pin(async move {
            Check {
                name,
                state: if lag > limit { "degraded" } else { "up" },
                detail: Some(format!("{what} {lag} events")),
            }
        })
    })
}

/// The relays' backlog (those running here): degraded past `limit`.
fn backlog_probe(
    name: &str,
    backlogs: Vec<(Arc<AtomicU64>, Option<Ownership>)>,
    limit: u64,
) -> Probe {
    let name = name.to_owned();
    Arc::new(move || {
        let backlog: u64 = backlogs
            .iter()
            .filter(|(_, ownership)| ownership.as_ref().is_none_or(Ownership::is_owner))
            .map(|(backlog, _)| backlog.load(Ordering::Relaxed))
            .sum();
        let name = name.clone();
        Box::pin(async move {
            Check {
                name,
                state: if backlog > limit { "degraded" } else { "up" },
                detail: Some(format!("backlog {backlog} events")),
            }
        })
    })
}

/// A consumer's readiness: where it runs (here, or on the replicas that own the writes), its
/// lag (degraded past 100,000 events), and whether it reads any partition: one that should and
/// reads none (the broker unreachable, the topic missing) is degraded and says so, never
/// "lag 0". Degraded, not down: the service still takes writes (its log is the outbox) and
/// serves reads meanwhile. A partitioned service runs one consumer per partition of its own,
/// each on that partition's owner: the probe sums those running here.
pub fn consumer_probe(name: &str, runs: Vec<ConsumerRun>) -> Probe {
    let name = name.to_owned();
    let since = Arc::new(parking_lot::Mutex::new(None::<std::time::Instant>));
    Arc::new(move || {
        let here: Vec<&ConsumerRun> = runs
            .iter()
            .filter(|run| run.ownership.as_ref().is_none_or(Ownership::is_owner))
            .collect();
        let lag: u64 = here.iter().map(|run| run.lag.load(Ordering::Relaxed)).sum();
        let idle_runs = here
            .iter()
            .filter(|run| run.assigned.load(Ordering::Relaxed) == 0)
            .count();
        let partitions = here
            .iter()
            .map(|run| run.assigned.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        // How long one that should read has read nothing.
        let idle = {
            let mut since = since.lock();
            if idle_runs > 0 {
                since.get_or_insert_with(std::time::Instant::now).elapsed()
            } else {
                *since = None;
                Duration::ZERO
            }
        };
        let of = if runs.len() > 1 {
            format!(" (for {} of the service's partitions)", here.len())
        } else {
            String::new()
        };
        let (state, detail) = if here.is_empty() {
            ("up", "runs on the replica that owns the writes".to_owned())
        } else if idle_runs > 0 {
            (
                "degraded",
                format!("reads no partition (for {} s){of}", idle.as_secs()),
            )
        } else {
            (
                if lag > 100_000 { "degraded" } else { "up" },
                format!("lag {lag} events over {partitions} partition(s){of}"),
            )
        };
        let name = name.clone();
        Box::pin(async move {
            Check {
                name,
                state,
                detail: Some(detail),
            }
        })
    })
}

/// One consumer as its probe sees it.
pub struct ConsumerRun {
    pub lag: Arc<AtomicU64>,
    pub assigned: Arc<AtomicU64>,
    /// The lease it runs under; `None` for a sole writer's.
    pub ownership: Option<Ownership>,
}

/// A service's background tasks and their probes; `stop` ends them all. With [`Partitions`],
/// the consumers and the relays run only where their partition's writes are owned.
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub probes: Vec<Probe>,
    ownership: Option<Partitions>,
    /// The work that runs on the owner of each partition.
    owned: Vec<Vec<OwnedWork>>,
    leading: Option<JoinHandle<()>>,
    /// Which partition a write belongs to (all to the one partition unless told).
    route: Option<libertum_platform::replica::Route>,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
            probes: Vec::new(),
            ownership: None,
            owned: Vec::new(),
            leading: None,
            route: None,
        }
    }
}

impl Background {
    /// Background tasks of a replica: the work that must run once per partition runs on that
    /// partition's owner only.
    pub fn replicated(ownership: Option<Partitions>) -> Self {
        let partitions = ownership.as_ref().map_or(1, Partitions::len);
        Background {
            owned: (0..partitions).map(|_| Vec::new()).collect(),
            ownership,
            ..Background::default()
        }
    }

    /// Says which partition each write belongs to, for forwarding it to its owner.
    pub fn route_writes(&mut self, route: libertum_platform::replica::Route) {
        self.route = Some(route);
    }

    /// How many partitions the service's writes have.
    pub fn partitions(&self) -> usize {
        self.ownership.as_ref().map_or(1, Partitions::len)
    }

    /// The lease of `partition`, on a replica.
    fn lease(&self, partition: usize) -> Option<Ownership> {
        self.ownership.as_ref().map(|o| o.of(partition).clone())
    }

    /// Runs `start` now, or on this replica only while it owns `partition`'s writes.
    fn once<F>(&mut self, partition: usize, start: F)
    where
        F: Fn(
                watch::Receiver<bool>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            + Send
            + Sync
            + 'static,
    {
        if self.ownership.is_some() {
            self.owned[partition].push(Arc::new(start));
        } else {
            self.tasks.push(tokio::spawn(start(self.stop.subscribe())));
        }
    }

    /// Runs `start` once per service: now, or on the replica that owns the writes of the
    /// service's first partition, for as long as it does (webhook delivery).
    pub fn owned_task<F>(&mut self, start: F)
    where
        F: Fn(
                watch::Receiver<bool>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            + Send
            + Sync
            + 'static,
    {
        self.once(0, start);
    }

    /// Runs `consumer` (which applies the registry's commands), reporting its lag and its
    /// partitions as `name`.
    pub fn consumer<S: StateMachine>(&mut self, name: &str, consumer: Consumer<S>) {
        self.consumers(name, move |_| consumer.clone(), 1);
    }

    /// Runs one consumer per partition of the service's writes (`make(partition)`, which
    /// applies that partition's commands), each on that partition's owner.
    pub fn consumer_per_partition<S: StateMachine>(
        &mut self,
        name: &str,
        make: impl Fn(usize) -> Consumer<S>,
    ) {
        let partitions = self.partitions();
        self.consumers(name, make, partitions);
    }

    fn consumers<S: StateMachine>(
        &mut self,
        name: &str,
        make: impl Fn(usize) -> Consumer<S>,
        partitions: usize,
    ) {
        let mut runs = Vec::with_capacity(partitions);
        for partition in 0..partitions {
            let consumer = make(partition).for_partition(partition);
            runs.push(ConsumerRun {
                lag: consumer.lag(),
                assigned: consumer.assigned(),
                ownership: self.lease(partition),
            });
            self.once(partition, move |stop| Box::pin(consumer.clone().run(stop)));
        }
        self.probes.push(consumer_probe(name, runs));
    }

    /// Starts taking the leases of the writes for `writer` (the service's engine), with the
    /// work registered so far; nothing without [`Partitions`].
    pub fn lead(&mut self, writer: Arc<dyn Writer>) {
        if let Some(ownership) = &self.ownership {
            self.leading = Some(ownership.run(writer, std::mem::take(&mut self.owned)));
        }
    }

    /// Publishes each of `stores` (a partition's log each) to `topic` on Kafka, each from its
    /// partition's owner, reporting the backlog as `name`.
    pub fn relay(
        &mut self,
        name: &str,
        kafka: &KafkaSettings,
        stores: &[Arc<dyn EventStore>],
        topic: &str,
    ) -> anyhow::Result<()> {
        let mut backlogs = Vec::with_capacity(stores.len());
        for (partition, store) in stores.iter().enumerate() {
            let relay = Relay::new(kafka, store.clone(), topic)?.owned_by(self.lease(partition));
            backlogs.push((relay.backlog(), self.lease(partition)));
            self.once(partition, move |stop| Box::pin(relay.clone().run(stop)));
        }
        self.probes.push(backlog_probe(name, backlogs, 100_000));
        Ok(())
    }

    /// Deletes idempotency records older than the retention, every ten minutes.
    pub fn prune_idempotency(&mut self, stores: Vec<Arc<dyn EventStore>>, retention: Duration) {
        let stores = Arc::new(stores);
        self.periodic(Duration::from_secs(600), move || {
            let stores = stores.clone();
            async move {
                let before = time_now() - retention.as_secs() as i64;
                for store in stores.iter() {
                    match store.prune_idempotency(before).await {
                        Ok(n) if n > 0 => tracing::info!(store = %store.describe(), removed = n, "idempotency records pruned"),
                        Ok(_) => {}
                        Err(error) => tracing::warn!(store = %store.describe(), %error, "pruning idempotency records failed"),
                    }
                }
            }
        });
    }

    /// Runs `step` now and then every `every` until stopped; a stop waits for the running step.
    pub fn periodic<F, Fut>(&mut self, every: Duration, step: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let mut stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            loop {
                step().await;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }));
    }

    /// What hands the writes over at shutdown (see [`HandOver::run`]), to run while the
    /// replica still serves: it then forwards writes to the new owner until it stops serving.
    pub fn hand_over(&mut self) -> HandOver {
        HandOver {
            ownership: self.ownership.clone(),
            leading: self.leading.take(),
        }
    }

    /// Stops every task and waits for it to finish its current step.
    pub async fn stop(mut self) {
        self.hand_over().run().await;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Background {
    /// Serves a service binary's `routes` (see `server::serve_alone`) until SIGTERM or Ctrl-C.
    /// A replica forwards the writes of the partitions it does not own (see
    /// [`Background::route_writes`]), and on the signal hands its writes over
    /// while it still serves (forwarding to the new owner), then stops serving.
    pub async fn serve(
        &mut self,
        settings: &Settings,
        name: &str,
        routes: axum::Router,
        openapi: utoipa::openapi::OpenApi,
        probes: Vec<Probe>,
        limiter: Arc<dyn RateLimiter>,
    ) -> anyhow::Result<()> {
        let mut guard = libertum_platform::server::Guard::new(settings, limiter)?;
        let route = self
            .route
            .clone()
            .unwrap_or_else(|| Arc::new(|_: &_, _: &[u8]| 0));
        guard.forward = self
            .ownership
            .clone()
            .map(|partitions| libertum_platform::replica::Forwarder::new(partitions, route));
        let hand_over = self.hand_over();
        // From the signal on, /readyz says unready, so that a front checking it sends nothing
        // more here before this replica stops accepting (a connection accepted and then closed
        // unread would fail a request that no front retries).
        let draining = Arc::new(AtomicBool::new(false));
        let mut probes = probes;
        probes.push(draining_probe(draining.clone()));
        let delay = settings.shutdown_delay;
        let shutdown = async move {
            libertum_platform::server::shutdown_signal().await;
            draining.store(true, Ordering::SeqCst);
            tokio::join!(hand_over.run(), tokio::time::sleep(delay));
        };
        libertum_platform::server::serve_alone(
            settings, name, routes, openapi, probes, guard, shutdown,
        )
        .await?;
        Ok(())
    }
}

/// Down once `draining` is set: the process is shutting down.
fn draining_probe(draining: Arc<AtomicBool>) -> Probe {
    Arc::new(move || {
        let draining = draining.load(Ordering::SeqCst);
        Box::pin(async move {
            Check {
                name: "shutdown".into(),
                state: if draining { "down" } else { "up" },
                detail: draining.then(|| "shutting down: takes no new requests".to_owned()),
            }
        })
    })
}

/// Hands a replica's writes over: see [`Ownership::leave`].
pub struct HandOver {
    ownership: Option<Partitions>,
    leading: Option<JoinHandle<()>>,
}

impl HandOver {
    /// Stops taking writes, finishes those in flight, stops the owned work and releases the
    /// lease; returns once another replica may take it. Nothing for a sole writer.
    pub async fn run(self) {
        if let Some(ownership) = &self.ownership {
            ownership.leave().await;
        }
        if let Some(leading) = self.leading {
            let _ = leading.await;
        }
    }
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_consumer_that_reads_no_partition_is_never_reported_as_lag_zero() {
        let (lag, assigned) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let probe = consumer_probe(
            "tokens.consumer",
            vec![ConsumerRun {
                lag: lag.clone(),
                assigned: assigned.clone(),
                ownership: None,
            }],
        );
        let check = probe().await;
        assert_eq!(check.state, "degraded");
        assert!(
            check
                .detail
                .as_deref()
                .unwrap()
                .starts_with("reads no partition"),
            "{check:?}"
        );
        assigned.store(3, Ordering::Relaxed);
        lag.store(7, Ordering::Relaxed);
        let check = probe().await;
        assert_eq!(check.state, "up");
        assert_eq!(
            check.detail.as_deref(),
            Some("lag 7 events over 3 partition(s)")
        );
    }
}
