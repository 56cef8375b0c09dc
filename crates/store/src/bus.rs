//! The in-process event bus: each topic is the producing service's own durable log, read by
//! position, so a consumer resumes exactly where its stored checkpoint says, after any crash.
//!
//! Delivery semantics match the Kafka adapter's: at least once, in order (one partition),
//! consumers deduplicate by event id and store their position with the effect.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::ports::{Delivery, EventBus, EventStore, StoreError, Subscription};

#[derive(Clone, Default)]
pub struct InProcessBus {
    topics: Arc<RwLock<HashMap<String, Arc<dyn EventStore>>>>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the events of `store` readable as `topic`.
    pub fn attach(&self, topic: &str, store: Arc<dyn EventStore>) {
        self.topics.write().insert(topic.to_owned(), store);
    }

    fn topic(&self, topic: &str) -> Result<Arc<dyn EventStore>, StoreError> {
        self.topics
            .read()
            .get(topic)
            .cloned()
            .ok_or_else(|| StoreError::Backend(format!("no topic {topic} is attached to the bus")))
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, StoreError> {
        self.topic(topic).map(|_| vec![0])
    }

    async fn subscribe(
        &self,
        topic: &str,
        _group: &str,
        resume: &std::collections::BTreeMap<i32, u64>,
    ) -> Result<Box<dyn Subscription>, StoreError> {
        let store = self.topic(topic)?;
        Ok(Box::new(LogSubscription {
            topic: topic.to_owned(),
            head: store.watch_head(),
            store,
            position: resume.get(&0).copied().unwrap_or(0),
        }))
    }

    fn describe(&self) -> String {
        "in-process".into()
    }
}

struct LogSubscription {
    topic: String,
    store: Arc<dyn EventStore>,
    head: watch::Receiver<u64>,
    position: u64,
}

#[async_trait]
impl Subscription for LogSubscription {
    async fn next(&mut self, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let position = self.position;
        self.head
            .wait_for(|head| *head > position)
            .await
            .map_err(|_| StoreError::Backend(format!("topic {} was closed", self.topic)))?;
        let events = self.store.read(position, max).await?;
        if let Some((last, _)) = events.last() {
            self.position = *last;
        }
        Ok(events
            .into_iter()
            .map(|(offset, payload)| Delivery {
                topic: self.topic.clone(),
                partition: 0,
                offset,
                payload,
                // The event itself carries it (`trace::traceparent_in`).
                traceparent: None,
            })
            .collect())
    }

    async fn commit(&mut self, _batch: &[Delivery]) -> Result<(), StoreError> {
        // The consumer stores its position together with the effect; nothing to do here.
        Ok(())
    }

    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<(), StoreError> {
        // The event stays in its producer's log at its position, where it can be read again;
        // the consumer has already logged and counted it.
        tracing::warn!(topic = %delivery.topic, offset = delivery.offset, %reason, "event set aside");
        Ok(())
    }

    async fn lag(&mut self) -> Result<u64, StoreError> {
        Ok(self.store.head().await?.saturating_sub(self.position))
    }
}
