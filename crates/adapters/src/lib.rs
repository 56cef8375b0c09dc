//! The production adapters of the store's ports: the event store on MongoDB, the bus on Kafka
//! (a relay publishes each service's committed events; consumer groups read them), and the read
//! cache on Redis. The services see only the ports; `libertum_adapters::wire` picks adapters
//! from the configuration.

pub mod kafka;
pub mod mongo;
pub mod redis_cache;
pub mod wire;

pub use kafka::{KafkaBus, KafkaSettings, Relay, ensure_topics};
pub use mongo::{MongoSettings, MongoStore};
pub use redis_cache::RedisCache;

/// A connection string without its password, for logs and readiness reports.
pub(crate) fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &uri[..scheme], &uri[at + 1..])
        }
        _ => uri.to_owned(),
    }
}
