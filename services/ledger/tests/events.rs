//! Every recorded event for outside consumers over HTTP: webhook subscriptions (signatures
//! verified by the `standardwebhooks` package from PyPI), retries and dead letters, replay,
//! filters, each principal's visibility, the defences of the webhook URL, and the server-sent
//! event stream resuming from `Last-Event-ID`.

mod common;

use std::time::{Duration, Instant};

use common::{Server, issued, token_event, transferred};
use libertum_platform::{auth::Role, config::WebhookSettings};
use libertum_testkit::webhooks::{Delivery, Receiver, verify};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(10);

fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(Delivery::seq).collect()
}

async fn subscribe(s: &Server, bearer: Option<String>, body: Value) -> libertum_testkit::Reply {
    let mut request = s.http.post(s.url("/v1/events/subscriptions")).json(&body);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    libertum_testkit::send(request).await
}

fn settings(max_attempts: u32) -> WebhookSettings {
    WebhookSettings {
        max_attempts,
        private_targets: true,
    }
}

#[tokio::test]
async fn webhooks_are_signed_filtered_retried_dead_lettered_and_replayed() {
    let s = common::spawn_with_events(settings(2)).await;
    let hooks = Receiver::start().await;
    let hooks_base = hooks.base.clone();
    s.feed(token_event("e1", 0, 2, issued("tok_1", "inv_a", 100)))
        .await;

    // From the first event on, everything; only transfers of tok_1; and a failing endpoint.
    let all = subscribe(
        &s,
        None,
        json!({"url": format!("{hooks_base}/ok"), "from_seq": 1}),
    )
    .await;
    let all = all.ok(201).clone();
    let secret = all["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{all}");
    let id = all["id"].as_str().unwrap().to_owned();
    subscribe(
        &s,
        None,
        json!({"url": format!("{hooks_base}/other"), "token_id": "tok_1",
        "event_types": ["libertum.token.transferred.v1"]}),
    )
    .await
    .ok(201);
    let failing = subscribe(&s, None, json!({"url": format!("{hooks_base}/fail")})).await;
    let failing = failing.ok(201)["id"].as_str().unwrap().to_owned();
    // The secret is shown once.
    let listed = s.get("/v1/events/subscriptions").await;
    assert_eq!(listed.ok(200).as_array().map(Vec::len), Some(3));
    assert!(listed.body[0].get("secret").is_none(), "{}", listed.body);

    s.feed(token_event(
        "e2",
        1,
        3,
        transferred("tok_1", "inv_a", "inv_b", 40),
    ))
    .await;
    s.feed(token_event("e3", 2, 2, issued("tok_2", "inv_a", 7)))
        .await;

    let ok = hooks.until("/ok", 3, PATIENCE).await;
    let other = hooks.until("/other", 1, PATIENCE).await;
    assert_eq!(seqs(&ok), [1, 2, 3], "in order, each once");
    let first: Value = serde_json::from_str(&ok[1].body).unwrap();
    assert_eq!(first["type"], "libertum.token.transferred.v1");
    assert_eq!(first["data"]["postings"][0]["amount"], "40");
    assert_eq!(
        ok[1].headers["webhook-id"], "e2",
        "the event's id names the message"
    );
    assert_eq!(seqs(&other), [2], "filtered by type and token");
    // An implementation nobody here wrote accepts every signature, and refuses a changed body.
    let report = verify(&secret, &ok).unwrap_or_else(|report| panic!("{report}"));
    assert!(report.contains("3 deliveries verified"), "{report}");
    let mut tampered = ok[0].clone();
    tampered.body = tampered.body.replace("100", "900");
    assert!(
        verify(&secret, &[tampered]).is_err(),
        "a changed body must not verify"
    );
    assert!(
        verify(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &ok[..1]
        )
        .is_err()
    );

    // The failing endpoint was tried twice (1 s apart), then the event went to its dead letters.
    let letters = loop {
        let page = s
            .get(&format!("/v1/events/subscriptions/{failing}/dead-letters"))
            .await;
        let items = page.ok(200)["items"].clone();
        if items.as_array().is_some_and(|i| i.len() == 2) {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters[0]["seq"], 2);
    assert_eq!(letters[0]["attempts"], 2);
    assert!(
        letters[0]["error"].as_str().unwrap().contains("500"),
        "{letters}"
    );
    assert_eq!(hooks.on("/fail").len(), 4);

    // Replay from 2: the same messages again, same ids, in order.
    let replayed = s
        .post(
            &format!("/v1/events/subscriptions/{id}/replay"),
            &json!({"from_seq": 2}),
        )
        .await;
    replayed.ok(202);
    let ok = hooks.until("/ok", 5, PATIENCE).await;
    assert_eq!(seqs(&ok), [1, 2, 3, 2, 3]);
    assert_eq!(ok[3].headers["webhook-id"], "e2");
    let view = s.get(&format!("/v1/events/subscriptions/{id}")).await;
    assert!(view.ok(200)["delivered_seq"].as_u64().is_some());

    // Deleted: nothing more.
    let gone = libertum_testkit::send(
        s.http
            .delete(s.url(&format!("/v1/events/subscriptions/{id}"))),
    )
    .await;
    assert_eq!(gone.status.as_u16(), 204);
    s.get(&format!("/v1/events/subscriptions/{id}"))
        .await
        .problem(404, "subscription_not_found", None);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    s.feed(token_event(
        "e4",
        3,
        4,
        transferred("tok_1", "inv_b", "inv_a", 1),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(hooks.on("/ok").len(), 5);
}

#[tokio::test]
async fn an_investor_sees_only_their_own_events_and_others_subscriptions_are_not_theirs() {
    let s = common::spawn_with_events(settings(1)).await;
    let hooks = Receiver::start().await;
    let hooks_base = hooks.base.clone();
    let alice = libertum_testkit::token(&[Role::Investor], Some("inv_a"));
    let mine = subscribe(
        &s,
        Some(alice.clone()),
        json!({"url": format!("{hooks_base}/ok"), "from_seq": 1}),
    )
    .await;
    let mine = mine.ok(201)["id"].as_str().unwrap().to_owned();
    s.feed(token_event("e1", 0, 2, issued("tok_1", "inv_b", 100)))
        .await;
    s.feed(token_event(
        "e2",
        1,
        3,
        transferred("tok_1", "inv_b", "inv_a", 5),
    ))
    .await;
    s.feed(token_event("e3", 2, 4, issued("tok_1", "inv_c", 1)))
        .await;
    hooks.until("/ok", 1, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seqs(&hooks.on("/ok")), [2]);
    // Another caller's subscription does not exist for them; roles without the right are refused.
    let bob = libertum_testkit::token(&[Role::Investor], Some("inv_b"));
    libertum_testkit::send(
        s.http
            .get(s.url(&format!("/v1/events/subscriptions/{mine}")))
            .bearer_auth(&bob),
    )
    .await
    .problem(404, "subscription_not_found", None);
    for role in [Role::AssetManager, Role::PaymentAgent] {
        subscribe(
            &s,
            Some(libertum_testkit::token(&[role], None)),
            json!({"url": format!("{hooks_base}/ok")}),
        )
        .await
        .problem(403, "forbidden", None);
    }
}

#[tokio::test]
async fn webhook_urls_that_could_reach_inside_are_refused() {
    let s = common::spawn_with_events(WebhookSettings {
        max_attempts: 1,
        private_targets: false,
    })
    .await;
    for (url, code) in [
        ("http://example.com/hook", "webhook_url_not_allowed"),
        ("ftp://example.com/hook", "webhook_url_not_allowed"),
        ("https://127.0.0.1/hook", "webhook_url_not_allowed"),
        ("https://localhost:8443/hook", "webhook_url_not_allowed"),
        (
            "https://169.254.169.254/latest/meta-data",
            "webhook_url_not_allowed",
        ),
        ("https://10.0.0.7/hook", "webhook_url_not_allowed"),
        ("https://[::1]/hook", "webhook_url_not_allowed"),
        (
            "https://[::ffff:192.168.0.1]/hook",
            "webhook_url_not_allowed",
        ),
        (
            "https://user:pw@example.com/hook",
            "webhook_url_not_allowed",
        ),
        ("not a url", "invalid_field"),
    ] {
        subscribe(&s, None, json!({"url": url}))
            .await
            .problem(422, code, Some("url"));
    }
    subscribe(
        &s,
        None,
        json!({"url": "https://203.0.113.9/hook", "event_types": ["transferred"]}),
    )
    .await
    .problem(422, "invalid_field", Some("event_types"));
    subscribe(
        &s,
        None,
        json!({"url": "https://203.0.113.9/hook", "from_seq": 0}),
    )
    .await
    .problem(422, "invalid_field", Some("from_seq"));
    // A public address is accepted (nothing listens there: its deliveries are dead-lettered).
    subscribe(&s, None, json!({"url": "https://203.0.113.9/hook"}))
        .await
        .ok(201);
    let listed = s.get("/v1/events/subscriptions").await;
    assert_eq!(
        listed.ok(200).as_array().map(Vec::len),
        Some(1),
        "refused ones were not kept"
    );
}

/// Reads server-sent events from `response` until `n` arrived: `(id, event, data)`.
async fn read_events(response: reqwest::Response, n: usize) -> Vec<(u64, String, Value)> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .expect("the events came in time")
            .expect("the stream is open")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                events.push((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_resumes_after_the_last_event_id() {
    let s = common::spawn_with_events(settings(1)).await;
    s.feed(token_event("e1", 0, 2, issued("tok_1", "inv_a", 100)))
        .await;
    let response = s
        .http
        .get(s.url("/v1/events/stream?after=0"))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let feeding = {
        let s2 = s.ledger.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            common::feed_into(
                &s2,
                token_event("e2", 1, 3, transferred("tok_1", "inv_a", "inv_b", 40)),
            )
            .await;
            common::feed_into(&s2, token_event("e3", 2, 2, issued("tok_2", "inv_c", 5))).await;
        })
    };
    let events = read_events(response, 3).await;
    feeding.await.unwrap();
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[1].1, "libertum.token.transferred.v1");
    assert_eq!(events[1].2["data"]["event_id"], "e2");
    // Reconnecting after 1 misses nothing and repeats nothing; filters apply.
    let again = s
        .http
        .get(s.url("/v1/events/stream?token_id=tok_1"))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(read_events(again, 1).await[0].0, 2);
    // An investor's stream carries only their own.
    let carol = libertum_testkit::token(&[Role::Investor], Some("inv_c"));
    let theirs = s
        .http
        .get(s.url("/v1/events/stream?after=0"))
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(read_events(theirs, 1).await[0].0, 3);
    libertum_testkit::send(
        s.http
            .get(s.url("/v1/events/stream"))
            .header("last-event-id", "x"),
    )
    .await
    .problem(400, "invalid_header", Some("Last-Event-ID"));
}

#[tokio::test]
async fn a_retried_subscription_is_the_same_one_and_positions_are_bounded() {
    let s = common::spawn_with_events(settings(1)).await;
    let hooks = Receiver::start().await;
    let subscribe_once = |body: Value| {
        libertum_testkit::send(
            s.http
                .post(s.url("/v1/events/subscriptions"))
                .header("idempotency-key", "sub-1")
                .json(&body),
        )
    };
    let body = json!({"url": format!("{}/ok", hooks.base)});
    let first = subscribe_once(body.clone()).await;
    let first = first.ok(201).clone();
    let again = subscribe_once(body).await;
    assert_eq!(again.ok(201), &first, "the same subscription and secret");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    subscribe_once(json!({"url": format!("{}/other", hooks.base)}))
        .await
        .problem(422, "idempotency_key_reused", None);
    let listed = s.get("/v1/events/subscriptions").await;
    assert_eq!(listed.ok(200).as_array().map(Vec::len), Some(1));
    // Nothing recorded yet: the next sequence number is 1, and no later one can be asked for.
    subscribe(
        &s,
        None,
        json!({"url": format!("{}/ok", hooks.base), "from_seq": 2}),
    )
    .await
    .problem(422, "invalid_field", Some("from_seq"));
    libertum_testkit::send(s.http.get(s.url("/v1/events/stream?after=5")))
        .await
        .problem(422, "invalid_field", Some("after"));
    libertum_testkit::send(
        s.http
            .get(s.url("/v1/events/stream"))
            .header("last-event-id", "5"),
    )
    .await
    .problem(400, "invalid_header", Some("Last-Event-ID"));
    let id = first["id"].as_str().unwrap();
    s.post(
        &format!("/v1/events/subscriptions/{id}/replay"),
        &json!({"from_seq": 2}),
    )
    .await
    .problem(422, "invalid_field", Some("from_seq"));
    s.get(&format!(
        "/v1/events/subscriptions/{id}/dead-letters?cursor=18446744073709551615"
    ))
    .await
    .problem(422, "invalid_field", Some("cursor"));
    // Deleted for good: its key cannot bring it back.
    let gone = libertum_testkit::send(
        s.http
            .delete(s.url(&format!("/v1/events/subscriptions/{id}"))),
    )
    .await;
    assert_eq!(gone.status.as_u16(), 204);
    subscribe_once(json!({"url": format!("{}/ok", hooks.base)}))
        .await
        .problem(422, "idempotency_key_reused", None);
    s.post(
        &format!("/v1/events/subscriptions/{id}/replay"),
        &json!({"from_seq": 1}),
    )
    .await
    .problem(404, "subscription_not_found", None);
}

#[tokio::test]
async fn an_investor_gets_only_their_own_postings_of_a_distribution() {
    use libertum_domain::{Amount, Id, token};
    let s = common::spawn_with_events(settings(1)).await;
    let hooks = Receiver::start().await;
    let alice = libertum_testkit::token(&[Role::Investor], Some("inv_a"));
    subscribe(
        &s,
        Some(alice),
        json!({"url": format!("{}/ok", hooks.base), "from_seq": 1}),
    )
    .await
    .ok(201);
    let allocation = |investor: &str, amount: u128| token::Allocation {
        investor_id: Id::from(investor),
        balance: Amount(amount),
        amount: Amount(amount),
        withheld: false,
    };
    let paid = token::Change::DistributionPaid {
        token_id: Id::from("tok_1"),
        distribution: token::DistributionSpec {
            id: Id::from("dst_1"),
            total: Amount(100),
            currency: "EUR".parse().unwrap(),
            record_date: common::at(0),
            memo: None,
        },
        allocations: vec![allocation("inv_a", 60), allocation("inv_b", 40)],
    };
    s.feed(token_event("e1", 1, 2, paid)).await;
    let got = hooks.until("/ok", 1, PATIENCE).await;
    let payload: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(
        payload["data"]["postings"],
        json!([{"from": "distribution:tok_1", "to": "investor:inv_a", "unit": "EUR", "amount": "60"}]),
        "bob's share is not alice's to learn"
    );
}
