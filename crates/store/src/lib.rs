//! Ports (storage, event bus, cache), their embedded adapters, and the engine that turns
//! commands into durably committed events.
//!
//! The production adapters (MongoDB, Kafka, Redis) implement the same traits; the services only
//! ever hold `Arc<dyn EventStore>`, `Arc<dyn EventBus>` and `Arc<dyn Cache>`.

mod bus;
mod cache;
mod consumer;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod engine;
pub mod metrics;
pub mod ownership;
pub mod partition;
mod ports;
mod redb_store;
mod snapshot;
pub mod trace;

pub use bus::InProcessBus;
pub use cache::MemoryCache;
pub use consumer::{Consumer, Verdict};
pub use engine::{Described, Engine, EngineError, Reply, ReplyFn, StateMachine, Submission};
pub use ownership::{LeaseSettings, OwnedWork, Owner, Ownership};
pub use partition::Position;
pub use ports::{
    Cache, Commit, Delivery, EventBus, EventStore, IdempotencyRecord, Lease, StoreError,
    Subscription,
};
pub use redb_store::RedbStore;
pub use snapshot::SnapshotPolicy;

/// Creates `dir` (and its parents) if missing; what it creates is its owner's only (0700):
/// the data directory holds the stores and the development signing key.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
