//! Ownership of a log's writes among replicas: a lease in the store, with an epoch that fences.
//!
//! Every replica of a service runs [`Ownership::run`]. The one holding the lease is the
//! **owner**: its engine writes (every commit carries the lease's epoch, which the store checks
//! in the same transaction), and it runs the work that must run once (the relay, the
//! consumers). It renews the lease every [`LeaseSettings::renew_every`]; the others look at it
//! every [`LeaseSettings::poll_every`] and take it once it has expired (or was released), which
//! raises the epoch: from then on no commit of the former owner can be written, even if it was
//! only paused and wakes up believing it still owns the log.
//!
//! An owner that cannot renew within the lease's time stops writing on its own (its local
//! clock says the lease may have been taken). On [`Ownership::leave`] (SIGTERM) it stops taking
//! work, lets what is in flight finish, stops its owned work and releases the lease, so another
//! replica takes it at its next look rather than after the lease's time.
//!
//! Lease times are wall-clock milliseconds written by the holder and compared by the takers:
//! clock skew between replicas only moves the moment of a takeover, never its safety, which
//! rests on the epoch alone.
//!
//! A partitioned service has one lease per partition ([`Partitions`]). A replica takes a free
//! lease only while it holds fewer than its fair share (the partitions divided by the replicas
//! alive, rounded up, counted from heartbeats in the registry's store), and gives up those
//! beyond it, so the partitions spread over the replicas and move to one that joins. A lease
//! left expired for a whole lease time is taken whatever the share (the replicas' count may
//! still include a dead one).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    Engine, StateMachine,
    ports::{EventStore, Lease, StoreError},
};

/// Metric: 1 while this replica owns its service's writes, 0 otherwise.
pub const OWNER: &str = "libertum_replica_owner";
/// Metric: the epoch of the lease as this replica last saw it.
pub const LEASE_EPOCH: &str = "libertum_lease_epoch";
/// Metric: times this replica took the lease (`reason` `expired` or `released`) or lost it.
pub const LEASE_CHANGES: &str = "libertum_lease_changes_total";

/// How long a lease lasts and how often it is renewed and looked at.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal: the longest a dead owner's writes wait.
    pub ttl: Duration,
    /// How often the owner renews (well within `ttl`).
    pub renew_every: Duration,
    /// How often the other replicas look at the lease.
    pub poll_every: Duration,
    /// How long a leaving owner waits for the requests in flight.
    pub drain: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings::with_ttl(Duration::from_secs(6))
    }
}

impl LeaseSettings {
    /// A lease of `ttl`, renewed every third of it, looked at every twelfth (at least 50 ms).
    pub fn with_ttl(ttl: Duration) -> Self {
        LeaseSettings {
            ttl,
            renew_every: ttl / 3,
            poll_every: (ttl / 12).max(Duration::from_millis(50)),
            drain: Duration::from_secs(10),
        }
    }
}

/// What an owner does when it takes a partition's lease and gives it up: its engine.
#[async_trait]
pub trait Writer: Send + Sync + 'static {
    async fn promote(&self, partition: usize, epoch: u64) -> Result<(), StoreError>;
    async fn demote(&self, partition: usize);
}

#[async_trait]
impl<S: StateMachine> Writer for Engine<S> {
    async fn promote(&self, partition: usize, epoch: u64) -> Result<(), StoreError> {
        Engine::promote(self, partition, epoch).await
    }

    async fn demote(&self, partition: usize) {
        Engine::demote(self, partition).await
    }
}

/// How many of a service's partitions this replica holds, and how many it should.
#[derive(Debug)]
pub struct Share {
    partitions: usize,
    held: AtomicUsize,
    /// Replicas alive, this one included, as last counted.
    live: AtomicUsize,
}

impl Share {
    pub fn new(partitions: usize) -> Self {
        Share {
            partitions,
            held: AtomicUsize::new(0),
            live: AtomicUsize::new(1),
        }
    }

    /// The partitions divided by the replicas alive, rounded up.
    pub fn fair(&self) -> usize {
        self.partitions
            .div_ceil(self.live.load(Ordering::Acquire).max(1))
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn set_live(&self, live: usize) {
        self.live.store(live.max(1), Ordering::Release);
    }

    /// Counts one more partition held if that stays within the fair share (or `anyway`).
    fn reserve(&self, anyway: bool) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (anyway || held < self.fair()).then_some(held + 1)
            })
            .is_ok()
    }

    fn unreserve(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_sub(1)
            });
    }

    /// Counts one partition fewer if this replica holds more than its fair share: the caller
    /// then gives that partition up.
    fn shed(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held > self.fair()).then(|| held - 1)
            })
            .is_ok()
    }
}

/// Work that runs only on the owner: started when it takes the lease, stopped (the receiver
/// turns true, and the task is awaited) when it gives it up.
pub type OwnedWork =
    Arc<dyn Fn(watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Where a write is executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Here,
    /// The owner's address (`host:port`).
    At(String),
}

/// The owned work running: its stop signal and its tasks.
type Running = (watch::Sender<bool>, Vec<JoinHandle<()>>);

/// A replica's view of who owns its service's writes; cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    partition: usize,
    /// The label of the partition in metrics.
    label: String,
    share: Arc<Share>,
    replica: String,
    address: String,
    store: Arc<dyn EventStore>,
    settings: LeaseSettings,
    /// The epoch this replica holds, 0 if none.
    epoch: AtomicU64,
    /// Until when, on this process's clock, the held lease is surely this replica's.
    valid_until: parking_lot::Mutex<Option<Instant>>,
    /// The lease as last seen.
    seen: watch::Sender<Option<Lease>>,
    leaving: AtomicBool,
    /// Requests this replica is executing as the owner.
    in_flight: AtomicUsize,
    stop: watch::Sender<bool>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Counts one request executed as the owner, until dropped.
pub struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ownership {
    /// The ownership of `partition`, whose log is `store`, for replica `replica` (unique per
    /// process start) taking forwarded requests at `address`, among the partitions counted in
    /// `share`.
    pub fn of_partition(
        service: &'static str,
        partition: usize,
        share: Arc<Share>,
        replica: &str,
        address: &str,
        store: Arc<dyn EventStore>,
        settings: LeaseSettings,
    ) -> Self {
        let label = partition.to_string();
        metrics::gauge!(OWNER, "service" => service, "partition" => label.clone()).set(0.0);
        for reason in ["expired", "released", "lost", "shed"] {
            metrics::counter!(LEASE_CHANGES, "service" => service, "partition" => label.clone(), "reason" => reason).increment(0);
        }
        Ownership {
            inner: Arc::new(Inner {
                service,
                partition,
                label,
                share,
                replica: replica.to_owned(),
                address: address.to_owned(),
                store,
                settings,
                epoch: AtomicU64::new(0),
                valid_until: parking_lot::Mutex::new(None),
                seen: watch::channel(None).0,
                leaving: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                stop: watch::channel(false).0,
            }),
        }
    }

    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    pub fn service(&self) -> &'static str {
        self.inner.service
    }

    /// The partition whose writes this lease owns.
    pub fn partition(&self) -> usize {
        self.inner.partition
    }

    pub fn settings(&self) -> LeaseSettings {
        self.inner.settings
    }

    /// Whether this replica owns the writes now: it holds the lease and its time has surely not
    /// run out. The relay asks before every batch.
    pub fn is_owner(&self) -> bool {
        self.inner.epoch.load(Ordering::Acquire) != 0
            && self
                .inner
                .valid_until
                .lock()
                .is_some_and(|until| Instant::now() < until)
    }

    /// Whether this replica takes writes itself: it owns them and is not leaving. If so, the
    /// request is counted in flight until the returned guard drops.
    pub fn accept(&self) -> Option<InFlight> {
        if self.inner.leaving.load(Ordering::Acquire) || !self.is_owner() {
            return None;
        }
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        // Leaving may have begun in between: it waits for this request, which is fine.
        Some(InFlight(self.inner.clone()))
    }

    /// Whether this replica is leaving (it answers not ready).
    pub fn leaving(&self) -> bool {
        self.inner.leaving.load(Ordering::Acquire)
    }

    /// Reads the lease from the store now (an owner refused a write: the lease moved).
    pub async fn refresh(&self) {
        if let Ok(lease) = self.inner.store.lease().await {
            self.inner.seen.send_replace(lease);
        }
    }

    /// The lease as last seen, which says who owns the writes and where it takes them.
    pub fn lease(&self) -> Option<Lease> {
        self.inner.seen.borrow().clone()
    }

    /// Where a write goes now: here, or the address of the replica that owns the writes,
    /// waiting up to `within` for an owner (during a takeover there is briefly none).
    pub async fn owner(&self, within: Duration) -> Option<Owner> {
        let mut seen = self.inner.seen.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_owner() && !self.leaving() {
                return Some(Owner::Here);
            }
            let found = seen.borrow_and_update().as_ref().and_then(|lease| {
                // A lease at this replica's own address is a former process's (a restart on
                // the same address), which is gone: wait for it to expire.
                (lease.holder != self.inner.replica
                    && lease.address != self.inner.address
                    && lease.expires_at_ms > now_ms())
                .then(|| Owner::At(lease.address.clone()))
            });
            if found.is_some() {
                return found;
            }
            // Looked at again on the next poll, or sooner if the lease changes here.
            let wait = self.inner.settings.poll_every;
            match tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + wait),
                seen.changed(),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) if tokio::time::Instant::now() >= deadline => return None,
                Err(_) => {
                    // Nothing new locally: ask the store (the poll loop may be asleep).
                    if let Ok(lease) = self.inner.store.lease().await {
                        self.inner.seen.send_replace(lease);
                    }
                }
            }
        }
    }

    /// Takes, renews and gives up the lease until [`Ownership::leave`]: `writer` is promoted
    /// and `work` runs while this replica owns the writes.
    pub fn run(&self, writer: Arc<dyn Writer>, work: Vec<OwnedWork>) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.lead(writer, work).await })
    }

    async fn lead(&self, writer: Arc<dyn Writer>, work: Vec<OwnedWork>) {
        let inner = &self.inner;
        let mut stop = inner.stop.subscribe();
        let mut running: Option<Running> = None;
        loop {
            let pause = if inner.epoch.load(Ordering::Acquire) != 0 {
                self.renew(writer.as_ref(), &mut running).await;
                inner.settings.renew_every
            } else {
                self.try_take(writer.as_ref(), &work, &mut running).await;
                inner.settings.poll_every
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.give_up(writer.as_ref(), &mut running).await;
    }

    async fn renew(&self, writer: &dyn Writer, running: &mut Option<Running>) {
        let inner = &self.inner;
        let epoch = inner.epoch.load(Ordering::Acquire);
        let asked = Instant::now();
        let renewed = inner
            .store
            .acquire_lease(
                &inner.replica,
                &inner.address,
                Some(epoch),
                now_ms(),
                ttl_ms(inner.settings.ttl),
            )
            .await;
        match renewed {
            Ok(Some(lease)) => {
                *inner.valid_until.lock() = Some(asked + inner.settings.ttl);
                inner.seen.send_replace(Some(lease));
                if inner.share.shed() {
                    // More than this replica's share: another replica (one that joined) takes
                    // this partition at its next look.
                    metrics::counter!(LEASE_CHANGES, "service" => inner.service, "partition" => inner.label.clone(), "reason" => "shed").increment(1);
                    tracing::info!(
                        service = inner.service,
                        partition = inner.partition,
                        "giving a partition up: more than this replica's share"
                    );
                    self.hand_back(writer, running).await;
                }
            }
            Ok(None) => {
                tracing::warn!(
                    service = inner.service,
                    epoch,
                    "the lease was taken by another replica"
                );
                self.lost(writer, running).await;
            }
            Err(error) => {
                let expired = inner
                    .valid_until
                    .lock()
                    .is_none_or(|until| Instant::now() >= until);
                tracing::warn!(service = inner.service, %error, expired, "the lease could not be renewed");
                if expired {
                    // Another replica may hold it by now: stop before the store says so.
                    self.lost(writer, running).await;
                }
            }
        }
    }

    async fn lost(&self, writer: &dyn Writer, running: &mut Option<Running>) {
        let inner = &self.inner;
        inner.share.unreserve();
        inner.epoch.store(0, Ordering::Release);
        *inner.valid_until.lock() = None;
        metrics::gauge!(OWNER, "service" => inner.service, "partition" => inner.label.clone())
            .set(0.0);
        metrics::counter!(LEASE_CHANGES, "service" => inner.service, "partition" => inner.label.clone(), "reason" => "lost")
            .increment(1);
        writer.demote(inner.partition).await;
        stop_work(running).await;
        if let Ok(lease) = inner.store.lease().await {
            inner.seen.send_replace(lease);
        }
    }

    async fn try_take(
        &self,
        writer: &dyn Writer,
        work: &[OwnedWork],
        running: &mut Option<Running>,
    ) {
        let inner = &self.inner;
        if inner.leaving.load(Ordering::Acquire) {
            return;
        }
        let seen = match inner.store.lease().await {
            Ok(seen) => seen,
            Err(error) => {
                tracing::warn!(service = inner.service, %error, "the lease could not be read");
                return;
            }
        };
        let now = now_ms();
        let reason = match &seen {
            None => "released",
            Some(lease) if lease.expires_at_ms == i64::MIN => "released",
            Some(lease) if lease.expires_at_ms <= now => "expired",
            Some(lease) => {
                metrics::gauge!(LEASE_EPOCH, "service" => inner.service, "partition" => inner.label.clone()).set(lease.epoch as f64);
                inner.seen.send_replace(seen);
                return;
            }
        };
        // Within the fair share, or a lease nobody took for a whole lease time.
        let abandoned = seen.as_ref().is_some_and(|lease| {
            lease.expires_at_ms != i64::MIN
                && lease
                    .expires_at_ms
                    .saturating_add(ttl_ms(inner.settings.ttl))
                    <= now
        });
        if !inner.share.reserve(abandoned) {
            inner.seen.send_replace(seen);
            return;
        }
        let asked = Instant::now();
        let taken = inner
            .store
            .acquire_lease(
                &inner.replica,
                &inner.address,
                None,
                now,
                ttl_ms(inner.settings.ttl),
            )
            .await;
        let lease = match taken {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                inner.share.unreserve();
                if let Ok(lease) = inner.store.lease().await {
                    inner.seen.send_replace(lease);
                }
                return;
            }
            Err(error) => {
                inner.share.unreserve();
                tracing::warn!(service = inner.service, partition = inner.partition, %error, "the lease could not be taken");
                return;
            }
        };
        // The fence is raised: catch up with the log, then write.
        if let Err(error) = writer.promote(inner.partition, lease.epoch).await {
            inner.share.unreserve();
            tracing::error!(service = inner.service, partition = inner.partition, %error, "could not catch up with the log; giving the lease up");
            let _ = inner.store.release_lease(&inner.replica, lease.epoch).await;
            return;
        }
        *inner.valid_until.lock() = Some(asked + inner.settings.ttl);
        inner.epoch.store(lease.epoch, Ordering::Release);
        metrics::gauge!(OWNER, "service" => inner.service, "partition" => inner.label.clone())
            .set(1.0);
        metrics::gauge!(LEASE_EPOCH, "service" => inner.service, "partition" => inner.label.clone()).set(lease.epoch as f64);
        metrics::counter!(LEASE_CHANGES, "service" => inner.service, "partition" => inner.label.clone(), "reason" => reason)
            .increment(1);
        tracing::info!(
            service = inner.service,
            partition = inner.partition,
            replica = %inner.replica,
            epoch = lease.epoch,
            reason,
            "lease taken"
        );
        inner.seen.send_replace(Some(lease));
        let (stop, stopped) = watch::channel(false);
        let tasks = work
            .iter()
            .map(|start| tokio::spawn(start(stopped.clone())))
            .collect();
        *running = Some((stop, tasks));
    }

    /// Hands the writes over: stops taking them, waits (up to the drain time) for those in
    /// flight, stops the owned work, and releases the lease so another replica takes it at
    /// once. Idempotent; the replica keeps forwarding requests to the new owner meanwhile.
    pub async fn leave(&self) {
        let inner = &self.inner;
        if inner.leaving.swap(true, Ordering::AcqRel) {
            return;
        }
        let started = Instant::now();
        while inner.in_flight.load(Ordering::Acquire) > 0
            && started.elapsed() < inner.settings.drain
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = inner.stop.send(true);
    }

    async fn give_up(&self, writer: &dyn Writer, running: &mut Option<Running>) {
        if self.inner.epoch.load(Ordering::Acquire) != 0 {
            self.inner.share.unreserve();
        }
        self.hand_back(writer, running).await;
    }

    /// Stops the owned work and the writes, then releases the lease (the share is counted
    /// by the caller).
    async fn hand_back(&self, writer: &dyn Writer, running: &mut Option<Running>) {
        let inner = &self.inner;
        stop_work(running).await;
        let epoch = inner.epoch.swap(0, Ordering::AcqRel);
        *inner.valid_until.lock() = None;
        writer.demote(inner.partition).await;
        if epoch != 0 {
            metrics::gauge!(OWNER, "service" => inner.service, "partition" => inner.label.clone())
                .set(0.0);
            match inner.store.release_lease(&inner.replica, epoch).await {
                Ok(()) => tracing::info!(
                    service = inner.service,
                    epoch,
                    "lease released for another replica"
                ),
                Err(error) => {
                    tracing::warn!(service = inner.service, %error, "the lease could not be released; it expires instead")
                }
            }
        }
    }
}

/// The leases of a partitioned service's partitions, as one replica holds them; cheap to
/// clone.
#[derive(Clone)]
pub struct Partitions {
    parts: Arc<Vec<Ownership>>,
    share: Arc<Share>,
    /// The registry's store, where the replicas say they are alive.
    registry: Arc<dyn EventStore>,
}

impl Partitions {
    /// One lease per store of `stores` (a partition's log each, the registry's first), for
    /// replica `replica` taking forwarded writes at `address`.
    pub fn new(
        service: &'static str,
        replica: &str,
        address: &str,
        stores: &[Arc<dyn EventStore>],
        settings: LeaseSettings,
    ) -> Self {
        let share = Arc::new(Share::new(stores.len()));
        let parts = stores
            .iter()
            .enumerate()
            .map(|(partition, store)| {
                Ownership::of_partition(
                    service,
                    partition,
                    share.clone(),
                    replica,
                    address,
                    store.clone(),
                    settings,
                )
            })
            .collect();
        Partitions {
            parts: Arc::new(parts),
            share,
            registry: stores[0].clone(),
        }
    }

    /// The lease of `partition`.
    pub fn of(&self, partition: usize) -> &Ownership {
        &self.parts[partition]
    }

    pub fn all(&self) -> &[Ownership] {
        &self.parts
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn service(&self) -> &'static str {
        self.parts[0].service()
    }

    /// How many partitions this replica owns now.
    pub fn owned(&self) -> usize {
        self.parts.iter().filter(|p| p.is_owner()).count()
    }

    /// This replica's fair share of the partitions, as last counted.
    pub fn fair_share(&self) -> usize {
        self.share.fair()
    }

    /// Whether this replica is leaving.
    pub fn leaving(&self) -> bool {
        self.parts[0].leaving()
    }

    /// Says this replica is alive every renewal period, and runs every partition's lease:
    /// `writer` is promoted for each partition this replica takes, and `work[partition]` runs
    /// while it owns that partition. Ends after [`Partitions::leave`].
    pub fn run(&self, writer: Arc<dyn Writer>, mut work: Vec<Vec<OwnedWork>>) -> JoinHandle<()> {
        let this = self.clone();
        work.resize_with(self.parts.len(), Vec::new);
        tokio::spawn(async move {
            let settings = this.parts[0].settings();
            let replica = this.parts[0].replica().to_owned();
            // Counted once before any lease is taken, so that a replica joining others does
            // not take more than its share first.
            this.heartbeat(&replica, settings).await;
            let leading: Vec<JoinHandle<()>> = this
                .parts
                .iter()
                .zip(work)
                .map(|(part, work)| part.run(writer.clone(), work))
                .collect();
            let mut stop = this.parts[0].inner.stop.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(settings.renew_every) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                this.heartbeat(&replica, settings).await;
            }
            for lead in leading {
                let _ = lead.await;
            }
            // Gone: the others' shares grow at once.
            if let Err(error) = this.registry.members(&replica, now_ms(), 0).await {
                tracing::warn!(%error, "could not say this replica leaves; it is forgotten when its heartbeat expires");
            }
        })
    }

    async fn heartbeat(&self, replica: &str, settings: LeaseSettings) {
        match self
            .registry
            .members(replica, now_ms(), ttl_ms(settings.ttl))
            .await
        {
            Ok(live) => self.share.set_live(live),
            Err(error) => {
                tracing::warn!(service = self.service(), %error, "could not count the replicas alive")
            }
        }
    }

    /// Hands every partition over (see [`Ownership::leave`]), all at once.
    pub async fn leave(&self) {
        let mut leaving = tokio::task::JoinSet::new();
        for part in self.parts.iter() {
            let part = part.clone();
            leaving.spawn(async move { part.leave().await });
        }
        while leaving.join_next().await.is_some() {}
    }
}

async fn stop_work(running: &mut Option<Running>) {
    if let Some((stop, tasks)) = running.take() {
        let _ = stop.send(true);
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("owned work did not stop within 10 s");
            }
        }
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}
