//! A request that comes with a W3C `traceparent` continues that trace, and every log line of
//! the request carries the trace's id, when spans are exported.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Body, http::Request, routing::get};
use opentelemetry::trace::TracerProvider as _;
use tower::ServiceExt;
use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt};

/// Log lines written into memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_the_callers_trace_id() {
    let lines = Lines::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(lines.clone()),
        )
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = libertum_platform::server::stack(Router::new().route(
        "/hello",
        get(|| async {
            tracing::info!("handled");
            "hello"
        }),
    ));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .oneshot(
            Request::get("/hello")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.status().is_success());

    let written = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = written
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["message"] == "handled")
        .unwrap_or_else(|| panic!("the handler's line: {written}"));
    assert_eq!(line["span"]["trace_id"], trace, "{line}");
    assert!(line["span"]["request_id"].is_string(), "{line}");
}
