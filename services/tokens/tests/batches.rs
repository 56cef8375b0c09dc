//! Batches, distributions and cap tables as of an earlier moment, over HTTP.

mod common;

use std::time::Duration;

use common::{rows, send, spawn};
use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

/// A moment strictly between what happened before and what happens after.
async fn a_moment_between() -> OffsetDateTime {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(5)).await;
    t
}

#[tokio::test]
async fn a_batch_applies_everything_or_nothing_and_names_the_failing_item() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let p = s.investor("DE", "pending").await;
    let path = format!("/v1/tokens/{token}/batches");

    let failing = json!({"operations": [
        {"op": "issue", "to": a, "amount": "100"},
        {"op": "transfer", "from": a, "to": p, "amount": "10"},
        {"op": "issue", "to": b, "amount": "100"}
    ]});
    let reply = s.post(&path, &failing).await;
    let problem = reply.problem(409, "kyc_not_verified", Some("operations[1].to"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("operation 1:")
    );
    let (holders, supply) = s.cap_table(&token).await;
    assert_eq!(
        (holders.len(), supply.as_str()),
        (0, "0"),
        "nothing was applied"
    );
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["version"],
        1
    );

    // Later items see the effect of earlier ones.
    let fine = json!({"operations": [
        {"op": "issue", "to": a, "amount": "100"},
        {"op": "transfer", "from": a, "to": b, "amount": "60"},
        {"op": "freeze_amount", "investor_id": b, "amount": "10"},
        {"op": "redeem", "from": a, "amount": "40"}
    ]});
    let reply = s.post(&path, &fine).await;
    let body = reply.ok(200);
    let changes: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        ["issued", "transferred", "amount_frozen", "redeemed"]
    );
    assert_eq!(body["total_supply"], "60");
    assert_eq!(body["version"], 5);
    assert_eq!(s.balance(&token, &a).await, "0");
    assert_eq!(s.balance(&token, &b).await, "60");

    let over = json!({"operations": [
        {"op": "transfer", "from": b, "to": a, "amount": "50"},
        {"op": "transfer", "from": b, "to": a, "amount": "1"}
    ]});
    s.post(&path, &over).await.problem(
        409,
        "insufficient_unfrozen_balance",
        Some("operations[1].amount"),
    );
    s.post(&path, &json!({"operations": []})).await.problem(
        422,
        "invalid_field",
        Some("operations"),
    );
    let malformed = json!({"operations": [{"op": "pause"}, {"op": "melt", "amount": "1"}]});
    s.post(&path, &malformed)
        .await
        .problem(422, "invalid_field", Some("operations[1].op"));
    assert_eq!(s.balance(&token, &b).await, "60");
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["paused"],
        false
    );
}

#[tokio::test]
async fn a_distribution_splits_exactly_by_the_largest_remainder() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let mut investors = Vec::new();
    for country in ["DE", "FR", "IT"] {
        let id = s.investor(country, "verified").await;
        s.issue(&token, &id, "10").await;
        investors.push(id);
    }
    investors.sort();
    let record_date = a_moment_between().await;
    let body = json!({"total": "100", "currency": "EUR", "record_date": rfc3339(record_date), "memo": "Q1 rent"});
    let path = format!("/v1/tokens/{token}/distributions");
    let reply = send(
        s.http
            .post(s.url(&path))
            .header("idempotency-key", "q1")
            .json(&body),
    )
    .await;
    let paid = reply.ok(201).clone();
    assert!(paid["id"].as_str().unwrap().starts_with("dst_"));
    assert_eq!(paid["total"], "100");
    assert_eq!(paid["memo"], "Q1 rent");
    let allocations: Vec<(String, String, String)> = paid["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["investor_id"].as_str().unwrap().to_owned(),
                a["balance"].as_str().unwrap().to_owned(),
                a["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = investors
        .iter()
        .zip(["34", "33", "33"])
        .map(|(id, amount)| (id.clone(), "10".to_owned(), amount.to_owned()))
        .collect();
    assert_eq!(allocations, expected, "ties go to the lowest investor id");

    // A retry is the same distribution, not a second payment.
    let retry = send(
        s.http
            .post(s.url(&path))
            .header("idempotency-key", "q1")
            .json(&body),
    )
    .await;
    assert_eq!(retry.ok(201), &paid);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let mut other = body.clone();
    other["total"] = json!("200");
    send(
        s.http
            .post(s.url(&path))
            .header("idempotency-key", "q1")
            .json(&other),
    )
    .await
    .problem(422, "idempotency_key_reused", Some("Idempotency-Key"));
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["version"],
        5
    );
}

#[tokio::test]
async fn invalid_distributions_are_refused() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let before_any = a_moment_between().await;
    let a = s.investor("DE", "verified").await;
    s.issue(&token, &a, "10").await;
    let path = format!("/v1/tokens/{token}/distributions");
    let now = rfc3339(OffsetDateTime::now_utc());
    let body = |total: serde_json::Value, at: &str| json!({"total": total, "currency": "EUR", "record_date": at});
    s.post(&path, &body(json!("0"), &now))
        .await
        .problem(422, "invalid_field", Some("total"));
    s.post(&path, &body(json!(100), &now))
        .await
        .problem(422, "invalid_field", Some("total"));
    let future = rfc3339(OffsetDateTime::now_utc() + time::Duration::days(1));
    s.post(&path, &body(json!("100"), &future)).await.problem(
        422,
        "invalid_field",
        Some("record_date"),
    );
    s.post(&path, &body(json!("100"), "2026-01-01"))
        .await
        .problem(422, "invalid_field", Some("record_date"));
    s.post(&path, &body(json!("100"), &rfc3339(before_any)))
        .await
        .problem(409, "no_holders", Some("record_date"));
    s.post(
        "/v1/tokens/tok_missing/distributions",
        &body(json!("100"), &now),
    )
    .await
    .problem(404, "token_not_found", None);
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["version"],
        2
    );
}

#[tokio::test]
async fn holders_as_of_an_earlier_moment_show_the_balances_then() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let before_issue = a_moment_between().await;
    s.issue(&token, &a, "100").await;
    let after_issue = a_moment_between().await;
    s.post(
        &format!("/v1/tokens/{token}/transfers"),
        &json!({"from": a, "to": b, "amount": "25"}),
    )
    .await
    .ok(200);
    s.issue(&token, &b, "100").await;

    let at = |t: OffsetDateTime| {
        let url = s.url(&format!("/v1/tokens/{token}/holders"));
        send(s.http.get(url).query(&[("as_of", rfc3339(t))]))
    };
    let then = at(after_issue).await;
    let body = then.ok(200).clone();
    assert_eq!(rows(&body), [(a.clone(), "100".into(), "100.0000".into())]);
    assert_eq!(body["total_supply"], "100");
    assert_eq!(body["version"], json!(null));
    assert!(body["as_of"].is_string());
    let empty = at(before_issue).await;
    assert_eq!(empty.ok(200)["holders"], json!([]));
    assert_eq!(empty.body["total_supply"], "0");

    let (now, supply) = s.cap_table(&token).await;
    assert_eq!(supply, "200");
    let mut expected = vec![
        (a.clone(), "75".to_owned(), "37.5000".to_owned()),
        (b.clone(), "125".to_owned(), "62.5000".to_owned()),
    ];
    expected.sort();
    assert_eq!(now, expected);
    let latest = at(OffsetDateTime::now_utc()).await;
    assert_eq!(rows(latest.ok(200)), expected);

    s.get(&format!("/v1/tokens/{token}/holders?as_of=yesterday"))
        .await
        .problem(422, "invalid_field", Some("as_of"));
    s.get(&format!("/v1/tokens/{token}/holders?when=now"))
        .await
        .problem(400, "invalid_query", None);
}

#[tokio::test]
async fn an_independent_batch_applies_what_passes_and_reports_each_operation() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let p = s.investor("DE", "pending").await;
    s.issue(&token, &a, "100").await;
    let path = format!("/v1/tokens/{token}/batches");
    let body = json!({"mode": "independent", "operations": [
        {"op": "transfer", "from": a, "to": b, "amount": "30"},
        {"op": "transfer", "from": a, "to": p, "amount": "10"},
        {"op": "transfer", "from": a, "to": b, "amount": "500"},
        {"op": "transfer", "from": b, "to": a, "amount": "5"}
    ]});
    let post = |key: &'static str, body: serde_json::Value| {
        send(
            s.http
                .post(s.url(&path))
                .header("idempotency-key", key)
                .json(&body),
        )
    };
    let reply = post("bulk-1", body.clone()).await;
    let first = reply.ok(200).clone();
    assert_eq!(
        (first["applied"].as_u64(), first["refused"].as_u64()),
        (Some(2), Some(2))
    );
    let outcomes: Vec<(u64, &str, Option<&str>, Option<&str>)> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["status"].as_str().unwrap(),
                r["code"].as_str(),
                r["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (0, "applied", None, None),
            (1, "refused", Some("kyc_not_verified"), Some("to")),
            (2, "refused", Some("insufficient_balance"), Some("amount")),
            (3, "applied", None, None),
        ]
    );
    // Versions name the events: issue made 2, the two transfers 3 and 4.
    assert_eq!(first["results"][0]["version"], 3);
    assert_eq!(first["results"][3]["version"], 4);
    assert_eq!(first["version"], 4);
    assert_eq!(s.balance(&token, &a).await, "75");
    assert_eq!(s.balance(&token, &b).await, "25");

    // Idempotent as a whole: the same answer, nothing applied again.
    let again = post("bulk-1", body.clone()).await;
    assert_eq!(again.ok(200), &first);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(s.balance(&token, &a).await, "75");
    let mut other = body.clone();
    other["mode"] = json!("all_or_nothing");
    post("bulk-1", other)
        .await
        .problem(422, "idempotency_key_reused", Some("Idempotency-Key"));

    // A malformed operation refuses the whole request before anything is decided.
    let malformed = json!({"mode": "independent", "operations": [{"op": "pause"}, {"op": "melt"}]});
    s.post(&path, &malformed)
        .await
        .problem(422, "invalid_field", Some("operations[1].op"));
    s.post(
        &path,
        &json!({"mode": "sometimes", "operations": [{"op": "pause"}]}),
    )
    .await
    .problem(422, "invalid_field", Some("mode"));
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["paused"],
        false
    );
}

#[tokio::test]
async fn a_batch_takes_up_to_eight_thousand_operations() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    s.issue(&token, &a, "100000").await;
    let path = format!("/v1/tokens/{token}/batches");
    let transfers = |n: usize| {
        (0..n)
            .map(|_| json!({"op": "transfer", "from": a, "to": b, "amount": "1"}))
            .collect::<Vec<_>>()
    };
    // 8,000 operations are well over the 256 KiB of a single request's body.
    let full = json!({"mode": "independent", "operations": transfers(8_000)});
    assert!(serde_json::to_vec(&full).unwrap().len() > 256 * 1024);
    let reply = s.post(&path, &full).await;
    assert_eq!(reply.ok(200)["applied"], 8_000);
    assert_eq!(s.balance(&token, &b).await, "8000");
    s.post(&path, &json!({"operations": transfers(8_001)}))
        .await
        .problem(422, "invalid_field", Some("operations"));
    assert_eq!(s.balance(&token, &b).await, "8000");
}

/// The NDJSON lines of an import's answer.
async fn import(
    s: &common::Server,
    token: &str,
    query: &str,
    key: Option<&str>,
    body: String,
) -> Vec<serde_json::Value> {
    let mut request = s
        .http
        .post(s.url(&format!("/v1/tokens/{token}/imports{query}")))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("the import answers");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "progress is NDJSON"
    );
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "holdings are never cached on the way"
    );
    let text = response.text().await.expect("the whole answer");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test]
async fn an_import_commits_chunk_by_chunk_reports_progress_and_resumes_under_its_key() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let a = s.investor("DE", "verified").await;
    let b = s.investor("FR", "verified").await;
    let p = s.investor("DE", "pending").await;
    s.issue(&token, &a, "1000000").await;
    // 2,500 operations; line 1,700 goes to an investor without KYC; a blank line is skipped.
    let mut lines: Vec<String> = (1..=2_500)
        .map(|line| {
            let to = if line == 1_700 { &p } else { &b };
            json!({"op": "transfer", "from": a, "to": to, "amount": "2"}).to_string()
        })
        .collect();
    lines.insert(10, String::new());
    let body = lines.join("\n");
    let progress = import(&s, &token, "?chunk=1000", Some("load-1"), body.clone()).await;
    assert_eq!(progress.len(), 4, "three chunks and the end: {progress:?}");
    let chunks: Vec<(u64, u64, u64, u64, u64)> = progress[..3]
        .iter()
        .map(|c| {
            (
                c["chunk"].as_u64().unwrap(),
                c["first_line"].as_u64().unwrap(),
                c["last_line"].as_u64().unwrap(),
                c["applied"].as_u64().unwrap(),
                c["refused"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        chunks,
        [
            (0, 1, 1_001, 1_000, 0),
            (1, 1_002, 2_001, 999, 1),
            (2, 2_002, 2_501, 500, 0)
        ]
    );
    // Line 1,700 of the operations is line 1,701 of the body (after the blank line).
    assert_eq!(progress[1]["refusals"][0]["line"], 1_701);
    assert_eq!(progress[1]["refusals"][0]["code"], "kyc_not_verified");
    assert_eq!(progress[0]["replayed"], false);
    assert_eq!(
        progress[3],
        json!({"done": true, "lines": 2_501, "operations": 2_500, "applied": 2_499, "refused": 1, "chunks": 3})
    );
    assert_eq!(s.balance(&token, &b).await, "4998");

    // Sent again under its key: every chunk is replayed, nothing moves twice.
    let again = import(&s, &token, "?chunk=1000", Some("load-1"), body.clone()).await;
    assert!(
        again[..3].iter().all(|c| c["replayed"] == true),
        "{again:?}"
    );
    assert_eq!(again[3]["applied"], 2_499);
    assert_eq!(s.balance(&token, &b).await, "4998");

    // A bad line stops the import there: the chunks before it stand, and the same import,
    // mended, goes on from where it stopped.
    let mut broken: Vec<String> = (1..=25)
        .map(|_| json!({"op": "transfer", "from": a, "to": b, "amount": "1"}).to_string())
        .collect();
    let good_line = broken[21].clone();
    broken[21] = json!({"op": "transfer", "from": a, "to": b, "amount": "-1"}).to_string();
    let stopped = import(&s, &token, "?chunk=10", Some("load-2"), broken.join("\n")).await;
    assert_eq!(stopped.len(), 3, "{stopped:?}");
    // The 22nd line: the first two chunks (lines 1-20) are committed, the third is not.
    assert_eq!(
        (
            &stopped[2]["done"],
            &stopped[2]["line"],
            &stopped[2]["code"]
        ),
        (&json!(false), &json!(22), &json!("invalid_field"))
    );
    assert!(
        stopped[2]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 22: "),
        "{stopped:?}"
    );
    assert_eq!(s.balance(&token, &b).await, "5018");
    broken[21] = good_line;
    let resumed = import(&s, &token, "?chunk=10", Some("load-2"), broken.join("\n")).await;
    let replayed: Vec<bool> = resumed[..3]
        .iter()
        .map(|c| c["replayed"].as_bool().unwrap())
        .collect();
    assert_eq!(replayed, [true, true, false]);
    assert_eq!(s.balance(&token, &b).await, "5023");

    // The same key with other lines is refused at the first chunk that differs.
    let other = import(
        &s,
        &token,
        "?chunk=10",
        Some("load-2"),
        lines[..30].join("\n"),
    )
    .await;
    assert_eq!(other[0]["code"], "idempotency_key_reused", "{other:?}");
    assert_eq!(s.balance(&token, &b).await, "5023");
}

#[tokio::test]
async fn an_import_refuses_what_it_cannot_read_before_anything_moves() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let path = format!("/v1/tokens/{token}/imports");
    let line = json!({"op": "pause"}).to_string();
    let reply = send(
        s.http
            .post(s.url(&path))
            .header("content-type", "application/json")
            .body(line.clone()),
    )
    .await;
    reply.problem(415, "unsupported_media_type", None);
    for chunk in ["0", "8001"] {
        send(
            s.http
                .post(s.url(&format!("{path}?chunk={chunk}")))
                .header("content-type", "application/x-ndjson")
                .body(line.clone()),
        )
        .await
        .problem(400, "invalid_query", Some("chunk"));
    }
    send(
        s.http
            .post(s.url("/v1/tokens/tok_missing/imports"))
            .header("content-type", "application/x-ndjson")
            .body(line.clone()),
    )
    .await
    .problem(404, "token_not_found", None);
    // A line over 16 KiB stops the import at that line.
    let long = format!("{{\"op\": \"pause\", \"x\": \"{}\"}}", "y".repeat(20_000));
    let answer = import(&s, &token, "", None, long).await;
    assert_eq!(
        (&answer[0]["code"], &answer[0]["line"]),
        (&json!("line_too_long"), &json!(1))
    );
    assert_eq!(
        s.get(&format!("/v1/tokens/{token}")).await.ok(200)["paused"],
        false
    );
}

#[tokio::test]
async fn a_cap_table_is_read_page_by_page_in_investor_order() {
    let s = spawn().await;
    let token = s.token("ast_1", "FRIED123", json!({})).await;
    let mut investors = Vec::new();
    for _ in 0..7 {
        investors.push(s.investor("DE", "verified").await);
    }
    let operations: Vec<_> = investors
        .iter()
        .map(|id| json!({"op": "issue", "to": id, "amount": "10"}))
        .collect();
    s.post(
        &format!("/v1/tokens/{token}/batches"),
        &json!({"operations": operations}),
    )
    .await
    .ok(200);
    let after_issue = a_moment_between().await;
    // One more holder after the moment: in today's table, not in the past one.
    let late = s.investor("FR", "verified").await;
    s.issue(&token, &late, "10").await;
    let mut now_ids = investors.clone();
    now_ids.push(late);
    now_ids.sort();
    investors.sort();

    for (as_of, expected) in [(None, &now_ids), (Some(after_issue), &investors)] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", "3".to_owned())];
            if let Some(at) = as_of {
                query.push(("as_of", rfc3339(at)));
            }
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let url = s.url(&format!("/v1/tokens/{token}/holders"));
            let reply = send(s.http.get(url).query(&query)).await;
            let page = reply.ok(200).clone();
            let rows = rows(&page);
            assert!(rows.len() <= 3);
            seen.extend(rows.into_iter().map(|(id, _, _)| id));
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            &seen, expected,
            "every holder once, in order (as of {as_of:?})"
        );
    }
    s.get(&format!("/v1/tokens/{token}/holders?limit=0"))
        .await
        .problem(422, "invalid_field", Some("limit"));
    s.get(&format!("/v1/tokens/{token}/holders?limit=1001"))
        .await
        .problem(422, "invalid_field", Some("limit"));
    let all = s.get(&format!("/v1/tokens/{token}/holders")).await;
    assert_eq!(all.ok(200)["holders"].as_array().unwrap().len(), 8);
    assert!(
        all.body.get("next").is_none(),
        "a whole table has no next page"
    );
}
