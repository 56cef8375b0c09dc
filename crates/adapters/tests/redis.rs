//! The Redis cache against a real redis-server over a real connection.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use libertum_adapters::RedisCache;
use libertum_store::{Cache, contract};
use libertum_testkit::servers;

#[tokio::test]
async fn the_redis_cache_honours_the_cache_contract() {
    let (_server, url) = servers::redis();
    let cache = RedisCache::new(&url, "libertum:test", Duration::from_secs(60)).expect("client");
    cache.ping().await.expect("redis answers");
    contract::cache(Arc::new(cache)).await;
}

#[tokio::test]
async fn with_redis_down_reads_miss_and_a_lost_invalidation_never_serves_stale_data() {
    let (mut server, url) = servers::redis_standin();
    let cache = RedisCache::new(&url, "libertum:test", Duration::from_secs(60)).expect("client");
    cache.put("asset:1", 1, Bytes::from_static(b"old")).await;
    assert_eq!(cache.get("asset:1").await, Some(Bytes::from_static(b"old")));

    server.kill();
    assert!(cache.ping().await.is_err(), "readiness sees Redis down");
    assert_eq!(
        cache.get("asset:1").await,
        None,
        "a read with Redis down is a miss, not an error"
    );
    // A write happened meanwhile: its invalidation cannot reach Redis.
    cache.invalidate("asset:1", 2).await;

    // Redis comes back with its old contents (it never lost them here: same process data).
    server.restart();
    // Simulate the survivor: the value written before the outage is back in Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("libertum:test:asset:1")
        .arg(format!("{:020}vold", 1))
        .query_async(&mut raw)
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1_100)).await; // past the reconnect throttle
    let mut served = None;
    for _ in 0..20 {
        served = Some(cache.get("asset:1").await);
        if cache.ping().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        served.flatten(),
        None,
        "the stale value is never served after a lost invalidation"
    );
    let stored: Option<String> = redis::cmd("GET")
        .arg("libertum:test:asset:1")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        stored, None,
        "the suspect prefix was cleared on reconnection"
    );
    cache.put("asset:1", 2, Bytes::from_static(b"new")).await;
    assert_eq!(
        cache.get("asset:1").await,
        Some(Bytes::from_static(b"new")),
        "the cache works again"
    );
}

#[tokio::test]
async fn rate_limit_counters_are_shared_by_replicas_and_fail_open_when_redis_is_down() {
    use libertum_platform::limit::RateLimiter;
    let (mut server, url) = servers::redis_standin();
    // Two replicas of one service: one count.
    let a = RedisCache::new(&url, "libertum:tokens", Duration::from_secs(60)).expect("client");
    let b = RedisCache::new(&url, "libertum:tokens", Duration::from_secs(60)).expect("client");
    assert_eq!(a.hit("principal:alice", 7).await, Some(1));
    assert_eq!(b.hit("principal:alice", 7).await, Some(2));
    assert_eq!(a.hit("principal:alice", 7).await, Some(3));
    assert_eq!(b.hit("principal:bob", 7).await, Some(1), "per key");
    assert_eq!(b.hit("principal:alice", 8).await, Some(1), "per window");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg("libertum:tokens:ratelimit:principal:alice:7")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((1..=120).contains(&ttl), "counters expire: ttl {ttl}");
    server.kill();
    assert_eq!(
        a.hit("principal:alice", 7).await,
        None,
        "no count without Redis: the limit lets requests through"
    );
}
