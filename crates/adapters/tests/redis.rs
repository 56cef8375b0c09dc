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
    let (mut server, url) = servers::redis();
    let cache = RedisCache::new(&url, "libertum:test", Duration::from_secs(60)).expect("client");
    cache.put("asset:1", Bytes::from_static(b"old")).await;
    assert_eq!(cache.get("asset:1").await, Some(Bytes::from_static(b"old")));

    server.kill();
    assert!(cache.ping().await.is_err(), "readiness sees Redis down");
    assert_eq!(
        cache.get("asset:1").await,
        None,
        "a read with Redis down is a miss, not an error"
    );
    // A write happened meanwhile: its invalidation cannot reach Redis.
    cache.invalidate("asset:1").await;

    // Redis comes back with its old contents (it never lost them here: same process data).
    server.restart();
    // Simulate the survivor: the value written before the outage is back in Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("libertum:test:asset:1")
        .arg("old")
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
    cache.put("asset:1", Bytes::from_static(b"new")).await;
    assert_eq!(
        cache.get("asset:1").await,
        Some(Bytes::from_static(b"new")),
        "the cache works again"
    );
}
