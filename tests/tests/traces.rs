//! One transfer's trace, from the tokens handler to the ledger entry, across three processes
//! on Kafka, MongoDB and Redis: received over OTLP/HTTP by a receiver of the test's own and
//! decoded with the OpenTelemetry protocol's own messages.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use common::{Backends, Product};
use libertum_testkit::servers;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;

/// One span as exported: which service sent it, its name, its trace, itself and its parent.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// The OTLP/HTTP receiver: every span of every request it gets, decoded.
async fn receive(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(name)) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transfer_is_one_trace_from_the_tokens_handler_to_the_ledger_entry() {
    let spans: Spans = Arc::default();
    let receiver = libertum_testkit::serve(
        Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone()),
    )
    .await;
    let (_redis, redis_url) = servers::redis();
    let (_kafka, kafka_brokers) = servers::kafka();
    let (_mongo, mongodb_uri) = servers::mongo();
    let backends = Backends {
        kafka_brokers,
        mongodb_uri,
        redis_url,
        database_prefix: "traces".into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("{receiver}/v1/traces");
    let p = Product::processes_with(
        dir.path(),
        &backends,
        &[
            ("LIBERTUM_OTLP_ENDPOINT", endpoint.as_str()),
            ("LIBERTUM_TRACE_SAMPLE_RATIO", "1"),
        ],
    )
    .await;

    let common::Issued {
        alice, bob, token, ..
    } = common::issued(&p, "Traced", "TRC", 1_000).await;
    // The client starts the trace: its traceparent names the trace every span must join.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let path = format!("/v1/tokens/{token}/transfers");
    let (status, body) = p
        .send(
            p.http
                .post(p.url(&path))
                .header("traceparent", format!("00-{trace}-{client_span}-01"))
                .header("idempotency-key", "traced-transfer")
                .json(&json!({"from": alice, "to": bob, "amount": "7"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    p.eventually(&format!("/v1/ledger/tokens/{token}/cap-table"), |c| {
        c["holders"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["investor_id"] == bob.as_str()))
    })
    .await;

    // The batch exporters send within seconds; wait for the ledger's commit of this trace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let of_trace = loop {
        let of_trace: Vec<Received> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == trace)
            .cloned()
            .collect();
        if of_trace.iter().any(|s| s.name == "ledger.commit") {
            break of_trace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger's commit of trace {trace} never arrived; spans of it: {of_trace:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&str, &Received> = of_trace.iter().map(|s| (s.id.as_str(), s)).collect();
    // From the ledger's commit up to the client, parent by parent: every step in order.
    let mut chain = Vec::new();
    let mut at = of_trace
        .iter()
        .find(|s| s.name == "ledger.commit")
        .expect("found above");
    loop {
        chain.push(format!("{} {}", at.service, at.name));
        match by_id.get(at.parent.as_str()) {
            Some(parent) => at = parent,
            None => break,
        }
    }
    chain.reverse();
    let expected = [
        "tokens POST /v1/tokens/{token_id}/transfers",
        "tokens tokens.decide",
        "tokens publish libertum.tokens.events",
        "ledger ledger process libertum.tokens.events",
        "ledger ledger.decide",
        "ledger ledger.commit",
    ];
    assert_eq!(chain, expected, "the trace's spans: {of_trace:#?}");
    assert_eq!(
        at.parent, client_span,
        "the first span continues the client's"
    );
    // The tokens service's commit is in the trace too, under its decision.
    let decision = of_trace
        .iter()
        .find(|s| s.name == "tokens.decide")
        .expect("in the chain");
    assert!(
        of_trace
            .iter()
            .any(|s| s.name == "tokens.commit" && s.parent == decision.id),
        "the tokens commit under its decision: {of_trace:#?}"
    );
    p.stop().await;
}
