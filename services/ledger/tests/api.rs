//! The ledger's read API over HTTP: entries, the chain head, balances and cap tables at any
//! point, and verification.

mod common;

use common::{asset_event, at, feed_sample, issued, spawn, token_event, transferred};
use libertum_domain::{Amount, Id, token};
use serde_json::{Value, json};

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn seqs(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn an_empty_ledger_has_a_genesis_head_and_verifies() {
    let s = spawn().await;
    assert_eq!(
        s.get("/v1/ledger/head").await.ok(200),
        &json!({"seq": 0, "hash": ZEROS})
    );
    let v = s.get("/v1/ledger/verification").await;
    assert_eq!(
        v.ok(200),
        &json!({
            "valid": true, "entries_checked": 0, "head_seq": 0, "head_hash": ZEROS,
            "first_broken_seq": null, "problem": null
        })
    );
    assert_eq!(
        s.get("/v1/ledger/entries").await.ok(200),
        &json!({"items": [], "next_cursor": null})
    );
    s.get("/v1/ledger/entries/1")
        .await
        .problem(404, "entry_not_found", None);
    s.get("/v1/ledger/entries/0")
        .await
        .problem(404, "entry_not_found", None);
    let balance = s
        .get("/v1/ledger/accounts/investor:inv_a/balance?unit=tok_1")
        .await;
    assert_eq!(balance.ok(200)["balance"], "0");
    let table = s.get("/v1/ledger/tokens/tok_1/cap-table").await;
    assert_eq!(
        table.ok(200),
        &json!({"token_id": "tok_1", "total_supply": "0", "holders": []})
    );
}

#[tokio::test]
async fn entries_are_chained_in_sequence_and_readable_one_by_one() {
    let s = spawn().await;
    feed_sample(&s).await;
    let page = s.get("/v1/ledger/entries").await;
    let items = page.ok(200)["items"].as_array().expect("items").clone();
    assert_eq!(seqs(&page.body), [1, 2, 3, 4, 5, 6]);
    assert_eq!(page.body["next_cursor"], json!(null));
    assert_eq!(items[0]["prev_hash"], ZEROS);
    for pair in items.windows(2) {
        assert_eq!(
            pair[1]["prev_hash"], pair[0]["hash"],
            "each entry chains to the one before"
        );
    }
    let hashes: std::collections::HashSet<&str> =
        items.iter().map(|e| e["hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 6);

    let transfer = s.get("/v1/ledger/entries/4").await;
    let e = transfer.ok(200);
    assert_eq!(e, &items[3]);
    assert_eq!(e["event_id"], "ev4");
    assert_eq!(e["event_type"], "libertum.token.transferred.v1");
    assert_eq!(e["subject"], "tok_1");
    assert_eq!(e["actor"], "agent-1");
    assert_eq!(e["at"], "2026-01-01T00:30:00Z");
    assert_eq!(
        e["postings"],
        json!([{"from": "investor:inv_a", "to": "investor:inv_b", "unit": "tok_1", "amount": "30"}])
    );
    let issuance = s.get("/v1/ledger/entries/2").await;
    assert_eq!(
        issuance.ok(200)["postings"],
        json!([{"from": "issuance:tok_1", "to": "investor:inv_a", "unit": "tok_1", "amount": "100"}])
    );
    assert_eq!(
        s.get("/v1/ledger/entries/1").await.ok(200)["postings"],
        json!([])
    );
    s.get("/v1/ledger/entries/7")
        .await
        .problem(404, "entry_not_found", None);

    let head = s.get("/v1/ledger/head").await;
    assert_eq!(head.ok(200), &json!({"seq": 6, "hash": items[5]["hash"]}));
}

#[tokio::test]
async fn entries_filter_by_token_account_and_time_and_page_with_a_cursor() {
    let s = spawn().await;
    feed_sample(&s).await;
    let list = |q: &str| s.get(&format!("/v1/ledger/entries?{q}"));
    assert_eq!(seqs(list("token_id=tok_1").await.ok(200)), [2, 3, 4, 6]);
    assert_eq!(seqs(list("token_id=tok_2").await.ok(200)), [5]);
    assert_eq!(
        seqs(list("account=investor:inv_b").await.ok(200)),
        [3, 4, 6]
    );
    assert_eq!(
        seqs(list("account=investor:inv_a").await.ok(200)),
        [2, 4, 5]
    );
    assert_eq!(
        seqs(list("account=investor:inv_a&token_id=tok_1").await.ok(200)),
        [2, 4]
    );
    assert_eq!(seqs(list("account=redemption:tok_1").await.ok(200)), [6]);
    assert_eq!(
        seqs(
            list("from=2026-01-01T00:20:00Z&to=2026-01-01T00:40:00Z")
                .await
                .ok(200)
        ),
        [3, 4],
        "from is inclusive, to exclusive"
    );
    assert_eq!(
        seqs(list("token_id=tok_9").await.ok(200)),
        Vec::<u64>::new()
    );

    // Pages of two over the token's entries: each once, in order.
    let first = list("token_id=tok_1&limit=2").await;
    assert_eq!(seqs(first.ok(200)), [2, 3]);
    let cursor = first.body["next_cursor"].as_str().expect("more").to_owned();
    let second = list(&format!("token_id=tok_1&limit=2&cursor={cursor}")).await;
    assert_eq!(seqs(second.ok(200)), [4, 6]);
    assert_eq!(second.body["next_cursor"], json!(null));
    let all = list("limit=4").await;
    assert_eq!(seqs(all.ok(200)), [1, 2, 3, 4]);
    let rest = list(&format!(
        "limit=4&cursor={}",
        all.body["next_cursor"].as_str().unwrap()
    ))
    .await;
    assert_eq!(seqs(rest.ok(200)), [5, 6]);
}

#[tokio::test]
async fn bad_entry_queries_are_problems() {
    let s = spawn().await;
    feed_sample(&s).await;
    s.get("/v1/ledger/entries?limit=0")
        .await
        .problem(422, "invalid_field", Some("limit"));
    s.get("/v1/ledger/entries?cursor=next")
        .await
        .problem(422, "invalid_field", Some("cursor"));
    s.get("/v1/ledger/entries?from=yesterday")
        .await
        .problem(422, "invalid_field", Some("from"));
    s.get("/v1/ledger/entries?to=2026-13-01T00:00:00Z")
        .await
        .problem(422, "invalid_field", Some("to"));
    s.get("/v1/ledger/entries?subject=tok_1")
        .await
        .problem(400, "invalid_query", None);
}

#[tokio::test]
async fn balances_are_signed_and_readable_at_any_sequence_or_time() {
    let s = spawn().await;
    feed_sample(&s).await;
    let balance =
        |account: &str, q: &str| s.get(&format!("/v1/ledger/accounts/{account}/balance?{q}"));
    let latest = balance("investor:inv_a", "unit=tok_1").await;
    assert_eq!(
        latest.ok(200),
        &json!({"account": "investor:inv_a", "unit": "tok_1", "balance": "70", "as_of_seq": null, "as_of": null})
    );
    let cases = [
        ("investor:inv_a", "unit=tok_1&as_of_seq=1", "0"),
        ("investor:inv_a", "unit=tok_1&as_of_seq=2", "100"),
        ("investor:inv_a", "unit=tok_1&as_of_seq=3", "100"),
        ("investor:inv_a", "unit=tok_1&as_of_seq=4", "70"),
        ("investor:inv_b", "unit=tok_1", "60"),
        ("investor:inv_b", "unit=tok_1&as_of_seq=5", "80"),
        ("investor:inv_a", "unit=tok_2", "7"),
        ("issuance:tok_1", "unit=tok_1", "-150"),
        ("redemption:tok_1", "unit=tok_1", "20"),
        ("investor:inv_a", "unit=EUR", "0"),
        (
            "investor:inv_a",
            "unit=tok_1&as_of=2026-01-01T00:29:59Z",
            "100",
        ),
        (
            "investor:inv_a",
            "unit=tok_1&as_of=2026-01-01T00:30:00Z",
            "70",
        ),
        (
            "investor:inv_a",
            "unit=tok_1&as_of=2025-12-31T23:59:59Z",
            "0",
        ),
    ];
    for (account, q, expected) in cases {
        let reply = balance(account, q).await;
        assert_eq!(reply.ok(200)["balance"], expected, "{account}?{q}");
    }
    assert_eq!(
        balance("investor:inv_a", "unit=tok_1&as_of_seq=2")
            .await
            .ok(200)["as_of_seq"],
        2
    );

    balance(
        "investor:inv_a",
        "unit=tok_1&as_of_seq=2&as_of=2026-01-01T00:30:00Z",
    )
    .await
    .problem(422, "invalid_field", Some("as_of"));
    balance("investor:inv_a", "unit=tok_1&as_of=noon")
        .await
        .problem(422, "invalid_field", Some("as_of"));
    balance("investor:inv_a", "")
        .await
        .problem(400, "invalid_query", None);
    balance("investor:inv_a", "unit=tok_1&as_of_seq=-1")
        .await
        .problem(400, "invalid_query", None);
}

#[tokio::test]
async fn cap_tables_come_from_the_entries_at_any_point() {
    let s = spawn().await;
    feed_sample(&s).await;
    let table = |q: &str| s.get(&format!("/v1/ledger/tokens/tok_1/cap-table{q}"));
    let holders = |a: u128, b: u128| {
        let mut rows = Vec::new();
        if a > 0 {
            rows.push(json!({"investor_id": "inv_a", "balance": a.to_string()}));
        }
        if b > 0 {
            rows.push(json!({"investor_id": "inv_b", "balance": b.to_string()}));
        }
        Value::Array(rows)
    };
    let now = table("").await;
    assert_eq!(
        now.ok(200),
        &json!({"token_id": "tok_1", "total_supply": "130", "holders": holders(70, 60)})
    );
    let at_two = table("?as_of_seq=2").await;
    assert_eq!(at_two.ok(200)["holders"], holders(100, 0));
    assert_eq!(at_two.body["total_supply"], "100");
    let at_five = table("?as_of_seq=5").await;
    assert_eq!(at_five.ok(200)["holders"], holders(70, 80));
    assert_eq!(at_five.body["total_supply"], "150");
    let by_time = table("?as_of=2026-01-01T00:25:00Z").await;
    assert_eq!(by_time.ok(200)["holders"], holders(100, 50));
    let other = s.get("/v1/ledger/tokens/tok_2/cap-table").await;
    assert_eq!(
        other.ok(200),
        &json!({"token_id": "tok_2", "total_supply": "7", "holders": holders(7, 0)})
    );
    table("?as_of=later")
        .await
        .problem(422, "invalid_field", Some("as_of"));
    table("?as_of_seq=1&as_of=2026-01-01T00:25:00Z")
        .await
        .problem(422, "invalid_field", Some("as_of"));
}

#[tokio::test]
async fn a_non_empty_chain_verifies_up_to_its_head() {
    let s = spawn().await;
    feed_sample(&s).await;
    let head = s.get("/v1/ledger/head").await.ok(200).clone();
    let v = s.get("/v1/ledger/verification").await;
    let body = v.ok(200);
    assert_eq!(body["valid"], true);
    assert_eq!(body["entries_checked"], 6);
    assert_eq!(body["head_seq"], head["seq"]);
    assert_eq!(body["head_hash"], head["hash"]);
    assert_eq!(body["first_broken_seq"], json!(null));
    assert_eq!(body["problem"], json!(null));
}

#[tokio::test]
async fn the_same_event_delivered_twice_makes_one_entry() {
    let s = spawn().await;
    s.feed(asset_event("ev1", 0)).await;
    let event = token_event("ev2", 10, 2, issued("tok_1", "inv_a", 100));
    s.feed(event.clone()).await;
    let head = s.get("/v1/ledger/head").await.ok(200).clone();
    s.feed(event).await;
    s.feed(asset_event("ev1", 0)).await;
    assert_eq!(s.get("/v1/ledger/head").await.ok(200), &head);
    assert_eq!(head["seq"], 2);
    assert_eq!(seqs(s.get("/v1/ledger/entries").await.ok(200)), [1, 2]);
    let balance = s
        .get("/v1/ledger/accounts/investor:inv_a/balance?unit=tok_1")
        .await;
    assert_eq!(balance.ok(200)["balance"], "100", "counted once");
    let v = s.get("/v1/ledger/verification").await;
    assert_eq!(v.ok(200)["entries_checked"], 2);
    assert_eq!(v.body["valid"], true);
}

#[tokio::test]
async fn unknown_routes_health_and_metrics() {
    let s = spawn().await;
    s.get("/v1/ledger/nothing")
        .await
        .problem(404, "route_not_found", None);
    let health = s.get("/healthz").await;
    assert_eq!(health.status.as_u16(), 200);
    let ready = s.get("/readyz").await;
    assert_eq!(ready.status.as_u16(), 200);
    assert_eq!(ready.body["checks"][0]["name"], "ledger.store");
    assert_eq!(ready.body["checks"][0]["state"], "up");
    s.get("/v1/ledger/entries/3").await;
    let metrics = s.get("/metrics").await;
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l.starts_with("libertum_http_requests_total{")
                && l.contains("route=\"/v1/ledger/entries/{seq}\"")
                && l.contains("status=\"404\"")),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn unparsable_path_segments_are_problems() {
    let s = spawn().await;
    s.get("/v1/ledger/entries/abc")
        .await
        .problem(400, "invalid_path", None);
    s.get("/v1/ledger/entries/99999999999999999999999")
        .await
        .problem(400, "invalid_path", None);
    s.get("/v1/ledger/accounts/%FF/balance?unit=tok_1")
        .await
        .problem(400, "invalid_path", None);
}

#[tokio::test]
async fn a_reversing_entry_names_the_entry_it_reverses_and_undoes_its_posting() {
    let s = spawn().await;
    s.feed(token_event("e1", 0, 2, issued("tok_9", "inv_a", 100)))
        .await;
    s.feed(token_event(
        "e2",
        1,
        3,
        transferred("tok_9", "inv_a", "inv_b", 40),
    ))
    .await;
    let original = token::Movement::of(
        &transferred("tok_9", "inv_a", "inv_b", 40),
        3,
        at(1),
        &Id::from("agent-1"),
    )
    .expect("a movement");
    let reversal = token::Change::Reversed {
        class: None,
        token_id: Id::from("tok_9"),
        original,
        from: Some(Id::from("inv_b")),
        to: Some(Id::from("inv_a")),
        amount: Amount(40),
        reason: "wrong investor".into(),
    };
    s.feed(token_event("e3", 2, 4, reversal)).await;

    let entry = s.get("/v1/ledger/entries/3").await;
    let entry = entry.ok(200);
    assert_eq!(entry["event_type"], "libertum.token.reversed.v1");
    assert_eq!(
        entry["reverses"],
        json!({"token_id": "tok_9", "version": 3, "seq": 2})
    );
    assert_eq!(
        entry["postings"],
        json!([{"from": "investor:inv_b", "to": "investor:inv_a", "unit": "tok_9", "amount": "40"}])
    );
    let listed = s.get("/v1/ledger/entries?token_id=tok_9").await;
    assert_eq!(listed.ok(200)["items"][2]["reverses"]["seq"], 2);
    assert_eq!(
        listed.body["items"][1].get("reverses"),
        None,
        "only reversing entries name one"
    );
    let table = s.get("/v1/ledger/tokens/tok_9/cap-table").await;
    assert_eq!(
        table.ok(200)["holders"],
        json!([{"investor_id": "inv_a", "balance": "100"}])
    );
    let v = s.get("/v1/ledger/verification").await;
    assert_eq!(v.ok(200)["valid"], true);
}
