//! A consumer: reads a topic from the bus and submits each event to its service's engine, with
//! the position stored in the same commit as the effect.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::watch;

use crate::{
    Engine, EventBus, StateMachine, Submission,
    engine::{EngineError, Outcome, Reply},
    metrics as m,
    ports::{Delivery, Subscription},
};

const MAX_BATCH: usize = 8_192;
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// With no event for this long, the consumer measures its lag again: an idle consumer reports
/// what the broker says now, not the figure of its last batch.
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Backoff between retries of a batch whose commit failed, inside the same subscription.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// What a consumer makes of one delivered event.
pub enum Verdict<C> {
    Apply(C),
    /// Not for this consumer; only the position advances.
    Skip,
    /// Malformed, forged or unexpected: counted, logged and skipped, never applied.
    Reject(String),
}

type Decoder<C> = Arc<dyn Fn(&Delivery) -> Verdict<C> + Send + Sync>;

pub struct Consumer<S: StateMachine> {
    name: String,
    topic: String,
    engine: Engine<S>,
    bus: Arc<dyn EventBus>,
    decode: Decoder<S::Command>,
    /// Events of the topic not yet applied, as last measured.
    lag: Arc<AtomicU64>,
    /// Partitions of the topic this consumer reads now: 0 when it is not running or could not
    /// subscribe.
    assigned: Arc<AtomicU64>,
    /// The partition of the service whose commands this consumer applies (and in whose log it
    /// stores its positions); the others' events are skipped.
    partition: usize,
    /// The name of its spans: `{consumer} process {topic}`.
    span_name: String,
}

impl<S: StateMachine> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Consumer {
            name: self.name.clone(),
            topic: self.topic.clone(),
            engine: self.engine.clone(),
            bus: self.bus.clone(),
            decode: self.decode.clone(),
            lag: self.lag.clone(),
            assigned: self.assigned.clone(),
            partition: self.partition,
            span_name: self.span_name.clone(),
        }
    }
}

impl<S: StateMachine> Consumer<S> {
    pub fn new(
        name: &str,
        topic: &str,
        engine: Engine<S>,
        bus: Arc<dyn EventBus>,
        decode: impl Fn(&Delivery) -> Verdict<S::Command> + Send + Sync + 'static,
    ) -> Self {
        Consumer {
            name: name.to_owned(),
            topic: topic.to_owned(),
            engine,
            bus,
            decode: Arc::new(decode),
            lag: Arc::new(AtomicU64::new(0)),
            assigned: Arc::new(AtomicU64::new(0)),
            partition: 0,
            span_name: format!("{name} process {topic}"),
        }
    }

    /// The consumer of a partitioned service that applies the commands of `partition` (run by
    /// that partition's owner), skipping the others'.
    pub fn for_partition(mut self, partition: usize) -> Self {
        self.partition = partition;
        self
    }

    /// What it makes of `delivery`: a command of another partition is not its own.
    fn verdict(&self, delivery: &Delivery) -> Verdict<S::Command> {
        match (self.decode)(delivery) {
            Verdict::Apply(command) if self.engine.partition_of(&command) != self.partition => {
                Verdict::Skip
            }
            verdict => verdict,
        }
    }

    /// A handle on the consumer's lag, for readiness and metrics.
    pub fn lag(&self) -> Arc<AtomicU64> {
        self.lag.clone()
    }

    /// A handle on how many partitions the consumer reads now (0 while stopped or failing),
    /// for readiness: a consumer that should run and reads nothing is not healthy.
    pub fn assigned(&self) -> Arc<AtomicU64> {
        self.assigned.clone()
    }

    /// The span an applied event is traced under, when traces are exported: the child of the
    /// span that published it (the Kafka header's) or else that decided it (the event's).
    fn span(&self, delivery: &Delivery) -> tracing::Span {
        if !crate::trace::enabled() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!("consume", otel.name = self.span_name.as_str(), consumer = %self.name, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset);
        let traceparent = delivery
            .traceparent
            .clone()
            .or_else(|| crate::trace::traceparent_in(&delivery.payload));
        crate::trace::continue_from(&span, traceparent.as_deref());
        span
    }

    fn submission(&self, command: Option<S::Command>, delivery: &Delivery) -> Submission<S> {
        Submission {
            span: if command.is_some() {
                self.span(delivery)
            } else {
                tracing::Span::none()
            },
            command,
            idempotency: None,
            checkpoint: Some((
                self.bus
                    .checkpoint_name(&self.checkpoint_name(), delivery.partition),
                delivery.offset,
            )),
            reply: Box::new(|_, _| Reply::new(200, Default::default())),
            partition: Some(self.partition),
        }
    }

    fn checkpoint_name(&self) -> String {
        format!("{}:{}", self.name, self.topic)
    }

    /// Runs until `shutdown` turns true, or the bus fails for good.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Every series from zero, so that an alert on their increase sees the first one.
        for name in [m::EVENTS_CONSUMED, m::EVENTS_REJECTED, m::CONSUMER_RETRIES] {
            metrics::counter!(name, "consumer" => self.name.clone(), "topic" => self.topic.clone())
                .increment(0);
        }
        loop {
            let result = tokio::select! {
                r = self.consume() => r,
                _ = shutdown.wait_for(|stop| *stop) => {
                    self.assigned.store(0, Ordering::Relaxed);
                    return;
                }
            };
            self.assigned.store(0, Ordering::Relaxed);
            if let Err(error) = result {
                tracing::error!(consumer = %self.name, topic = %self.topic, %error, "consumer failed; retrying in one second");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }

    async fn consume(&self) -> anyhow_like::Result<()> {
        // Every partition, each from the position stored with the effects of what was applied.
        let mut resume = std::collections::BTreeMap::new();
        let partitions = self.bus.partitions(&self.topic).await?;
        for &partition in &partitions {
            let name = self.bus.checkpoint_name(&self.checkpoint_name(), partition);
            if let Some(at) = self
                .engine
                .store_of(self.partition)
                .checkpoint(&name)
                .await?
            {
                resume.insert(partition, at);
            }
        }
        // One group name per service and topic, for the offsets it commits (which monitoring
        // reads); the group has no members to rebalance.
        let group = format!("{}.{}", self.name, self.topic);
        let mut subscription = self.bus.subscribe(&self.topic, &group, &resume).await?;
        self.assigned
            .store(partitions.len() as u64, Ordering::Relaxed);
        tracing::info!(consumer = %self.name, topic = %self.topic, partitions = partitions.len(), resume = ?resume, "consuming");
        let mut last_skip_commit = std::time::Instant::now();
        loop {
            let batch = match tokio::time::timeout(IDLE, subscription.next(MAX_BATCH)).await {
                Ok(batch) => batch?,
                // Both buses' `next` are cancel-safe: nothing is lost by asking again.
                Err(_) => {
                    self.measure_lag(subscription.as_mut()).await?;
                    continue;
                }
            };
            if batch.len() < MAX_BATCH / 4 {
                // A short pause after a small batch lets the next one grow: far fewer commits
                // (each an fsync) under load, for a few milliseconds of lag.
                tokio::time::sleep(LINGER).await;
            }
            if batch.is_empty() {
                continue;
            }
            tracing::debug!(consumer = %self.name, topic = %self.topic, events = batch.len(), first = ?batch.first().map(|d| (d.partition, d.offset)), last = ?batch.last().map(|d| (d.partition, d.offset)), "batch received");
            let mut submissions = Vec::with_capacity(batch.len());
            let mut skipped_to = None;
            let mut applied: Vec<&Delivery> = Vec::with_capacity(batch.len());
            for delivery in &batch {
                let command = match self.verdict(delivery) {
                    Verdict::Apply(command) => command,
                    Verdict::Skip => {
                        skipped_to = Some(delivery);
                        continue;
                    }
                    Verdict::Reject(reason) => {
                        tracing::warn!(consumer = %self.name, topic = %delivery.topic, partition = delivery.partition, offset = delivery.offset, %reason, "event rejected");
                        metrics::counter!(m::EVENTS_REJECTED, "consumer" => self.name.clone(), "topic" => self.topic.clone()).increment(1);
                        subscription.dead_letter(delivery, &reason).await?;
                        skipped_to = Some(delivery);
                        continue;
                    }
                };
                skipped_to = None;
                applied.push(delivery);
                submissions.push(self.submission(Some(command), delivery));
            }
            // Events this consumer ignores need no commit of their own: re-reading them after a
            // crash is harmless. Their position is stored at most once a second.
            let skip_checkpoint = skipped_to
                .filter(|_| last_skip_commit.elapsed() >= std::time::Duration::from_secs(1));
            if let Some(delivery) = skip_checkpoint {
                submissions.push(self.submission(None, delivery));
                last_skip_commit = std::time::Instant::now();
            }
            if !submissions.is_empty() {
                let outcomes = self.apply(submissions, &applied, skip_checkpoint).await?;
                for (delivery, outcome) in applied.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => {}
                        Err(EngineError::Refused(refusal)) => {
                            // Well-formed but refused by a rule: deterministic, so retrying cannot
                            // help. It is set aside; its position is stored with the batch.
                            tracing::warn!(consumer = %self.name, topic = %self.topic, partition = delivery.partition, offset = delivery.offset, code = refusal.code, "event refused by a rule");
                            let reason = format!("refused: {}: {}", refusal.code, refusal.message);
                            subscription.dead_letter(delivery, &reason).await?;
                        }
                        // `apply` retries a batch that failed whole until it commits.
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            subscription.commit(&batch).await?;
            metrics::counter!(m::EVENTS_CONSUMED, "consumer" => self.name.clone(), "topic" => self.topic.clone()).increment(batch.len() as u64);
            self.measure_lag(subscription.as_mut()).await?;
        }
    }

    async fn measure_lag(&self, subscription: &mut dyn Subscription) -> anyhow_like::Result<()> {
        let lag = subscription.lag().await?;
        self.lag.store(lag, Ordering::Relaxed);
        metrics::gauge!(m::CONSUMER_LAG, "consumer" => self.name.clone(), "topic" => self.topic.clone()).set(lag as f64);
        Ok(())
    }

    /// Submits a batch's commands and waits for their outcomes. A batch commits whole or not
    /// at all; one that failed (the store unavailable, another writer first) is tried again
    /// here, decoded afresh, with backoff, without leaving the subscription: a re-subscription
    /// would rebalance the consumer group.
    async fn apply(
        &self,
        mut submissions: Vec<Submission<S>>,
        applied: &[&Delivery],
        skip_checkpoint: Option<&Delivery>,
    ) -> anyhow_like::Result<Vec<Outcome>> {
        let mut pause = RETRY_FIRST;
        loop {
            let outcomes = self
                .engine
                .enqueue_many(submissions)
                .await?
                .await
                .map_err(|_| EngineError::Unavailable("the writer stopped".into()))?;
            let failed = outcomes.iter().find_map(|o| match o {
                // Not the owner (any more): the batch is tried again until this consumer is
                // stopped, which a replica that lost its lease does at once.
                Err(
                    e @ (EngineError::Unavailable(_)
                    | EngineError::Conflict
                    | EngineError::NotOwner),
                ) => Some(e.to_string()),
                _ => None,
            });
            let Some(error) = failed else {
                return Ok(outcomes);
            };
            tracing::warn!(consumer = %self.name, topic = %self.topic, %error, retry_in_ms = pause.as_millis() as u64, "batch not committed; trying it again");
            metrics::counter!(m::CONSUMER_RETRIES, "consumer" => self.name.clone(), "topic" => self.topic.clone()).increment(1);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
            // The commands were consumed by the failed try; decoding is deterministic.
            submissions = applied
                .iter()
                .filter_map(|delivery| match self.verdict(delivery) {
                    Verdict::Apply(command) => Some(self.submission(Some(command), delivery)),
                    _ => None,
                })
                .chain(skip_checkpoint.map(|delivery| self.submission(None, delivery)))
                .collect();
        }
    }
}

/// A boxed error for the consumer loop, without pulling in anyhow here.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}
