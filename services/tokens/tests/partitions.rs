//! The tokens service with its writes partitioned (one log per partition, as the replicas
//! run it with MongoDB): a new token class is claimed in the registry and opened in its own
//! partition, its movements go to its partition's log, and what must be unique across
//! partitions (an asset's token class, a symbol) stays unique.

mod common;

use std::time::Duration;

use common::{Server, in_a_life_of_its_own, spawn_partitioned};
use libertum_store::partition;
use serde_json::json;
use time::OffsetDateTime;

const PARTITIONS: usize = 4;

async fn heads(s: &Server) -> Vec<u64> {
    let mut heads = Vec::new();
    for store in s.tokens.engine().stores() {
        heads.push(store.head().await.unwrap());
    }
    heads
}

/// The holders of `token` and their balances at `moment`, sorted.
async fn holders_at(s: &Server, token: &str, moment: OffsetDateTime) -> Vec<(String, String)> {
    let moment = moment
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = s
        .get(&format!("/v1/tokens/{token}/holders?as_of={moment}"))
        .await
        .ok(200)
        .clone();
    let mut rows: Vec<(String, String)> = body["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["investor_id"].as_str().unwrap().to_owned(),
                h["balance"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn sorted(mut rows: Vec<(String, String)>) -> Vec<(String, String)> {
    rows.sort();
    rows
}

#[tokio::test]
async fn tokens_live_in_their_partitions_and_what_is_unique_stays_unique_across_them() {
    let s = spawn_partitioned(PARTITIONS).await;
    let alice = s.investor("DE", "verified").await;
    let bob = s.investor("FR", "verified").await;
    let mut tokens = Vec::new();
    for n in 0..12 {
        let token = s
            .token(&format!("ast_{n}"), &format!("SYM{n}"), json!({}))
            .await;
        // Readable at once: the answer waited for the token to be opened.
        s.get(&format!("/v1/tokens/{token}")).await.ok(200);
        s.issue(&token, &alice, "100").await;
        tokens.push(token);
    }
    let used: std::collections::BTreeSet<usize> = tokens
        .iter()
        .map(|t| partition::of(t, PARTITIONS))
        .collect();
    assert!(
        used.len() > 1,
        "twelve tokens spread over the partitions: {used:?}"
    );
    let heads = heads(&s).await;
    for p in &used {
        assert!(
            heads[*p] > 0,
            "partition {p} holds its tokens' events: {heads:?}"
        );
    }

    // The symbol and the asset are claimed in the registry, whichever partition a new
    // token would land in.
    s.approve("ast_other").await;
    s.post("/v1/tokens", &common::token_body("ast_other", "SYM3"))
        .await
        .problem(409, "symbol_taken", Some("symbol"));
    s.post("/v1/tokens", &common::token_body("ast_5", "FRESH"))
        .await
        .problem(409, "asset_already_tokenized", Some("asset_id"));

    // Movements go to the token's partition; the registry (investors) is read there.
    let token = &tokens[7];
    let moved = s
        .post(
            &format!("/v1/tokens/{token}/transfers"),
            &json!({"from": alice, "to": bob, "amount": "30"}),
        )
        .await;
    moved.ok(200);
    let position = moved
        .headers
        .get("libertum-position")
        .expect("a write says its position")
        .to_str()
        .unwrap()
        .to_owned();
    let partition_of_token = partition::of(token, PARTITIONS);
    let expected_prefix = if partition_of_token == 0 {
        String::new()
    } else {
        format!("{partition_of_token}:")
    };
    assert!(
        position.starts_with(&expected_prefix) && position.len() > expected_prefix.len(),
        "the position {position} names the token's partition {partition_of_token}"
    );

    // A balance as of a moment is read from the token's partition's index.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        holders_at(&s, token, OffsetDateTime::now_utc()).await,
        sorted(vec![(alice, "70".into()), (bob, "30".into())])
    );
}

#[tokio::test]
async fn a_restart_reads_every_partitions_log_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (tokens, alice) = in_a_life_of_its_own(async move {
        let tokens = common::open_partitioned(&path, PARTITIONS).await;
        let s = common::serve(tokens, tempfile::tempdir().unwrap()).await;
        let alice = s.investor("DE", "verified").await;
        let mut ids = Vec::new();
        for n in 0..6 {
            let token = s
                .token(&format!("ast_{n}"), &format!("RE{n}"), json!({}))
                .await;
            s.issue(&token, &alice, &format!("{}", n + 1)).await;
            ids.push(token);
        }
        (ids, alice)
    });
    let s = common::serve(
        common::open_partitioned(dir.path(), PARTITIONS).await,
        tempfile::tempdir().unwrap(),
    )
    .await;
    for (n, token) in tokens.iter().enumerate() {
        let view = s.get(&format!("/v1/tokens/{token}")).await.ok(200).clone();
        assert_eq!(view["total_supply"], format!("{}", n + 1), "{view}");
    }
    s.get(&format!("/v1/tokens/investors/{alice}"))
        .await
        .ok(200);
    let listed = s.get("/v1/tokens?limit=200").await.ok(200).clone();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let mut sorted = tokens.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "listed in id order, the same on every replica");
}

/// A store written before the service's writes were partitioned becomes partition 0: its
/// tokens go on in their own partitions, and their balances at earlier moments still read.
#[tokio::test]
async fn a_log_from_before_partitions_becomes_the_registry_and_its_history_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // The first life, unpartitioned.
    let (token, alice, bob, before) = in_a_life_of_its_own(async move {
        let store =
            std::sync::Arc::new(libertum_store::RedbStore::open(&path, "tokens").expect("store"));
        let tokens = libertum_tokens::Tokens::open(
            store,
            std::sync::Arc::new(libertum_store::MemoryCache::new(100)),
            Default::default(),
        )
        .await
        .unwrap();
        let s = common::serve(tokens, tempfile::tempdir().unwrap()).await;
        let alice = s.investor("DE", "verified").await;
        let bob = s.investor("FR", "verified").await;
        // A token that will live in a partition other than the registry.
        let mut n = 0;
        let token = loop {
            let token = s
                .token(&format!("ast_old_{n}"), &format!("OLD{n}"), json!({}))
                .await;
            if partition::of(&token, PARTITIONS) != 0 {
                break token;
            }
            n += 1;
        };
        s.issue(&token, &alice, "100").await;
        s.post(
            &format!("/v1/tokens/{token}/transfers"),
            &json!({"from": alice, "to": bob, "amount": "10"}),
        )
        .await
        .ok(200);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = OffsetDateTime::now_utc();
        tokio::time::sleep(Duration::from_millis(5)).await;
        (token, alice, bob, before)
    });

    let stores: Vec<std::sync::Arc<dyn libertum_store::EventStore>> = (0..PARTITIONS)
        .map(|p| {
            let name = if p == 0 {
                "tokens".to_owned()
            } else {
                format!("tokens-p{p}")
            };
            std::sync::Arc::new(libertum_store::RedbStore::open(dir.path(), &name).unwrap())
                as std::sync::Arc<dyn libertum_store::EventStore>
        })
        .collect();
    let tokens = libertum_tokens::Tokens::open_partitioned(
        stores,
        std::sync::Arc::new(libertum_store::MemoryCache::new(100)),
        Default::default(),
        false,
    )
    .await
    .unwrap();
    let s = common::serve(tokens, tempfile::tempdir().unwrap()).await;
    s.post(
        &format!("/v1/tokens/{token}/transfers"),
        &json!({"from": alice, "to": bob, "amount": "5"}),
    )
    .await
    .ok(200);
    let partition = partition::of(&token, PARTITIONS);
    assert_eq!(
        heads(&s).await[partition],
        1,
        "the token's new event is in its own partition's log"
    );
    assert_eq!(
        holders_at(&s, &token, before).await,
        sorted(vec![
            (alice.clone(), "90".into()),
            (bob.clone(), "10".into())
        ]),
        "read from the registry's old rows"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        holders_at(&s, &token, OffsetDateTime::now_utc()).await,
        sorted(vec![(alice, "85".into()), (bob, "15".into())]),
        "the later row, in the token's partition"
    );
}
